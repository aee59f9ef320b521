"""Input preparation at run time: an NHWC input converted into the buffer a kernel reads.

:func:`bind_prepare_input` quantizes a float input (or copies it, for float kernels) into a
buffer padded with the zero point (0.0 for float), optionally one channel group, optionally
with each output column's ``KW`` taps side by side (for a dilation along W, which the implicit
GEMM cannot stride over). Quantization is ``quant.params.quantize``'s arithmetic exactly:
``clip(rint(x / scale) + za)`` in float32, NaN to the zero point. An input that arrives
already quantized in the buffer's type (a tensor carried between quantized nodes,
``mmbuild.passes.carry``) is copied as it is, and the padding still takes the zero point.
:func:`bind_quantize_flat` quantizes a whole tensor into a new buffer.

Example: a [1, 2, 2, 1] float input, ``pads=(1, 1)``, a uint8 [1, 4, 4, 1] buffer, scale 0.5
and zero point 128: the input's values 1.0 become 130, and the ring around them holds 128.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from numba import njit, prange

from mmbuild.errors import Code, MMError
from mmbuild.kernels.cpu.convert import convert_element, store_output
from mmbuild.kernels.table import in_order

__all__ = ["PARALLEL_MIN_ELEMENTS", "PREPARE_FNS", "bind_prepare_input", "bind_quantize_flat"]

#: Elements of a prepared input above which :func:`bind_prepare_input` splits the rows over
#: threads. Quantizing float32 to uint8 on an AVX-512 Xeon, 2 threads: 16K elements take 8.5 us
#: serial and 6.6 us split, 4K elements 2.5 us and 3.7 us.
PARALLEL_MIN_ELEMENTS = 1 << 14


@njit(cache=True, error_model="numpy", boundscheck=False)
def _prepare_rows(first, last, src, geo, dst, qp):  # type: ignore[no-untyped-def]
    """Rows ``[first, last)`` (``b * hp + y``) of :func:`bind_prepare_input`; ``geo`` holds
    ``h, w, c, c0, cg, pt, pl, hp, wd, kw, sw, dw``, ``qp`` the float32 scale and zero point."""
    h, w, c, c0, cg, pt, pl, hp, wd, kw, sw, dw = geo
    scale, zp = qp[0], qp[1]
    row = wd * kw * cg
    # slices, not computed offsets: numba then knows the indices are non-negative, drops its
    # wrap-around test, and LLVM vectorises the channel loops (the conversion, the division and
    # the rounding in SIMD lanes)
    for r in range(first, last):
        b = r // hp
        ys = r - b * hp - pt
        o = r * row
        if ys < 0 or ys >= h:
            _fill_zero(dst[o : o + row], scale, zp)
            continue
        s_row = (b * h + ys) * w
        if kw == 1 and cg == c:  # a plain padded copy: zeros, one contiguous run, zeros
            left, inner = min(pl, wd) * c, max(min(w, wd - pl), 0) * c
            _fill_zero(dst[o : o + left], scale, zp)
            d, v = dst[o + left : o + left + inner], src[s_row * c : s_row * c + inner]
            for i in range(inner):
                convert_element(v, i, d, i, scale, zp)
            _fill_zero(dst[o + left + inner : o + row], scale, zp)
            continue
        for x in range(wd):
            for j in range(kw):
                xs = x * sw + j * dw - pl
                d = dst[o : o + cg]
                if xs < 0 or xs >= w:
                    _fill_zero(d, scale, zp)
                else:
                    s = (s_row + xs) * c + c0
                    v = src[s : s + cg]
                    for ch in range(cg):
                        convert_element(v, ch, d, ch, scale, zp)
                o += cg


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _fill_zero(d, scale, zp):  # type: ignore[no-untyped-def]
    """Every element of ``d`` set to the converted 0.0 (the zero point when quantized)."""
    for i in range(d.size):
        store_output(d, i, 0.0, scale, zp)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _prepare_parallel(n_rows, n_chunks, src, geo, dst, qp):  # type: ignore[no-untyped-def]
    for t in prange(n_chunks):
        _prepare_rows(t * n_rows // n_chunks, (t + 1) * n_rows // n_chunks, src, geo, dst, qp)


#: The dispatchers :func:`bind_prepare_input` runs (for ``Runner.fns``).
PREPARE_FNS = (_prepare_rows, _prepare_parallel)


def bind_prepare_input(
    src: np.ndarray,
    dst: np.ndarray,
    *,
    pads: tuple[int, int] = (0, 0),
    scale: Any = 1.0,
    zero_point: int = 0,
    channels: tuple[int, int] | None = None,
    taps: tuple[int, int, int] = (1, 1, 1),
    qparams: np.ndarray | None = None,
) -> Callable[[], None]:
    """Fill ``dst [N, Hp, Wd, KW * Cg]`` from the NHWC input ``src [N, H, W, C]`` (float32 or
    fp16 bits): ``dst[b, y, x, j, c] = convert(src[b, y - pt, x * sw + j * dw - pl, c0 + c])``,
    and the converted 0.0 (the zero point; 0.0 for a float ``dst``) where that lies outside.
    Checked and bound once: the result fills ``dst`` from ``src``'s current values when called.

    ``pads = (pt, pl)``; ``channels = (c0, Cg)`` takes one group's channels (all by default);
    ``taps = (KW, sw, dw)`` lays each output column's kernel taps side by side (the default
    ``(1, 1, 1)`` is a plain padded copy with ``Wd`` columns). ``dst`` is uint8 or int16
    (quantized with ``scale`` and the carried ``zero_point``) or float32 / fp16 bits (copied).
    ``qparams``, a float32 array ``[scale, zero_point]`` that replaces both, is read at every
    call: a dynamically quantized input (:class:`DynamicInput`) rewrites its scale between runs.
    Example: a [1, 2, 2, 1] input, ``pads=(1, 1)`` and a [1, 4, 4, 1] ``dst`` is the input
    framed by a ring of converted zeros.
    """
    n, h, w, c = src.shape
    c0, cg = channels if channels is not None else (0, c)
    kw, sw, dw = taps
    hp, wd = dst.shape[1], dst.shape[2]
    if dst.shape != (n, hp, wd, kw * cg) or not (dst.flags.c_contiguous and src.flags.c_contiguous):
        raise MMError(
            f"bind_prepare_input: dst {dst.shape} does not fit src {src.shape}", Code.INTERNAL
        )
    geo = (h, w, c, c0, cg, pads[0], pads[1], hp, wd, kw, sw, dw)
    s, d = src.reshape(-1), dst.reshape(-1)
    qp = np.array([scale, zero_point], np.float32) if qparams is None else qparams
    if qp.dtype != np.float32 or qp.shape != (2,):
        raise MMError(f"bind_prepare_input: qparams must be float32 [2], not {qp!r}", Code.INTERNAL)
    rows = n * hp
    if d.size >= PARALLEL_MIN_ELEMENTS and rows > 1:
        return partial(_prepare_parallel, rows, min(rows, 64), s, geo, d, qp)
    return partial(_prepare_rows, 0, rows, s, geo, d, qp)


def bind_quantize_flat(
    x: np.ndarray, scale: Any, za: int, dtype: Any, qparams: np.ndarray | None = None
) -> tuple[np.ndarray, Callable[[], None]]:
    """A new ``dtype`` (uint8 or int16) array of ``x``'s shape and the call that fills it with
    ``x`` (float32 or fp16 bits) quantized, rows split over the threads when large
    (``qparams`` as for :func:`bind_prepare_input`)."""
    cols = x.shape[-1] if x.ndim else 1
    rows = x.size // cols if cols else 0
    out = np.empty(x.shape, dtype)
    if not out.size:
        return out, in_order([])  # nothing to fill
    call = bind_prepare_input(x.reshape(rows, 1, 1, cols), out.reshape(rows, 1, 1, cols),
                              scale=scale, zero_point=za, qparams=qparams)  # fmt: skip
    return out, call
