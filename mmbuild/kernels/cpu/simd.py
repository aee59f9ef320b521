"""The explicit-SIMD layer: 512-bit vector values in numba and the intrinsics kernels use.

LLVM never emits ``vpdpbusd`` from a numba loop, whatever its shape, and its best auto-vectorised
int8 loop reaches about a sixth of the machine's int8 peak. So the micro-kernels are written with
two numba types backed by LLVM vectors, ``i32x16`` (``<16 x i32>``) and ``f32x16``
(``<16 x float>``), and ``@intrinsic`` functions that emit one instruction (or a few) each. A
micro-kernel keeps its accumulators in local variables of these types, which LLVM keeps in zmm
registers. Three groups:

- int8 products: ``vzero_i32``, ``vload_i32``, ``vbcast4_u8``, ``vsplat_i32``, ``vdpbusd``,
  ``vadd_i32``, ``vstore_i32``;
- float products: ``vzero_f32``, ``vload_f32`` / ``vbcast_f32`` (float32, or fp16 bits widened),
  ``vsplat_f32``, ``vfma``, ``vstore_f32``;
- fused epilogues: ``vcvt_f32``, ``vadd_f32``, ``vmul_f32``, ``vdiv_f32``, ``vselect_lt``,
  ``vrint_f32`` and the masked stores ``vstore_n_{f32,f16,u8,i16}`` (first ``count`` lanes, into
  a byte buffer). These are plain IEEE operations without fast-math flags, so a vector epilogue
  rounds exactly as the same scalar float32 code does.

Indices are in elements of the array's own dtype, loads and stores are unaligned, and nothing is
bounds-checked: the caller guarantees the elements exist.

The vector intrinsics are x86 AVX-512 (``vdpbusd`` needs AVX512-VNNI): call them only from kernels
chosen through :mod:`mmbuild.kernels.cpu.features`.

The scalar helpers work on every target:

- ``h2f(uint16) -> float32`` and ``f2h(float32) -> uint16`` convert IEEE half bits; ``f2h`` rounds
  to nearest even, overflows to infinity and keeps subnormals. They compile to ``vcvtph2ps`` /
  ``vcvtps2ph`` where the target has F16C and to an integer implementation elsewhere
  (:func:`h2f_soft`, :func:`f2h_soft`). Both agree bit for bit with ``numpy.astype`` on every
  non-NaN value. NaN stays NaN with its sign and payload, but comes out *quiet* (the top mantissa
  bit set), as the hardware makes it; numpy keeps a signalling NaN signalling.
- ``load_f32(arr, i)`` / ``store_f32(arr, i, v)`` read and write a float32 element of a float32
  array or of a uint16 array that holds fp16 bits, so one kernel source serves both precisions:
  numba compiles it once per array type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic as _numba_intrinsic
from numba.extending import models, overload, register_model

from mmbuild.kernels.cpu import features

__all__ = [
    "f2h",
    "f2h_soft",
    "f32x16",
    "h2f",
    "h2f_soft",
    "i32x16",
    "load_f32",
    "load_u8_tail",
    "store_f32",
    "vadd_f32",
    "vadd_i32",
    "vbcast4_u8",
    "vbcast_f32",
    "vcvt_f32",
    "vdiv_f32",
    "vdpbusd",
    "vfma",
    "vload_f32",
    "vload_i32",
    "vmul_f32",
    "vrint_f32",
    "vselect_lt",
    "vsplat_f32",
    "vsplat_i32",
    "vstore_f32",
    "vstore_i32",
    "vstore_n_f16",
    "vstore_n_f32",
    "vstore_n_i16",
    "vstore_n_u8",
    "vzero_f32",
    "vzero_i32",
]

# Intrinsics take numba's typing context as a hidden first argument; typed as Any, callers in
# jitted code type-check without an ignore per call.
intrinsic: Callable[..., Any] = _numba_intrinsic

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_HALF = ir.HalfType()
_V16I32 = ir.VectorType(_I32, 16)
_V16F32 = ir.VectorType(_F32, 16)
_V16HALF = ir.VectorType(_HALF, 16)


# ---------------------------------------------------------------------------------------------
# Vector types
# ---------------------------------------------------------------------------------------------
class I32x16Type(types.Type):
    """Sixteen int32 lanes in one zmm register."""

    def __init__(self) -> None:
        super().__init__(name="i32x16")


class F32x16Type(types.Type):
    """Sixteen float32 lanes in one zmm register."""

    def __init__(self) -> None:
        super().__init__(name="f32x16")


i32x16 = I32x16Type()
f32x16 = F32x16Type()


@register_model(I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, _V16I32)


@register_model(F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, _V16F32)


# ---------------------------------------------------------------------------------------------
# Code generation helpers
# ---------------------------------------------------------------------------------------------
def _is_array_of(ty, *dtypes) -> bool:  # type: ignore[no-untyped-def]
    return isinstance(ty, types.Array) and ty.dtype in dtypes


def _element_ptr(context, builder, arrty, arr, idx, idxty, elem_ty):  # type: ignore[no-untyped-def]
    """Pointer to ``arr[idx]``, cast to ``elem_ty*``."""
    data = context.make_array(arrty)(context, builder, value=arr).data
    offset = context.cast(builder, idx, idxty, types.intp)
    return builder.bitcast(builder.gep(data, [offset]), elem_ty.as_pointer())


def _splat(builder, vec_ty, scalar):  # type: ignore[no-untyped-def]
    one = builder.insert_element(ir.Constant(vec_ty, None), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec_ty, None), ir.Constant(_V16I32, [0] * 16))


def _call_llvm(builder, name, ret_ty, args):  # type: ignore[no-untyped-def]
    fnty = ir.FunctionType(ret_ty, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, args)


# ---------------------------------------------------------------------------------------------
# int32 x 16: the int8 GEMM (vpdpbusd)
# ---------------------------------------------------------------------------------------------
@intrinsic
def vzero_i32(typingctx):  # type: ignore[no-untyped-def]
    """All-zero int32 vector."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(_V16I32, None)

    return i32x16(), codegen


@intrinsic
def vsplat_i32(typingctx, x):  # type: ignore[no-untyped-def]
    """An integer scalar (truncated to int32) in all 16 lanes."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _splat(builder, _V16I32, context.cast(builder, args[0], sig.args[0], types.int32))

    return i32x16(x), codegen


@intrinsic
def vload_i32(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """The 64 bytes at ``&arr[idx]`` as 16 int32 lanes (any integer array)."""
    if not (isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], _V16I32)
        return builder.load(ptr, align=1)

    return i32x16(arr, idx), codegen


@intrinsic
def vbcast4_u8(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """The four bytes at ``&arr[idx]`` repeated in every int32 lane (``vpbroadcastd``)."""
    if not _is_array_of(arr, types.uint8, types.int8):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], _I32)
        return _splat(builder, _V16I32, builder.load(ptr, align=1))

    return i32x16(arr, idx), codegen


@intrinsic
def vdpbusd(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """``acc + sum of the four u8(a) * s8(b) products of each lane``, wrapping (``vpdpbusd``).

    ``a`` holds unsigned bytes, ``b`` signed bytes; the four products of a lane fit int32 without
    saturation, and the sum into ``acc`` wraps modulo 2**32 like any int32 addition.
    """
    if not (acc == i32x16 and a == i32x16 and b == i32x16):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _call_llvm(builder, "llvm.x86.avx512.vpdpbusd.512", _V16I32, list(args))

    return i32x16(acc, a, b), codegen


@intrinsic
def vadd_i32(typingctx, a, b):  # type: ignore[no-untyped-def]
    """Lane-wise wrapping int32 addition."""
    if not (a == i32x16 and b == i32x16):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.add(args[0], args[1])

    return i32x16(a, b), codegen


@intrinsic
def vstore_i32(typingctx, arr, idx, v):  # type: ignore[no-untyped-def]
    """Store 16 int32 lanes at ``&arr[idx]`` of an int32 array."""
    if not (_is_array_of(arr, types.int32) and v == i32x16):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], _V16I32)
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()

    return types.void(arr, idx, v), codegen


# ---------------------------------------------------------------------------------------------
# float32 x 16: the float GEMM (FMA), fp16 storage widened on load
# ---------------------------------------------------------------------------------------------
@intrinsic
def vzero_f32(typingctx):  # type: ignore[no-untyped-def]
    """All-zero float32 vector."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(_V16F32, None)

    return f32x16(), codegen


@intrinsic
def vsplat_f32(typingctx, x):  # type: ignore[no-untyped-def]
    """A float scalar (rounded to float32) in all 16 lanes."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _splat(builder, _V16F32, context.cast(builder, args[0], sig.args[0], types.float32))

    return f32x16(x), codegen


@intrinsic
def vload_f32(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """16 elements at ``&arr[idx]`` as float32: a float32 array, or fp16 bits widened exactly."""
    if _is_array_of(arr, types.float32):
        src_ty = _V16F32
    elif _is_array_of(arr, types.uint16):
        src_ty = _V16HALF
    else:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], src_ty)
        value = builder.load(ptr, align=1)
        return value if src_ty is _V16F32 else builder.fpext(value, _V16F32)

    return f32x16(arr, idx), codegen


@intrinsic
def vbcast_f32(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """``arr[idx]`` as float32 in all 16 lanes (float32, or fp16 bits widened exactly)."""
    if _is_array_of(arr, types.float32):
        src_ty = _F32
    elif _is_array_of(arr, types.uint16):
        src_ty = _HALF
    else:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], src_ty)
        value = builder.load(ptr, align=1)
        if src_ty is _HALF:
            value = builder.fpext(value, _F32)
        return _splat(builder, _V16F32, value)

    return f32x16(arr, idx), codegen


@intrinsic
def vfma(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """``acc + a * b`` with one rounding (``llvm.fma`` -> ``vfmadd231ps``)."""
    if not (acc == f32x16 and a == f32x16 and b == f32x16):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        acc_v, a_v, b_v = args
        return _call_llvm(builder, "llvm.fma.v16f32", _V16F32, [a_v, b_v, acc_v])

    return f32x16(acc, a, b), codegen


@intrinsic
def vstore_f32(typingctx, arr, idx, v):  # type: ignore[no-untyped-def]
    """Store 16 float32 lanes at ``&arr[idx]`` of a float32 array."""
    if not (_is_array_of(arr, types.float32) and v == f32x16):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], _V16F32)
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()

    return types.void(arr, idx, v), codegen


# ---------------------------------------------------------------------------------------------
# float32 x 16 arithmetic for the fused epilogues
# ---------------------------------------------------------------------------------------------
# Plain IEEE operations without fast-math flags: LLVM may not fuse or reorder them, so a vector
# epilogue rounds exactly like the same scalar float32 code (and numpy).
@intrinsic
def vcvt_f32(typingctx, v):  # type: ignore[no-untyped-def]
    """int32 lanes -> float32 lanes, rounded to nearest even (``vcvtdq2ps``)."""
    if v != i32x16:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.sitofp(args[0], _V16F32)

    return f32x16(v), codegen


def _binary_f32(op: str):  # type: ignore[no-untyped-def]
    def typer(typingctx, a, b):  # type: ignore[no-untyped-def]
        if not (a == f32x16 and b == f32x16):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            return getattr(builder, op)(args[0], args[1])

        return f32x16(a, b), codegen

    return typer


vadd_f32 = intrinsic(_binary_f32("fadd"))
vadd_f32.__doc__ = "Lane-wise float32 ``a + b``."
vmul_f32 = intrinsic(_binary_f32("fmul"))
vmul_f32.__doc__ = "Lane-wise float32 ``a * b``."
vdiv_f32 = intrinsic(_binary_f32("fdiv"))
vdiv_f32.__doc__ = "Lane-wise float32 ``a / b``."


@intrinsic
def vselect_lt(typingctx, a, b, x, y):  # type: ignore[no-untyped-def]
    """Lane-wise ``x if a < b else y`` (false for NaN, as the scalar comparison)."""
    if not all(t == f32x16 for t in (a, b, x, y)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.select(builder.fcmp_ordered("<", args[0], args[1]), args[2], args[3])

    return f32x16(a, b, x, y), codegen


@intrinsic
def vrint_f32(typingctx, v):  # type: ignore[no-untyped-def]
    """Round each lane to an integral value, half to even (``np.rint``)."""
    if v != f32x16:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _call_llvm(builder, "llvm.rint.v16f32", _V16F32, [args[0]])

    return f32x16(v), codegen


def _store_n(elem_ty, suffix, convert):  # type: ignore[no-untyped-def]
    """An intrinsic storing the first ``count`` lanes of a float32 vector, converted, into a byte
    buffer at element ``idx`` of the converted type (a masked store: nothing else is touched)."""
    vec_ty = ir.VectorType(elem_ty, 16)

    def typer(typingctx, buf, idx, v, count):  # type: ignore[no-untyped-def]
        if not (_is_array_of(buf, types.uint8) and v == f32x16):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            data = context.make_array(sig.args[0])(context, builder, value=args[0]).data
            base = builder.bitcast(data, elem_ty.as_pointer())
            offset = context.cast(builder, args[1], sig.args[1], types.intp)
            ptr = builder.bitcast(builder.gep(base, [offset]), vec_ty.as_pointer())
            n = context.cast(builder, args[3], sig.args[3], types.int32)
            lanes = ir.Constant(_V16I32, list(range(16)))
            mask = builder.icmp_signed("<", lanes, _splat(builder, _V16I32, n))
            value = convert(builder, args[2], vec_ty)
            name = f"llvm.masked.store.v16{suffix}.p0"
            fnty = ir.FunctionType(ir.VoidType(), [vec_ty, ptr.type, _I32, mask.type])
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            builder.call(fn, [value, ptr, ir.Constant(_I32, 1), mask])
            return context.get_dummy_value()

        return types.void(buf, idx, v, count), codegen

    return typer


def _as_float(builder, v, vec_ty):  # type: ignore[no-untyped-def]
    return v


def _as_half(builder, v, vec_ty):  # type: ignore[no-untyped-def]
    return builder.fptrunc(v, vec_ty)


def _as_int(builder, v, vec_ty):  # type: ignore[no-untyped-def]
    return builder.trunc(builder.fptosi(v, _V16I32), vec_ty)


vstore_n_f32 = intrinsic(_store_n(_F32, "f32", _as_float))
vstore_n_f32.__doc__ = "Store ``count`` float32 lanes at float32 element ``idx`` of a byte buffer."
vstore_n_f16 = intrinsic(_store_n(_HALF, "f16", _as_half))
vstore_n_f16.__doc__ = "Store ``count`` lanes as fp16 (nearest even) at half element ``idx``."
vstore_n_u8 = intrinsic(_store_n(ir.IntType(8), "i8", _as_int))
vstore_n_u8.__doc__ = "Store ``count`` lanes (integral, in [0, 255]) as uint8 at byte ``idx``."
vstore_n_i16 = intrinsic(_store_n(_I16, "i16", _as_int))
vstore_n_i16.__doc__ = "Store ``count`` lanes (integral, in int16 range) at int16 element ``idx``."


# ---------------------------------------------------------------------------------------------
# Scalars: bit casts and half <-> float
# ---------------------------------------------------------------------------------------------
@intrinsic
def _f32_to_bits(typingctx, x):  # type: ignore[no-untyped-def]
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], _I32)

    return types.uint32(x), codegen


@intrinsic
def _bits_to_f32(typingctx, x):  # type: ignore[no-untyped-def]
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
    return _bits_to_f32(bits)


def _f2h_soft_impl(f):  # type: ignore[no-untyped-def]
    u = np.int64(_f32_to_bits(np.float32(f)))
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
# Element access that is generic over float32 and fp16-bits arrays
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
    """The ``n < 4`` bytes at ``arr[i:i+n]`` as a little-endian integer, upper bytes zero.

    The K tail of an int8 dot product: it never reads past ``arr[i+n-1]``, and the zero bytes
    meet the zero padding of the packed weights.
    """
    word = np.int64(0)
    for q in range(n):
        word |= np.int64(arr[i + q]) << (8 * q)
    return word
