"""Typed declarations of what a model file's steps may hold, read by ``validate_model``.

Two tables, one entry per op and one per kernel that stores data:

* ``OP_ATTRS``: each op's attributes (``Step.op_attrs``), as its ``add_i_*`` method and setters
  make them: name -> a :data:`Check` of the value. ``conv``, ``deconv``, ``inner_product`` and
  ``matmul`` may also carry a fused ``activation`` (see ``mmbuild.passes.fuse``).
* ``KERNEL_STORES``: for each kernel whose ``lower`` prepares data, a function of the step's
  facts (:class:`StepFacts`: its precision, the shapes of its tensors, its declaration) giving the
  attributes and arrays that kernel stores, with each array's dtype and shape. They are read off
  each kernel's ``lower`` (mmbuild/kernels/cpu/qcommon.py ``lower_filter``, conv_ops.py,
  deconv_ops.py, linear_ops.py); a kernel that prepares nothing stores nothing. Example: a
  ``conv.qint`` step in QINT8 whose filter is ``[16, 3, 3, 3]`` NHWC stores ``path`` "gemm",
  ``scale_a`` (a float > 0), ``za`` (0..255), ``weight`` int8 ``[16, 3, 3, 3]``, ``bias`` and
  ``scale_w`` float32 ``[16]``.

A check returns None for a good value, else what was expected, in words:
``ints(2, minimum=1)((1, 0))`` is ``"2 integers >= 1"``. A test keeps both tables covering every
registered op and kernel, and every built model passing them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmbuild.ir.node import INode
from mmbuild.ir.types import DataType, Layout
from mmbuild.kernels.table import Step
from mmbuild.ops.activation import IActivation
from mmbuild.ops.combine import IPadMode
from mmbuild.ops.conv import IPaddingMode
from mmbuild.ops.elementwise import IElementwise
from mmbuild.ops.reduce import IReduce
from mmbuild.ops.transform import IResizeCoordinateMode, IResizeMode, IResizeNearestMode

Check = Callable[[Any], str | None]


# -- checks ----------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    bounds = "" if minimum is None else f" >= {minimum}"
    bounds += "" if maximum is None else f" and <= {maximum}"
    want = f"an integer{bounds}"

    def check(v: Any) -> str | None:
        ok = _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
        return None if ok else want

    return check


def number(positive: bool = False, finite: bool = True, minimum: float | None = None) -> Check:
    want = "a finite number" if finite else "a number (not NaN)"
    want += " > 0" if positive else ("" if minimum is None else f" >= {minimum}")

    def check(v: Any) -> str | None:
        if not _is_number(v) or math.isnan(v) or (finite and math.isinf(v)):
            return want
        if (positive and not v > 0) or (minimum is not None and v < minimum):
            return want
        return None

    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def member(cls: type[enum.Enum]) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, cls) else f"an mm.{cls.__name__} value"

    return check


def ints(count: int | None = None, minimum: int | None = None) -> Check:
    each = integer(minimum)
    want = f"{count if count is not None else 'a list of'} integers" + (
        f" >= {minimum}" if minimum is not None else ""
    )

    def check(v: Any) -> str | None:
        if not isinstance(v, tuple) or (count is not None and len(v) != count):
            return want
        return want if any(each(x) for x in v) else None

    return check


def tuple_of(count: int, item: Check, what: str) -> Check:
    def check(v: Any) -> str | None:
        bad = not isinstance(v, tuple) or len(v) != count or any(item(x) for x in v)
        return what if bad else None

    return check


def optional(inner: Check) -> Check:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        problem = inner(v)
        return None if problem is None else f"null or {problem}"

    return check


def one_of(*values: Any) -> Check:
    def check(v: Any) -> str | None:
        return None if v in values and type(v) is type(values[0]) else f"one of {list(values)}"

    return check


def either(first: Check, second: Check) -> Check:
    def check(v: Any) -> str | None:
        a = first(v)
        if a is None:
            return None
        b = second(v)
        return None if b is None else f"{a}, or {b}"

    return check


def fused_activation(v: Any) -> str | None:
    """The fused-activation dicts of ``mmbuild.passes.fuse``."""
    want = (
        'null, {"function": "relu"}, {"function": "clip", "lo": a, "hi": b}, '
        '{"function": "leaky_relu", "alpha": a} (and optionally "lo": c), '
        '{"function": "hard_sigmoid", "alpha": a, "beta": b} or {"function": "hard_swish"}, '
        'each optionally with an affine after it, "mul": m and "add": c'
    )
    if v is None:
        return None
    if not isinstance(v, dict):
        return want
    fn = str(v.get("function"))
    keys = {"relu": {"function"}, "clip": {"function", "lo", "hi"},
            "leaky_relu": {"function", "alpha"}, "hard_sigmoid": {"function", "alpha", "beta"},
            "hard_swish": {"function"}}.get(fn)  # fmt: skip
    if fn == "leaky_relu" and "lo" in v:
        keys = {"function", "alpha", "lo"}
    if keys is not None:
        keys = keys | ({"mul", "add"} & set(v))
    if keys is None or set(v) != keys:
        return want
    limit = number(finite=False)
    if any(limit(v[k]) for k in keys - {"function"}):
        return want
    return None


# -- the ops' attributes -----------------------------------------------------------------------
_LAYOUT = member(Layout)
_WINDOW: dict[str, Check] = {
    "stride": ints(2, 1),
    "pad": ints(4, 0),
    "padding_mode": member(IPaddingMode),
}
_CONV: dict[str, Check] = {
    **_WINDOW,
    "dilation": ints(2, 1),
    "group": integer(1),
    "layout": tuple_of(3, _LAYOUT, "3 mm.Layout values (input, filter, output)"),
}
_POOL: dict[str, Check] = {
    **_WINDOW,
    "kernel": optional(ints(2, 1)),
    "stride": optional(ints(2, 1)),
    "layout": tuple_of(2, _LAYOUT, "2 mm.Layout values (input, output)"),
    "ceil_mode": boolean,
}
_AXIS_EPS: dict[str, Check] = {"axis": integer(), "eps": number(minimum=0.0)}
_PAIR = tuple_of(2, integer(0), "a pair of integers >= 0")

OP_ATTRS: dict[str, dict[str, Check]] = {
    "activation": {
        "mode": member(IActivation),
        "alpha": optional(number()),
        "beta": optional(number()),
    },
    "clip": {"lo": number(finite=False), "hi": number(finite=False)},
    "concat": {"axis": integer()},
    "split": {"axis": integer(), "split": either(integer(1), ints(None, 0))},
    "slice": {"begin": ints(), "size": ints(), "stride": ints()},
    "pad": {
        "pads": lambda v: (
            None
            if isinstance(v, tuple) and all(_PAIR(p) is None for p in v)
            else "a list of pairs of integers >= 0"
        ),
        "value": number(finite=False),
        "mode": member(IPadMode),
    },
    "conv": _CONV,
    "deconv": {**_CONV, "output_padding": ints(2, 0)},
    "elementwise": {"mode": member(IElementwise)},
    "inner_product": {},
    "matmul": {"transpose_a": boolean, "transpose_b": boolean},
    "fused_batch_norm": _AXIS_EPS,
    "layer_norm": _AXIS_EPS,
    "softmax": {"axis": integer()},
    "maxpool2d": _POOL,
    "avgpool2d": {**_POOL, "count_include_pad": boolean},
    "reduce": {"axes": ints(), "mode": member(IReduce), "keep_dims": boolean},
    "reshape": {"shape": ints()},
    "permute": {"perm": ints()},
    "squeeze": {"axes": ints()},
    "unsqueeze": {"axes": ints()},
    "resize": {
        "mode": member(IResizeMode),
        "coordinate_mode": member(IResizeCoordinateMode),
        "nearest_mode": member(IResizeNearestMode),
        "layout": _LAYOUT,
        "size": optional(ints(2, 1)),
        "scale": optional(tuple_of(2, number(positive=True), "2 finite numbers > 0")),
    },
    "cast": {"dtype": member(DataType)},
}
#: Ops whose steps may carry a fused ``activation`` (the GEMM epilogues and batch norm).
FUSING_OPS = frozenset({"conv", "deconv", "inner_product", "matmul", "fused_batch_norm"})


# -- what each kernel stores -------------------------------------------------------------------
@dataclass(frozen=True)
class StepFacts:
    """What a kernel's declaration may depend on: the step, its precision and declaration, the
    dims of its inputs and outputs (constants at their real shapes) and which inputs are
    constants."""

    step: Step
    precision: DataType
    declaration: INode
    input_dims: Sequence[tuple[int, ...]]
    output_dims: Sequence[tuple[int, ...]]
    constant_inputs: frozenset[int]


@dataclass(frozen=True)
class ArraySpec:
    dtype: np.dtype
    shape: tuple[int, ...]
    positive: bool = False  # every value finite and > 0 (scales); else finite (floats)


@dataclass
class Stored:
    """The attributes (name -> check) and arrays (name -> spec) a kernel stores for a step."""

    attrs: dict[str, Check] = field(default_factory=dict)
    arrays: dict[str, ArraySpec] = field(default_factory=dict)
    problem: str = ""  # set when the step's inputs cannot give a declaration at all


_F32 = np.dtype(np.float32)
_QTYPES = (DataType.QINT8, DataType.QINT16)


def weight_dtype(precision: DataType) -> np.dtype:
    """The dtype a kernel stores a weight in: int8 / int16 when quantized, fp16 bits, float32."""
    if precision is DataType.QINT8:
        return np.dtype(np.int8)
    if precision is DataType.QINT16:
        return np.dtype(np.int16)
    return np.dtype(np.uint16) if precision is DataType.FLOAT16 else _F32


def _zero_point(precision: DataType) -> Check:
    """The carried zero point of an activation: uint8 for QINT8, int16 for QINT16."""
    return integer(0, 255) if precision is DataType.QINT8 else integer(-32768, 32767)


def _activation_qparams(stored: Stored, precision: DataType, name: str = "a") -> None:
    stored.attrs[f"scale_{name}"] = number(positive=True)
    stored.attrs[f"z{name}"] = _zero_point(precision)


def _input_quantization(stored: Stored, facts: StepFacts) -> None:
    """``qcommon.input_quantization``: ``scale_a`` and ``za``, or for a dynamic input
    (``activation_quant_mode: "dynamic"``) ``dynamic`` true and ``za`` the carried zero."""
    if facts.step.lowered.attrs.get("dynamic") is None:
        _activation_qparams(stored, facts.precision)
        return
    stored.attrs["dynamic"] = one_of(True)
    stored.attrs["za"] = one_of(128 if facts.precision is DataType.QINT8 else 0)


def _output_quantization(stored: Stored, facts: StepFacts) -> None:
    """``qcommon.output_quantization``: ``scale_out`` and ``za_out`` of a quantized output (a
    tensor carried to quantized readers); nothing for a float one."""
    out_type = facts.step.output_types[0]
    if out_type in _QTYPES:
        stored.attrs["scale_out"] = number(positive=True)
        stored.attrs["za_out"] = _zero_point(out_type)


def _filter(stored: Stored, facts: StepFacts, ohwi: tuple[int, ...]) -> None:
    """``lower_filter``: bias float32 [Cout]; weight [Cout, Kh, Kw, Cin/g] in the precision;
    ``scale_w`` [Cout] and the input's qparams when quantized."""
    cout = ohwi[0]
    stored.arrays["bias"] = ArraySpec(_F32, (cout,))
    stored.arrays["weight"] = ArraySpec(weight_dtype(facts.precision), ohwi)
    if facts.precision in _QTYPES:
        stored.arrays["scale_w"] = ArraySpec(_F32, (cout,), positive=True)
        _input_quantization(stored, facts)


def _constant_dims(facts: StepFacts, index: int, what: str, rank: int | None) -> tuple[int, ...]:
    if index >= len(facts.input_dims) or index not in facts.constant_inputs:
        raise _NoDeclarationError(f"its {what} (input {index}) must be a constant of the model")
    dims = facts.input_dims[index]
    if rank is not None and len(dims) != rank:
        raise _NoDeclarationError(
            f"its {what} (input {index}) has shape {list(dims)}, not rank {rank}"
        )
    return dims


def _conv_stores(facts: StepFacts) -> Stored:
    stored = Stored()
    ohwi = tuple(facts.declaration.filter_ohwi(_constant_dims(facts, 1, "filter", 4)))  # type: ignore[attr-defined]
    from mmbuild.kernels.cpu.conv_ops import _path

    stored.attrs["path"] = one_of(_path(int(facts.step.op_attrs["group"]), ohwi[3]))
    _filter(stored, facts, ohwi)
    _output_quantization(stored, facts)
    return stored


def _deconv_stores(facts: StepFacts) -> Stored:
    """The filter as ``[Cin, Kh, Kw, Cout/g]`` with its channels swapped per group
    (``deconv_ops._swap_channels``): ``[g * Cout/g, Kh, Kw, Cin/g]``."""
    stored = Stored()
    cin, kh, kw, cout_g = facts.declaration.filter_ohwi(_constant_dims(facts, 1, "filter", 4))  # type: ignore[attr-defined]
    group = int(facts.step.op_attrs["group"])
    if cin % group:
        raise _NoDeclarationError(f"its filter's {cin} channels do not divide into {group} groups")
    _filter(stored, facts, (group * cout_g, kh, kw, cin // group))
    return stored


def _packed(stored: Stored, facts: StepFacts, k: int, n: int) -> None:
    """``linear_ops._lower_packed``: bias float32 [N]; weight [K, N]; ``scale_w`` [N]."""
    stored.attrs["path"] = one_of("packed")
    stored.arrays["bias"] = ArraySpec(_F32, (n,))
    stored.arrays["weight"] = ArraySpec(weight_dtype(facts.precision), (k, n))
    if facts.precision in _QTYPES:
        stored.arrays["scale_w"] = ArraySpec(_F32, (n,), positive=True)
        _input_quantization(stored, facts)


def _inner_product_stores(facts: StepFacts) -> Stored:
    stored = Stored()
    n, k = _constant_dims(facts, 1, "weight", 2)
    _packed(stored, facts, k, n)
    return stored


def _matmul_stores(facts: StepFacts) -> Stored:
    """Packed (``linear_ops._packs``: a constant b without batch dimensions times a computed a
    not transposed) or direct: each constant operand stored in the precision, each computed one
    quantized with its qparams; a quantized constant's scales per tensor (an attribute) or per
    column (an array)."""
    stored = Stored()
    attrs, consts = facts.step.op_attrs, facts.constant_inputs
    if len(facts.input_dims) != 2:
        raise _NoDeclarationError("matmul reads 2 inputs")
    a_dims, b_dims = facts.input_dims
    packs = (
        1 in consts
        and 0 not in consts
        and math.prod(b_dims[:-2]) == 1
        and not (attrs["transpose_a"] and len(a_dims) >= 2)
    )
    if packs:
        if len(b_dims) == 1:
            k, n = b_dims[0], 1
        else:
            k, n = b_dims[-2:][::-1] if attrs["transpose_b"] else b_dims[-2:]
        _packed(stored, facts, k, n)
        return stored
    stored.attrs["path"] = one_of("direct")
    quantized = facts.precision in _QTYPES
    for i, name in enumerate(("a", "b")):
        dims = facts.input_dims[i]
        if i not in consts:
            if quantized:
                _activation_qparams(stored, facts.precision, name)
            continue
        stored.arrays[name] = ArraySpec(weight_dtype(facts.precision), dims)
        if not quantized:
            continue
        stored.attrs[f"z{name}"] = one_of(128 if facts.precision is DataType.QINT8 else 0)
        if name == "b" and f"scale_{name}" in facts.step.lowered.arrays and len(dims) > 1:
            axis = len(dims) - (2 if attrs["transpose_b"] else 1)
            stored.arrays[f"scale_{name}"] = ArraySpec(_F32, (dims[axis],), positive=True)
        else:
            stored.attrs[f"scale_{name}"] = number(positive=True)
    return stored


class _NoDeclarationError(Exception):
    pass


def _code_op_stores(facts: StepFacts) -> Stored:
    """A max pool on carried codes: the ``scale_out`` and ``za_out`` of its output."""
    stored = Stored()
    _output_quantization(stored, facts)
    return stored


KERNEL_STORES: dict[str, Callable[[StepFacts], Stored]] = {
    "maxpool2d.qint": _code_op_stores,
    "conv.float": _conv_stores,
    "conv.qint": _conv_stores,
    "deconv.float": _deconv_stores,
    "deconv.qint": _deconv_stores,
    "inner_product.float": _inner_product_stores,
    "inner_product.qint": _inner_product_stores,
    "matmul.float": _matmul_stores,
    "matmul.qint": _matmul_stores,
}


def stored_by(kernel: str, facts: StepFacts) -> Stored:
    """What ``kernel`` stores for the step of ``facts`` (nothing for a kernel absent from
    ``KERNEL_STORES``: the loader refuses a kernel whose ``lower`` prepares data but has no
    entry there)."""
    declare = KERNEL_STORES.get(kernel)
    if declare is None:
        return Stored()
    try:
        return declare(facts)
    except _NoDeclarationError as e:
        return Stored(problem=str(e))


def array_problem(spec: ArraySpec, value: np.ndarray) -> str | None:
    """What is wrong with a stored array for its spec, or None."""
    if value.dtype != spec.dtype or tuple(value.shape) != spec.shape:
        return (
            f"is {value.dtype} {list(value.shape)}; this kernel stores {spec.dtype} "
            f"{list(spec.shape)} for this step"
        )
    if value.dtype == np.uint16:  # fp16 bits: exponent all ones is inf or NaN
        finite = (value & 0x7C00) != 0x7C00
        as_float = value.view(np.float16).astype(np.float32)
    elif value.dtype.kind == "f":
        finite, as_float = np.isfinite(value), value
    else:
        return None
    if not finite.all():
        return "holds inf or NaN; a stored weight, bias or scale is finite"
    if spec.positive and not (as_float > 0).all():
        return "holds a value <= 0; scales are > 0"
    return None


def attr_problems(
    attrs: Mapping[str, Any], checks: Mapping[str, Check], optional_keys: Sequence[str] = ()
) -> list[str]:
    """'name: expected ...' for each missing, unknown or ill-typed attribute."""
    problems = []
    for key in checks:
        if key not in attrs:
            problems.append(f"{key!r} is missing")
    for key, value in attrs.items():
        check = checks.get(key, fused_activation if key in optional_keys else None)
        if check is None:
            known = ", ".join(repr(k) for k in [*checks, *optional_keys]) or "none"
            problems.append(f"{key!r} is not an attribute it has (it has: {known})")
            continue
        want = check(value)
        if want is not None:
            problems.append(f"{key!r} is {_show(value)}; expected {want}")
    return problems


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
