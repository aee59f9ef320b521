"""Handlers of the network-layer ops: convolutions, pooling, normalizations, Gemm / MatMul,
Resize / Upsample.

Spatial ops are added in the file's NCHW layout (``set_layout(mm.Layout.NCHW, ...)``); the
builder's layout pass runs them in NHWC. 1-D convolutions and pools run as 2-D ones over a
height of 1 (an ``Unsqueeze`` before, a ``Squeeze`` after).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import DataType, Dims, Layout
from mmbuild.ops.conv import IPaddingMode
from mmbuild.ops.elementwise import IElementwise
from mmbuild.ops.reduce import IReduce
from mmbuild.ops.transform import (
    IResizeCoordinateMode,
    IResizeMode,
    IResizeNearestMode,
    IResizeNode,
)
from mmbuild.parser.ops_math import binary
from mmbuild.parser.ops_quant import give_scale
from mmbuild.parser.table import imports
from mmbuild.parser.walk import NodeContext

NCHW = Layout.NCHW
_SPATIAL = {
    "rank": "only 1-D and 2-D windows (inputs of rank 3 or 4) are imported",
    "same_lower": "auto_pad SAME_LOWER is imported only where the spatial sizes are known",
}


def _spatial(ctx: NodeContext, x: ITensor) -> tuple[ITensor, bool]:
    """``x`` as a rank-4 tensor (a 1-D window gets a height of 1), and whether it was 1-D."""
    rank = len(x.get_dimension())
    if rank == 4:
        return x, False
    if rank == 3:
        return ctx.net.add_i_unsqueeze_node(x, [2]).get_output(0), True
    ctx.refuse("rank")
    raise AssertionError  # refuse raises


def _window_attrs(ctx: NodeContext, one_d: bool, n: int = 2) -> dict[str, Any]:
    """kernel_shape, strides, dilations and pads (t, b, l, r) of a 1-D or 2-D window."""

    def pair(name: str, default: int) -> tuple[int, int]:
        v = list(ctx.attr(name, [default] * (1 if one_d else 2)))
        return (1, v[0]) if one_d else (v[0], v[1])

    pads = list(ctx.attr("pads", [0] * (2 if one_d else 4)))
    if one_d:
        pads = [0, pads[0], 0, pads[1]]
    return {
        "strides": pair("strides", 1),
        "dilations": pair("dilations", 1),
        "pads": (pads[0], pads[2], pads[1], pads[3]),
    }


def _auto_pad(
    ctx: NodeContext, node: Any, x: ITensor, k: tuple[int, int], w: dict[str, Any]
) -> None:
    """Apply ONNX auto_pad: NOTSET uses ``pads``, VALID none, SAME_UPPER TensorFlow SAME."""
    mode = ctx.attr("auto_pad", "NOTSET")
    if mode == "VALID":
        node.set_padding_mode(IPaddingMode.VALID)
    elif mode == "SAME_UPPER":
        node.set_padding_mode(IPaddingMode.SAME)
    elif mode == "SAME_LOWER":
        _, _, h, wd = x.get_dimension().get_dims()
        if h < 0 or wd < 0:
            ctx.refuse("same_lower")
        pads = []
        for size, kk, s, d in zip((h, wd), k, w["strides"], w["dilations"]):
            out = -(-size // s)
            total = max((out - 1) * s + d * (kk - 1) + 1 - size, 0)
            pads += [total - total // 2, total // 2]  # the extra pad at the beginning
        node.set_pad(*pads)
    else:
        node.set_pad(*w["pads"])


def _back(ctx: NodeContext, y: ITensor, one_d: bool) -> ITensor:
    return ctx.net.add_i_squeeze_node(y, [2]).get_output(0) if one_d else y


@imports(
    "Conv",
    notes="1-D and 2-D; pads, auto_pad (NOTSET, VALID, SAME_UPPER, SAME_LOWER), strides, "
    "dilations, group (depthwise included); a constant filter",
    limits=_SPATIAL,
)
def import_conv(ctx: NodeContext) -> list[Any]:
    x, one_d = _spatial(ctx, ctx.tensor(0))
    w = ctx.tensor(1)
    if one_d:
        w = _unsqueeze_filter(ctx, 1)
    give_scale(ctx, 1, w, out_axis=0)
    b = ctx.tensor(2) if ctx.has(2) else None
    attrs = _window_attrs(ctx, one_d)
    node = ctx.net.add_i_conv_node(x, w, b)
    node.set_layout(NCHW, NCHW, NCHW)  # type: ignore[attr-defined]
    node.set_group(ctx.attr("group", 1))  # type: ignore[attr-defined]
    kernel = tuple(w.get_dimension().get_dims()[2:])
    _auto_pad(ctx, node, x, kernel, attrs)  # type: ignore[arg-type]
    node.set_stride(*attrs["strides"])  # type: ignore[attr-defined]
    node.set_dilation(*attrs["dilations"])  # type: ignore[attr-defined]
    return [_back(ctx, node.get_output(0), one_d)]


def _unsqueeze_filter(ctx: NodeContext, i: int) -> ITensor:
    w = ctx.array(i, "filter")
    w4 = np.ascontiguousarray(w[:, :, None, :])
    dtype = DataType.from_numpy(w4.dtype)
    return ctx.net.add_i_const_node(dtype, Dims(list(w4.shape)), w4).get_output(0)


@imports(
    "ConvTranspose",
    notes="1-D and 2-D; pads, strides, dilations, group, output_padding, auto_pad NOTSET or VALID",
    limits={
        **_SPATIAL,
        "output_shape": "output_shape is not imported (give pads and output_padding)",
        "auto_pad": "auto_pad SAME_UPPER / SAME_LOWER is not imported for ConvTranspose",
    },
)
def import_conv_transpose(ctx: NodeContext) -> list[Any]:
    if "output_shape" in ctx.attrs:
        ctx.refuse("output_shape")
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        ctx.refuse("auto_pad")
    x, one_d = _spatial(ctx, ctx.tensor(0))
    w = _unsqueeze_filter(ctx, 1) if one_d else ctx.tensor(1)
    give_scale(ctx, 1, w, out_axis=1, repeat=ctx.attr("group", 1))
    b = ctx.tensor(2) if ctx.has(2) else None
    attrs = _window_attrs(ctx, one_d)
    node = ctx.net.add_i_deconv_node(x, w, b)
    node.set_layout(NCHW, NCHW, NCHW)  # type: ignore[attr-defined]
    node.set_group(ctx.attr("group", 1))  # type: ignore[attr-defined]
    if ctx.attr("auto_pad", "NOTSET") == "NOTSET":
        node.set_pad(*attrs["pads"])  # type: ignore[attr-defined]
    node.set_stride(*attrs["strides"])  # type: ignore[attr-defined]
    node.set_dilation(*attrs["dilations"])  # type: ignore[attr-defined]
    op = list(ctx.attr("output_padding", [0] * (1 if one_d else 2)))
    node.set_output_padding(*((0, op[0]) if one_d else op))  # type: ignore[attr-defined]
    return [_back(ctx, node.get_output(0), one_d)]


@imports(
    "MaxPool", "AveragePool",
    notes="1-D and 2-D; kernel_shape, strides, pads, auto_pad, ceil_mode, count_include_pad",
    limits={
        **_SPATIAL,
        "dilations": "pooling dilations other than 1 are not imported",
        "storage_order": "MaxPool storage_order 1 is not imported",
        "indices": "MaxPool's Indices output is not imported",
    },
)  # fmt: skip
def import_pool(ctx: NodeContext) -> list[Any]:
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        ctx.refuse("indices")
    if ctx.attr("storage_order", 0):
        ctx.refuse("storage_order")
    x, one_d = _spatial(ctx, ctx.tensor(0))
    attrs = _window_attrs(ctx, one_d)
    if attrs["dilations"] != (1, 1):
        ctx.refuse("dilations")
    k = list(ctx.attr("kernel_shape"))
    kernel = (1, k[0]) if one_d else (k[0], k[1])
    ceil = bool(ctx.attr("ceil_mode", 0))
    if ctx.op_type == "MaxPool":
        node = ctx.net.add_i_maxpool2d_node(x, ceil_mode=ceil)
    else:
        node = ctx.net.add_i_avgpool2d_node(x, ceil_mode=ceil)
        node.set_count_include_pad(bool(ctx.attr("count_include_pad", 0)))  # type: ignore[attr-defined]
    node.set_layout(NCHW, NCHW)  # type: ignore[attr-defined]
    _auto_pad(ctx, node, x, kernel, attrs)
    node.set_kernel(*kernel)  # type: ignore[attr-defined]
    node.set_stride(*attrs["strides"])  # type: ignore[attr-defined]
    return [_back(ctx, node.get_output(0), one_d)]


@imports("GlobalAveragePool", "GlobalMaxPool", notes="a mean / max over every spatial axis")
def import_global_pool(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    axes = list(range(2, len(x.get_dimension())))
    mode = IReduce.MEAN if ctx.op_type == "GlobalAveragePool" else IReduce.MAX
    return [ctx.net.add_i_reduce_node(x, axes, mode, True).get_output(0)]


@imports(
    "BatchNormalization",
    notes="inference form (epsilon; momentum is ignored)",
    limits={"training": "training_mode=1 (batch statistics) is not imported"},
)
def import_batch_norm(ctx: NodeContext) -> list[Any]:
    if ctx.attr("training_mode", 0) or any(o for o in ctx.node.output[1:]):
        ctx.refuse("training")
    x = ctx.tensor(0)
    scale, offset, mean, var = (ctx.tensor(i) for i in (1, 2, 3, 4))
    eps = ctx.attr("epsilon", 1e-5)
    return [ctx.net.add_i_fused_batch_norm_node(x, mean, var, scale, offset, 1, eps).get_output(0)]


@imports(
    "LayerNormalization",
    notes="axis, epsilon, Scale and B; the Mean and InvStdDev outputs as reductions",
    since=17,
)
def import_layer_norm(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    scale = ctx.tensor(1) if ctx.has(1) else None  # None: a recognised chain (see patterns)
    bias = ctx.tensor(2) if ctx.has(2) else None
    axis, eps = ctx.attr("axis", -1), ctx.attr("epsilon", 1e-5)
    outs: list[Any] = [ctx.net.add_i_layer_norm_node(x, scale, bias, axis, eps).get_output(0)]
    if any(o for o in ctx.node.output[1:]):
        outs += _norm_stats(ctx, x, axis, eps)
    return outs


@imports(
    "InstanceNormalization",
    notes="a layer norm over the spatial axes [2, rank), then the per-channel scale and B",
)
def import_instance_norm(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    rank = len(x.get_dimension())
    y = ctx.net.add_i_layer_norm_node(x, None, None, 2, ctx.attr("epsilon", 1e-5)).get_output(0)
    per_channel = [-1] + [1] * (rank - 2)
    scale = _reshaped_const(ctx, ctx.array(1, "scale"), per_channel)
    bias = _reshaped_const(ctx, ctx.array(2, "B"), per_channel)
    return [binary(ctx, binary(ctx, y, scale, IElementwise.MUL), bias, IElementwise.ADD)]


def _reshaped_const(ctx: NodeContext, a: np.ndarray, shape: list[int]) -> ITensor:
    arr = np.ascontiguousarray(a.astype(np.float32).reshape(shape))
    return ctx.net.add_i_const_node(DataType.FLOAT32, Dims(list(arr.shape)), arr).get_output(0)


def _norm_stats(ctx: NodeContext, x: ITensor, axis: int, eps: float) -> list[ITensor]:
    """mean and 1 / sqrt(var + eps) over the axes [axis, rank), kept as size 1."""
    from mmbuild.ops.activation import IActivation

    rank = len(x.get_dimension())
    axes = list(range(axis % rank, rank))
    mean = ctx.net.add_i_reduce_node(x, axes, IReduce.MEAN, True).get_output(0)
    centered = binary(ctx, x, mean, IElementwise.SUB)
    square = binary(ctx, centered, centered, IElementwise.MUL)
    var = ctx.net.add_i_reduce_node(square, axes, IReduce.MEAN, True).get_output(0)
    std = ctx.net.add_i_activation_node(
        binary(ctx, var, _scalar(ctx, eps), IElementwise.ADD), IActivation.SQRT
    ).get_output(0)
    return [mean, binary(ctx, _scalar(ctx, 1.0), std, IElementwise.DIV)]


@imports("MatMul", notes="batched, with numpy broadcasting of the batch dimensions")
def import_matmul(ctx: NodeContext) -> list[Any]:
    b = ctx.tensor(1)
    give_scale(ctx, 1, b, out_axis=-1 if len(b.get_dimension().get_dims()) >= 2 else None)
    node = ctx.net.add_i_matmul_node(ctx.tensor(0), b)
    node.set_transpose_a(False)  # type: ignore[attr-defined]
    node.set_transpose_b(False)  # type: ignore[attr-defined]
    return [node.get_output(0)]


@imports(
    "Gemm",
    notes="transA, transB, alpha, beta, C broadcast; a constant B imports as an inner product",
)
def import_gemm(ctx: NodeContext) -> list[Any]:
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))
    a = ctx.tensor(0)
    if ta:
        a = ctx.net.add_i_permute_node(a, [1, 0]).get_output(0)
    b_value = ctx.value(1)
    c_arr = ctx.value(2).array if ctx.has(2) and ctx.value(2).is_known else None
    if b_value.is_known and (not ctx.has(2) or c_arr is not None):
        w = np.asarray(b_value.array, dtype=np.float32)
        w = (w if tb else w.T) * np.float32(alpha)
        n_out = w.shape[0]
        wt = ctx.net.add_i_const_node(DataType.FLOAT32, Dims(list(w.shape)), w).get_output(0)
        give_scale(ctx, 1, wt, out_axis=0 if tb else 1, alpha=alpha)
        bias = None
        if c_arr is not None and c_arr.size in (1, n_out) and c_arr.ndim <= 1 + (c_arr.size == 1):
            c1 = np.broadcast_to(np.float32(beta) * c_arr.astype(np.float32).ravel(), (n_out,))
            bias = ctx.net.add_i_const_node(DataType.FLOAT32, Dims([n_out]), c1).get_output(0)
            c_arr = None
        y = ctx.net.add_i_inner_product_node(a, wt, bias).get_output(0)
    else:
        b = ctx.tensor(1)
        give_scale(ctx, 1, b, out_axis=0 if tb else 1)
        node = ctx.net.add_i_matmul_node(a, b)
        node.set_transpose_a(False)  # type: ignore[attr-defined]
        node.set_transpose_b(tb)  # type: ignore[attr-defined]
        y = node.get_output(0)
        if alpha != 1.0:
            y = binary(ctx, y, _scalar(ctx, alpha), IElementwise.MUL)
    if ctx.has(2) and (c_arr is not None or not ctx.value(2).is_known):
        c = ctx.tensor(2)
        if beta != 1.0:
            c = binary(ctx, c, _scalar(ctx, beta), IElementwise.MUL)
        y = binary(ctx, y, c, IElementwise.ADD)
    return [y]


def _scalar(ctx: NodeContext, v: float) -> ITensor:
    return ctx.net.add_i_const_node(DataType.FLOAT32, Dims([]), np.float32(v)).get_output(0)


_COORD = {
    "half_pixel": IResizeCoordinateMode.HALF_PIXEL,
    "pytorch_half_pixel": IResizeCoordinateMode.PYTORCH_HALF_PIXEL,
    "align_corners": IResizeCoordinateMode.ALIGN_CORNERS,
    "asymmetric": IResizeCoordinateMode.ASYMMETRIC,
}
_NEAREST = {m.value: m for m in IResizeNearestMode}


@imports(
    "Resize", "Upsample",
    notes="rank 4, H and W only: nearest (every nearest_mode) and linear, with the "
    "coordinate_transformation_modes half_pixel, pytorch_half_pixel, align_corners, asymmetric; "
    "constant scales or sizes",
    limits={
        "mode": "mode cubic is not imported",
        "coordinate": "coordinate_transformation_mode tf_half_pixel_for_nn, tf_crop_and_resize "
        "and half_pixel_symmetric are not imported",
        "axes": "resizing N or C (scales other than 1 there), or the axes / antialias / "
        "keep_aspect_ratio_policy attributes, is not imported",
        "rank": "only rank-4 inputs are resized",
        "runtime_scales": "scales or sizes computed at run time are not imported",
        "align_fraction": "align_corners with scales whose output size in * scale is not whole "
        "(ONNX then maps by the fractional size) is not imported",
    },
)  # fmt: skip
def import_resize(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    dims = x.get_dimension().get_dims()
    if len(dims) != 4:
        ctx.refuse("rank")
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        ctx.refuse("mode")
    if ctx.attr("antialias", 0) or "axes" in ctx.attrs:
        ctx.refuse("axes")
    if ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        ctx.refuse("axes")
    if ctx.op_type == "Upsample" or ctx.opset < 11:
        coord = "asymmetric"
        scales = ctx.attr("scales") if ctx.opset < 9 else ctx.array(1, "scales")
        sizes = None
        nearest = "floor" if ctx.op_type == "Upsample" else "round_prefer_floor"
        if ctx.op_type == "Resize":
            nearest = "floor"
    else:
        coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
        nearest = ctx.attr("nearest_mode", "round_prefer_floor")
        scales = ctx.array(2, "scales") if ctx.has(2) and ctx.value(2).array is not None else None
        if scales is not None and np.asarray(scales).size == 0:
            scales = None
        sizes = ctx.ints(3, "sizes") if scales is None and ctx.has(3) else None
        if scales is None and sizes is None:
            ctx.refuse("runtime_scales")
    if coord not in _COORD:
        ctx.refuse("coordinate")
    attrs: dict[str, Any] = {"size": None, "scale": None, "layout": NCHW}
    if sizes is not None:
        if sizes[:2] != dims[:2] or min(sizes) < 1:
            ctx.refuse("axes")
        attrs["size"] = tuple(sizes[2:])
    else:
        sc = [float(s) for s in np.asarray(scales).ravel()]
        if sc[:2] != [1.0, 1.0] or min(sc) <= 0:
            ctx.refuse("axes")
        whole = all(d < 0 or float(d * s).is_integer() for d, s in zip(dims[2:], sc[2:]))
        if coord == "align_corners" and not whole:
            ctx.refuse("align_fraction")
        attrs["scale"] = tuple(sc[2:])
    attrs["mode"] = IResizeMode.NEAREST if mode == "nearest" else IResizeMode.BILINEAR
    attrs["coordinate_mode"] = _COORD[coord]
    attrs["nearest_mode"] = _NEAREST[nearest]
    # added in NCHW at once: a scale read through the default NHWC could not fit
    return [ctx.net._add_node(IResizeNode, [x], attrs).get_output(0)]
