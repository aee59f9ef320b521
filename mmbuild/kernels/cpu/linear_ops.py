"""The inner_product and matmul kernels: FLOAT32, FLOAT16, QINT8 and QINT16.

``y[..., m, n] = act(acc[..., m, n] * mult[n] + bias[n])`` with
``acc = sum_k op(a)[..., m, k] * op(b)[..., k, n]``: float nodes sum the float values
(``mult = 1``), quantized ones ``(q_a - zp_a) * (q_b - zp_b)`` exactly (int32 for QINT8, int64
for QINT16) with ``mult[n] = float32(scale_a) * float32(scale_b[n])``. An inner product is the
matmul of its input flattened to ``[N, K]`` with its weight transposed, plus a bias.

Two paths:

- a constant right operand without real batch dimensions (an inner product's weight; a matmul
  ``[..., M, K] @ W``): ``W`` is stored canonically as ``weight [K, N]`` (int8/int16 quantized
  symmetrically per tensor or per column, float32, or fp16 bits) and packed at bind time; the
  rows of ``a`` run through one packed GEMM with the fused epilogue.
- any other matmul (both operands computed, batched constants, ``transpose_a``): a direct loop
  over the broadcast batch, with each operand read through strides (so transposes cost no copy).
  A computed operand is quantized by its range; a constant one symmetrically by its values (per
  column of ``b`` for ``per_axis``, per tensor for ``a``). The sums are the same integers (int64
  accumulators: equal to the contract's int32 wherever that does not overflow), or float32 sums
  in k order.

Worked example (QINT8, symmetric): a = [[1.0, -0.5]] with range [-1, 1] -> scale_a = 1/127,
q_a = [127, -64] (-63.5 rounds to even), carried [255, 64], za = 128; W = [[0.5], [0.25]] ->
q_w = [[127], [64]], scale_w = 0.5/127. acc = 127 * 127 + (-64) * 64 = 12033, mult =
float32(1/127) * float32(0.5/127) = 3.100006e-5, y = 12033 * mult = 0.37302375 (exact: 0.375).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from mmbuild.errors import Code, MMError
from mmbuild.graph import Graph, Node
from mmbuild.ir.node import TensorSpec
from mmbuild.ir.types import DataType
from mmbuild.kernels.cpu.dynamic import DYNAMIC_FNS, DynamicInput, input_scale_reference
from mmbuild.kernels.cpu.gemm import Epilogue
from mmbuild.kernels.cpu.prepare import PREPARE_FNS, bind_quantize_flat
from mmbuild.kernels.cpu.qcommon import (
    activation_qparams,
    bind_gemm,
    carrier_dtype,
    check_int8_k,
    direct_epilogue_args,
    epilogue_store,
    float_bias,
    gemm_dispatcher,
    input_quantization,
    make_epilogue,
    pack_weights,
    quantize_input_reference,
    quantize_node_weights,
    quantize_weights,
    reference_epilogue,
    require_constant,
    signed_zero_point,
    weight_qmax,
    weights_per_axis,
    widen,
)
from mmbuild.kernels.table import (
    Buffers,
    Kernel,
    Lowered,
    Runner,
    Step,
    in_order,
    register_kernel,
    to_numpy,
)
from mmbuild.ops.linear import matmul_nd

__all__ = ["InnerProductFloat", "InnerProductQuantized", "MatMulFloat", "MatMulQuantized"]

#: Multiply-accumulates of a direct matmul above which its rows are split over the threads.
DIRECT_PARALLEL_MIN_MACS = 1 << 18

_F = DataType


def _as_float(x: np.ndarray) -> np.ndarray:
    """A float buffer (float32, or uint16 fp16 bits) as float64."""
    return to_numpy(x, _F.FLOAT16 if x.dtype == np.uint16 else _F.FLOAT32).astype(np.float64)


def _float_weight(w: np.ndarray, precision: DataType) -> np.ndarray:
    """A constant for a float node: float32, or fp16 bits when the node computes in FLOAT16."""
    w32 = np.ascontiguousarray(w, np.float32)
    return w32.astype(np.float16).view(np.uint16) if precision is _F.FLOAT16 else w32


# ---------------------------------------------------------------------------------------------
# The packed path: rows of a times a constant [K, N]
# ---------------------------------------------------------------------------------------------
def _lower_packed(
    node: Node, graph: Graph, w_kn: np.ndarray, bias: np.ndarray | None, path: str
) -> Lowered:
    precision, out_type = node.compute_precision, node.output_types[0]
    w_kn = np.ascontiguousarray(w_kn, np.float32)
    k, n = w_kn.shape
    arrays = {"bias": float_bias(bias, out_type, n)}
    attrs: dict[str, Any] = {"path": path}
    if precision.is_quantized:
        attrs.update(input_quantization(graph, node, precision))
        check_int8_k(node, k, precision)
        arrays["weight"], arrays["scale_w"] = quantize_node_weights(
            graph, node, w_kn, precision, axis=1
        )
    else:
        arrays["weight"] = _float_weight(w_kn, precision)
    return Lowered(attrs, arrays)


def _bind_packed(step: Step) -> Runner:
    """``out[rows, N] = epilogue(a[rows, K] @ weight)``, ``a`` quantized first for QINT nodes."""
    arrays, attrs = step.lowered.arrays, step.lowered.attrs
    weight = arrays["weight"]
    k, n = weight.shape
    precision = step.node().compute_precision
    carrier = carrier_dtype(precision) if precision.is_quantized else None
    scale_a, za = np.float32(attrs.get("scale_a", 1.0)), int(attrs.get("za", 0))
    dynamic = DynamicInput(precision, za) if attrs.get("dynamic") else None
    packed = pack_weights(weight)
    scale_w = np.ascontiguousarray(np.broadcast_to(arrays.get("scale_w", 1.0), (n,)), np.float32)

    def epilogue() -> Epilogue:
        return make_epilogue(n, step.op_attrs, step.output_types[0], scale_a=scale_a,
                             scale_w=scale_w, bias=arrays["bias"])  # fmt: skip

    shared = epilogue()

    def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
        x, out = inputs[0], outputs[0]
        if x.size == 0:
            return in_order([])
        a = x.reshape(-1, k)
        ep, calls, qparams = shared, [], None
        if dynamic is not None:  # this step's own epilogue, rescaled at each run
            ep = epilogue()
            qparams, choose_scale = dynamic.bind(x, [(ep, scale_w)])
            calls.append(choose_scale)
        if carrier is not None:
            a, quantize = bind_quantize_flat(a, scale_a, za, carrier, qparams)
            calls.append(quantize)
        return in_order([*calls, bind_gemm(a, za, packed, ep, out.reshape(a.shape[0], n))])

    a_dtype = carrier if carrier is not None else np.float32
    fns = (*PREPARE_FNS, gemm_dispatcher(packed, shared, a_dtype))
    return Runner.from_prepare(prepare, (*fns, *(DYNAMIC_FNS if dynamic is not None else ())))


def _reference_packed(step: Step, inputs: Buffers, out_shape: tuple[int, ...]) -> np.ndarray:
    """The rows of the input times the canonical weight: int64 for quantized nodes (input
    quantized by ``quant.params``), float64 otherwise; then the epilogue."""
    arrays, attrs = step.lowered.arrays, step.lowered.attrs
    weight = arrays["weight"]
    k, n = weight.shape
    precision = step.node().compute_precision
    if precision.is_quantized:
        scale_a = input_scale_reference(attrs, inputs[0], precision)
        a = quantize_input_reference(inputs[0], scale_a, attrs["za"], precision)
        acc = a.reshape(-1, k) @ weight.astype(np.int64)
        mult = np.float32(scale_a) * arrays["scale_w"]
    else:
        acc = _as_float(inputs[0]).reshape(-1, k) @ _as_float(weight)
        mult = np.ones(n, np.float32)
    out = reference_epilogue(acc, mult, arrays["bias"], step.op_attrs.get("activation"),
                             step.output_types[0])  # fmt: skip
    return out.reshape(out_shape)


def _out_shape(step: Step, inputs: Buffers) -> tuple[int, ...]:
    specs = [TensorSpec(a.shape, _F.FLOAT32) for a in inputs]
    return tuple(step.node().declaration().infer(specs)[0].dims)


# ---------------------------------------------------------------------------------------------
# inner_product
# ---------------------------------------------------------------------------------------------
class _InnerProductKernel(Kernel):
    ops = ("inner_product",)

    def lower(self, node: Node, graph: Graph) -> Lowered:
        w = require_constant(graph, node, 1, "weight")
        bias = None
        if len(node.inputs) > 2:
            bias = require_constant(graph, node, 2, "bias", "fold what computes it into a "
                                    "constant, or add it with add_i_elementwise_node")  # fmt: skip
        return _lower_packed(node, graph, np.asarray(w, np.float32).T, bias, "packed")

    def bind(self, step: Step) -> Runner:
        return _bind_packed(step)

    def reference(self, step: Step, inputs: Buffers) -> list[np.ndarray]:
        return [_reference_packed(step, inputs, _out_shape(step, inputs))]


@register_kernel
class InnerProductFloat(_InnerProductKernel):
    """inner_product in FLOAT32 and FLOAT16 (fp16 weights, float32 accumulation)."""

    name = "inner_product.float"
    precisions = (_F.FLOAT32, _F.FLOAT16)


@register_kernel
class InnerProductQuantized(_InnerProductKernel):
    """inner_product in QINT8 (u8 x s8, int32 sums) and QINT16 (int64 sums)."""

    name = "inner_product.qint"
    precisions = (_F.QINT8, _F.QINT16)


# ---------------------------------------------------------------------------------------------
# matmul: the direct loop
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", boundscheck=False)
def _matmul_rows(first, last, A, a_off, za, B, b_off, zb, geo, ep, out, proto):  # type: ignore[no-untyped-def]
    """Output rows ``[first, last)`` (``t * M + i`` over the broadcast batch ``t``).

    ``geo`` holds ``M, N, K`` and the element strides ``sam, sak`` of A's matrices and
    ``sbk, sbn`` of B's; ``a_off[t]`` / ``b_off[t]`` start batch ``t``'s matrices. The
    accumulator has ``proto``'s dtype and sums in k order.
    """
    m, n, k, sam, sak, sbk, sbn = geo
    acc = np.empty_like(proto)
    for r in range(first, last):
        t = r // m
        ab = a_off[t] + (r - t * m) * sam
        bb = b_off[t]
        if sbn == 1:  # rows of B are contiguous: accumulate whole rows
            acc[:] = 0
            for kk in range(k):
                av = widen(A, ab + kk * sak) - za
                br = bb + kk * sbk
                for j in range(n):
                    acc[j] += av * (widen(B, br + j) - zb)
        else:  # columns of B are contiguous (transpose_b): one dot product per column
            for j in range(n):
                s = proto[0]  # a zero of the accumulator's type
                bc = bb + j * sbn
                for kk in range(k):
                    s += (widen(A, ab + kk * sak) - za) * (widen(B, bc + kk * sbk) - zb)
                acc[j] = s
        o = r * n
        for j in range(n):
            epilogue_store(acc[j], j, ep, out, o + j)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _matmul_parallel(n_rows, n_chunks, A, a_off, za, B, b_off, zb, geo, ep, out, proto):  # type: ignore[no-untyped-def]
    for c in prange(n_chunks):
        _matmul_rows(c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks, A, a_off, za, B,
                     b_off, zb, geo, ep, out, proto)  # fmt: skip


@dataclass(frozen=True)
class _Operand:
    """One matmul operand: computed (``value`` None) or constant (as its kernel reads it)."""

    value: np.ndarray | None
    scale: Any  # float32 scalar, or float32 [N] for a per-column constant b
    zero_point: int  # as carried (u8 for QINT8)


@dataclass(frozen=True)
class _Shapes:
    """Everything that depends on the operands' shapes."""

    out_shape: tuple[int, ...]
    rows: int
    a_off: np.ndarray
    b_off: np.ndarray
    geo: tuple[int, ...]
    ep: tuple[Any, ...]


def _matrix(shape: tuple[int, ...], transpose: bool, is_b: bool) -> tuple[int, int, int, int]:
    """(rows, cols, row stride, col stride) of an operand's op() matrix, a vector made a row
    (a) or column (b) matrix."""
    if len(shape) == 1:
        return (shape[0], 1, 1, 1) if is_b else (1, shape[0], shape[0], 1)
    r, c = shape[-2], shape[-1]
    return (c, r, 1, c) if transpose else (r, c, c, 1)


class _DirectMatMul:
    """A bound direct matmul; thread-safe (per-call buffers, a locked shape cache)."""

    def __init__(self, step: Step) -> None:
        arrays, attrs = step.lowered.arrays, step.lowered.attrs
        self.attrs = step.op_attrs
        precision = step.node().compute_precision
        self.quantized = precision.is_quantized
        self.carrier = carrier_dtype(precision) if self.quantized else None
        ops = []
        for name in ("a", "b"):
            value = arrays.get(name)
            z = int(attrs.get(f"z{name}", 0))
            if value is not None and self.quantized:
                # a constant holds q; the kernel reads the carried values q + (za - zp)
                shift = z - signed_zero_point(z, precision)
                value = (value.astype(np.int32) + shift).astype(self.carrier)
            scale = arrays.get(f"scale_{name}", np.float32(attrs.get(f"scale_{name}", 1.0)))
            ops.append(_Operand(value, scale, z))
        self.a, self.b = ops
        self.out_type = step.output_types[0]
        self.zero: Any = np.int64(0) if self.quantized else np.float32(0)
        self.proto_dtype = np.int64 if self.quantized else np.float32
        self._shapes: dict[tuple, _Shapes] = {}
        self._lock = threading.Lock()

    def shapes(self, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> _Shapes:
        key = (a_shape, b_shape)
        with self._lock:
            found = self._shapes.get(key)
        if found is None:
            found = self._make_shapes(a_shape, b_shape)
            with self._lock:
                if len(self._shapes) >= 16:
                    self._shapes.clear()
                self._shapes[key] = found
        return found

    def _make_shapes(self, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> _Shapes:
        m, ka, sam, sak = _matrix(a_shape, bool(self.attrs["transpose_a"]), False)
        kb, n, sbk, sbn = _matrix(b_shape, bool(self.attrs["transpose_b"]), True)
        if ka != kb:
            raise MMError(f"matmul: K = {ka} and {kb} differ", Code.INTERNAL)
        a_batch, b_batch = a_shape[:-2], b_shape[:-2]
        batch = np.broadcast_shapes(a_batch, b_batch)

        def offsets(own: tuple[int, ...], size: int) -> np.ndarray:
            start = np.arange(int(np.prod(own, dtype=np.int64)), dtype=np.int64) * size
            return np.ascontiguousarray(np.broadcast_to(start.reshape(own), batch).reshape(-1))

        a_off = offsets(a_batch, m * ka)
        b_off = offsets(b_batch, ka * n)
        rows_cols = ((m,) if len(a_shape) > 1 else ()) + ((n,) if len(b_shape) > 1 else ())
        out_shape = (*batch, *rows_cols)
        scale_b = self.b.scale if np.ndim(self.b.scale) else np.full(n, self.b.scale, np.float32)
        ep = make_epilogue(n, self.attrs, self.out_type, scale_a=self.a.scale, scale_w=scale_b)
        return _Shapes(out_shape, a_off.size * m, a_off, b_off, (m, n, ka, sam, sak, sbk, sbn),
                       direct_epilogue_args(ep))  # fmt: skip

    def _operand(
        self, op: _Operand, buffer: np.ndarray, calls: list[Callable[[], None]]
    ) -> np.ndarray:
        """The operand the kernel reads: the constant, or the buffer (quantized into a new
        array by a call added to ``calls`` for quantized nodes)."""
        if op.value is not None:
            return op.value
        if self.carrier is not None:
            q, quantize = bind_quantize_flat(buffer, op.scale, op.zero_point, self.carrier)
            calls.append(quantize)
            return q
        return buffer

    def prepare(self, inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
        calls: list[Callable[[], None]] = []
        a = self._operand(self.a, inputs[0], calls)
        b = self._operand(self.b, inputs[1], calls)
        out = outputs[0]
        s = self.shapes(tuple(a.shape), tuple(b.shape))
        if tuple(out.shape) != s.out_shape:
            raise MMError(f"matmul: output buffer {out.shape} is not {s.out_shape}", Code.INTERNAL)
        if out.size == 0:
            return in_order([])
        za = self.zero + self.a.zero_point if self.quantized else self.zero
        zb = self.zero + self.b.zero_point if self.quantized else self.zero
        args = (a.reshape(-1), s.a_off, za, b.reshape(-1), s.b_off, zb, s.geo, s.ep,
                out.reshape(-1), np.zeros(max(s.geo[1], 1), self.proto_dtype))  # fmt: skip
        threads = numba.get_num_threads()
        macs = out.size * s.geo[2]
        if threads > 1 and s.rows > 1 and macs >= DIRECT_PARALLEL_MIN_MACS:
            calls.append(partial(_matmul_parallel, s.rows, min(s.rows, threads), *args))
        else:
            calls.append(partial(_matmul_rows, 0, s.rows, *args))
        return in_order(calls)


# ---------------------------------------------------------------------------------------------
# matmul: kernel entries
# ---------------------------------------------------------------------------------------------
def _packs(node: Node, graph: Graph) -> bool:
    """A constant b without real batch dimensions times a computed a (not transposed)."""
    a, b = (graph.tensors[t] for t in node.inputs)
    return (
        b.value is not None
        and a.value is None
        and int(np.prod(b.value.shape[:-2], dtype=np.int64)) == 1
        and not (node.attrs["transpose_a"] and len(a.dims) >= 2)
    )


class _MatMulKernel(Kernel):
    ops = ("matmul",)

    def lower(self, node: Node, graph: Graph) -> Lowered:
        if _packs(node, graph):
            b = np.asarray(graph.tensors[node.inputs[1]].value, np.float32)
            if b.ndim == 1:
                w_kn = b[:, None]
            else:
                b2 = b.reshape(b.shape[-2:])
                w_kn = b2.T if node.attrs["transpose_b"] else b2
            return _lower_packed(node, graph, np.ascontiguousarray(w_kn), None, "packed")
        return self._lower_direct(node, graph)

    def _lower_direct(self, node: Node, graph: Graph) -> Lowered:
        precision = node.compute_precision
        attrs: dict[str, Any] = {"path": "direct"}
        arrays: dict[str, np.ndarray] = {}
        for i, name in enumerate(("a", "b")):
            t = graph.tensors[node.inputs[i]]
            if t.value is None:
                if precision.is_quantized:
                    scale, z = activation_qparams(graph, t.name, precision, node)
                    attrs.update({f"scale_{name}": float(scale), f"z{name}": z})
                continue
            if not precision.is_quantized:
                arrays[name] = _float_weight(t.value, precision)
                continue
            value = np.asarray(t.value, np.float32)
            per_column = name == "b" and value.ndim > 1 and weights_per_axis(graph)
            axis = value.ndim - (2 if node.attrs["transpose_b"] else 1) if per_column else 0
            q, scales = quantize_weights(value, precision, per_column, axis,
                                         weight_qmax(graph, precision))  # fmt: skip
            arrays[name] = q.reshape(value.shape)
            if per_column:
                arrays[f"scale_{name}"] = scales
            else:
                attrs[f"scale_{name}"] = float(scales[0])
            attrs[f"z{name}"] = 128 if precision is _F.QINT8 else 0
        return Lowered(attrs, arrays)

    def bind(self, step: Step) -> Runner:
        if step.lowered.attrs["path"] == "packed":
            return _bind_packed(step)
        direct = _DirectMatMul(step)
        return Runner.from_prepare(direct.prepare, (*PREPARE_FNS, _matmul_rows, _matmul_parallel))

    def reference(self, step: Step, inputs: Buffers) -> list[np.ndarray]:
        out_shape = _out_shape(step, inputs)
        if step.lowered.attrs["path"] == "packed":
            return [_reference_packed(step, inputs, out_shape)]
        arrays, attrs = step.lowered.arrays, step.lowered.attrs
        precision = step.node().compute_precision
        operands = []
        for i, name in enumerate(("a", "b")):
            value = arrays.get(name)
            if not precision.is_quantized:
                operands.append(_as_float(inputs[i] if value is None else value))
            elif value is None:
                z = attrs[f"z{name}"]
                operands.append(quantize_input_reference(inputs[i], attrs[f"scale_{name}"], z,
                                                         precision))  # fmt: skip
            else:
                operands.append(value.astype(np.int64))
        a = step.op_attrs
        acc = matmul_nd(operands[0], operands[1], a["transpose_a"], a["transpose_b"])
        n = out_shape[-1] if len(inputs[1].shape) > 1 else 1
        if precision.is_quantized:
            scale_b = arrays.get("scale_b", np.float32(attrs.get("scale_b", 1.0)))
            mult = np.float32(attrs["scale_a"]) * np.broadcast_to(scale_b, (n,))
        else:
            mult = np.ones(n, np.float32)
        out = reference_epilogue(np.asarray(acc), mult, np.zeros(n, np.float32),
                                 a.get("activation"), step.output_types[0])  # fmt: skip
        return [out.reshape(out_shape)]


@register_kernel
class MatMulFloat(_MatMulKernel):
    """matmul in FLOAT32 and FLOAT16 (float32 accumulation)."""

    name = "matmul.float"
    precisions = (_F.FLOAT32, _F.FLOAT16)


@register_kernel
class MatMulQuantized(_MatMulKernel):
    """matmul in QINT8 (int32 sums) and QINT16 (int64 sums), both operands quantized."""

    name = "matmul.qint"
    precisions = (_F.QINT8, _F.QINT16)
