"""Windowed kernels: max and average pooling, and resize (nearest, bilinear), float32 and fp16.

One loop nest serves both layouts and both precisions. A tensor is walked as (n, co, h, w, ci)
with element strides per axis, where the channels are ``ci`` (innermost, contiguous) for an NHWC
input and ``co`` (outer) for NCHW; the other channel axis has size 1. The output has strides of
its own, so a pool may read NCHW and write NHWC. Elements are read with ``load_f32`` and written
with ``store_f32``, so the same source compiles for float32 arrays and fp16-bits arrays; the
pools read through ``load_f64`` and write through ``_store``, which also take the uint8 / int16
codes of a max pool between quantized convs (``maxpool2d.qint``).

Pooling. Output (i, j) reads the input rows ``i * sh - pt + [0, kh)`` and columns
``j * sw - pl + [0, kw)`` that exist; the pads, output size and ceil mode come from the op's own
``pads_for`` / ``out_hw``. Max pooling starts at -inf, so padding never wins, and a NaN in the
window gives NaN (as numpy's max). Average pooling sums in float64 and divides by the count in
float64, then rounds to float32 (and fp16), which are exactly the reference's operations: the
result is bit-identical whenever the float64 sum is exact, that is unless one window's values
span more than about 29 binades. The count is the number of input elements in the window, or
with ``count_include_pad`` the window clipped to the padded input (never the part of a
ceil-mode window past the end pad). Worked through: x = [[1, 2, 3]] (H=1, W=3), kernel 1x2,
stride 1x2, left pad 1: the windows hold [pad, 1] and [2, 3], so the output is [1/1, 5/2] =
[1, 2.5], or [1/2, 5/2] = [0.5, 2.5] when padding counts.

Resize. Along each spatial axis a table gives, per output index, the input indices ``lo`` and
``hi`` and the weight ``t``, computed in float64 by the op's formulas (coordinate mode, nearest
rounding, clamping). NEAREST copies ``x[lo_h, lo_w]``; BILINEAR computes, in float64 and in the
reference's order, ``r_lo = x[lo_h, lo_w] * (1 - a) + x[hi_h, lo_w] * a`` and ``r_hi`` the same
at ``hi_w`` (the H pass), then ``r_lo * (1 - b) + r_hi * b`` (the W pass), and rounds once to
float32: bit-identical to the reference. Worked through: a row [0, 10] to width 4, HALF_PIXEL:
c = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]: the weights are 0, 0.25,
0.75, 1 and the row is [0, 2.5, 7.5, 10].

Steps whose work (outputs times reads per output) exceeds ``PARALLEL_MIN_WORK`` split their
rows over the threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from mmbuild.errors import Code, MMError
from mmbuild.ir.types import DataType, Layout
from mmbuild.kernels.cpu.movement import flat_view, refuse_activation
from mmbuild.kernels.cpu.qcommon import output_quantization
from mmbuild.kernels.cpu.simd import load_f32, load_f64, store_f32
from mmbuild.kernels.table import (
    Buffers,
    Kernel,
    Lowered,
    Runner,
    Step,
    buffer_dtype,
    register_kernel,
)
from mmbuild.ops.pool import Pool2DLike
from mmbuild.ops.transform import (
    IResizeCoordinateMode,
    IResizeMode,
    IResizeNearestMode,
    IResizeNode,
)

if TYPE_CHECKING:
    from mmbuild.graph import Graph, Node

__all__ = ["PARALLEL_MIN_WORK"]

PARALLEL_MIN_WORK = 1 << 22  # input reads; about 1 ms of serial work
_CHUNK = 1 << 14  # outputs per parallel work item

_COORD = {
    IResizeCoordinateMode.HALF_PIXEL: 0,
    IResizeCoordinateMode.PYTORCH_HALF_PIXEL: 1,
    IResizeCoordinateMode.ALIGN_CORNERS: 2,
    IResizeCoordinateMode.ASYMMETRIC: 3,
}
_NEAREST = {
    IResizeNearestMode.ROUND_PREFER_FLOOR: 0,
    IResizeNearestMode.ROUND_PREFER_CEIL: 1,
    IResizeNearestMode.FLOOR: 2,
    IResizeNearestMode.CEIL: 3,
}
_FLOAT_PRECISIONS = (DataType.FLOAT32, DataType.FLOAT16)
# Buffer indices are cast to uint64 in the loops: numba wraps a negative signed index around,
# and that test on every access keeps LLVM from vectorising the channel loops.
_U: Any = np.uint64

# The geometry array ``g`` both loops read: sizes, then the (n, co, h, w, ci) strides of x and y.
_N, _CO, _CI, _H, _W, _HO, _WO = range(7)
_XS, _YS = 7, 12


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------
def _store(y: np.ndarray, i: Any, v: np.float64) -> None:
    """``y[i] = v``: rounded to float32 (and fp16), or the code itself for a quantized ``y``."""
    if y.dtype.kind in "iu" and y.dtype != np.uint16:
        y[i] = v
    else:
        store_f32(y, i, np.float32(v))


@overload(_store)
def _store_overload(y, i, v):  # type: ignore[no-untyped-def]
    if isinstance(y.dtype, types.Integer) and y.dtype != types.uint16:

        def store_code(y, i, v):  # type: ignore[no-untyped-def]
            y[i] = v

        return store_code
    return lambda y, i, v: store_f32(y, i, np.float32(v))


@njit(cache=True, error_model="numpy", boundscheck=False)
def _pool_rows(x, y, g, win, is_max, count_pad, row0, row1):  # type: ignore[no-untyped-def]
    """Output rows ``row0 .. row1`` (a row is one (n, co, i)); ``win`` is
    [kh, kw, sh, sw, pt, pb, pl, pr]."""
    co_n, ci_n, h, w, ho, wo = g[_CO], g[_CI], g[_H], g[_W], g[_HO], g[_WO]
    xn, xco, xh, xw, xci = g[_XS], g[_XS + 1], g[_XS + 2], g[_XS + 3], g[_XS + 4]
    yn, yco, yh, yw, yci = g[_YS], g[_YS + 1], g[_YS + 2], g[_YS + 3], g[_YS + 4]
    kh, kw, sh, sw, pt, pb, pl, pr = win[0], win[1], win[2], win[3], win[4], win[5], win[6], win[7]
    acc = np.empty(ci_n, np.float64)
    for row in range(row0, row1):
        i = row % ho
        co = (row // ho) % co_n
        n = row // (ho * co_n)
        h0 = i * sh - pt
        rh0, rh1 = max(h0, 0), min(h0 + kh, h)
        padded_h = min(h0 + kh, h + pb) - max(h0, -pt)
        xb = n * xn + co * xco
        yb = n * yn + co * yco + i * yh
        for j in range(wo):
            w0 = j * sw - pl
            rw0, rw1 = max(w0, 0), min(w0 + kw, w)
            if is_max:
                acc[:] = -np.inf
                for a in range(rh0, rh1):
                    for b in range(rw0, rw1):
                        p = xb + a * xh + b * xw
                        for c in range(ci_n):
                            v = load_f64(x, _U(p + c * xci))
                            m = acc[c]
                            acc[c] = v if (v > m or v != v) else m  # a NaN sticks
                for c in range(ci_n):
                    _store(y, _U(yb + j * yw + c * yci), acc[c])
            else:
                acc[:] = 0.0
                for a in range(rh0, rh1):
                    for b in range(rw0, rw1):
                        p = xb + a * xh + b * xw
                        for c in range(ci_n):
                            acc[c] += load_f64(x, _U(p + c * xci))
                if count_pad:
                    count = padded_h * (min(w0 + kw, w + pr) - max(w0, -pl))
                else:
                    count = (rh1 - rh0) * (rw1 - rw0)
                for c in range(ci_n):
                    _store(y, _U(yb + j * yw + c * yci), acc[c] / np.float64(count))


@njit(cache=True, error_model="numpy", boundscheck=False)
def _pool_serial(x, y, g, win, is_max, count_pad):  # type: ignore[no-untyped-def]
    _pool_rows(x, y, g, win, is_max, count_pad, 0, g[_N] * g[_CO] * g[_HO])


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _pool_parallel(x, y, g, win, is_max, count_pad, chunk):  # type: ignore[no-untyped-def]
    rows = g[_N] * g[_CO] * g[_HO]
    per = max(chunk // max(g[_WO] * g[_CI], 1), 1)
    for c in prange((rows + per - 1) // per):
        _pool_rows(x, y, g, win, is_max, count_pad, c * per, min(rows, (c + 1) * per))


# ---------------------------------------------------------------------------------------------
# Resize
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", boundscheck=False)
def _axis_table(out_len, in_len, scale, coord, nearest, bilinear):  # type: ignore[no-untyped-def]
    """Per output index: input indices lo, hi and the weight of hi (the op's ``_coords`` and
    ``_resize_axis``, in float64)."""
    lo = np.empty(out_len, np.int64)
    hi = np.empty(out_len, np.int64)
    t = np.zeros(out_len, np.float64)
    last = in_len - 1
    for i in range(out_len):
        x = np.float64(i)
        if coord == 2:  # ALIGN_CORNERS
            c = x * ((in_len - 1) / (out_len - 1)) if out_len > 1 else 0.0
        elif coord == 3:  # ASYMMETRIC
            c = x / scale
        elif coord == 1 and out_len == 1:  # PYTORCH_HALF_PIXEL, one output
            c = 0.0
        else:  # HALF_PIXEL
            c = (x + 0.5) / scale - 0.5
        if bilinear:
            c = min(max(c, 0.0), np.float64(last))
            f = np.floor(c)
            lo[i] = np.int64(f)
            hi[i] = min(lo[i] + 1, last)
            t[i] = c - f
        else:
            if nearest == 0:  # ROUND_PREFER_FLOOR
                r = np.ceil(c - 0.5)
            elif nearest == 1:  # ROUND_PREFER_CEIL
                r = np.floor(c + 0.5)
            elif nearest == 2:
                r = np.floor(c)
            else:
                r = np.ceil(c)
            lo[i] = np.int64(min(max(r, 0.0), np.float64(last)))
            hi[i] = lo[i]
    return lo, hi, t


@njit(cache=True, error_model="numpy", boundscheck=False)
def _resize_rows(x, y, g, tab_h, tab_w, bilinear, row0, row1):  # type: ignore[no-untyped-def]
    co_n, ci_n, ho, wo = g[_CO], g[_CI], g[_HO], g[_WO]
    xn, xco, xh, xw, xci = g[_XS], g[_XS + 1], g[_XS + 2], g[_XS + 3], g[_XS + 4]
    yn, yco, yh, yw, yci = g[_YS], g[_YS + 1], g[_YS + 2], g[_YS + 3], g[_YS + 4]
    lo_h, hi_h, t_h = tab_h
    lo_w, hi_w, t_w = tab_w
    for row in range(row0, row1):
        i = row % ho
        co = (row // ho) % co_n
        n = row // (ho * co_n)
        a = t_h[i]
        r_lo = n * xn + co * xco + lo_h[i] * xh
        r_hi = n * xn + co * xco + hi_h[i] * xh
        yb = n * yn + co * yco + i * yh
        for j in range(wo):
            c_lo, c_hi, b = lo_w[j] * xw, hi_w[j] * xw, t_w[j]
            q = yb + j * yw
            if bilinear:
                for c in range(ci_n):
                    e = c * xci
                    v00 = np.float64(load_f32(x, _U(r_lo + c_lo + e)))
                    v10 = np.float64(load_f32(x, _U(r_hi + c_lo + e)))
                    v01 = np.float64(load_f32(x, _U(r_lo + c_hi + e)))
                    v11 = np.float64(load_f32(x, _U(r_hi + c_hi + e)))
                    left = v00 * (1.0 - a) + v10 * a
                    right = v01 * (1.0 - a) + v11 * a
                    store_f32(y, _U(q + c * yci), np.float32(left * (1.0 - b) + right * b))
            else:
                for c in range(ci_n):
                    store_f32(y, _U(q + c * yci), load_f32(x, _U(r_lo + c_lo + c * xci)))


@njit(cache=True, error_model="numpy", boundscheck=False)
def _resize_serial(x, y, g, scales, modes):  # type: ignore[no-untyped-def]
    bilinear = modes[0] == 1
    tab_h = _axis_table(g[_HO], g[_H], scales[0], modes[1], modes[2], bilinear)
    tab_w = _axis_table(g[_WO], g[_W], scales[1], modes[1], modes[2], bilinear)
    _resize_rows(x, y, g, tab_h, tab_w, bilinear, 0, g[_N] * g[_CO] * g[_HO])


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _resize_parallel(x, y, g, scales, modes, chunk):  # type: ignore[no-untyped-def]
    bilinear = modes[0] == 1
    tab_h = _axis_table(g[_HO], g[_H], scales[0], modes[1], modes[2], bilinear)
    tab_w = _axis_table(g[_WO], g[_W], scales[1], modes[1], modes[2], bilinear)
    rows = g[_N] * g[_CO] * g[_HO]
    per = max(chunk // max(g[_WO] * g[_CI], 1), 1)
    for c in prange((rows + per - 1) // per):
        _resize_rows(x, y, g, tab_h, tab_w, bilinear, c * per, min(rows, (c + 1) * per))


# ---------------------------------------------------------------------------------------------
# Geometry (Python, once per call)
# ---------------------------------------------------------------------------------------------
def _walk(strides: Sequence[int], layout: Layout, channels_inner: bool) -> list[int]:
    """(n, co, h, w, ci) strides of a rank-4 buffer in ``layout``."""
    if layout is Layout.NCHW:
        sn, sc, sh, sw = strides
    else:
        sn, sh, sw, sc = strides
    return [sn, 0, sh, sw, sc] if channels_inner else [sn, sc, sh, sw, 0]


def _hw(shape: Sequence[int], layout: Layout) -> tuple[int, int, int, int]:
    """(n, h, w, c) of a rank-4 shape in ``layout``."""
    if layout is Layout.NCHW:
        n, c, h, w = shape
    else:
        n, h, w, c = shape
    return n, h, w, c


def _geometry(
    step: Step,
    x: np.ndarray,
    y: np.ndarray,
    layouts: tuple[Layout, Layout],
    out_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flat views of x and y and the geometry array; checks y's shape and buffer types."""
    want = buffer_dtype(step.precisions[0]).type
    if x.dtype != want or y.dtype != want:
        raise MMError(
            f"{step.node().node_type} {step.name!r}: a {step.precisions[0].name} step takes "
            f"{np.dtype(want).name} buffers, not {x.dtype.name} and {y.dtype.name}",
            Code.INTERNAL,
        )
    n, h, w, c = _hw(x.shape, layouts[0])
    ho, wo = out_hw
    expect = (n, c, ho, wo) if layouts[1] is Layout.NCHW else (n, ho, wo, c)
    if tuple(y.shape) != expect:
        raise MMError(
            f"{step.node().node_type} {step.name!r}: the output has shape "
            f"{list(y.shape)} but the op gives {list(expect)}",
            Code.INTERNAL,
        )
    inner = layouts[0] is Layout.NHWC
    xf, xs = flat_view(x, want)
    yf, ys = flat_view(y, want)
    sizes = [n, 1, c, h, w, ho, wo] if inner else [n, c, 1, h, w, ho, wo]
    g = np.asarray(
        sizes + _walk(xs, layouts[0], inner) + _walk(ys, layouts[1], inner), dtype=np.int64
    )
    return xf, yf, g


# ---------------------------------------------------------------------------------------------
# Kernel entries
# ---------------------------------------------------------------------------------------------
class _Pool(Kernel):
    precisions = _FLOAT_PRECISIONS

    def bind(self, step: Step) -> Runner:
        refuse_activation(step)
        decl = cast(Pool2DLike, step.node().declaration())
        layouts: tuple[Layout, Layout] = (decl.attrs["layout"][0], decl.attrs["layout"][1])
        is_max = step.op == "maxpool2d"
        count_pad = bool(decl.attrs.get("count_include_pad", False))
        (kh, kw), (sh, sw) = decl.get_kernel(), decl.get_stride()

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x, y = inputs[0], outputs[0]
            _, h, w, _ = _hw(x.shape, layouts[0])
            pads = decl.pads_for(h, w)
            if decl.attrs["kernel"] is None and any(pads):
                raise decl.error(
                    f"pads {list(pads)} are set but the kernel never was, so windows of "
                    "padding alone would reach the output; call set_kernel"
                )
            xf, yf, g = _geometry(step, x, y, layouts, decl.out_hw(h, w))
            win = np.asarray([kh, kw, sh, sw, *pads], dtype=np.int64)
            if y.size * kh * kw >= PARALLEL_MIN_WORK:
                return partial(_pool_parallel, xf, yf, g, win, is_max, count_pad,
                               np.int64(_CHUNK))  # fmt: skip
            return partial(_pool_serial, xf, yf, g, win, is_max, count_pad)

        return Runner.from_prepare(prepare, (_pool_serial, _pool_parallel))


@register_kernel
class MaxPoolKernel(_Pool):
    """maxpool2d, float32 and fp16: exact (a max picks one of its inputs)."""

    name = "maxpool2d"
    ops = ("maxpool2d",)


@register_kernel
class MaxPoolQuantized(_Pool):
    """maxpool2d of a tensor carried in QINT8 (uint8 codes) or QINT16 (int16): the max of the
    codes is the code of the max, quantization being monotone (``mmbuild.passes.carry``
    quantizes its input with its output's scale and zero point). Example: codes [130, 140,
    128, 135] in one window give 140."""

    name = "maxpool2d.qint"
    ops = ("maxpool2d",)
    precisions = (DataType.QINT8, DataType.QINT16)

    def lower(self, node: Node, graph: Graph) -> Lowered:
        return Lowered(output_quantization(graph, node))


@register_kernel
class AvgPoolKernel(_Pool):
    """avgpool2d, float32 and fp16: a float64 sum divided by the count, rounded once."""

    name = "avgpool2d"
    ops = ("avgpool2d",)


@register_kernel
class ResizeKernel(Kernel):
    """resize, NEAREST and BILINEAR under every coordinate and rounding mode, NHWC and NCHW."""

    name = "resize"
    ops = ("resize",)
    precisions = _FLOAT_PRECISIONS

    def bind(self, step: Step) -> Runner:
        refuse_activation(step)
        decl = cast(IResizeNode, step.node().declaration())
        layout = decl.attrs["layout"]
        bilinear = decl.attrs["mode"] is IResizeMode.BILINEAR
        modes = np.asarray(
            [int(bilinear), _COORD[decl.attrs["coordinate_mode"]],
             _NEAREST[decl.attrs["nearest_mode"]]], dtype=np.int64,
        )  # fmt: skip

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x, y = inputs[0], outputs[0]
            _, h, w, _ = _hw(x.shape, layout)
            ho, wo = decl._out_size(x.shape)  # refuses a scale that empties an axis
            if (h == 0 and ho) or (w == 0 and wo):
                raise decl.error(
                    f"the input of shape {list(x.shape)} is empty along a resized axis; there "
                    "is nothing to resize"
                )
            given = decl.attrs["scale"]
            scales = [
                float(given[k]) if given is not None else (o / n if n else 1.0)
                for k, (o, n) in enumerate(((ho, h), (wo, w)))
            ]
            xf, yf, g = _geometry(step, x, y, (layout, layout), (ho, wo))
            sc = np.asarray(scales, dtype=np.float64)
            if y.size * (4 if bilinear else 1) >= PARALLEL_MIN_WORK:
                return partial(_resize_parallel, xf, yf, g, sc, modes, np.int64(_CHUNK))
            return partial(_resize_serial, xf, yf, g, sc, modes)

        return Runner.from_prepare(prepare, (_resize_serial, _resize_parallel))
