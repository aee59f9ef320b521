"""The conv kernels: FLOAT32, FLOAT16, QINT8 and QINT16 over NHWC tensors.

``y[b, yo, xo, o] = act(acc * mult[o] + bias[o])`` with
``acc = sum_{i, j, c} x[b, yo*sh + i*dh - pt, xo*sw + j*dw - pl, g*Cg + c] * w[o, i, j, c]``
over the group ``g`` of output channel ``o`` (zero outside the input). Float nodes sum the
float values (``mult = 1``); quantized nodes sum ``(q_x - zp_x) * q_w`` exactly (int32 for QINT8,
int64 for QINT16) and ``mult[o] = float32(scale_x) * float32(scale_w[o])``.

Three paths, chosen from the filter (same epilogue arithmetic, so the same bits, in each):

- ``group == 1``: one implicit GEMM (``gemm.ImplicitRows.conv2d_nhwc``) over the input, quantized
  (or copied, for a padded float conv) into a buffer padded with the zero point; a dilation along
  W puts each output column's taps side by side first. A 1x1, stride 1, unpadded conv is a plain
  GEMM over ``[N*H*W, Cin]``.
- depthwise (``Cin/group == 1``, any channel multiplier): a direct loop (:mod:`.depthwise`)
  accumulating each output pixel's channels in vectors as wide as the level's registers, over
  the float input as it is or its quantized copy (unpadded for the vector loop, padded with
  the zero point for the general one).
- other groups: one GEMM per group on that group's channels, written into its output columns.

Lowering converts the filter to OHWI and stores it canonically (``weight``: int8/int16
quantized, float32, or fp16 bits for FLOAT16 nodes), with ``scale_w`` and the float ``bias``;
``bind`` packs it. Batch and spatial sizes are read from each run's input.

Worked example (QINT8, symmetric): x range [-2, 2] -> scale_x = 2/127; a 1x1 filter w = [[0.5]]
-> q_w = 127, scale_w = 0.5/127. x = 1.0 -> q_x = rint(63.5) = 64 (half to even), carried 192
with za = 128: acc = (192 - 128) * 127 = 8128; mult = float32(2/127) * float32(0.5/127) =
6.200012e-5; y = 8128 * mult = 0.503937 (+ bias; the fp32 reference gives 0.5).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numba
import numpy as np

from mmbuild.errors import Code, MMError
from mmbuild.graph import Graph, Node
from mmbuild.ir.types import DataType
from mmbuild.kernels.cpu import features
from mmbuild.kernels.cpu.depthwise import DW_LANES, general_loops, vector_loops
from mmbuild.kernels.cpu.dynamic import DYNAMIC_FNS, DynamicInput, input_scale_reference
from mmbuild.kernels.cpu.gemm import Epilogue, ImplicitRows
from mmbuild.kernels.cpu.prepare import PREPARE_FNS, bind_prepare_input
from mmbuild.kernels.cpu.qcommon import (
    bind_gemm,
    carrier_dtype,
    direct_epilogue_args,
    gemm_dispatcher,
    lower_filter,
    make_epilogue,
    out_qparams,
    output_quantization,
    pack_weights,
    quantize_input_reference,
    reference_epilogue,
    require_constant,
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
from mmbuild.ops.conv import conv2d_nhwc

__all__ = ["ConvFloat", "ConvQuantized"]

#: Multiply-accumulates of a depthwise conv above which its rows are split over the threads.
DIRECT_PARALLEL_MIN_MACS = 1 << 18

_F = DataType


def _path(group: int, cin_g: int) -> str:
    if group == 1:
        return "gemm"
    return "depthwise" if cin_g == 1 else "grouped"


# ---------------------------------------------------------------------------------------------
# Binding
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    """Everything that depends on one input shape."""

    out_shape: tuple[int, ...]
    pads: tuple[int, int]  # (top, left)
    buffer: tuple[int, ...] | None  # the prepared input's shape; None reads the input as it is
    taps: tuple[int, int, int]  # (KW, sw, dw) laid side by side, or (1, 1, 1)
    rows: ImplicitRows | None  # None: a plain GEMM (or the depthwise loop)
    direct: tuple[int, ...]  # the depthwise loop's geometry


class _ConvRunner:
    """A conv step's weights and epilogues; ``prepare`` is thread-safe (a locked shape cache;
    each prepared call owns its buffers)."""

    def __init__(self, step: Step) -> None:
        node = step.node()
        self.decl = node.declaration()
        arrays, attrs = step.lowered.arrays, step.lowered.attrs
        w = arrays["weight"]
        self.cout, self.kh, self.kw, self.cin_g = w.shape
        self.group = int(step.op_attrs["group"])
        self.stride = tuple(step.op_attrs["stride"])
        self.dilation = tuple(step.op_attrs["dilation"])
        precision = node.compute_precision
        self.quantized = precision.is_quantized
        self.carrier = carrier_dtype(precision) if self.quantized else None
        self.scale_a = np.float32(attrs.get("scale_a", 1.0))
        self.za = int(attrs.get("za", 0))
        self.dynamic = DynamicInput(precision, self.za) if attrs.get("dynamic") else None
        self.out_q = out_qparams(attrs)
        self.depthwise = _path(self.group, self.cin_g) == "depthwise"
        scale_w = arrays.get("scale_w", np.ones(self.cout, np.float32))
        self._ep_inputs = (step.op_attrs, step.output_types[0], arrays["bias"])
        # one epilogue per GEMM (one per group; one for the depthwise loop) with its scale_w
        n_eps = 1 if self.depthwise else self.group
        cols = self.cout // n_eps
        self.scale_w = [np.ascontiguousarray(scale_w[g * cols : (g + 1) * cols])
                        for g in range(n_eps)]  # fmt: skip
        self.eps = self._epilogues()
        if self.depthwise:
            taps_w = np.ascontiguousarray(w.reshape(self.cout, -1).T)  # [KH*KW, Cout]
            self.dw_weight = taps_w.reshape(-1)
            # the vector loop: one output channel per input channel, float or QINT8 (exact in
            # float32 up to 256 taps, see .depthwise)
            taps = self.kh * self.kw
            self.vec = self.cout == self.group and (
                self.carrier is None or (self.carrier == np.uint8 and taps <= 256)
            )
            # QINT8 filters widened once, exactly, so that the vector loop converts only x
            self.vec_weight = (
                taps_w.reshape(-1).astype(np.float32)
                if self.carrier == np.uint8
                else self.dw_weight
            )
            self.nza = np.float32(-self.za if self.carrier == np.uint8 else 0)
            # the general loop: QINT8 taps exact in int32 (|(x - za) * w| <= 255 * 128, and
            # check_int8_k keeps the tap count below overflow); QINT16 ones need int64
            acc_dtype: Any = np.float32 if self.carrier is None else np.int64
            if self.carrier == np.uint8:
                acc_dtype = np.int32
            self.acc_proto = np.zeros(self.cout, acc_dtype)
            fns: tuple[Any, ...] = (*general_loops(), *vector_loops(self._lanes()))
        else:
            cog = self.cout // self.group
            self.packed = []
            for g in range(self.group):
                w_kn = w[g * cog : (g + 1) * cog].transpose(1, 2, 3, 0).reshape(-1, cog)
                self.packed.append(pack_weights(w_kn, segments=self.kh))
            a_dtype = self.carrier if self.carrier is not None else np.float32
            fns = (gemm_dispatcher(self.packed[0], self.eps[0], a_dtype),)
        if self.dynamic is not None:
            fns = (*fns, *DYNAMIC_FNS)
        self.fns = (*PREPARE_FNS, *fns)
        self._shapes: dict[tuple[tuple[int, ...], bool], _Geometry] = {}
        self._lock = threading.Lock()

    def _epilogues(self) -> list[Epilogue]:
        """The epilogue of each GEMM (or of the depthwise loop), with the static scale_a (a
        dynamic input rescales its prepared step's own copies at each run)."""
        attrs, out_type, bias = self._ep_inputs
        cols = self.cout // len(self.scale_w)
        return [make_epilogue(cols, attrs, out_type, scale_a=self.scale_a, scale_w=sw,
                              bias=bias[g * cols : (g + 1) * cols], out_q=self.out_q)
                for g, sw in enumerate(self.scale_w)]  # fmt: skip

    def geometry(self, shape: tuple[int, ...], carried: bool = False) -> _Geometry:
        key = (shape, carried)
        with self._lock:
            geo = self._shapes.get(key)
        if geo is None:
            geo = self._geometry(shape, carried)
            with self._lock:
                if len(self._shapes) >= 16:
                    self._shapes.clear()
                self._shapes[key] = geo
        return geo

    def _geometry(self, shape: tuple[int, ...], carried: bool) -> _Geometry:
        """``carried``: the input arrives quantized (its producer's epilogue wrote the carrier),
        so a copy is needed only to pad it or to take one group's channels."""
        n, h, w, c = shape
        quantize = self.quantized and not carried
        kh, kw, cin_g = self.kh, self.kw, self.cin_g
        (sh, sw), (dh, dw) = self.stride, self.dilation
        pt, pb, pl, pr = self.decl.pads_for(h, w, kh, kw)  # type: ignore[attr-defined]
        hp, wp = h + pt + pb, w + pl + pr
        ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        out_shape = (n, ho, wo, self.cout)
        padded = any((pt, pb, pl, pr))
        if self.depthwise:
            # the vector loop reads the input (or its quantized copy) as it is, borders and all
            if self.vec:
                buffer = (n, h, w, c) if quantize else None
            else:
                buffer = (n, hp, wp, c) if padded or quantize else None
            direct = (hp, wp, c, self.cout // c, kh, kw, sh, sw, dh, dw, ho, wo)
            return _Geometry(out_shape, (pt, pl), buffer, (1, 1, 1), None, direct)
        if dw > 1 and kw > 1:
            # the implicit GEMM reads each kernel row as one run: lay the dilated taps of every
            # output column side by side, and convolve that with a KH x 1 kernel
            rows = ImplicitRows.conv2d_nhwc(n, hp, wo, kw * cin_g, (kh, 1), (sh, 1), (dh, 1))
            return _Geometry(out_shape, (pt, pl), (n, hp, wo, kw * cin_g), (kw, sw, dw), rows, ())
        copy = padded or quantize or self.group > 1
        buffer = (n, hp, wp, cin_g) if copy else None
        if kh == kw == 1 and sh == sw == 1 and not padded:
            return _Geometry(out_shape, (pt, pl), buffer, (1, 1, 1), None, ())
        rows = ImplicitRows.conv2d_nhwc(n, hp, wp, cin_g, (kh, kw), (sh, sw), (dh, 1))
        return _Geometry(out_shape, (pt, pl), buffer, (1, 1, 1), rows, ())

    def prepare(self, inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
        """The step on these buffers as one call: shapes looked up, the prepared input's buffer
        made and every GEMM bound once (``Runner.prepare``)."""
        x, out = inputs[0], outputs[0]
        if x.shape[0] == 0:
            return in_order([])
        carried = x.dtype == self.carrier
        if carried and self.dynamic is not None:
            raise MMError("conv: a carried quantized input has its scale already; it cannot be "
                          "quantized dynamically", Code.INTERNAL)  # fmt: skip
        geo = self.geometry(tuple(x.shape), carried)
        if tuple(out.shape) != geo.out_shape:
            raise MMError(f"conv: output buffer {out.shape} is not {geo.out_shape}", Code.INTERNAL)
        buf = slack = None
        if geo.buffer is not None:
            # three bytes of slack past the end: the int8 GEMM then reads each kernel row's
            # last bytes as a whole quad (gemm._quads_fit)
            size = math.prod(geo.buffer)
            slack = np.empty(size + 3, self.carrier if self.carrier is not None else x.dtype)
            buf = slack[:size].reshape(geo.buffer)
        eps, calls, qparams = self.eps, [], None
        if self.dynamic is not None:  # this step's own epilogues, rescaled at each run
            eps = self._epilogues()
            qparams, choose_scale = self.dynamic.bind(x, list(zip(eps, self.scale_w)))
            calls.append(choose_scale)
        if self.depthwise:
            if buf is not None:  # the vector loop's quantized copy has no pads
                pads = (0, 0) if self.vec else geo.pads
                calls.append(self._bind_prepare(x, buf, geo, 0, x.shape[3], qparams, pads))
            calls.append(self._bind_depthwise(x if buf is None else buf, geo, out, eps[0]))
            return in_order(calls)
        cog = self.cout // self.group
        out2 = out.reshape(-1, self.cout)
        for g, (w, ep) in enumerate(zip(self.packed, eps)):
            a = x
            if buf is not None and slack is not None:
                calls.append(self._bind_prepare(x, buf, geo, g * self.cin_g, self.cin_g, qparams))
                # the implicit GEMM reads the buffer flat, slack included
                a = buf if geo.rows is None else slack
            if geo.rows is None:
                a = a.reshape(-1, a.shape[-1])
            calls.append(bind_gemm(a, self.za, w, ep, out2[:, g * cog : (g + 1) * cog], geo.rows))
        return in_order(calls)

    def _bind_prepare(
        self,
        x: np.ndarray,
        buf: np.ndarray,
        geo: _Geometry,
        c0: int,
        cg: int,
        qparams: np.ndarray | None,
        pads: tuple[int, int] | None = None,
    ) -> Callable[[], None]:
        pads = geo.pads if pads is None else pads
        return bind_prepare_input(x, buf, pads=pads, scale=self.scale_a, zero_point=self.za,
                                  channels=(c0, cg), taps=geo.taps, qparams=qparams)  # fmt: skip

    def _bind_depthwise(
        self, xp: np.ndarray, geo: _Geometry, out: np.ndarray, ep: Epilogue
    ) -> Callable[[], None]:
        n_rows = out.shape[0] * out.shape[1]
        parallel = (numba.get_num_threads() > 1 and n_rows > 1
                    and out.size * self.kh * self.kw >= DIRECT_PARALLEL_MIN_MACS)  # fmt: skip
        chunks = min(n_rows, numba.get_num_threads())
        if self.vec:
            _, _, c, _, kh, kw, sh, sw, dh, dw, ho, wo = geo.direct
            h, w = xp.shape[1], xp.shape[2]
            vec_geo = (h, w, c, kh, kw, sh, sw, dh, dw, ho, wo, *geo.pads)
            args: tuple[Any, ...] = (xp.reshape(-1), vec_geo, self.vec_weight, self.nza,
                                     ep._args, out.reshape(-1).view(np.uint8))  # fmt: skip
            rows, parallel_rows = vector_loops(self._lanes())
        else:
            za = self.acc_proto.dtype.type(self.za)
            args = (xp.reshape(-1), za, geo.direct, self.dw_weight, direct_epilogue_args(ep),
                    out.reshape(-1), self.acc_proto)  # fmt: skip
            rows, parallel_rows = general_loops()
        if parallel:
            return partial(parallel_rows, n_rows, chunks, *args)
        return partial(rows, 0, n_rows, *args)

    @staticmethod
    def _lanes() -> int:
        """Lanes of the depthwise vector loop at the level kernels bind at now."""
        return features.level().lanes or DW_LANES


# ---------------------------------------------------------------------------------------------
# Kernel entries
# ---------------------------------------------------------------------------------------------
class _ConvKernel(Kernel):
    ops = ("conv",)

    def lower(self, node: Node, graph: Graph) -> Lowered:
        w = require_constant(graph, node, 1, "filter")
        to_ohwi = node.declaration().filter_ohwi((0, 1, 2, 3))  # type: ignore[attr-defined]
        w_ohwi = np.ascontiguousarray(w.transpose(to_ohwi), np.float32)
        path = _path(int(node.attrs["group"]), w_ohwi.shape[3])
        lowered = lower_filter(node, graph, w_ohwi, "conv", gemm=path != "depthwise")
        lowered.attrs["path"] = path
        lowered.attrs.update(output_quantization(graph, node))
        return lowered

    def bind(self, step: Step) -> Runner:
        runner = _ConvRunner(step)
        return Runner.from_prepare(runner.prepare, runner.fns)

    def reference(self, step: Step, inputs: Buffers) -> list[np.ndarray]:
        """Quantized: the input quantized by ``quant.params``, the exact int64 convolution of
        ``q - zp`` with the integer filter, the epilogue in float32. Float: the float64
        convolution of the (fp16-rounded) values, the same epilogue."""
        x = inputs[0]
        node = step.node()
        arrays, attrs = step.lowered.arrays, step.lowered.attrs
        w = arrays["weight"]
        pads = node.declaration().pads_for(x.shape[1], x.shape[2], w.shape[1], w.shape[2])  # type: ignore[attr-defined]
        a = step.op_attrs
        precision = node.compute_precision
        if precision.is_quantized:
            scale_a = input_scale_reference(attrs, x, precision)
            xq = quantize_input_reference(x, scale_a, attrs["za"], precision)
            acc = conv2d_nhwc(xq, w.astype(np.int64), a["stride"], pads, a["dilation"], a["group"])
            mult = np.float32(scale_a) * arrays["scale_w"]
        else:
            wf = to_numpy(w, _F.FLOAT16 if w.dtype == np.uint16 else _F.FLOAT32)
            acc = conv2d_nhwc(_float64(x), wf.astype(np.float64), a["stride"], pads,
                              a["dilation"], a["group"])  # fmt: skip
            mult = np.ones(w.shape[0], np.float32)
        out = reference_epilogue(acc, mult, arrays["bias"], a.get("activation"),
                                 step.output_types[0], out_qparams(attrs))  # fmt: skip
        return [out]


def _float64(x: np.ndarray) -> np.ndarray:
    return to_numpy(x, _F.FLOAT16 if x.dtype == np.uint16 else _F.FLOAT32).astype(np.float64)


@register_kernel
class ConvFloat(_ConvKernel):
    """conv in FLOAT32 and FLOAT16 (fp16 weights and input, float32 accumulation)."""

    name = "conv.float"
    precisions = (_F.FLOAT32, _F.FLOAT16)


@register_kernel
class ConvQuantized(_ConvKernel):
    """conv in QINT8 (u8 x s8, int32 sums) and QINT16 (int16, int64 sums)."""

    name = "conv.qint"
    precisions = (_F.QINT8, _F.QINT16)
