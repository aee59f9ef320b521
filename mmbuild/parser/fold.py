"""Parse-time folding: nodes whose inputs are all known, and shape computations over run-time
dimensions.

- Every input known (initializers, ``Constant``, values folded before): the node is evaluated
  once with the ONNX reference implementation (``onnx.reference``), so any deterministic op
  folds, whether or not mmbuild imports it as a node. Example: ``Shape`` of a [1, 3, 8, 8]
  tensor gives [1, 3, 8, 8]; ``Gather(., 0)``, ``Unsqueeze``, ``Concat(., [-1])`` fold to [1, -1]
  and the ``Reshape`` reading it gets a plain shape.
- Some input a shape holding run-time dimensions (``values.Dim``): ``Gather``, ``Slice``,
  ``Concat``, ``Cast``, ``Unsqueeze``, ``Squeeze``, ``Identity``, ``Reshape`` and integer
  ``Add``/``Sub``/``Mul``/``Div`` fold on object arrays; an entry computed from a run-time
  dimension becomes an unknown ``Dim``. The consumers (``Reshape``, ``Expand``, ``Resize``) turn
  the symbols into their own run-time conventions, or refuse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mmbuild.parser.values import UNKNOWN, Dim, Value, as_object, is_symbolic, simplify

if TYPE_CHECKING:
    from mmbuild.parser.walk import NodeContext

# ops never folded: their result is not a function of their inputs
# (Q/DQ: their handlers turn the pairs into ranges)
NEVER_FOLD = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli", "QuantizeLinear", "DequantizeLinear",
}  # fmt: skip


def try_fold(ctx: NodeContext) -> list[Value] | None:
    """The node's outputs when it folds at parse time, else None (the handler imports it)."""
    op = ctx.op_type
    if op == "Constant":
        return [Value(ctx.node.output[0], array=constant_value(ctx))]
    if op in NEVER_FOLD:
        return None
    present = [v for v in ctx.inputs if v is not None]
    if op == "Shape" and present and present[0].tensor is not None and not present[0].is_known:
        return [Value(ctx.node.output[0], array=_shape_of(ctx, present[0]))]
    if present and all(v.is_known for v in present):
        return fold_numeric(ctx)
    if any(v.is_folding for v in present) and op in SYMBOLIC:
        try:
            result = SYMBOLIC[op](ctx, [None if v is None else v.array for v in ctx.inputs])
        except _NotFoldableError:
            return None
        return [Value(ctx.node.output[0], array=simplify(result))]
    return None


def constant_value(ctx: NodeContext) -> np.ndarray:
    from onnx import numpy_helper

    a = ctx.node.attribute[0] if ctx.node.attribute else None
    if a is None:
        raise ctx.importer._unknown("Constant (without a value)", ctx.name, "")
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    kinds = {
        "value_float": (np.float32, a.f),
        "value_floats": (np.float32, list(a.floats)),
        "value_int": (np.int64, a.i),
        "value_ints": (np.int64, list(a.ints)),
    }
    if a.name not in kinds:
        ctx.refuse("constant_" + a.name, f"Constant with {a.name} is not supported")
    dtype, v = kinds[a.name]
    return np.asarray(v, dtype=dtype)


def fold_numeric(ctx: NodeContext) -> list[Value]:
    """Evaluate the node on its known inputs with ``onnx.reference``."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    node = ctx.node
    names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
    feeds: dict[str, np.ndarray] = {
        n: v.array for n, v in zip(names, ctx.inputs) if n and v is not None and v.array is not None
    }
    outs = [f"o{k}" for k in range(len(node.output))]
    one = helper.make_node(node.op_type, names, outs, domain=node.domain)
    one.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [one],
        "fold",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in feeds.items()
        ],
        [helper.make_empty_tensor_value_info(o) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:
        from mmbuild.errors import MMError

        raise MMError(
            f"ONNX node {ctx.name!r} ({node.op_type}): its inputs are constants but evaluating "
            f"it at parse time failed: {exc}"
        ) from None
    return [Value(o, array=np.asarray(r)) for o, r in zip(node.output, results)]


def _shape_of(ctx: NodeContext, v: Value) -> np.ndarray:
    from mmbuild.parser.values import symbolic_shape

    assert v.tensor is not None
    shape = symbolic_shape(v.name, v.tensor.get_dimension().get_dims())
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return shape[start:end]


class _NotFoldableError(Exception):
    pass


def _known(a: np.ndarray | None) -> np.ndarray:
    if a is None or is_symbolic(a):
        raise _NotFoldableError
    return a


def _gather(ctx: NodeContext, a: list[Any]) -> np.ndarray:
    return np.take(as_object(a[0]), _known(a[1]).astype(np.int64), axis=ctx.attr("axis", 0))


def _slice(ctx: NodeContext, a: list[Any]) -> np.ndarray:
    data = as_object(a[0])
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _known(a[1]).tolist(), _known(a[2]).tolist()
        axes = _known(a[3]).tolist() if len(a) > 3 and a[3] is not None else range(len(starts))
        steps = _known(a[4]).tolist() if len(a) > 4 and a[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[ax] = slice(_clamp(s), _clamp(e), st)
    return data[tuple(index)]


def _clamp(v: int) -> int | None:
    # ONNX uses INT64_MAX / INT64_MIN for "to the end"; Python slicing clamps the rest itself
    return None if abs(v) >= 1 << 62 else int(v)


def _concat(ctx: NodeContext, a: list[Any]) -> np.ndarray:
    return np.concatenate([as_object(x) for x in a if x is not None], axis=ctx.attr("axis"))


def _same(ctx: NodeContext, a: list[Any]) -> np.ndarray:
    from onnx import TensorProto

    if ctx.op_type == "Cast" and ctx.attr("to") not in (TensorProto.INT64, TensorProto.INT32):
        raise _NotFoldableError
    return a[0]


def _unsqueeze(ctx: NodeContext, a: list[Any]) -> np.ndarray:
    axes = ctx.attr("axes") if ctx.opset < 13 else _known(a[1]).tolist()
    rank = a[0].ndim + len(axes)
    return np.expand_dims(a[0], tuple(int(x) % rank for x in axes))


def _squeeze(ctx: NodeContext, a: list[Any]) -> np.ndarray:
    axes = ctx.attr("axes") if ctx.opset < 13 else (_known(a[1]).tolist() if len(a) > 1 else None)
    return np.squeeze(a[0], axis=None if axes is None else tuple(axes))


def _reshape(ctx: NodeContext, a: list[Any]) -> np.ndarray:
    shape = [int(s) for s in _known(a[1])]
    return a[0].reshape([a[0].shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _arith(ctx: NodeContext, a: list[Any]) -> np.ndarray:
    x, y = np.broadcast_arrays(as_object(a[0]), as_object(a[1]))
    fn = {"Add": int.__add__, "Sub": int.__sub__, "Mul": int.__mul__, "Div": int.__floordiv__}
    out = np.empty(x.shape, dtype=object)
    for i, (p, q) in enumerate(zip(x.ravel(), y.ravel())):
        out.ravel()[i] = (
            UNKNOWN if isinstance(p, Dim) or isinstance(q, Dim) else fn[ctx.op_type](int(p), int(q))
        )
    return out


SYMBOLIC = {
    "Gather": _gather,
    "Slice": _slice,
    "Concat": _concat,
    "Cast": _same,
    "Identity": _same,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Add": _arith,
    "Sub": _arith,
    "Mul": _arith,
    "Div": _arith,
}
