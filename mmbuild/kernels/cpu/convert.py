"""Whole-array conversions between float32, fp16 bits and the quantized integer types.

One jitted loop per conversion serves every dtype pair by type specialisation: ``load_f32`` and
``store_f32`` (in :mod:`.simd`) read and write float32 or fp16 bits, and :func:`store_output`
writes a float32 value in any output type of a kernel, quantizing where the type is an integer.
The GEMM epilogues store through the same :func:`store_output`, so a fused requantisation and a
stand-alone one agree bit for bit.

Arithmetic, in float32 with no fused or reassociated operations (numba's default, not fastmath):

- quantize: ``q = clip(rint(x / scale) + zero_point, lo, hi)`` with ``rint`` half to even and
  ``[lo, hi]`` = ``[0, 255]`` for uint8, ``[-32768, 32767]`` for int16. It divides by the float32
  scale, as the numpy reference does; multiplying by a reciprocal would differ in the last bit.
  Worked through: x = 1.0, scale = 0.02, zero point 128: 1.0 / 0.02 = 50.0 (49.99999888 rounded
  to float32), rint -> 50, + 128 -> 178. NaN quantizes to an unspecified value.
- dequantize: ``x = float32(q - zero_point) * scale``; the difference is exact, so the result has
  one rounding.
- fp16: round to nearest even, overflow to infinity; see :mod:`.simd` for NaN payloads.

Arrays over ``PARALLEL_MIN_SIZE`` elements are split into chunks over the threads.

Numba keys its on-disk cache on the file of each jitted function only: after editing
:mod:`.simd`, clear the numba cache (``NUMBA_CACHE_DIR`` or the ``__pycache__`` beside this
file) so these loops are recompiled against it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from mmbuild.errors import MMError
from mmbuild.kernels.cpu.simd import load_f32, store_f32

__all__ = [
    "PARALLEL_MIN_SIZE",
    "convert_element",
    "dequantize",
    "f16_to_f32",
    "f32_to_f16",
    "quantize",
    "store_output",
]

PARALLEL_MIN_SIZE = 1 << 20
_CHUNK = 1 << 16

_U8_RANGE = (0, 255)
_I16_RANGE = (-32768, 32767)


# ---------------------------------------------------------------------------------------------
# The one scalar store every kernel output goes through
# ---------------------------------------------------------------------------------------------
def store_output(
    out: np.ndarray, i: int, y: float | np.floating, scale: float, zero_point: float
) -> None:
    """Store float32 ``y`` at ``out[i]`` in the output's type.

    float32 and uint16 (fp16 bits) store the value; uint8 and int16 store
    ``clip(rint(y / scale) + zero_point)`` (NaN stores ``zero_point``, as ``quant.params``
    does); ``scale`` and ``zero_point`` are float32.
    """
    y32 = np.float32(y)
    if out.dtype in (np.float32, np.uint16):
        store_f32(out, i, y32)
        return
    lo, hi = _U8_RANGE if out.dtype == np.uint8 else _I16_RANGE
    q = np.rint(y32 / np.float32(scale)) + np.float32(zero_point)
    out[i] = np.clip(q, lo, hi)


def _quantizing_store(lo: float, hi: float):  # type: ignore[no-untyped-def]
    flo = np.float32(lo)
    fhi = np.float32(hi)

    def store(out, i, y, scale, zero_point):  # type: ignore[no-untyped-def]
        q = np.rint(np.float32(y) / scale)
        if q != q:  # NaN has no integer value: quant.params sends it to the zero point
            q = np.float32(0)
        q = q + zero_point
        if q < flo:
            q = flo
        elif q > fhi:
            q = fhi
        out[i] = q

    return store


@overload(store_output)
def _store_output_overload(out, i, y, scale, zero_point):  # type: ignore[no-untyped-def]
    if not isinstance(out, types.Array):
        return None
    if out.dtype in (types.float32, types.uint16):

        def store(out, i, y, scale, zero_point):  # type: ignore[no-untyped-def]
            store_f32(out, i, y)

        return store
    if out.dtype == types.uint8:
        return _quantizing_store(*_U8_RANGE)
    if out.dtype == types.int16:
        return _quantizing_store(*_I16_RANGE)
    return None


def convert_element(
    src: np.ndarray, i: int, dst: np.ndarray, j: int, scale: float, zero_point: float
) -> None:
    """``dst[j] = src[i]`` converted to ``dst``'s type: :func:`store_output` of the float32
    value (float32 or fp16 bits in ``src``), or the element as it is when both hold one type (a
    quantized tensor that arrives already carried in uint8 or int16 with this scale and zero
    point is copied, not quantized twice)."""
    if src.dtype == dst.dtype:
        dst[j] = src[i]
        return
    store_output(dst, j, load_f32(src, i), scale, zero_point)


@overload(convert_element)
def _convert_element_overload(src, i, dst, j, scale, zero_point):  # type: ignore[no-untyped-def]
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
        return None
    if src.dtype == dst.dtype:

        def copy(src, i, dst, j, scale, zero_point):  # type: ignore[no-untyped-def]
            dst[j] = src[i]

        return copy

    def convert(src, i, dst, j, scale, zero_point):  # type: ignore[no-untyped-def]
        store_output(dst, j, load_f32(src, i), scale, zero_point)

    return convert


# ---------------------------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", boundscheck=False)
def _convert_range(src, dst, scale, zero_point, start, stop):  # type: ignore[no-untyped-def]
    for i in range(start, stop):
        store_output(dst, i, load_f32(src, i), scale, zero_point)


@njit(cache=True, error_model="numpy", boundscheck=False)
def _dequantize_range(src, scale, zero_point, dst, start, stop):  # type: ignore[no-untyped-def]
    for i in range(start, stop):
        store_f32(dst, i, np.float32(np.int64(src[i]) - zero_point) * scale)


@njit(cache=True, error_model="numpy", boundscheck=False)
def _convert_serial(src, dst, scale, zero_point):  # type: ignore[no-untyped-def]
    _convert_range(src, dst, scale, zero_point, 0, src.size)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _convert_parallel(src, dst, scale, zero_point):  # type: ignore[no-untyped-def]
    n_chunks = (src.size + _CHUNK - 1) // _CHUNK
    for c in prange(n_chunks):
        _convert_range(src, dst, scale, zero_point, c * _CHUNK, min(src.size, (c + 1) * _CHUNK))


@njit(cache=True, error_model="numpy", boundscheck=False)
def _dequantize_serial(src, scale, zero_point, dst):  # type: ignore[no-untyped-def]
    _dequantize_range(src, scale, zero_point, dst, 0, src.size)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _dequantize_parallel(src, scale, zero_point, dst):  # type: ignore[no-untyped-def]
    n_chunks = (src.size + _CHUNK - 1) // _CHUNK
    for c in prange(n_chunks):
        _dequantize_range(src, scale, zero_point, dst, c * _CHUNK, min(src.size, (c + 1) * _CHUNK))


# ---------------------------------------------------------------------------------------------
# Public wrappers
# ---------------------------------------------------------------------------------------------
def _flat(arr: np.ndarray, what: str, allowed: tuple[type, ...]) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype.type not in allowed:
        names = ", ".join(np.dtype(t).name for t in allowed)
        got = arr.dtype.name if isinstance(arr, np.ndarray) else type(arr).__name__
        raise MMError(f"{what}: expected an array of {names}, got {got}")
    if not arr.flags.c_contiguous:
        raise MMError(f"{what}: the array must be C-contiguous")
    flat = arr.reshape(-1)
    return flat.view(np.uint16) if flat.dtype == np.float16 else flat


def _check_sizes(src: np.ndarray, out: np.ndarray) -> None:
    if src.size != out.size:
        raise MMError(f"source has {src.size} elements but out has {out.size}")


def _check_zero_point(out: np.ndarray, zero_point: int) -> None:
    lo, hi = _U8_RANGE if out.dtype == np.uint8 else _I16_RANGE
    if not lo <= int(zero_point) <= hi:
        raise MMError(f"zero point {zero_point} is outside [{lo}, {hi}] of {out.dtype.name}")


def _check_scale(scale: float) -> np.float32:
    s = np.float32(scale)
    if not (np.isfinite(s) and s > 0):
        raise MMError(f"scale must be a finite positive float32, got {scale!r}")
    return s


def _run_convert(src: np.ndarray, out: np.ndarray, scale: np.float32, zero_point: int) -> None:
    kernel = _convert_parallel if src.size >= PARALLEL_MIN_SIZE else _convert_serial
    kernel(src, out, scale, np.float32(zero_point))


def f16_to_f32(src: np.ndarray, out: np.ndarray) -> None:
    """Widen fp16 (``np.float16`` or uint16 bits) into float32 ``out``; exact."""
    s = _flat(src, "f16_to_f32 source", (np.float16, np.uint16))
    o = _flat(out, "f16_to_f32 out", (np.float32,))
    _check_sizes(s, o)
    _run_convert(s, o, np.float32(1), 0)


def f32_to_f16(src: np.ndarray, out: np.ndarray) -> None:
    """Round float32 into fp16 ``out`` (``np.float16`` or uint16 bits), nearest even."""
    s = _flat(src, "f32_to_f16 source", (np.float32,))
    o = _flat(out, "f32_to_f16 out", (np.float16, np.uint16))
    _check_sizes(s, o)
    _run_convert(s, o, np.float32(1), 0)


def quantize(src: np.ndarray, scale: float, zero_point: int, out: np.ndarray) -> None:
    """``out = clip(rint(src / scale) + zero_point)`` into uint8 or int16 ``out``.

    ``src`` is float32, ``np.float16`` or uint16 fp16 bits. A symmetric int8 tensor is the uint8
    result with zero point 128 (``q_int8 = q_uint8 - 128``).
    """
    s = _flat(src, "quantize source", (np.float32, np.float16, np.uint16))
    o = _flat(out, "quantize out", (np.uint8, np.int16))
    _check_sizes(s, o)
    _check_zero_point(o, zero_point)
    _run_convert(s, o, _check_scale(scale), zero_point)


def dequantize(src: np.ndarray, scale: float, zero_point: int, out: np.ndarray) -> None:
    """``out = float32(src - zero_point) * scale`` into float32 or fp16 ``out``.

    ``src`` is uint8, int8 or int16; ``out`` float32, ``np.float16`` or uint16 fp16 bits (the
    float32 product rounded once more to half).
    """
    s = _flat(src, "dequantize source", (np.uint8, np.int8, np.int16))
    o = _flat(out, "dequantize out", (np.float32, np.float16, np.uint16))
    _check_sizes(s, o)
    sc = _check_scale(scale)
    kernel = _dequantize_parallel if s.size >= PARALLEL_MIN_SIZE else _dequantize_serial
    kernel(s, sc, np.int64(zero_point), o)
