"""The depthwise conv loops (``Cin / group == 1``) over NHWC tensors, for :mod:`.conv_ops`.

``y[b, yo, xo, o] = act(acc * mult[o] + bias[o])`` with
``acc = sum_{i, j} x[b, yo*sh + i*dh - pt, xo*sw + j*dw - pl, o // M] * w[i, j, o]`` for a
channel multiplier ``M``, zero outside the input.

Two loops, with the same epilogue arithmetic (so the same bits):

- :func:`vector_loops`, the usual case (``M == 1``; float inputs, or QINT8 ones of at most 256
  taps): channels in float32 vectors as wide as the level's registers (16 lanes on AVX-512, 8 on
  AVX2 and on the portable level), then one 8-lane vector, then single lanes for the last
  ``C % 8``; each tap is one fused multiply-add per vector. An output row is walked in strips of
  :data:`STRIP` pixels whose taps all lie inside the input along W: eight accumulators per
  channel vector, the tap's weight vector loaded once for the eight. The pixels at the left and
  right borders, and those left over, run one at a time over the taps inside the input, and the
  rows at the top and bottom skip the filter rows outside it, so the input is read as it is,
  without a padded copy. A QINT8 input (the uint8 buffer its quantization writes, unpadded) is
  summed as it is, with the weights of the taps visited beside it:
  ``acc = sum x * w - za * sum w``, the exact ``sum (x - za) * w`` over the taps inside (those
  outside hold the zero point and add nothing): every partial sum is an integer below
  ``taps * 255 * 128 <= 2**23`` in magnitude (taps <= 256), and the last one below ``2**24``,
  all exact in float32.
- :func:`_depthwise_rows` (``general_loops``), any multiplier and QINT16: a scalar loop over a
  padded input.

Example: C = 200 on AVX-512 is 12 vectors of 16 lanes and one of 8; a 56-pixel output row of a
3x3, stride 1, pad 1 conv is pixel 0 alone, six strips (pixels 1..48), then pixels 49..55 alone.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import njit, prange

from mmbuild.kernels.cpu.gemm_codegen import vec_store
from mmbuild.kernels.cpu.qcommon import epilogue_store, widen_as
from mmbuild.kernels.cpu.vector import vadd_f32, vfma, vload_f32, vmul_f32, vsplat_f32, vzero_f32

__all__ = ["DW_LANES", "STRIP", "general_loops", "tap_range", "vector_loops"]

#: Lanes of the vector loop on the portable level, and of every level's narrower vector.
DW_LANES = 8
#: Output pixels of one strip: eight accumulators in flight per channel vector.
STRIP = 8


# ---------------------------------------------------------------------------------------------
# The vector loop
# ---------------------------------------------------------------------------------------------
@njit(forceinline=True, error_model="numpy", boundscheck=False)
def tap_range(start, step, taps, size):  # type: ignore[no-untyped-def]
    """The taps ``[t0, t1)`` with ``0 <= start + t * step < size`` (``t0 == t1`` for none).

    Example: ``start = -1, step = 1, taps = 3, size = 56`` (the first pixel of a padded 3x3) is
    ``(1, 3)``; ``start = 54`` is ``(0, 2)``.
    """
    t0 = 0 if start >= 0 else (step - 1 - start) // step
    t1 = 0 if start >= size else min(taps, (size - start + step - 1) // step)
    return t0, max(t0, t1)


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _store(acc, n, out, o, ep_args, count):  # type: ignore[no-untyped-def]
    """The GEMM epilogue of channels ``n ..`` (``count``, the width of ``acc``) into ``out``
    at element ``o``: ``acc * mult + bias``, the activation, the output type."""
    y = vmul_f32(acc, vload_f32(ep_args[0], n, acc))
    vec_store(vadd_f32(y, vload_f32(ep_args[1], n, acc)), out, o, count, ep_args)


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _strip(X, W, nza, ep_args, out, xb, ob, cc, c1, z, step, g):  # type: ignore[no-untyped-def]
    """Channels ``[cc, c1)``, in vectors of ``step`` lanes (``z``'s width), of :data:`STRIP`
    output pixels at ``out[ob ..]`` whose taps start at ``X[xb ..]``, over filter rows
    ``[i0, i1)`` and every column; ``g = (i0, i1, kw, row_x, dw_x, px, c)`` with the input's
    offsets from one filter row, one filter column and one output pixel to the next. ``nza``
    is minus the input's zero point (0 for a float input): ``acc = sum x * w + nza * sum w``
    over the taps visited. Returns the first channel not done."""
    i0, i1, kw, row_x, dw_x, px, c = g
    while cc + step <= c1:
        a0 = vzero_f32(z)
        a1, a2, a3, a4, a5, a6, a7, ws = a0, a0, a0, a0, a0, a0, a0, a0
        for i in range(i0, i1):
            for j in range(kw):
                wv = vload_f32(W, (i * kw + j) * c + cc, z)
                xi = xb + i * row_x + j * dw_x + cc
                ws = vadd_f32(ws, wv)
                a0 = vfma(a0, vload_f32(X, xi, z), wv)
                a1 = vfma(a1, vload_f32(X, xi + px, z), wv)
                a2 = vfma(a2, vload_f32(X, xi + 2 * px, z), wv)
                a3 = vfma(a3, vload_f32(X, xi + 3 * px, z), wv)
                a4 = vfma(a4, vload_f32(X, xi + 4 * px, z), wv)
                a5 = vfma(a5, vload_f32(X, xi + 5 * px, z), wv)
                a6 = vfma(a6, vload_f32(X, xi + 6 * px, z), wv)
                a7 = vfma(a7, vload_f32(X, xi + 7 * px, z), wv)
        if nza != 0:
            zs = vmul_f32(ws, vsplat_f32(nza, z))
            a0, a1, a2, a3 = vadd_f32(a0, zs), vadd_f32(a1, zs), vadd_f32(a2, zs), vadd_f32(a3, zs)
            a4, a5, a6, a7 = vadd_f32(a4, zs), vadd_f32(a5, zs), vadd_f32(a6, zs), vadd_f32(a7, zs)
        o = ob + cc
        _store(a0, cc, out, o, ep_args, step)
        _store(a1, cc, out, o + c, ep_args, step)
        _store(a2, cc, out, o + 2 * c, ep_args, step)
        _store(a3, cc, out, o + 3 * c, ep_args, step)
        _store(a4, cc, out, o + 4 * c, ep_args, step)
        _store(a5, cc, out, o + 5 * c, ep_args, step)
        _store(a6, cc, out, o + 6 * c, ep_args, step)
        _store(a7, cc, out, o + 7 * c, ep_args, step)
        cc += step
    return cc


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _pixel(X, W, nza, ep_args, out, xb, ob, cc, c1, z, step, g):  # type: ignore[no-untyped-def]
    """As :func:`_strip` for one output pixel over filter rows ``[i0, i1)`` and columns
    ``[j0, j1)``: ``g = (i0, i1, j0, j1, kw, row_x, dw_x, c)``."""
    i0, i1, j0, j1, kw, row_x, dw_x, c = g
    while cc + step <= c1:
        a = vzero_f32(z)
        ws = a
        for i in range(i0, i1):
            for j in range(j0, j1):
                wv = vload_f32(W, (i * kw + j) * c + cc, z)
                ws = vadd_f32(ws, wv)
                a = vfma(a, vload_f32(X, xb + i * row_x + j * dw_x + cc, z), wv)
        if nza != 0:
            a = vadd_f32(a, vmul_f32(ws, vsplat_f32(nza, z)))
        _store(a, cc, out, ob + cc, ep_args, step)
        cc += step
    return cc


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _vector_rows(first, last, X, geo, W, nza, ep_args, out, z, lanes):  # type: ignore[no-untyped-def]
    """Output rows ``[first, last)`` (``b * Ho + yo``) of the vector loop, channel vectors as
    wide as ``z`` (``lanes``). ``X`` is the NHWC input ``[N, H, W, C]`` (flat; float32, fp16
    bits, or uint8 with zero point ``-nza``), ``W`` the filter ``[KH*KW, C]`` (float32 or fp16
    bits), ``out`` bytes; ``geo`` holds ``H, W, C, KH, KW, sh, sw, dh, dw, Ho, Wo, pt, pl``."""
    h, w, c, kh, kw, sh, sw, dh, dw, ho, wo, pt, pl = geo
    row_x, dw_x, px = dh * w * c, dw * c, sw * c
    c_wide, c_narrow = c - c % lanes, c - c % DW_LANES
    z8, z1 = vzero_f32(DW_LANES), vzero_f32(1)
    # the output columns whose taps all lie inside the input along W
    xa = min(wo, (pl + sw - 1) // sw)
    xz = max(xa, min(wo, (w - 1 - (kw - 1) * dw + pl) // sw + 1))
    for r in range(first, last):
        b = r // ho
        y0 = (r - b * ho) * sh - pt
        i0, i1 = tap_range(y0, dh, kh, h)
        xo = 0
        while xo < wo:
            x0 = xo * sw - pl
            xb, ob = ((b * h + y0) * w + x0) * c, (r * wo + xo) * c
            if xa <= xo and xo + STRIP <= xz:
                g = (i0, i1, kw, row_x, dw_x, px, c)
                cc = _strip(X, W, nza, ep_args, out, xb, ob, 0, c_wide, z, lanes, g)
                cc = _strip(X, W, nza, ep_args, out, xb, ob, cc, c_narrow, z8, DW_LANES, g)
                _strip(X, W, nza, ep_args, out, xb, ob, cc, c, z1, 1, g)
                xo += STRIP
            else:
                j0, j1 = tap_range(x0, dw, kw, w)
                gp = (i0, i1, j0, j1, kw, row_x, dw_x, c)
                cc = _pixel(X, W, nza, ep_args, out, xb, ob, 0, c_wide, z, lanes, gp)
                cc = _pixel(X, W, nza, ep_args, out, xb, ob, cc, c_narrow, z8, DW_LANES, gp)
                _pixel(X, W, nza, ep_args, out, xb, ob, cc, c, z1, 1, gp)
                xo += 1


@functools.cache
def vector_loops(lanes: int) -> tuple[Any, Any]:
    """``(rows, parallel)`` of the vector loop with ``lanes``-wide channel vectors:
    ``rows(first, last, X, geo, W, nza, ep_args, out)`` runs output rows ``[first, last)``
    (see :func:`_vector_rows`), ``parallel(n_rows, n_chunks, ...)`` all ``n_rows`` of them in
    ``n_chunks`` parallel chunks. Example: ``vector_loops(16)`` on AVX-512."""

    @njit(cache=True, error_model="numpy", boundscheck=False)
    def rows(first, last, X, geo, W, nza, ep_args, out):  # type: ignore[no-untyped-def]
        _vector_rows(first, last, X, geo, W, nza, ep_args, out, vzero_f32(lanes), lanes)

    @njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
    def parallel(n_rows, n_chunks, X, geo, W, nza, ep_args, out):  # type: ignore[no-untyped-def]
        for t in prange(n_chunks):
            _vector_rows(t * n_rows // n_chunks, (t + 1) * n_rows // n_chunks, X, geo, W, nza,
                         ep_args, out, vzero_f32(lanes), lanes)  # fmt: skip

    return rows, parallel


# ---------------------------------------------------------------------------------------------
# The general loop
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", boundscheck=False)
def _depthwise_rows(first, last, X, za, geo, W, ep, out, proto):  # type: ignore[no-untyped-def]
    """Output rows ``[first, last)`` (``b * Ho + yo``) of a depthwise conv, any channel
    multiplier.

    ``X`` is the padded NHWC input ``[N, Hp, Wp, C]`` (flat), ``W`` the filter ``[KH*KW, Cout]``
    with ``o = c * mult + m``; ``geo`` holds ``Hp, Wp, C, mult, KH, KW, sh, sw, dh, dw, Ho, Wo``.
    The accumulator has ``proto``'s dtype (int32 for QINT8, int64 for QINT16, float32 for float
    inputs) and sums the taps in (i, j) order.
    """
    hp, wp, c, mult, kh, kw, sh, sw, dh, dw, ho, wo = geo
    cout = c * mult
    acc = np.empty_like(proto)
    for r in range(first, last):
        b = r // ho
        yo = r - b * ho
        for xo in range(wo):
            acc[:] = 0
            for i in range(kh):
                x_row = (b * hp + yo * sh + i * dh) * wp + xo * sw
                for j in range(kw):
                    xb = (x_row + j * dw) * c
                    wb = (i * kw + j) * cout
                    # slices, not offsets: a computed signed index keeps numba's wrap-around
                    # test in the loop, which stops LLVM from vectorising it
                    xs = X[xb : xb + c]
                    ws = W[wb : wb + cout]
                    for ci in range(c):
                        xv = widen_as(xs, ci, acc) - za
                        for m in range(mult):
                            o = ci * mult + m
                            acc[o] += xv * widen_as(ws, o, acc)
            ob = (r * wo + xo) * cout
            dst = out[ob : ob + cout]
            for o in range(cout):
                epilogue_store(acc[o], o, ep, dst, o)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _depthwise_parallel(n_rows, n_chunks, X, za, geo, W, ep, out, proto):  # type: ignore[no-untyped-def]
    for t in prange(n_chunks):
        _depthwise_rows(t * n_rows // n_chunks, (t + 1) * n_rows // n_chunks, X, za, geo, W, ep,
                        out, proto)  # fmt: skip


def general_loops() -> tuple[Any, Any]:
    """``(rows, parallel)`` of the general loop (see :func:`_depthwise_rows`)."""
    return _depthwise_rows, _depthwise_parallel
