"""The deconv (transposed convolution) kernels: FLOAT32, FLOAT16, QINT8 and QINT16 over NHWC.

Every output element gathers the input pixels that scatter onto it:
``y[b, yo, xo, g*Og + o] = act(acc * mult[g*Og + o] + bias[g*Og + o])`` with
``acc = sum_{i, j, c} x[b, hi, wi, g*Cg + c] * W[g*Cg + c, i, j, o]`` over the taps ``(i, j)``
for which ``hi = (yo + pt - i*dh) / sh`` and ``wi = (xo + pl - j*dw) / sw`` are whole numbers
inside the input (``Cg = Cin / group``, ``Og = Cout / group``; ``pt``, ``pl`` are the crops at
the head; rows and columns that no tap reaches, such as those of ``output_padding``, get
``act(bias)``). Float nodes sum the float values in float32 (``mult = 1``); quantized nodes sum
``(q_x - zp_x) * q_w`` exactly, in int32 for QINT8 and int64 for QINT16, and
``mult[n] = float32(scale_x) * float32(scale_w[n])``; the epilogue is the GEMM's (``gemm``'s
docstring), in float32, in the same order, stored as the node's float output type.

One numba loop serves every precision. Its input is float32 (an fp16 input is widened once per
run, exactly) or the uint8 / int16 carrier that a quantized input is quantized into once per run
(``prepare.bind_prepare_input``) or arrives in, carried from a quantized producer, which a
quantized output can be stored as too (``mmbuild.passes.carry``); its accumulator is float32,
int32 or int64, the type the filter is converted to, as ``[KH, KW, Cin, Og]``, when the step is
bound. Rows of the output (``b * Ho + yo``) are split over the threads for large steps; batch
and spatial sizes are read from each run's input.

A deconv whose taps never overlap and leave no gaps (stride equal to the kernel, no pads,
dilation or output padding, one group: the 2x2, stride 2 upsampling of a U-Net or DBNet neck)
is one GEMM instead: each input pixel times ``W [Cin, KH*KW*Cout]`` gives its ``KH x KW``
output patch, with the epilogue's ``mult`` and ``bias`` repeated per tap, into a buffer
``[N*H*W, KH*KW*Cout]`` that one copy lays out as the output (row ``b*H + y`` of the patches'
filter row ``i`` is output row ``b*Ho + y*KH + i``). Every output element then has one tap, so
its sum, epilogue and bits are the gather loop's for the quantized kinds.

Lowering stores the filter per output channel, ``[Cout, KH, KW, Cg]`` (``weight``: int8 / int16
quantized symmetrically per tensor or per output channel, float32, or fp16 bits for FLOAT16
nodes), with ``scale_w`` and the float ``bias``.

Worked example (QINT8, symmetric): x range [-1, 1] -> scale_x = 1/127; a 1x1 filter w = [[0.5]]
(one channel) -> q_w = 127, scale_w = 0.5/127; stride 2. x = [[0.5]] -> q_x = rint(63.5) = 64,
carried 192 with za = 128. The output is 1x1 (no crop): acc = (192 - 128) * 127 = 8128, mult =
float32(1/127) * float32(0.5/127) = 3.1000062e-5, y = 8128 * mult = 0.25197 (the fp32 reference
gives 0.25). With ``output_padding`` (1, 1) the output is 2x2 and its three added elements hold
``act(bias)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from mmbuild.errors import Code, MMError
from mmbuild.graph import Graph, Node
from mmbuild.ir.types import DataType
from mmbuild.kernels.cpu.dynamic import DYNAMIC_FNS, DynamicInput, input_scale_reference
from mmbuild.kernels.cpu.gemm import Epilogue
from mmbuild.kernels.cpu.prepare import PREPARE_FNS, bind_prepare_input
from mmbuild.kernels.cpu.qcommon import (
    bind_gemm,
    carrier_dtype,
    direct_epilogue_args,
    epilogue_store,
    gemm_dispatcher,
    lower_filter,
    make_epilogue,
    out_qparams,
    output_quantization,
    pack_weights,
    quantize_input_reference,
    reference_epilogue,
    require_constant,
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
from mmbuild.ops.deconv import deconv2d_nhwc, deconv_out

__all__ = ["DeconvFloat", "DeconvQuantized"]

#: Multiply-accumulates of a deconv above which its output rows are split over the threads.
PARALLEL_MIN_MACS = 1 << 18
#: Output bytes from which the patch GEMM's result is laid out on all threads (measured on the
#: AVX-512 Xeon, 2 threads: 215 KB 7.7 us on one, 9.4 us on both; 573 KB 30 / 25 us).
LAY_OUT_PARALLEL_MIN_BYTES = 1 << 19

_F = DataType


# ---------------------------------------------------------------------------------------------
# The gather loop
# ---------------------------------------------------------------------------------------------
@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _add_tap(acc, X, xb, za, W, wb, g, cg, og):  # type: ignore[no-untyped-def]
    """``acc[gi*Og + o] += (X[xb + c] - za) * W[wb + c*Og + o]`` for the channels ``c`` of each
    group ``gi``: one input pixel through one filter tap.

    Four channels go into each pass over the accumulators (a quarter of the loads and stores
    of ``acc``); their float products are summed left to right and then added to ``acc``, an
    order whose rounding the float tolerance covers (integers are exact in any order).
    """
    for gi in range(g):
        a = acc[gi * og : (gi + 1) * og]
        c0 = gi * cg
        c4 = c0 + cg - cg % 4
        for c in range(c0, c4, 4):
            x0 = widen(X, xb + c) - za
            x1 = widen(X, xb + c + 1) - za
            x2 = widen(X, xb + c + 2) - za
            x3 = widen(X, xb + c + 3) - za
            w4 = W[wb + c * og : wb + (c + 4) * og]
            for o in range(og):
                a[o] += x0 * w4[o] + x1 * w4[og + o] + x2 * w4[2 * og + o] + x3 * w4[3 * og + o]
        for c in range(c4, c0 + cg):
            xv = widen(X, xb + c) - za
            wr = W[wb + c * og : wb + (c + 1) * og]
            for o in range(og):
                a[o] += xv * wr[o]


@njit(cache=True, error_model="numpy", boundscheck=False)
def _deconv_rows(first, last, X, za, geo, W, ep, out):  # type: ignore[no-untyped-def]
    """Output rows ``[first, last)`` (``b * Ho + yo``) of a transposed convolution.

    ``X`` is the NHWC input ``[N, H, W, Cin]`` (flat), ``za`` its zero point in the
    accumulator's type, ``W`` the filter ``[KH, KW, Cin, Og]`` (flat, accumulator type), ``geo``
    holds ``H, W, Cin, G, Cg, Og, KH, KW, sh, sw, dh, dw, pt, pl, Ho, Wo``. Each output pixel
    sums its taps in (i, j) order into a vector of ``Cout`` accumulators, then stores them
    through the epilogue ``ep`` (``qcommon.direct_epilogue_args``).
    """
    h, w, cin, g, cg, og, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = geo
    cout = g * og
    acc = np.zeros(cout, W.dtype)
    for r in range(first, last):
        b = r // ho
        yf = r - b * ho + pt  # the row in the uncropped result
        for xo in range(wo):
            xf = xo + pl
            acc[:] = 0
            for i in range(kh):
                ty = yf - i * dh
                if ty < 0:
                    break
                yi = ty // sh
                if yi * sh != ty or yi >= h:
                    continue
                for j in range(kw):
                    tx = xf - j * dw
                    if tx < 0:
                        break
                    xi = tx // sw
                    if xi * sw != tx or xi >= w:
                        continue
                    xb = ((b * h + yi) * w + xi) * cin
                    _add_tap(acc, X, xb, za, W, (i * kw + j) * cin * og, g, cg, og)
            ob = (r * wo + xo) * cout
            for o in range(cout):
                epilogue_store(acc[o], o, ep, out, ob + o)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _deconv_parallel(n_rows, n_chunks, X, za, geo, W, ep, out):  # type: ignore[no-untyped-def]
    for t in prange(n_chunks):
        _deconv_rows(t * n_rows // n_chunks, (t + 1) * n_rows // n_chunks, X, za, geo, W, ep, out)


@njit(cache=True, error_model="numpy", boundscheck=False)
def _lay_out_rows(first, last, patches, out, kh, w, run):  # type: ignore[no-untyped-def]
    """Input rows ``[first, last)`` (``b * H + y``) of the patch GEMM's result ``[N*H, W, KH,
    run]`` (flat) into the output ``[N*H, KH, W, run]`` (flat), ``run = KW * Cout`` elements of
    the arrays' type: :func:`_copy_unit` views them in the widest unit that a run is made of,
    so that DBNet's last deconv (KW * Cout = 2 fp16 values) copies one uint32 per pixel."""
    step = kh * run
    for r in range(first, last):
        for i in range(kh):
            # slices per output row: offsets computed in the inner loop would keep numba's
            # negative-index test there
            src = patches[(r * w * kh + i) * run : (r + 1) * w * kh * run]
            dst = out[(r * kh + i) * w * run : (r * kh + i + 1) * w * run]
            if run == 1:  # a strided gather, apart: the general loop runs it 8x slower
                for x in range(w):
                    dst[x] = src[x * step]
            else:
                for x in range(w):
                    for k in range(run):
                        dst[x * run + k] = src[x * step + k]


def _copy_unit(run_bytes: int) -> np.dtype[Any]:
    """The widest unsigned type (8, 4, 2 or 1 bytes) whose size divides ``run_bytes``: a run of
    ``KW * Cout`` output values copied as whole units. Example: 2 fp16 values -> uint32."""
    size = next(k for k in (8, 4, 2, 1) if run_bytes % k == 0)
    return np.dtype(f"u{size}")


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _lay_out_parallel(n_rows, n_chunks, patches, out, kh, w, run):  # type: ignore[no-untyped-def]
    for t in prange(n_chunks):
        _lay_out_rows(t * n_rows // n_chunks, (t + 1) * n_rows // n_chunks, patches, out, kh, w,
                      run)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Binding
# ---------------------------------------------------------------------------------------------
def _swap_channels(w: np.ndarray, group: int) -> np.ndarray:
    """Swap the roles of a filter's first and last axes within each group: ``[Cout, KH, KW,
    Cg]`` (per output channel, as lowered) <-> ``[Cin, KH, KW, Og]`` (the op's filter)."""
    a, kh, kw, b = w.shape
    return (
        w.reshape(group, a // group, kh, kw, b)
        .transpose(0, 4, 2, 3, 1)
        .reshape(-1, kh, kw, a // group)
    )


class _DeconvRunner:
    """A bound deconv step; ``run`` keeps nothing between calls, so threads may share it."""

    def __init__(self, step: Step) -> None:
        node = step.node()
        self.decl = node.declaration()
        arrays, attrs = step.lowered.arrays, step.lowered.attrs
        w = arrays["weight"]
        self.cout, self.kh, self.kw, self.cg = w.shape
        self.group = int(step.op_attrs["group"])
        self.stride = tuple(int(s) for s in step.op_attrs["stride"])
        self.dilation = tuple(int(d) for d in step.op_attrs["dilation"])
        precision = node.compute_precision
        self.carrier = carrier_dtype(precision) if precision.is_quantized else None
        self.scale_a = np.float32(attrs.get("scale_a", 1.0))
        if precision is _F.QINT8:
            acc_type: Any = np.int32  # exact: lowering bounds K so that the sums fit
        elif precision is _F.QINT16:
            acc_type = np.int64
        else:
            acc_type = np.float32
            if w.dtype == np.uint16:
                w = w.view(np.float16)  # widened exactly below
        self.za = acc_type(attrs.get("za", 0))
        self.dynamic = DynamicInput(precision, int(self.za)) if attrs.get("dynamic") else None
        # [Cin, KH, KW, Og] -> [KH, KW, Cin, Og]: a tap's filter rows are contiguous
        w_k = _swap_channels(w, self.group).transpose(1, 2, 0, 3)
        self.weight = np.ascontiguousarray(w_k, acc_type).reshape(-1)
        self.scale_w = arrays.get("scale_w", np.ones(self.cout, np.float32))
        self._ep_inputs = (step.op_attrs, step.output_types[0], arrays["bias"], out_qparams(attrs))
        self.ep = self._epilogue()
        # quantized and fp16 inputs are converted first (see ``run``)
        converts = precision is not _F.FLOAT32
        fns: tuple[Any, ...] = (_deconv_rows, _deconv_parallel)
        self.patch_gemm: tuple[Any, Epilogue] | None = None
        if self.stride == (self.kh, self.kw) and self.dilation == (1, 1) and self.group == 1:
            w_kn = arrays["weight"].transpose(3, 1, 2, 0).reshape(self.cg, -1)  # [Cin, (i, j, o)]
            packed, patch_ep = pack_weights(w_kn), self._epilogue(self.kh * self.kw)
            self.patch_gemm = (packed, patch_ep)
            a_dtype = self.carrier if self.carrier is not None else np.float32
            fns = (
                *fns,
                gemm_dispatcher(packed, patch_ep, a_dtype),
                _lay_out_rows,
                _lay_out_parallel,
            )
        self.fns = (*fns, *(PREPARE_FNS if converts else ()),
                    *(DYNAMIC_FNS if self.dynamic is not None else ()))  # fmt: skip

    def _epilogue(self, taps: int = 1) -> Epilogue:
        """The epilogue of the gather loop, or (``taps = KH*KW``) of the patch GEMM, whose
        columns repeat the output channels once per tap."""
        attrs, out_type, bias, out_q = self._ep_inputs
        return make_epilogue(self.cout * taps, attrs, out_type, scale_a=self.scale_a,
                             scale_w=self._scale_w(taps), bias=np.tile(bias, taps),
                             out_q=out_q)  # fmt: skip

    def _scale_w(self, taps: int) -> np.ndarray:
        return np.tile(np.broadcast_to(self.scale_w, (self.cout,)), taps)

    def geometry(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``geo`` of :func:`_deconv_rows` for an input of ``shape``."""
        _, h, w, cin = shape
        kh, kw = self.kh, self.kw
        (sh, sw), (dh, dw) = self.stride, self.dilation
        pt, pb, pl, pr = self.decl.pads_for(h, w, kh, kw)  # type: ignore[attr-defined]
        oph, opw = self.decl.output_padding()  # type: ignore[attr-defined]
        ho = deconv_out(h, kh, sh, pt + pb, dh, oph)
        wo = deconv_out(w, kw, sw, pl + pr, dw, opw)
        og = self.cout // self.group
        return (h, w, cin, self.group, self.cg, og, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)

    def prepare(self, inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
        """The step on these buffers as one call (``Runner.prepare``)."""
        x, out = inputs[0], outputs[0]
        geo = self.geometry(tuple(x.shape))
        ho, wo = geo[-2:]
        want = (x.shape[0], ho, wo, self.cout)
        if tuple(out.shape) != want or not out.flags.c_contiguous:
            raise MMError(f"deconv: output buffer {out.shape} is not a contiguous {want}",
                          Code.INTERNAL)  # fmt: skip
        if out.size == 0:
            return in_order([])
        xs = np.ascontiguousarray(x)
        carried = xs.dtype == self.carrier  # its producer wrote the codes (passes.carry)
        if carried and self.dynamic is not None:
            raise MMError("deconv: a carried quantized input has its scale already; it cannot "
                          "be quantized at run time", Code.INTERNAL)  # fmt: skip
        pads = self.decl.pads_for(x.shape[1], x.shape[2], self.kh, self.kw)  # type: ignore[attr-defined]
        as_patches = (self.patch_gemm is not None and not any(pads)
                   and not any(self.decl.output_padding()))  # type: ignore[attr-defined]  # fmt: skip
        taps = self.kh * self.kw if as_patches else 1
        ep, calls, qparams = self.patch_gemm[1] if as_patches else self.ep, [], None  # type: ignore[index]
        if self.dynamic is not None:  # this step's own epilogue, rescaled at each run
            ep = self._epilogue(taps)
            qparams, choose_scale = self.dynamic.bind(xs, [(ep, self._scale_w(taps))])
            calls.append(choose_scale)
        if as_patches:
            return self._bind_patches(xs, out, ep, calls, qparams, carried)
        if (self.carrier is not None and not carried) or xs.dtype == np.uint16:
            dtype = self.carrier if self.carrier is not None else np.float32
            src, xs = xs, np.empty(x.shape, dtype)
            calls.append(bind_prepare_input(src, xs, scale=self.scale_a, zero_point=int(self.za),
                                            qparams=qparams))  # fmt: skip
        n_rows = x.shape[0] * ho
        macs = out.size * self.cg * -(-self.kh // self.stride[0]) * -(-self.kw // self.stride[1])
        args = (xs.reshape(-1), self.za, geo, self.weight, direct_epilogue_args(ep),
                out.reshape(-1))  # fmt: skip
        threads = numba.get_num_threads()
        if threads > 1 and n_rows > 1 and macs >= PARALLEL_MIN_MACS:
            calls.append(partial(_deconv_parallel, n_rows, min(n_rows, 4 * threads), *args))
        else:
            calls.append(partial(_deconv_rows, 0, n_rows, *args))
        return in_order(calls)

    def _bind_patches(
        self,
        xs: np.ndarray,
        out: np.ndarray,
        ep: Epilogue,
        calls: list[Callable[[], None]],
        qparams: np.ndarray | None,
        carried: bool,
    ) -> Callable[[], None]:
        """The patch GEMM into ``[N*H*W, KH*KW*Cout]`` and the copy into ``out``."""
        n, h, w, cin = xs.shape
        kh, kw, cout = self.kh, self.kw, self.cout
        a = xs
        if self.carrier is not None and not carried:
            a = np.empty(xs.shape, self.carrier)
            calls.append(bind_prepare_input(xs, a, scale=self.scale_a, zero_point=int(self.za),
                                            qparams=qparams))  # fmt: skip
        patches = np.empty((n * h * w, kh * kw * cout), out.dtype)
        packed = self.patch_gemm[0]  # type: ignore[index]
        calls.append(bind_gemm(a.reshape(-1, cin), int(self.za), packed, ep, patches))
        # patches [N*H, W, KH, KW*Cout] -> out [N*H, KH, W, KW*Cout], in whole units
        unit = _copy_unit(kw * cout * out.itemsize)
        run = kw * cout * out.itemsize // unit.itemsize
        args = (patches.reshape(-1).view(unit), out.reshape(-1).view(unit), kh, w, run)
        threads = numba.get_num_threads()
        if threads > 1 and n * h > 1 and out.nbytes >= LAY_OUT_PARALLEL_MIN_BYTES:
            calls.append(partial(_lay_out_parallel, n * h, min(n * h, 4 * threads), *args))
        else:
            calls.append(partial(_lay_out_rows, 0, n * h, *args))
        return in_order(calls)


# ---------------------------------------------------------------------------------------------
# Kernel entries
# ---------------------------------------------------------------------------------------------
class _DeconvKernel(Kernel):
    ops = ("deconv",)

    def lower(self, node: Node, graph: Graph) -> Lowered:
        w = require_constant(graph, node, 1, "filter", "fold what computes it into a constant")
        perm = node.declaration().filter_perm()  # type: ignore[attr-defined]
        group = int(node.attrs["group"])
        w_ohwi = _swap_channels(np.asarray(w, np.float32).transpose(perm), group)
        lowered = lower_filter(node, graph, np.ascontiguousarray(w_ohwi), "deconv")
        lowered.attrs.update(output_quantization(graph, node))
        return lowered

    def bind(self, step: Step) -> Runner:
        runner = _DeconvRunner(step)
        return Runner.from_prepare(runner.prepare, runner.fns)

    def reference(self, step: Step, inputs: Buffers) -> list[np.ndarray]:
        """Quantized: the input quantized by ``quant.params``, the exact int64 transposed
        convolution of ``q - zp`` with the integer filter, the epilogue in float32. Float: the
        float64 transposed convolution of the (fp16-rounded) values, the same epilogue."""
        x = inputs[0]
        node = step.node()
        decl = node.declaration()
        arrays, attrs, a = step.lowered.arrays, step.lowered.attrs, step.op_attrs
        w = arrays["weight"]
        group = int(a["group"])
        pads = decl.pads_for(x.shape[1], x.shape[2], w.shape[1], w.shape[2])  # type: ignore[attr-defined]
        window = (a["stride"], pads, a["dilation"], group, decl.output_padding())  # type: ignore[attr-defined]
        precision = node.compute_precision
        if precision.is_quantized:
            scale_a = input_scale_reference(attrs, x, precision)
            xq = quantize_input_reference(x, scale_a, attrs["za"], precision)
            acc = deconv2d_nhwc(xq, _swap_channels(w.astype(np.int64), group), *window)
            mult = np.float32(scale_a) * arrays["scale_w"]
        else:
            xf, wf = (
                to_numpy(v, _F.FLOAT16 if v.dtype == np.uint16 else _F.FLOAT32) for v in (x, w)
            )
            acc = deconv2d_nhwc(xf.astype(np.float64), _swap_channels(wf, group).astype(np.float64),
                                *window)  # fmt: skip
            mult = np.ones(w.shape[0], np.float32)
        out = reference_epilogue(acc, mult, arrays["bias"], a.get("activation"),
                                 step.output_types[0], out_qparams(attrs))  # fmt: skip
        return [out]


@register_kernel
class DeconvFloat(_DeconvKernel):
    """deconv in FLOAT32 and FLOAT16 (fp16 input and filter, float32 accumulation)."""

    name = "deconv.float"
    precisions = (_F.FLOAT32, _F.FLOAT16)


@register_kernel
class DeconvQuantized(_DeconvKernel):
    """deconv in QINT8 (uint8 carrier x int8, int32 sums) and QINT16 (int16, int64 sums)."""

    name = "deconv.qint"
    precisions = (_F.QINT8, _F.QINT16)
