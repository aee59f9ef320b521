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
  dequantized float values ``(q - zp) * s``; the builder then ranges it from those values, which
  gives back the scale ``s`` per channel when a channel's largest code is +-127 (onnxruntime's
  symmetric weights) and approximates it otherwise.
- ``Q -> DQ`` of a float constant (QAT exports): folded to the fake-quantized values.

Approximated: a run-time pair quantized per axis, and DQ of a run-time integer tensor, are
refused; codes of -128 in a symmetric int8 tensor are clipped to -127 by mmbuild.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
    return [Value(ctx.node.output[0], array=((q - zp) * s).astype(np.float32))]


def _range(p: QuantParams) -> Range:
    s, zp = float(p.scale.ravel()[0]), int(p.zero_point.ravel()[0])
    if zp == 0 and p.qmin < 0:
        return Range(-127 * s, 127 * s)
    return Range(s * (p.qmin - zp), s * (p.qmax - zp))
