"""What the conv, deconv and linear kernels share: quantization parameters, input preparation,
the fused epilogue of the direct (non-GEMM) loops and the bit-exact numpy epilogue.

Build time (numpy):

- :func:`activation_qparams`: a QINT input's scale and zero point from its range and the
  config's ``activation_quant_algo``. QINT8 activations are carried as uint8 ``q + 128`` with
  zero point ``za = zp + 128`` (so one u8s8 GEMM serves symmetric and asymmetric tensors); QINT16
  as int16 with ``za = zp``.
- :func:`quantize_weights`: a constant weight quantized symmetrically, per tensor or per output
  channel, by ``quant.params`` (the weight's range is its values' ``[min, max]``).
- :func:`float_bias`: the bias in the node's float precision (fp16-rounded, then widened).

Run time (numba; the input preparation is :mod:`.prepare`):

- :func:`epilogue_store`: the GEMM epilogue (``gemm``'s docstring) for one accumulator of a
  direct loop, in the same float32 operations and order, so both paths give the same bits.

Reference (numpy): :func:`quantize_input_reference` gives ``q - zp`` as int64, the integer
product is computed exactly in int64 by the op's own reference, and :func:`reference_epilogue`
applies ``float32(acc) * mult[n] + bias[n]``, the activation by comparisons and the store.

Worked example (QINT8, asymmetric): range [-1, 3] -> scale = 4 / 255 = 0.015686275, zp = -128 -
rint(-1 / scale) = -128 + 64 = -64, carried ``za = 64``. x = 0.5 -> rint(31.874998) = 32 -> q =
-32, carried 96. With a weight q = 10 of scale 0.01: acc = (96 - 64) * 10 = 320, mult =
float32(0.015686275) * float32(0.01) = 1.5686275e-4, y = 320 * mult = 0.05019608 (+ bias, then
the activation, then the store as float32 or fp16).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit, types
from numba.extending import overload

from mmbuild.errors import Code, MMError
from mmbuild.ir.types import DataType
from mmbuild.kernels.cpu.activate import activation_args, affine_after, apply_fused
from mmbuild.kernels.cpu.convert import store_output
from mmbuild.kernels.cpu.gemm import (
    Activation,
    BoundGemm,
    Epilogue,
    ImplicitRows,
    OutKind,
    PackedFloatWeights,
    PackedInt8Weights,
    PackedInt16Weights,
    bind_gemm_f32,
    bind_gemm_s16,
    bind_gemm_u8s8,
    pack_float_weights,
    pack_int8_weights,
    pack_int16_weights,
)
from mmbuild.kernels.cpu.simd import load_f32
from mmbuild.kernels.table import Lowered, from_float, to_numpy
from mmbuild.quant.params import QuantParams, choose_qparams, quantize
from mmbuild.quant.params import weight_qmax as params_weight_qmax

if TYPE_CHECKING:
    from mmbuild.graph import Graph, Node

__all__ = [
    "INT8_MAX_K",
    "Packed",
    "activation_qparams",
    "bind_gemm",
    "carried_values",
    "carrier_dtype",
    "check_int8_k",
    "direct_epilogue_args",
    "epilogue_activation",
    "epilogue_store",
    "float_bias",
    "gemm_dispatcher",
    "input_quantization",
    "make_epilogue",
    "out_kind",
    "out_qparams",
    "output_quantization",
    "pack_weights",
    "quantize_input_reference",
    "quantize_node_weights",
    "quantize_weights",
    "reference_epilogue",
    "require_constant",
    "signed_zero_point",
    "weight_qmax",
    "weights_per_axis",
    "widen",
]

#: The largest K of a QINT8 GEMM: |(a - za) * w| <= 255 * 128 summed K times must fit int32.
INT8_MAX_K = (2**31 - 1) // (255 * 128)

_BITS = {DataType.QINT8: 8, DataType.QINT16: 16}


# ---------------------------------------------------------------------------------------------
# Build time
# ---------------------------------------------------------------------------------------------
def _bits(qtype: DataType) -> int:
    if qtype not in _BITS:
        raise MMError(f"{qtype.name} is not a quantized type (QINT8 or QINT16)", Code.INTERNAL)
    return _BITS[qtype]


def carrier_dtype(qtype: DataType) -> np.dtype:
    """The dtype quantized activations are carried in: uint8 (QINT8) or int16 (QINT16)."""
    return np.dtype(np.uint8 if _bits(qtype) == 8 else np.int16)


def signed_zero_point(za: int, qtype: DataType) -> int:
    """The zero point of ``quant.params`` for a carried zero point ``za``."""
    return int(za) - 128 if _bits(qtype) == 8 else int(za)


def activation_qparams(graph: Graph, tensor: str, qtype: DataType, node: Node) -> tuple[Any, int]:
    """(scale as float32, carried zero point) of ``tensor``, an input of ``node`` in ``qtype``.

    The range is ``graph.tensors[tensor].range``; ``graph.options["activation_quant_algo"]``
    (symmetric | asymmetric) chooses the mapping (``quant.params.choose_qparams``).
    """
    rng = graph.tensors[tensor].range
    where = f"{node.node_type} {node.name!r}: input tensor {tensor!r} runs in {qtype.name}"
    if rng is None:
        raise MMError(
            f"{where} but has no range; calibrate the network (mm.Calibrator), set one with "
            "tensor.set_dynamic_range(mm.Range(lo, hi)), or give it in the builder config's "
            "custom_ranges"
        )
    if isinstance(rng.min, list) or isinstance(rng.max, list):
        raise MMError(
            f"{where} and has a per-axis range; activations are quantized per tensor: set one "
            "range with tensor.set_dynamic_range(mm.Range(lo, hi))"
        )
    algo = graph.options.get("activation_quant_algo", "symmetric")
    try:
        qp = choose_qparams(rng.min, rng.max, bits=_bits(qtype), symmetric=algo != "asymmetric")
    except MMError as exc:
        raise MMError(f"{where}: its range cannot be quantized: {exc}") from None
    zp = int(qp.zero_point)
    return np.float32(qp.scale), zp + 128 if _bits(qtype) == 8 else zp


def input_quantization(graph: Graph, node: Node, qtype: DataType) -> dict[str, Any]:
    """How ``node`` quantizes its input 0, as lowered attributes: ``{"scale_a", "za"}`` from
    its range (:func:`activation_qparams`), or under ``activation_quant_mode: "dynamic"``
    ``{"dynamic": True, "za": 0 carried}``, the scale chosen at each run (:mod:`.dynamic`)."""
    if graph.options.get("activation_quant_mode", "static") == "dynamic":
        return {"dynamic": True, "za": 128 if _bits(qtype) == 8 else 0}
    scale_a, za = activation_qparams(graph, node.inputs[0], qtype, node)
    return {"scale_a": float(scale_a), "za": za}


def weights_per_axis(graph: Graph) -> bool:
    """Whether the config asks for one weight scale per output channel."""
    return graph.options.get("weight_quant_granularity", "per_tensor") == "per_axis"


def weight_qmax(graph: Graph, qtype: DataType, gemm: bool = True) -> int | None:
    """The largest weight code the config allows for ``qtype``: ``REDUCED_INT8_QMAX`` (64) for
    int8 weights of a GEMM under ``weight_quant_range`` "reduced", else None (the type's own,
    127 or 32767); see :func:`mmbuild.quant.params.weight_qmax`."""
    return params_weight_qmax(graph.options, _bits(qtype), gemm)


def quantize_weights(
    w: np.ndarray, qtype: DataType, per_axis: bool, axis: int, qmax: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantization of a constant weight: (int8/int16 array of ``w``'s shape, float32
    scales ``[w.shape[axis]]``, equal when ``per_axis`` is False).

    The range is the values' ``[min, max]``, per tensor or per index of ``axis``, mapped onto
    ``[-qmax, qmax]`` (by default the type's: 127 or 32767; see :func:`weight_qmax`).

    >>> q, s = quantize_weights(np.array([[1.0, -0.5], [0.25, 2.0]]), DataType.QINT8, True, 1)
    >>> q.tolist(), s.tolist() == [np.float32(1 / 127), np.float32(2 / 127)]
    ([[127, -32], [32, 127]], True)
    """
    w = np.asarray(w, np.float32)
    axis %= w.ndim
    bits = _bits(qtype)
    if per_axis:
        others = tuple(a for a in range(w.ndim) if a != axis)
        qp = choose_qparams(w.min(axis=others), w.max(axis=others), bits=bits, axis=axis,
                            qmax=qmax)  # fmt: skip
        scales = qp.scale
    else:
        qp = choose_qparams(float(w.min()), float(w.max()), bits=bits, qmax=qmax)
        scales = np.full(w.shape[axis], qp.scale, np.float32)
    return quantize(w, qp), np.ascontiguousarray(scales, np.float32)


def quantize_node_weights(
    graph: Graph, node: Node, w: np.ndarray, qtype: DataType, axis: int, gemm: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_weights` of ``node``'s constant weight ``w`` (input 1) with the config's
    granularity (per output channel along ``axis`` when ``per_axis``), unless the weight tensor
    has a range of its own: then that range gives the scales, per tensor or one per output
    channel, whatever the granularity. The ONNX parser sets ``[-127 s, 127 s]`` from a QDQ
    model's int8 weight of scale ``s``, so ``scale = 127 s / 127 = s`` and ``rint(w / s)`` are
    the file's codes even in a channel whose codes stay below 127.
    """
    given = graph.tensors[node.inputs[1]].range if len(node.inputs) > 1 else None
    try:
        if given is None:
            return quantize_weights(w, qtype, weights_per_axis(graph), axis,
                                    weight_qmax(graph, qtype, gemm))  # fmt: skip
        w32, axis = np.asarray(w, np.float32), axis % np.ndim(w)
        lo, hi = np.asarray(given.min, np.float64), np.asarray(given.max, np.float64)
        if lo.size not in (1, w32.shape[axis]):
            raise MMError(
                f"tensor {node.inputs[1]!r} has {lo.size} per-axis ranges for "
                f"{w32.shape[axis]} output channels; give one range or one per output channel"
            )
        lo, hi = (
            np.broadcast_to(lo.ravel(), w32.shape[axis]),
            np.broadcast_to(hi.ravel(), w32.shape[axis]),
        )
        qp = choose_qparams(lo, hi, bits=_bits(qtype), axis=axis)
        return quantize(w32, qp), np.ascontiguousarray(qp.scale, np.float32)
    except MMError as exc:
        raise MMError(
            f"{node.node_type} {node.name!r}: its weight cannot be quantized: {exc}"
        ) from None


def check_int8_k(node: Node, k: int, qtype: DataType) -> None:
    """Refuse a QINT8 product too long for the int32 accumulator (:data:`INT8_MAX_K`)."""
    if qtype is DataType.QINT8 and k > INT8_MAX_K:
        raise MMError(
            f"{node.node_type} {node.name!r}: its products sum K = {k} terms, more than the "
            f"{INT8_MAX_K} a QINT8 (int32) accumulator holds; run it in QINT16 "
            "(node.set_precision) or split the reduction"
        )


def float_bias(bias: np.ndarray | None, ftype: DataType, n: int) -> np.ndarray:
    """The bias as float32 ``[n]``, rounded through fp16 when the node's float precision is
    FLOAT16 (zeros when there is none: the epilogue always adds it, so ``-0.0`` becomes 0)."""
    if bias is None:
        return np.zeros(n, np.float32)
    b = np.asarray(bias, np.float32).reshape(-1)
    if ftype is DataType.FLOAT16:
        b = b.astype(np.float16).astype(np.float32)
    return np.ascontiguousarray(b)


def require_constant(
    graph: Graph,
    node: Node,
    index: int,
    what: str,
    hint: str = "use add_i_matmul_node for a computed weight",
) -> np.ndarray:
    """The constant value of ``node``'s input ``index``, or an MMError saying it must be one."""
    value = graph.tensors[node.inputs[index]].value
    if value is None:
        raise MMError(
            f"{node.node_type} {node.name!r}: the {what} (input {index}, tensor "
            f"{node.inputs[index]!r}) must be a constant; {hint}"
        )
    return np.asarray(value)


def lower_filter(
    node: Node, graph: Graph, w_ohwi: np.ndarray, what: str, gemm: bool = True
) -> Lowered:
    """What a conv-like node prepares at build time from its filter ``[Cout, Kh, Kw, Cin/g]``
    (already in that layout): the bias in the node's float precision and the filter in its
    precision: quantized symmetric per tensor or per output channel with the input's
    quantization (:func:`input_quantization`) for QINT, fp16 bits for FLOAT16, float32
    otherwise. ``gemm``: the filter runs in a GEMM, which refuses a QINT8 reduction too long
    for int32 sums and takes the config's ``weight_quant_range``; False for the depthwise loop
    (its own bound, full range)."""
    layout = node.attrs["layout"]
    if (layout[0].name, layout[2].name) != ("NHWC", "NHWC"):
        raise MMError(
            f"{node.node_type} {node.name!r}: the {what} kernels take NHWC input and output, "
            f"not {layout[0].name} -> {layout[2].name}; the layout pass converts NCHW "
            "networks before lowering",
            Code.INTERNAL,
        )
    cout, kh, kw, cin_g = w_ohwi.shape
    bias = None
    if len(node.inputs) > 2:
        bias = require_constant(graph, node, 2, "bias", "fold what computes it into a "
                                "constant, or add it with add_i_elementwise_node")  # fmt: skip
    precision = node.compute_precision
    arrays = {"bias": float_bias(bias, node.output_types[0], cout)}
    attrs: dict[str, Any] = {}
    if precision.is_quantized:
        attrs.update(input_quantization(graph, node, precision))
        if gemm:
            check_int8_k(node, kh * kw * cin_g, precision)
        arrays["weight"], arrays["scale_w"] = quantize_node_weights(
            graph, node, w_ohwi, precision, axis=0, gemm=gemm
        )
    elif precision is DataType.FLOAT16:
        arrays["weight"] = w_ohwi.astype(np.float16).view(np.uint16)
    else:
        arrays["weight"] = np.ascontiguousarray(w_ohwi, np.float32)
    return Lowered(attrs, arrays)


def epilogue_activation(attrs: Mapping[str, Any]) -> tuple[Activation, float, float]:
    """A node's fused activation (``attrs["activation"]``) as the epilogue's (act, a, b)."""
    return Activation.of(attrs.get("activation"))


_OUT_KINDS = {DataType.FLOAT32: OutKind.F32, DataType.FLOAT16: OutKind.F16,
              DataType.QINT8: OutKind.U8, DataType.QINT16: OutKind.I16}  # fmt: skip


def out_kind(dtype: DataType) -> OutKind:
    """The epilogue store of an output type: float32, fp16 bits, or a quantized output carried
    as uint8 (QINT8) or int16 (QINT16) for the quantized nodes that read it."""
    if dtype not in _OUT_KINDS:
        raise MMError(f"these kernels write FLOAT32, FLOAT16, QINT8 or QINT16, not {dtype.name}",
                      Code.INTERNAL)  # fmt: skip
    return _OUT_KINDS[dtype]


def output_quantization(graph: Graph, node: Node) -> dict[str, Any]:
    """How ``node`` stores its output 0, as lowered attributes: ``{}`` for a float output; for a
    quantized one (a tensor that travels carried to quantized readers, see
    ``mmbuild.passes.carry``) ``{"scale_out", "za_out"}``, the scale and carried zero point its
    readers quantize it with (:func:`activation_qparams` of the tensor)."""
    out_type = node.output_types[0]
    if not out_type.is_quantized:
        return {}
    scale, za = activation_qparams(graph, node.outputs[0], out_type, node)
    return {"scale_out": float(scale), "za_out": za}


def out_qparams(attrs: Mapping[str, Any]) -> tuple[np.float32, int]:
    """``(scale_out, za_out)`` of lowered ``attrs`` (:func:`output_quantization`); (1, 0) for a
    float output, which ignores them."""
    return np.float32(attrs.get("scale_out", 1.0)), int(attrs.get("za_out", 0))


def make_epilogue(
    n: int,
    attrs: Mapping[str, Any],
    out_type: DataType,
    *,
    scale_a: float | np.floating = 1.0,
    scale_w: float | np.ndarray = 1.0,
    bias: np.ndarray | None = None,
    out_q: tuple[Any, int] = (1.0, 0),
) -> Epilogue:
    """The GEMM epilogue of a node: scales, bias, its fused activation, its output type (with
    ``out_q``, the scale and carried zero point of a quantized output, :func:`out_qparams`)."""
    act, a, b = epilogue_activation(attrs)
    return Epilogue.create(n, scale_a=float(scale_a), scale_w=scale_w, bias=bias, act=act, act_a=a,
                           act_b=b, act_then=affine_after(attrs.get("activation")),
                           out_kind=out_kind(out_type), out_scale=float(out_q[0]),
                           out_zp=out_q[1])  # fmt: skip


def direct_epilogue_args(ep: Epilogue) -> tuple[Any, ...]:
    """``(mult, bias, *activation, out_scale, out_zp)`` for :func:`epilogue_store`, the
    activation as the eight numbers of :mod:`.activate` that the GEMM kernels apply (flat: a
    parallel region cannot take a tuple inside a tuple)."""
    act = activation_args(ep.act, ep.act_a, ep.act_b, *ep.act_then)
    return ep.mult, ep.bias, *act, np.float32(ep.out_scale), np.float32(ep.out_zp)


Packed = PackedInt8Weights | PackedInt16Weights | PackedFloatWeights


def pack_weights(w_kn: np.ndarray, segments: int = 1) -> Packed:
    """Pack canonical ``[K, N]`` weights for the GEMM of their dtype: int8 (u8s8), int16 (s16),
    float32 or uint16 fp16 bits (float GEMM, fp16 weights kept as fp16)."""
    w = np.ascontiguousarray(w_kn)
    if w.dtype == np.int8:
        return pack_int8_weights(w, segments=segments)
    if w.dtype == np.int16:
        return pack_int16_weights(w, segments=segments)
    if w.dtype == np.uint16:
        return pack_float_weights(w.view(np.float16), half=True, segments=segments)
    return pack_float_weights(w.astype(np.float32, copy=False), segments=segments)


def bind_gemm(
    a: np.ndarray,
    za: int,
    w: Packed,
    ep: Epilogue,
    out: np.ndarray,
    rows: ImplicitRows | None = None,
) -> BoundGemm:
    """``out = epilogue((a - za) @ w)`` bound with the GEMM of ``w``'s type (``za`` unused for
    float): call the result to run it, as often as the buffers stay the same."""
    if isinstance(w, PackedInt8Weights):
        return bind_gemm_u8s8(a, za, w, ep, out, rows=rows)
    if isinstance(w, PackedInt16Weights):
        return bind_gemm_s16(a, za, w, ep, out, rows=rows)
    return bind_gemm_f32(a, w, ep, out, rows=rows)


def gemm_dispatcher(w: Packed, ep: Epilogue, a_dtype: Any) -> Any:
    """The numba dispatcher a one-row GEMM on ``w`` runs (for ``Runner.fns``)."""
    a = np.zeros((1, w.k), a_dtype)
    out = np.zeros((1, w.n), ep.out_kind.dtype)
    if isinstance(w, PackedInt8Weights):
        bound = bind_gemm_u8s8(a, 0, w, ep, out)
    elif isinstance(w, PackedInt16Weights):
        bound = bind_gemm_s16(a, 0, w, ep, out)
    else:
        bound = bind_gemm_f32(a, w, ep, out)
    return bound._fn


# ---------------------------------------------------------------------------------------------
# Run time: numba
# ---------------------------------------------------------------------------------------------
def widen(arr: np.ndarray, i: int) -> Any:
    """``arr[i]`` widened for a product: int64 for integer arrays, float32 for float32 and fp16
    bits."""
    raise NotImplementedError("widen runs inside numba kernels")


def widen_as(arr: np.ndarray, i: int, acc: np.ndarray) -> Any:
    """``arr[i]`` as the element type of the accumulator array ``acc`` (int32, int64 or
    float32; fp16 bits and 8-bit integers widen exactly), for products summed into ``acc``."""
    raise NotImplementedError("widen_as runs inside numba kernels")


@overload(widen_as)
def _widen_as_overload(arr, i, acc):  # type: ignore[no-untyped-def]
    if not (isinstance(arr, types.Array) and isinstance(acc, types.Array)):
        return None
    if acc.dtype == types.float32 and arr.dtype in (types.float32, types.uint16):
        return lambda arr, i, acc: load_f32(arr, i)
    if acc.dtype == types.float32 and isinstance(arr.dtype, types.Integer):
        return lambda arr, i, acc: np.float32(arr[i])  # exact for 8-bit values
    if acc.dtype == types.int32 and isinstance(arr.dtype, types.Integer):
        return lambda arr, i, acc: np.int32(arr[i])
    if acc.dtype == types.int64 and isinstance(arr.dtype, types.Integer):
        return lambda arr, i, acc: np.int64(arr[i])
    return None


@overload(widen)
def _widen_overload(arr, i):  # type: ignore[no-untyped-def]
    if not isinstance(arr, types.Array):
        return None
    if arr.dtype in (types.float32, types.uint16):
        return lambda arr, i: load_f32(arr, i)
    if isinstance(arr.dtype, types.Integer):
        return lambda arr, i: np.int64(arr[i])
    return None


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def epilogue_store(acc, n, ep, out, idx):  # type: ignore[no-untyped-def]
    """Column ``n``'s epilogue of accumulator ``acc`` into ``out[idx]`` (``ep`` from
    :func:`direct_epilogue_args`): ``float32(acc) * mult[n] + bias[n]``, the activation by
    comparisons (NaN passes, -0.0 stays), the store in ``out``'s type (:func:`store_output`:
    rounding to fp16, or quantizing with the output's scale and zero point)."""
    mult, bias, slope, scale, shift, lo, hi, gated, mul, add, oscale, ozp = ep
    y = np.float32(acc) * mult[n]
    y = apply_fused(y + bias[n], (slope, scale, shift, lo, hi, gated, mul, add))
    store_output(out, idx, y, oscale, ozp)


# ---------------------------------------------------------------------------------------------
# Reference: numpy
# ---------------------------------------------------------------------------------------------
def quantize_input_reference(x: np.ndarray, scale: Any, za: int, qtype: DataType) -> np.ndarray:
    """``q - zp`` as int64 for an input buffer ``x`` (float32, or uint16 fp16 bits), quantized
    by ``quant.params.quantize`` with the scale and carried zero point of
    :func:`activation_qparams`; a buffer already carried in ``qtype``'s carrier (uint8 for
    QINT8, int16 for QINT16: its producer quantized it with these parameters) is ``x - za``."""
    if x.dtype == carrier_dtype(qtype):
        return x.astype(np.int64) - int(za)
    xf = to_numpy(x, DataType.FLOAT16 if x.dtype == np.uint16 else DataType.FLOAT32)
    zp = signed_zero_point(za, qtype)
    qp = QuantParams(np.array(scale, np.float32), np.array(zp, np.int32), bits=_bits(qtype))
    return quantize(xf, qp).astype(np.int64) - zp


def carried_values(carried: np.ndarray, scale: Any, za: int) -> np.ndarray:
    """The float32 values of a carried quantized buffer: ``float32(q - za) * scale``.
    Example: uint8 [128, 192] with scale 2/127 and za 128 is [0.0, 1.007874]."""
    return (carried.astype(np.int64) - int(za)).astype(np.float32) * np.float32(scale)


def reference_epilogue(
    acc: np.ndarray,
    mult: np.ndarray,
    bias: np.ndarray,
    activation: Mapping[str, Any] | None,
    out_type: DataType,
    out_q: tuple[Any, int] = (1.0, 0),
) -> np.ndarray:
    """The bit-exact epilogue of an accumulator ``acc [..., N]`` (int64 integers, or float32
    sums): ``float32(acc) * mult[n] + bias[n]`` in float32, the fused activation by comparisons
    (``graph.apply_activation``), stored as ``out_type``: float32, fp16 bits, or for QINT8 /
    QINT16 quantized by ``quant.params.quantize`` with ``out_q`` (scale, carried zero point)
    and carried (uint8 ``q + 128`` or int16)."""
    from mmbuild.graph import apply_activation

    y = acc.astype(np.float32) * np.asarray(mult, np.float32)
    y = y + np.asarray(bias, np.float32)
    if activation is not None:
        y = apply_activation(y, activation)
    if out_type.is_quantized:
        scale, za = out_q
        zp = signed_zero_point(za, out_type)
        qp = QuantParams(np.array(scale, np.float32), np.array(zp, np.int32), bits=_bits(out_type))
        q = quantize(y, qp).astype(np.int64) - zp + int(za)
        return q.astype(carrier_dtype(out_type))
    return from_float(y, out_type)
