"""QuantizeLinear / DequantizeLinear: Q/DQ pairs become ranges, not nodes.

- ``Q(x) -> DQ`` on a run-time tensor ``x`` (per tensor): the pair disappears, the readers of
  the DQ output read ``x``, and ``x`` gets the range that reproduces the pair's grid under
  mmbuild's quantization arithmetic (API.md): with a zero point of 0 and int8, ``[-127 s,
  127 s]`` (symmetric: mmbuild's scale is exactly ``s``); otherwise ``[s (qmin - zp), s (qmax -
  zp)]`` (asymmetric: scale ``s``, the same zero point up to the uint8 / int8 shift). Example:
  uint8, s = 0.02, zp = 128 gives [-2.56, 2.54]. A grid that starts at 0 (zp = qmin, where an
  exporter such as onnxruntime's ``quantize_static`` folded a Relu into the pair) also gets a
  clip to the range, so that float readers see the Relu too.
- ``DQ`` of a constant (an int8 weight, per tensor or per axis): the weight is imported as its
  dequantized float values ``(q - zp) * s``, and its reader (Conv, ConvTranspose, Gemm, MatMul)
  passes the file's scales on to the builder as the weight tensor's range (:func:`give_scale`):
  ``[-127 s, 127 s]`` per tensor, or per output channel, from which the builder's symmetric
  arithmetic gives back ``s`` exactly, and so ``rint(w / s)`` gives back the file's codes, also
  in a channel whose largest code is below 127. Example: codes ``[[100, -3], [7, 64]]`` with
  per-axis scales ``[0.01, 0.02]`` on axis 0 give the ranges ``[-1.27, 1.27]`` and ``[-2.54,
  2.54]``; the builder's scales are ``1.27 / 127 = 0.01`` and ``0.02``, its codes the file's.
- ``Q -> DQ`` of a float constant (QAT exports): folded to the fake-quantized values.

Refused: a run-time pair quantized per axis, DQ of a run-time integer tensor, and a weight
whose given quantization the kernels cannot honour (a non-zero zero point, uint8 codes, or an
axis other than the reader's output channels). Approximated: a weight that an op folded at parse
time (a Transpose, a Reshape) stands between its DQ and its reader is ranged from its values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmbuild.errors import Code, MMError
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import Range
from mmbuild.parser.table import imports
from mmbuild.parser.values import QuantParams, Value
from mmbuild.parser.walk import NodeContext

_LIMITS = {
    "per_axis_activation": "a run-time tensor quantized per axis is not imported",
    "unpaired": "a QuantizeLinear whose output is not read by a DequantizeLinear alone, or a "
    "DequantizeLinear of a run-time integer tensor, is not imported",
    "type": "only int8 and uint8 quantization (and int32 constants) is imported",
    "block": "blocked quantization (block_size) is not imported",
}


def _params(ctx: NodeContext, qtype: np.dtype | None, constant: bool = False) -> QuantParams:
    """The scale, zero point and code range of the node (int32 only for constants: biases)."""
    if ctx.attr("block_size", 0):
        ctx.refuse("block")
    scale = np.asarray(ctx.array(1, "scale"), dtype=np.float64)
    if ctx.has(2):
        zp = np.asarray(ctx.array(2, "zero_point"))
        qtype = zp.dtype
    else:
        zp = np.zeros_like(scale, dtype=np.int64)
        qtype = qtype or np.dtype(np.uint8)
    allowed = [np.dtype(np.int8), np.dtype(np.uint8)] + [np.dtype(np.int32)] * constant
    if qtype not in allowed:
        ctx.refuse("type")
    info = np.iinfo(qtype)  # type: ignore[type-var]
    return QuantParams(
        scale, zp.astype(np.int64), int(info.min), int(info.max), ctx.attr("axis", 1)
    )


def _per_axis(a: np.ndarray, p: QuantParams, x: np.ndarray) -> np.ndarray:
    if a.ndim == 0 or a.size == 1:
        return a.reshape(())
    shape = [1] * x.ndim
    shape[p.axis % x.ndim] = a.size
    return a.reshape(shape)


@imports("QuantizeLinear", notes="paired with a DequantizeLinear: the pair becomes a range",
         limits=_LIMITS, since=10)  # fmt: skip
def import_quantize(ctx: NodeContext) -> list[Any]:
    v = ctx.value(0)
    p = _params(ctx, None)
    if v.is_known:  # a float constant: the fake-quantized grid values, folded
        x = np.asarray(v.array, dtype=np.float64)
        s, zp = _per_axis(p.scale, p, x), _per_axis(p.zero_point, p, x)
        q = np.clip(np.rint(x / s) + zp, p.qmin, p.qmax)
        return [Value(ctx.node.output[0], array=q.astype(np.int64), quant=p, source=v)]
    if p.scale.size != 1:
        ctx.refuse("per_axis_activation")
    return [Value(ctx.node.output[0], quant=p, source=v)]


@imports("DequantizeLinear", notes="of a QuantizeLinear (a range) or of an int8 / uint8 "
         "constant (its float values)", limits=_LIMITS, since=10)  # fmt: skip
def import_dequantize(ctx: NodeContext) -> list[Any]:
    v = ctx.value(0)
    if v.quant is not None and v.source is not None and not v.source.is_known:
        tensor = ctx.importer.materialize(v.source)
        rng = _range(v.quant)
        tensor.set_dynamic_range(rng)
        if rng.min == 0.0:  # the grid starts at 0: an exporter dropped a Relu into the pair
            tensor = ctx.net.add_i_clip_node(tensor, 0.0, rng.max).get_output(0)
            tensor.set_dynamic_range(rng)
        return [Value(ctx.node.output[0], tensor=tensor)]
    if not v.is_known:
        ctx.refuse("unpaired")
    q = np.asarray(v.array, dtype=np.int64)
    p = v.quant or _params(ctx, np.asarray(v.array).dtype, constant=True)
    s, zp = _per_axis(p.scale, p, q), _per_axis(p.zero_point, p, q)
    values = ((q - zp) * s).astype(np.float32)
    return [Value(ctx.node.output[0], array=values, given=p)]


def give_scale(
    ctx: NodeContext,
    i: int,
    tensor: ITensor,
    out_axis: int | None,
    repeat: int = 1,
    alpha: float = 1.0,
) -> None:
    """Pass the scales of input ``i``'s DequantizeLinear (if it has one) on to the builder, as
    the range of ``tensor``, the weight that the node reads (input ``i`` itself, or a copy that
    is reshaped, transposed or multiplied by ``alpha``).

    ``out_axis`` is the axis of the file's weight that holds the node's output channels (None
    when it has none); a per-axis scale must lie along it. ``repeat`` tiles the scales for a
    ConvTranspose of ``group`` groups, whose weight holds ``C_out / group`` channels. The range
    is ``+-127 |alpha| s`` per tensor or per output channel (see the module docstring).
    """
    v = ctx.value(i)
    p = v.given
    if p is None or v.array is None:
        return
    where = (f"ONNX node {ctx.name!r} ({ctx.op_type}): weight {v.name!r} (input {i}, "
             "dequantized by a DequantizeLinear)")  # fmt: skip
    if p.qmin != -128 or p.qmax != 127 or np.any(p.zero_point != 0):
        codes = "int8" if p.qmin == -128 else "uint8" if p.qmin == 0 else "int32"
        zps = sorted({int(z) for z in p.zero_point.ravel()})
        raise MMError(
            f"{where} is stored as {codes} with zero point(s) {zps[:4]}; mmbuild quantizes "
            "weights as int8 with zero point 0 and cannot take these codes as given. Quantize "
            "the weights as symmetric int8 (onnxruntime quantize_static: "
            "weight_type=QuantType.QInt8), or export the float model",
            Code.UNAVAILABLE,
        )
    scale = np.asarray(p.scale, np.float64).ravel()
    if scale.size > 1:
        ndim = v.array.ndim
        if out_axis is None or p.axis % ndim != out_axis % ndim:
            along = (
                "has no output-channel axis"
                if out_axis is None
                else (f"has its output channels along axis {out_axis % ndim}")
            )
            raise MMError(
                f"{where} is quantized per axis along axis {p.axis}; mmbuild quantizes the "
                f"weights of {ctx.op_type} per tensor or per output channel, and this weight "
                f"{along}. Quantize it per tensor or along its output-channel axis",
                Code.UNAVAILABLE,
            )  # fmt: skip
        scale = np.tile(scale, repeat)
    amax = 127.0 * abs(float(alpha)) * scale
    if amax.size == 1:
        tensor.set_dynamic_range(Range(-float(amax[0]), float(amax[0])))
    else:
        tensor.set_dynamic_range_per_axis([Range(-float(a), float(a)) for a in amax])


def _range(p: QuantParams) -> Range:
    s, zp = float(p.scale.ravel()[0]), int(p.zero_point.ravel()[0])
    if zp == 0 and p.qmin < 0:
        return Range(-127 * s, 127 * s)
    return Range(s * (p.qmin - zp), s * (p.qmax - zp))
