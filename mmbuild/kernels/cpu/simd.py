"""Scalar helpers of the kernels: IEEE half <-> float32, and element access generic over both.

numba cannot load, store or compute ``np.float16`` on the CPU, so fp16 tensors are uint16 arrays
of half bits, and kernels convert with:

- ``h2f(uint16) -> float32`` and ``f2h(float32) -> uint16``; ``f2h`` rounds to nearest even,
  overflows to infinity and keeps subnormals. They compile to ``vcvtph2ps`` / ``vcvtps2ph``
  where the target has F16C and to an integer implementation elsewhere (:func:`h2f_soft`,
  :func:`f2h_soft`). Both agree bit for bit with ``numpy.astype`` on every non-NaN value. NaN
  stays NaN with its sign and payload, but comes out *quiet* (the top mantissa bit set), as the
  hardware makes it; numpy keeps a signalling NaN signalling. Example: ``f2h(65520.0)`` is
  ``0x7C00`` (infinity: 65520 is the tie between 65504 and 65536, and even wins).
- ``load_f32(arr, i)`` / ``store_f32(arr, i, v)`` read and write a float32 element of a float32
  array or of a uint16 array that holds fp16 bits, so one kernel source serves both precisions:
  numba compiles it once per array type.
- ``load_u8_tail(arr, i, n)``: the last ``n < 4`` bytes of an int8 dot product.

The vector types and intrinsics of the GEMM micro-kernels are in :mod:`.vector` and :mod:`.dot`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from mmbuild.kernels.cpu import features
from mmbuild.kernels.cpu.vector import F32 as _F32
from mmbuild.kernels.cpu.vector import HALF as _HALF
from mmbuild.kernels.cpu.vector import I16 as _I16
from mmbuild.kernels.cpu.vector import I32 as _I32
from mmbuild.kernels.cpu.vector import intrinsic
from mmbuild.kernels.cpu.vector import is_array_of as _is_array_of

__all__ = [
    "bits_to_f32",
    "f2h",
    "f2h_soft",
    "f32_to_bits",
    "h2f",
    "h2f_soft",
    "load_f32",
    "load_f64",
    "load_u8_tail",
    "store_f32",
]


# ---------------------------------------------------------------------------------------------
# Scalars: bit casts and half <-> float
# ---------------------------------------------------------------------------------------------
@intrinsic
def f32_to_bits(typingctx, x):  # type: ignore[no-untyped-def]
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], _I32)

    return types.uint32(x), codegen


@intrinsic
def bits_to_f32(typingctx, x):  # type: ignore[no-untyped-def]
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(context.cast(builder, args[0], sig.args[0], types.uint32), _F32)

    return types.float32(x), codegen


def _h2f_soft_impl(h):  # type: ignore[no-untyped-def]
    x = np.int64(h)
    sign = (x & 0x8000) << 16
    e = (x >> 10) & 0x1F
    m = x & 0x3FF
    if e == 0x1F:
        bits = sign | 0x7F800000 | (m << 13)
        if m != 0:
            bits |= 0x400000  # quiet the NaN, as vcvtph2ps does
    elif e != 0:
        bits = sign | ((e + 112) << 23) | (m << 13)
    elif m == 0:
        bits = sign
    else:
        # a subnormal half is a normal float: shift the mantissa up to its implicit bit
        e = np.int64(1)
        while (m & 0x400) == 0:
            m <<= 1
            e -= 1
        bits = sign | ((e + 112) << 23) | ((m & 0x3FF) << 13)
    return bits_to_f32(bits)


def _f2h_soft_impl(f):  # type: ignore[no-untyped-def]
    u = np.int64(f32_to_bits(np.float32(f)))
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x7F800000:
        if a > 0x7F800000:
            return np.uint16(sign | 0x7E00 | ((a >> 13) & 0x3FF))  # quiet NaN, payload kept
        return np.uint16(sign | 0x7C00)
    if a >= 0x477FF000:
        # 65520 is the tie between 65504 (odd mantissa) and 65536: even wins, which overflows
        return np.uint16(sign | 0x7C00)
    if a >= 0x38800000:
        # normal half: rebias the exponent, round the 13 dropped bits to nearest even; a carry
        # out of the mantissa correctly bumps the exponent
        r = a - 0x38000000
        r = r + 0xFFF + ((r >> 13) & 1)
        return np.uint16(sign | (r >> 13))
    if a < 0x33000000:
        return np.uint16(sign)  # below 2**-25 (2**-25 itself is a tie that rounds to even 0)
    # subnormal half: the value times 2**24, rounded to nearest even
    e = a >> 23
    m = (a & 0x7FFFFF) | 0x800000
    shift = 126 - e
    q = m >> shift
    rem = m & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rem > half or (rem == half and (q & 1) == 1):
        q += 1
    return np.uint16(sign | q)


h2f_soft = njit(cache=True)(_h2f_soft_impl)
h2f_soft.__doc__ = "fp16 bits -> float32 with integer operations only (see module docstring)."
f2h_soft = njit(cache=True)(_f2h_soft_impl)
f2h_soft.__doc__ = "float32 -> fp16 bits, round to nearest even, integer operations only."


@intrinsic
def h2f(typingctx, h):  # type: ignore[no-untyped-def]
    """fp16 bits (uint16) -> float32, exact."""
    if h != types.uint16:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        if features.has_hw_half():
            return builder.fpext(builder.bitcast(args[0], _HALF), _F32)
        return context.compile_internal(builder, _h2f_soft_impl, sig, args)

    return types.float32(h), codegen


@intrinsic
def f2h(typingctx, f):  # type: ignore[no-untyped-def]
    """float32 -> fp16 bits (uint16), rounding to nearest even."""
    if f != types.float32:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        if features.has_hw_half():
            return builder.bitcast(builder.fptrunc(args[0], _HALF), _I16)
        return context.compile_internal(builder, _f2h_soft_impl, sig, args)

    return types.uint16(f), codegen


# ---------------------------------------------------------------------------------------------
# Element access that is generic over float32 and fp16-bits arrays (and, as float64, codes)
# ---------------------------------------------------------------------------------------------
def load_f32(arr: np.ndarray, i: int) -> np.float32:
    """``arr[i]`` as float32, where ``arr`` is float32 or uint16 holding fp16 bits."""
    if arr.dtype == np.uint16:
        return np.float32(arr[i : i + 1].view(np.float16)[0])
    return np.float32(arr[i])


def store_f32(arr: np.ndarray, i: int, v: float | np.floating) -> None:
    """``arr[i] = v``, rounding to fp16 bits (nearest even) when ``arr`` is uint16."""
    if arr.dtype == np.uint16:
        arr[i : i + 1].view(np.float16)[0] = np.float16(np.float32(v))
    else:
        arr[i] = np.float32(v)


def load_f64(arr: np.ndarray, i: int) -> np.float64:
    """``arr[i]`` as float64: a float64 or integer element directly (a quantized code of
    uint8 or int16 included), a float32 or fp16-bits one through :func:`load_f32`."""
    if arr.dtype == np.float64 or (arr.dtype.kind in "iu" and arr.dtype != np.uint16):
        return np.float64(arr[i])
    return np.float64(load_f32(arr, i))


@overload(load_f64)
def _load_f64_overload(arr, i):  # type: ignore[no-untyped-def]
    if not isinstance(arr, types.Array):
        return None
    if arr.dtype == types.float64 or (
        isinstance(arr.dtype, types.Integer) and arr.dtype != types.uint16
    ):
        return lambda arr, i: np.float64(arr[i])
    return lambda arr, i: np.float64(load_f32(arr, i))


@overload(load_f32)
def _load_f32_overload(arr, i):  # type: ignore[no-untyped-def]
    if _is_array_of(arr, types.float32):
        return lambda arr, i: arr[i]
    if _is_array_of(arr, types.uint16):
        return lambda arr, i: h2f(arr[i])
    return None


@overload(store_f32)
def _store_f32_overload(arr, i, v):  # type: ignore[no-untyped-def]
    if _is_array_of(arr, types.float32):

        def store_float(arr, i, v):  # type: ignore[no-untyped-def]
            arr[i] = np.float32(v)

        return store_float
    if _is_array_of(arr, types.uint16):

        def store_half(arr, i, v):  # type: ignore[no-untyped-def]
            arr[i] = f2h(np.float32(v))

        return store_half
    return None


@njit
def load_u8_tail(arr, i, n):  # type: ignore[no-untyped-def]
    """The ``n < 4`` bytes at ``arr[i:i+n]`` as the low bytes of a little-endian integer.

    The K tail of an int8 dot product, whose upper bytes meet the zero padding of the packed
    weights: where the array goes on (any tail but the array's last), all four bytes
    ``arr[i:i+4]`` in one load, the ones past the tail whatever the array holds (an integer
    times a zero weight adds nothing); at the array's end the ``n`` bytes alone, upper bytes
    zero, so that it never reads past ``arr[i+n-1]``. Example: bytes (7, 9, 200, 1) and n = 2
    give 0x01c80907 (then multiplied by weights (w0, w1, 0, 0)), or 0x0907 at the end.
    """
    if i + 4 <= arr.size:
        return (np.int64(arr[i]) | np.int64(arr[i + 1]) << 8 | np.int64(arr[i + 2]) << 16
                | np.int64(arr[i + 3]) << 24)  # fmt: skip
    word = np.int64(0)
    for q in range(n):
        word |= np.int64(arr[i + q]) << (8 * q)
    return word
