"""Element-wise kernels: activation, clip and cast, and what every float kernel shares.

The binary elementwise kernel (numpy broadcasting) is in :mod:`.elementwise`.

Every float kernel is one numba function that serves FLOAT32 and FLOAT16 by type specialisation:
``load_f32`` widens an element (float32, or fp16 bits exactly), the arithmetic runs as the op's
numpy reference runs it, and ``store_f32`` writes the result in the output buffer's type
(rounding to fp16 once, nearest even). Steps of ``PARALLEL_MIN_WORK`` or more (elements times
a cost per element, see :func:`split_call`) are split into chunks of ``CHUNK`` elements over the
threads; each element is computed the same way either way.

Arithmetic, and how close each kernel is to the reference of its precision:

- ``activation``: the piecewise functions (RELU, RELU6, LEAKY_RELU, clip) in float64, as the
  reference (``ACTIVATIONS`` of ``mmbuild.ops.activation``), then rounded to float32:
  bit-exact. They compare exactly as numpy does (``maximum`` returns its second operand on ties,
  so RELU(-0.0) is +0.0; ``clip`` keeps x on ties, so RELU6(-0.0) is -0.0; NaN passes).
  HARD_SIGMOID and HARD_SWISH in float32, as their reference and the ONNX formula
  (``x * alpha + beta``, the operations of a fused activation, :mod:`.activate`): bit-exact.
  The smooth ones (SIGMOID, TANH, GELU, SILU, ELU) in float32 with the
  polynomials of :mod:`.fastmath`, within its stated ulps of the float64 reference (1 to 7
  float32 ulps; fp16 outputs within one fp16 ulp). Each function has a loop of its own, which
  LLVM vectorises. Worked through: GELU(1.0) = 0.5 * (1 + erf(0.70710677)), exactly
  0.8413447460685429, which rounds to float32 0.8413448; the kernel gives 0.8413447, one ulp
  below.
- ``clip``: ``lo if x < lo else hi if x > hi else x`` (NaN passes); bit-exact.
- ``cast``: any buffer type to any, as ``mmbuild.ops.transform.cast_array``: float to integer
  truncates toward zero and saturates (NaN gives 0; [-2.7, 2.7, 300, nan] to INT8 is
  [-2, 2, 127, 0]), integer to narrower integer wraps (300 to UINT8 is 44), anything to BOOL is
  ``x != 0``, integer to float rounds to nearest, float32 to fp16 rounds to nearest even and
  overflows to inf (65520.0 -> inf, 65519.0 -> 65504). Bit-exact, but a NaN comes out quiet.

A fused activation (``op_attrs["activation"]``, see ``mmbuild.graph.apply_activation``) is
applied to the float32 result before the store, with the same comparisons, by every float
kernel here, in :mod:`.elementwise` and in :mod:`.normalize`.

Buffers are C-contiguous; the kernels work on their flat views, and their inner loops on
slices, whose indices numba knows to be non-negative (an index it must wrap keeps LLVM from
vectorising a loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from mmbuild.errors import Code, MMError
from mmbuild.ir.types import DataType
from mmbuild.kernels.cpu.activate import (
    HARD_SWISH_ALPHA,
    HARD_SWISH_BETA,
    Activation,
    ActivationArgs,
    activation_args,
    affine_after,
    apply_fused,
    is_identity,
)
from mmbuild.kernels.cpu.fastmath import elu32, gelu32, sigmoid32, silu32, tanh32
from mmbuild.kernels.cpu.simd import load_f32, store_f32
from mmbuild.kernels.table import (
    BUFFER_TYPES,
    Buffers,
    Kernel,
    Runner,
    Step,
    in_order,
    register_kernel,
)
from mmbuild.ops.activation import IActivation

__all__ = [
    "CHUNK",
    "COST_DIVIDE",
    "COST_LIBM",
    "COST_POLY",
    "COST_SIMPLE",
    "FLOATS",
    "PARALLEL_MIN_WORK",
    "apply_fused",
    "contiguous_out",
    "flat_in",
    "fused_activation",
    "is_identity",
    "keep",
    "split_call",
]

FLOATS = (DataType.FLOAT32, DataType.FLOAT16)
# Work (elements times a cost per element) from which a kernel runs on all threads: about a
# millisecond of one thread. Memory-bound loops gain little from a second thread on a machine
# of two cores and, when another process holds a core, a parallel region waits for it a whole
# time slice; so only long steps are split.
PARALLEL_MIN_WORK = 1 << 22
COST_SIMPLE = 1  # a few float32 operations per element: memory-bound
COST_DIVIDE = 4  # float64 divisions and square roots per element
COST_LIBM = 32  # a scalar libm call (exp, tanh, erf) per element
COST_POLY = 8  # a float32 polynomial and an exponent (mmbuild.kernels.cpu.fastmath) per element
CHUNK = 1 << 14  # elements per parallel work item


# ---------------------------------------------------------------------------------------------
# Shared by the float kernels: buffers, parallel split, fused activation
# ---------------------------------------------------------------------------------------------
def flat_in(a: np.ndarray) -> np.ndarray:
    """An input buffer as a flat C-contiguous array (a view when it already is one; the
    buffers of a bound plan always are, so a prepared call reads their current values)."""
    return np.ascontiguousarray(a).reshape(-1)


def contiguous_out(out: np.ndarray, step: str) -> np.ndarray:
    """An output buffer's flat view; it must be C-contiguous, or writes would be lost."""
    if not out.flags.c_contiguous:
        raise MMError(f"step {step!r}: output buffer is not C-contiguous", Code.INTERNAL)
    return out.reshape(-1)


def split_call(
    serial: Any, parallel: Any, units: int, *args: Any, unit_size: int = 1, cost: int = 1
) -> Callable[[], None]:
    """``units`` work items of ``unit_size`` elements each as one call without arguments:
    ``serial(*args, 0, units)``, or ``parallel(*args, units, chunk)`` (prange over chunks of
    ``chunk`` items) when the work, ``units * unit_size * cost``, reaches ``PARALLEL_MIN_WORK``.

    Example: 10**6 float32 additions (cost 1) run serially; 10**6 sigmoids (cost 8) in
    parallel chunks of ``CHUNK`` elements.
    """
    if units * unit_size * cost >= PARALLEL_MIN_WORK:
        return partial(parallel, *args, units, max(1, CHUNK // max(1, unit_size)))
    if units > 0:
        return partial(serial, *args, 0, units)
    return in_order([])


def fused_activation(step: Step) -> ActivationArgs:
    """The step's fused activation as the eight numbers of :mod:`.activate` for
    :func:`apply_fused` (the identity when it has none)."""
    try:
        fused = step.op_attrs.get("activation")
        return activation_args(*Activation.of(fused), *affine_after(fused))
    except MMError as e:
        raise MMError(f"step {step.name!r}: {e}", Code.INTERNAL) from None


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def keep(y, act):  # type: ignore[no-untyped-def]
    """The ``post`` of a loop without a fused activation: ``y`` as it is."""
    return y


# ---------------------------------------------------------------------------------------------
# activation and clip
# ---------------------------------------------------------------------------------------------
# Codes: the piecewise functions first (float64, or float32 as their reference), then the smooth
# ones (float32
# polynomials); each has a loop of its own, which LLVM vectorises.
_RELU, _RELU6, _LEAKY, _HSIGMOID, _HSWISH, _CLIP, _SIGMOID, _TANH, _GELU, _SILU, _ELU = range(11)
_EXP, _LOG, _SQRT, _ERF, _SOFTPLUS, _MISH = range(11, 17)
_ACT_CODES = {
    IActivation.RELU: _RELU,
    IActivation.RELU6: _RELU6,
    IActivation.LEAKY_RELU: _LEAKY,
    IActivation.HARD_SIGMOID: _HSIGMOID,
    IActivation.HARD_SWISH: _HSWISH,
    IActivation.SIGMOID: _SIGMOID,
    IActivation.TANH: _TANH,
    IActivation.GELU: _GELU,
    IActivation.SILU: _SILU,
    IActivation.ELU: _ELU,
    IActivation.EXP: _EXP,
    IActivation.LOG: _LOG,
    IActivation.SQRT: _SQRT,
    IActivation.ERF: _ERF,
    IActivation.SOFTPLUS: _SOFTPLUS,
    IActivation.MISH: _MISH,
}


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _clip64(x, lo, hi):  # type: ignore[no-untyped-def]
    # np.clip: x itself on ties (keeps -0.0), NaN passes
    return lo if x < lo else (hi if x > hi else x)


# Each piecewise function: float64 x, parameters a and b, and the code (unused).
@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _relu(x, a, b, code):  # type: ignore[no-untyped-def]
    # np.maximum(x, 0): the second operand unless x > 0 or x is NaN, so -0.0 -> +0.0 (one
    # comparison, a select: an `or` would branch, and the loop would not vectorise)
    return 0.0 if x <= 0.0 else x


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _relu6(x, a, b, code):  # type: ignore[no-untyped-def]
    return _clip64(x, 0.0, 6.0)


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _leaky_relu(x, a, b, code):  # type: ignore[no-untyped-def]
    return x if x >= 0.0 else a * x


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _clip(x, a, b, code):  # type: ignore[no-untyped-def]
    return _clip64(x, a, b)


# The smooth functions in float32 (:mod:`.fastmath`), so that their loops vectorise too.
@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _sigmoid(x, a):  # type: ignore[no-untyped-def]
    return sigmoid32(x)


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _hard_sigmoid(x, ab):  # type: ignore[no-untyped-def]
    # the fused activation's operations (mmbuild.kernels.cpu.activate), as the reference
    z = x * ab[0] + ab[1]
    return np.float32(0) if z < 0 else (np.float32(1) if z > 1 else z)


_HSWISH_AB = (np.float32(HARD_SWISH_ALPHA), np.float32(HARD_SWISH_BETA))


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _hard_swish(x, ab):  # type: ignore[no-untyped-def]
    return x * _hard_sigmoid(x, ab)


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _tanh(x, a):  # type: ignore[no-untyped-def]
    return tanh32(x)


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _gelu(x, a):  # type: ignore[no-untyped-def]
    return gelu32(x)


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _silu(x, a):  # type: ignore[no-untyped-def]
    return silu32(x)


# The functions real models use rarely (ONNX Exp, Log, Sqrt, Erf, Softplus, Mish): float64 libm,
# as their reference computes them, one scalar call per element (1 ulp, see the module docstring).
@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _libm(x, a, b, code):  # type: ignore[no-untyped-def]
    if code == _EXP:
        return math.exp(x)
    if code == _LOG:
        # np.log: -inf at 0 (either sign), NaN below 0; math.log would raise instead
        if x == 0.0:
            return -math.inf
        return math.log(x) if x > 0.0 else math.nan
    if code == _SQRT:
        # np.sqrt keeps -0.0; NaN below 0
        return math.sqrt(x) if x >= 0.0 else math.nan
    if code == _ERF:
        return math.erf(x)
    if code == _SOFTPLUS:
        return math.log1p(math.exp(x))
    # MISH
    return x * math.tanh(math.log1p(math.exp(x)))


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _map(fn, post, xs, ys, a, b, code, act):  # type: ignore[no-untyped-def]
    """``ys[j] = post(float32(fn(float64(xs[j]))), act)``: ``post`` is the fused activation or
    :func:`keep`. ``xs`` and ``ys`` are slices, whose indices numba knows to be non-negative,
    so LLVM can vectorise the loop."""
    for j in range(xs.size):
        y = np.float32(fn(np.float64(load_f32(xs, j)), a, b, code))
        store_f32(ys, j, post(y, act))


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _map32(fn, post, xs, ys, a, act):  # type: ignore[no-untyped-def]
    """``ys[j] = post(fn(float32(xs[j]), a), act)`` (see :func:`_map`)."""
    for j in range(xs.size):
        store_f32(ys, j, post(fn(load_f32(xs, j), a), act))


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _unary_loops(post, xs, ys, code, a, b, act):  # type: ignore[no-untyped-def]
    """The loop of activation ``code``, one per function (each vectorises)."""
    if code == _RELU:
        _map(_relu, post, xs, ys, a, b, code, act)
    elif code == _RELU6:
        _map(_relu6, post, xs, ys, a, b, code, act)
    elif code == _LEAKY:
        _map(_leaky_relu, post, xs, ys, a, b, code, act)
    elif code == _HSIGMOID:
        _map32(_hard_sigmoid, post, xs, ys, (np.float32(a), np.float32(b)), act)
    elif code == _HSWISH:
        _map32(_hard_swish, post, xs, ys, _HSWISH_AB, act)
    elif code == _CLIP:
        _map(_clip, post, xs, ys, a, b, code, act)
    elif code == _SIGMOID:
        _map32(_sigmoid, post, xs, ys, np.float32(a), act)
    elif code == _TANH:
        _map32(_tanh, post, xs, ys, np.float32(a), act)
    elif code == _GELU:
        _map32(_gelu, post, xs, ys, np.float32(a), act)
    elif code == _SILU:
        _map32(_silu, post, xs, ys, np.float32(a), act)
    elif code == _ELU:
        _map32(elu32, post, xs, ys, np.float32(a), act)
    else:
        _map(_libm, post, xs, ys, a, b, code, act)


@njit(cache=True, error_model="numpy", boundscheck=False)
def _unary_range(x, out, code, a, b, act, start, stop):  # type: ignore[no-untyped-def]
    xs, ys = x[start:stop], out[start:stop]
    if is_identity(act):
        _unary_loops(keep, xs, ys, code, a, b, act)
    else:
        _unary_loops(apply_fused, xs, ys, code, a, b, act)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _unary_parallel(x, out, code, a, b, act, n, chunk):  # type: ignore[no-untyped-def]
    for c in prange((n + chunk - 1) // chunk):
        _unary_range(x, out, code, a, b, act, c * chunk, min(n, (c + 1) * chunk))


class _UnaryKernel(Kernel):
    """activation and clip: one float64 function of each element."""

    def params(self, step: Step) -> tuple[int, float, float]:
        raise NotImplementedError

    def bind(self, step: Step) -> Runner:
        code, a, b = self.params(step)
        act = fused_activation(step)
        name = step.name
        cost = COST_LIBM if code >= _EXP else COST_POLY if code >= _SIGMOID else COST_SIMPLE

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            out = contiguous_out(outputs[0], name)
            return split_call(_unary_range, _unary_parallel, out.size,
                              flat_in(inputs[0]), out, code, a, b, act, cost=cost)  # fmt: skip

        return Runner.from_prepare(prepare, (_unary_range, _unary_parallel))


@register_kernel
class ActivationKernel(_UnaryKernel):
    """The functions of ``mm.IActivation``, float32 and float16."""

    name = "activation"
    ops = ("activation",)
    precisions = FLOATS

    def params(self, step: Step) -> tuple[int, float, float]:
        attrs = step.op_attrs
        return _ACT_CODES[attrs["mode"]], float(attrs["alpha"] or 0.0), float(attrs["beta"] or 0.0)


@register_kernel
class ClipKernel(_UnaryKernel):
    """``min(max(x, lo), hi)`` with ``lo`` and ``hi`` attributes, float32 and float16."""

    name = "clip"
    ops = ("clip",)
    precisions = FLOATS

    def params(self, step: Step) -> tuple[int, float, float]:
        return _CLIP, float(step.op_attrs["lo"]), float(step.op_attrs["hi"])


# ---------------------------------------------------------------------------------------------
# cast
# ---------------------------------------------------------------------------------------------
_FLOAT_BUFFERS = (types.float32, types.uint16)  # uint16 buffers always hold fp16 bits


def _cast_one(src: np.ndarray, dst: np.ndarray, i: int) -> None:
    """``dst[i] = src[i]`` under ICastNode's rules (jitted through the overload below)."""
    raise NotImplementedError


@overload(_cast_one)
def _cast_one_overload(src, dst, i):  # type: ignore[no-untyped-def]
    from_float = src.dtype in _FLOAT_BUFFERS
    if dst.dtype in _FLOAT_BUFFERS:
        if from_float:
            return lambda src, dst, i: store_f32(dst, i, load_f32(src, i))
        # integer -> float32 rounds to nearest once (fp16: exact below 2**24, inf above 65519)
        return lambda src, dst, i: store_f32(dst, i, np.float32(src[i]))
    if dst.dtype == types.boolean:
        if from_float:

            def float_to_bool(src, dst, i):  # type: ignore[no-untyped-def]
                dst[i] = load_f32(src, i) != 0  # NaN is true

            return float_to_bool

        def int_to_bool(src, dst, i):  # type: ignore[no-untyped-def]
            dst[i] = src[i] != 0

        return int_to_bool
    if not from_float:

        def int_to_int(src, dst, i):  # type: ignore[no-untyped-def]
            dst[i] = src[i]  # two's-complement wrap-around, as numpy's astype

        return int_to_int
    info = np.iinfo(as_dtype(dst.dtype))
    top, bottom = info.max, info.min
    # float(info.max) may round up (int64: 2**63), so compare in float64 before converting
    ftop, fbottom = float(top), float(bottom)

    def float_to_int(src, dst, i):  # type: ignore[no-untyped-def]
        x = np.float64(load_f32(src, i))
        if x != x:
            dst[i] = 0
            return
        t = np.trunc(x)
        if t >= ftop:
            dst[i] = top
        elif t <= fbottom:
            dst[i] = bottom
        else:
            dst[i] = np.int64(t)

    return float_to_int


@njit(cache=True, error_model="numpy", boundscheck=False)
def _cast_range(src, dst, start, stop):  # type: ignore[no-untyped-def]
    xs, ys = src[start:stop], dst[start:stop]
    for j in range(stop - start):
        _cast_one(xs, ys, j)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _cast_parallel(src, dst, n, chunk):  # type: ignore[no-untyped-def]
    for c in prange((n + chunk - 1) // chunk):
        _cast_range(src, dst, c * chunk, min(n, (c + 1) * chunk))


@register_kernel
class CastKernel(Kernel):
    """Any numeric buffer type to any other (see the module docstring for the rules).

    One numba loop compiled per (source, destination) buffer type pair as the pairs are used.
    """

    name = "cast"
    ops = ("cast",)
    precisions = BUFFER_TYPES

    def bind(self, step: Step) -> Runner:
        if "activation" in step.op_attrs:
            raise MMError(
                f"step {step.name!r}: a cast cannot carry a fused activation", Code.INTERNAL
            )
        name = step.name

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            out = contiguous_out(outputs[0], name)
            return split_call(_cast_range, _cast_parallel, out.size, flat_in(inputs[0]), out)

        return Runner.from_prepare(prepare, (_cast_range, _cast_parallel))
