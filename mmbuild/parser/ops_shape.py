"""Handlers of data-movement ops: reshapes, transposes, concat, split, slice, pad, cast, gather,
expand, reductions, and the ops that vanish at inference (Identity, Dropout).

Shape arguments must be known at parse time; a shape folded from run-time dimensions
(``values.Dim``) becomes Reshape's ``0`` (copy that dimension) or ``-1`` (infer it), so that a
model with a free batch size keeps working at any batch size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmbuild.ir.tensor import ITensor
from mmbuild.ops.combine import IPadMode
from mmbuild.ops.elementwise import IElementwise
from mmbuild.ops.reduce import IReduce
from mmbuild.parser.ops_math import binary, const_like
from mmbuild.parser.table import folded_only, imports
from mmbuild.parser.values import Dim, Value, is_symbolic
from mmbuild.parser.walk import ONNX_TYPES, NodeContext

INT64_MAX = (1 << 63) - 1

folded_only(
    "Shape", "Size", "ConstantOfShape", "Range", "Equal", "Where", "Not", "Less", "Greater",
    "Floor", "Ceil", "NonZero", "Constant", "ReduceProd", "Tile",
    notes="folded at parse time",
)  # fmt: skip


def _copy(ctx: NodeContext, x: ITensor) -> ITensor:
    return ctx.net.add_i_reshape_node(x, [0] * len(x.get_dimension())).get_output(0)


@imports("Identity", "Dropout", notes="the input itself (Dropout at inference)",
         limits={"mask": "Dropout's mask output is not imported"})  # fmt: skip
def import_identity(ctx: NodeContext) -> list[Any]:
    if ctx.op_type == "Dropout" and len(ctx.node.output) > 1 and ctx.node.output[1]:
        ctx.refuse("mask")
    v = ctx.value(0)
    return [Value(ctx.node.output[0], tensor=v.tensor, array=v.array)]


def reshape_spec(ctx: NodeContext, x: Value, shape: np.ndarray) -> list[int]:
    """A folded ONNX shape as the shape of ``add_i_reshape_node``: a symbol naming dimension i
    of ``x`` at position i is 0; one other unknown is -1."""
    if not is_symbolic(shape):
        return [int(s) for s in shape]
    dims = x.tensor.get_dimension().get_dims() if x.tensor is not None else []
    out: list[int] = []
    for i, s in enumerate(shape):
        if isinstance(s, Dim):
            same = s.tensor == x.name and s.axis == i
            out.append(0 if same or (i < len(dims) and dims[i] == -1 and s.axis == i) else -1)
        else:
            out.append(int(s))
    if out.count(-1) > 1:
        ctx.refuse(
            "runtime_shape",
            f"the shape {list(shape)} holds more than one dimension known only at run time",
        )
    return out


@imports(
    "Reshape",
    notes="a constant shape, or one folded from the input's run-time dimensions (0 copies, -1 "
    "infers)",
    limits={
        "runtime_shape": "a shape that depends on run-time dimensions in more than one place "
        "is not imported",
        "allowzero": "allowzero=1 with a 0 in the shape is not imported",
    },
)
def import_reshape(ctx: NodeContext) -> list[Any]:
    x = ctx.value(0)
    if ctx.opset < 5:
        shape = np.asarray(ctx.attr("shape"), dtype=np.int64)
    else:
        v = ctx.value(1)
        shape = v.array if v.array is not None else ctx.array(1, "shape")
    spec = reshape_spec(ctx, x, shape)
    if ctx.attr("allowzero", 0) and 0 in spec:
        ctx.refuse("allowzero")
    return [ctx.net.add_i_reshape_node(ctx.tensor(0), spec).get_output(0)]


@imports("Flatten", notes="any axis", limits={"runtime": "run-time dimensions on both sides "
         "of the axis are not imported"})  # fmt: skip
def import_flatten(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    dims = x.get_dimension().get_dims()
    axis = ctx.attr("axis", 1)
    axis = axis + len(dims) if axis < 0 else axis
    head, tail = dims[:axis], dims[axis:]
    if -1 not in head:
        spec = [int(np.prod(head, dtype=np.int64)), -1 if -1 in tail else int(np.prod(tail))]
    elif -1 not in tail:
        spec = [-1, int(np.prod(tail, dtype=np.int64))]
    elif axis == 1:
        spec = [0, -1]
    else:
        ctx.refuse("runtime")
    return [ctx.net.add_i_reshape_node(x, spec).get_output(0)]


@imports("Transpose", notes="any permutation (the default reverses the axes)")
def import_transpose(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    rank = len(x.get_dimension())
    perm = ctx.attr("perm", list(range(rank))[::-1])
    return [ctx.net.add_i_permute_node(x, list(perm)).get_output(0)]


def _axes(ctx: NodeContext, since: int, i: int = 1) -> list[int] | None:
    """Axes as an attribute before opset ``since``, else as optional input ``i``."""
    if ctx.opset < since:
        a = ctx.attr("axes")
        return None if a is None else list(a)
    return ctx.ints(i, "axes") if ctx.has(i) else None


@imports("Squeeze", notes="axes as attribute or input")
def import_squeeze(ctx: NodeContext) -> list[Any]:
    return [ctx.net.add_i_squeeze_node(ctx.tensor(0), _axes(ctx, 13)).get_output(0)]


@imports("Unsqueeze", notes="axes as attribute or input")
def import_unsqueeze(ctx: NodeContext) -> list[Any]:
    return [ctx.net.add_i_unsqueeze_node(ctx.tensor(0), _axes(ctx, 13)).get_output(0)]


@imports("Concat", notes="any axis; constant inputs become const nodes")
def import_concat(ctx: NodeContext) -> list[Any]:
    ts = [ctx.tensor(i) for i in range(len(ctx.inputs)) if ctx.has(i)]
    return [ctx.net.add_i_concat_node(ctx.attr("axis"), ts).get_output(0)]


@imports(
    "Split",
    notes="split as attribute or input, num_outputs, equal parts",
    limits={"uneven": "num_outputs that does not divide the axis is not imported"},
)
def import_split(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    axis = ctx.attr("axis", 0)
    n = len(ctx.node.output)
    sizes = ctx.attr("split") if ctx.opset < 13 else (ctx.ints(1, "split") if ctx.has(1) else None)
    if sizes is None:
        size = x.get_dimension().get_dims()[axis]
        if size != -1 and size % n:
            if "num_outputs" not in ctx.attrs:
                ctx.refuse("uneven")
            step = -(-size // n)
            sizes = [step] * (n - 1) + [size - step * (n - 1)]
    node = ctx.net.add_i_split_node(x, axis, n if sizes is None else list(sizes))
    return node.outputs


@imports(
    "Slice",
    notes="starts, ends, axes, steps >= 1 as constants (attributes before opset 10)",
    limits={
        "negative_step": "negative steps are not imported",
        "runtime_end": "a window ending relative to a run-time dimension is not imported",
    },
)
def import_slice(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    dims = x.get_dimension().get_dims()
    if ctx.opset < 10:
        starts, ends = list(ctx.attr("starts")), list(ctx.attr("ends"))
        axes = list(ctx.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
        axes = ctx.ints(3, "axes") if ctx.has(3) else list(range(len(starts)))
        steps = ctx.ints(4, "steps") if ctx.has(4) else [1] * len(starts)
    begin, size, stride = [0] * len(dims), [-1] * len(dims), [1] * len(dims)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= len(dims)
        if st < 1:
            ctx.refuse("negative_step")
        d = dims[a]
        if d == -1:
            if s < 0 or e < INT64_MAX // 2:
                ctx.refuse("runtime_end")
            begin[a], stride[a] = s, st
            continue
        s = min(max(s + d if s < 0 else s, 0), d)
        e = min(max(e + d if e < 0 else e, 0), d)
        begin[a], size[a], stride[a] = s, max(-(-(e - s) // st), 0), st
    return [ctx.net.add_i_slice_node(x, begin, size, stride).get_output(0)]


@imports(
    "Pad",
    notes="modes constant, reflect, edge; pads and constant_value as attributes or constants",
    limits={
        "mode": "mode wrap is not imported",
        "negative": "negative pads (cropping) are not imported",
        "axes": "the axes input is not imported",
    },
)
def import_pad(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    rank = len(x.get_dimension())
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        ctx.refuse("mode")
    if ctx.opset < 11:
        pads, value = list(ctx.attr("pads")), float(ctx.attr("value", 0.0))
    else:
        if ctx.has(3):
            ctx.refuse("axes")
        pads = ctx.ints(1, "pads")
        value = float(ctx.array(2, "value").ravel()[0]) if ctx.has(2) else 0.0
    if min(pads, default=0) < 0:
        ctx.refuse("negative")
    pairs = [(pads[i], pads[i + rank]) for i in range(rank)]
    node = ctx.net.add_i_pad_node(x, pairs, value)
    node.set_mode(IPadMode(mode))  # type: ignore[attr-defined]
    return [node.get_output(0)]


@imports("Cast", notes="to any mmbuild type but double",
         limits={"type": "casts to double, string or 8-bit floats are not imported"})  # fmt: skip
def import_cast(ctx: NodeContext) -> list[Any]:
    to = ctx.attr("to")
    if to not in ONNX_TYPES:
        ctx.refuse("type")
    return [ctx.net.add_i_cast_node(ctx.tensor(0), ONNX_TYPES[to]).get_output(0)]


@imports(
    "Gather",
    notes="constant indices of rank 0 or 1 on a run-time tensor (as slices and a concat)",
    limits={"indices": "indices of rank 2 or more, or computed at run time, are not imported"},
)
def import_gather(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    dims = x.get_dimension().get_dims()
    axis = ctx.attr("axis", 0) % len(dims)
    idx = np.asarray(ctx.array(1, "indices"))
    if idx.ndim > 1 or dims[axis] == -1:
        ctx.refuse("indices")
    parts = []
    for i in idx.ravel().tolist():
        begin = [0] * len(dims)
        size = [-1] * len(dims)
        begin[axis], size[axis] = i % dims[axis], 1
        parts.append(ctx.net.add_i_slice_node(x, begin, size).get_output(0))
    if idx.ndim == 0:
        return [ctx.net.add_i_squeeze_node(parts[0], [axis]).get_output(0)]
    if len(parts) == 1:
        return parts
    return [ctx.net.add_i_concat_node(axis, parts).get_output(0)]


@imports("Expand", notes="a constant shape (as an addition of zeros, which is exact)",
         limits={"runtime_shape": "a shape computed at run time is not imported"})  # fmt: skip
def import_expand(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    shape = ctx.value(1).array
    if shape is None or is_symbolic(shape):
        ctx.refuse("runtime_shape")
    dims = x.get_dimension().get_dims()
    target = [int(s) for s in shape]  # type: ignore[union-attr]
    full = np.broadcast_shapes(tuple(max(d, 1) for d in dims), tuple(target))
    if list(full) == dims:
        return [_copy(ctx, x)]
    zeros = const_like(ctx, x, np.zeros(target))
    return [binary(ctx, x, zeros, IElementwise.ADD)]


_REDUCE = {
    "ReduceMean": (IReduce.MEAN, 18),
    "ReduceSum": (IReduce.SUM, 13),
    "ReduceMax": (IReduce.MAX, 18),
    "ReduceMin": (IReduce.MIN, 18),
}


@imports("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
         notes="axes as attribute or input, keepdims, noop_with_empty_axes")  # fmt: skip
def import_reduce(ctx: NodeContext) -> list[Any]:
    mode, since = _REDUCE[ctx.op_type]
    x = ctx.tensor(0)
    axes = _axes(ctx, since)
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return [_copy(ctx, x)]
        axes = list(range(len(x.get_dimension())))
    keep = bool(ctx.attr("keepdims", 1))
    return [ctx.net.add_i_reduce_node(x, axes, mode, keep).get_output(0)]
