"""SIMD vectors in numba: one vector type for every width, and the intrinsics the kernels use.

LLVM never emits ``vpdpbusd`` or a register-tiled GEMM from a numba loop, so the micro-kernels
are written with numba types backed by LLVM vectors (:class:`Vec`: ``i32x16`` is ``<16 x i32>``,
``f32x8`` is ``<8 x float>``) and ``@intrinsic`` functions that emit one instruction (or a few)
each. A micro-kernel keeps its accumulators in locals of these types, which LLVM keeps in
registers. The same intrinsics serve every width: the instruction-set level picks the width (16
lanes for AVX-512, 8 for AVX2) and the kernel source stays the same.

- Constructors take the lane count as their last argument, either a compile-time integer
  (``vzero_f32(8)``, ``vload_f32(arr, i, LANES)`` with ``LANES`` a module constant) or a vector
  whose width to copy (``vsplat_f32(x, y)``: ``x`` in every lane of a vector as wide as ``y``):
  ``vzero_i32``, ``vzero_i64``, ``vsplat_i32``, ``vload_i32``, ``vload_i64``, ``vzero_f32``,
  ``vsplat_f32``, ``vload_f32`` (float32, fp16 bits or 8-bit integers, widened exactly),
  ``vbcast_f32``.
- Lane-wise operations take their width from their operands: ``vadd_i32``, ``vadd_i64``,
  ``vcvt_f32`` (from int32 or int64), ``vfma``, ``vadd_f32``, ``vmul_f32``, ``vdiv_f32``,
  ``vselect_lt``, ``vrint_f32``.
- Stores: ``vstore_i32``, ``vstore_i64``, ``vstore_f32`` (all lanes, into an array of that
  type) and the masked ``vstore_n_{f32,f16,u8,i16}`` (the first ``count`` lanes, converted, into
  a byte buffer; a full vector takes a plain store, so AVX2, which has no masked byte or word
  stores, pays for the mask only at a tile's right edge).

The float operations are plain IEEE operations without fast-math flags, so a vector epilogue
rounds exactly as the same scalar float32 code does. Indices are in elements of the array's own
dtype, loads and stores are unaligned, and nothing is bounds-checked: the caller guarantees that
the elements exist. Call these only from kernels chosen through :mod:`.features`: a vector wider
than the CPU's registers still compiles (LLVM splits it) but is slow, and the int8 dot products of
:mod:`.dot` abort the process on a CPU without their instructions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic as _numba_intrinsic
from numba.extending import models, register_model

__all__ = [
    "Vec",
    "f32x8",
    "f32x16",
    "i32x8",
    "i32x16",
    "vadd_f32",
    "vadd_i32",
    "vadd_i64",
    "vbcast_f32",
    "vcvt_f32",
    "vdiv_f32",
    "vec",
    "vfma",
    "vload_f32",
    "vload_i32",
    "vload_i64",
    "vmul_f32",
    "vrint_f32",
    "vselect_lt",
    "vsplat_f32",
    "vsplat_i32",
    "vstore_f32",
    "vstore_i32",
    "vstore_i64",
    "vstore_n_f16",
    "vstore_n_f32",
    "vstore_n_i16",
    "vstore_n_u8",
    "vzero_f32",
    "vzero_i32",
    "vzero_i64",
]

# Intrinsics take numba's typing context as a hidden first argument; typed as Any, callers in
# jitted code type-check without an ignore per call.
intrinsic: Callable[..., Any] = _numba_intrinsic

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32, HALF = ir.FloatType(), ir.HalfType()
_ELEMENTS = {"i8": I8, "i16": I16, "i32": I32, "i64": I64, "f32": F32}


class Vec(types.Type):
    """``lanes`` elements of ``element`` (``"i16"``, ``"i32"``, ``"i64"``, ``"f32"``) in one LLVM
    vector."""

    def __init__(self, element: str, lanes: int) -> None:
        self.element = element
        self.lanes = lanes
        super().__init__(name=f"{element}x{lanes}")

    @property
    def llvm_type(self) -> ir.VectorType:
        return ir.VectorType(_ELEMENTS[self.element], self.lanes)


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, fe_type.llvm_type)


_VECS: dict[tuple[str, int], Vec] = {}


def vec(element: str, lanes: int) -> Vec:
    """The one numba type of ``lanes`` ``element`` lanes (types compare by identity)."""
    key = (element, lanes)
    if key not in _VECS:
        _VECS[key] = Vec(element, lanes)
    return _VECS[key]


i32x16, f32x16, i32x8, f32x8 = vec("i32", 16), vec("f32", 16), vec("i32", 8), vec("f32", 8)


# ---------------------------------------------------------------------------------------------
# Code generation helpers
# ---------------------------------------------------------------------------------------------
def lanes_of(ty: Any) -> int | None:
    """The lane count a constructor is asked for: a literal integer, or a vector's width."""
    if isinstance(ty, types.IntegerLiteral) and ty.literal_value in (1, 4, 8, 16, 32):
        return int(ty.literal_value)
    if isinstance(ty, Vec):
        return ty.lanes
    return None


def is_vec(ty: Any, element: str) -> bool:
    return isinstance(ty, Vec) and ty.element == element


def is_array_of(ty: Any, *dtypes: Any) -> bool:
    return isinstance(ty, types.Array) and ty.dtype in dtypes


def element_ptr(context, builder, arrty, arr, idx, idxty, elem_ty):  # type: ignore[no-untyped-def]
    """Pointer to ``arr[idx]``, cast to ``elem_ty*``."""
    data = context.make_array(arrty)(context, builder, value=arr).data
    offset = context.cast(builder, idx, idxty, types.intp)
    return builder.bitcast(builder.gep(data, [offset]), elem_ty.as_pointer())


def splat(builder, vec_ty, scalar):  # type: ignore[no-untyped-def]
    """``scalar`` in every lane of ``vec_ty``."""
    n = vec_ty.count
    one = builder.insert_element(ir.Constant(vec_ty, None), scalar, ir.Constant(I32, 0))
    mask = ir.Constant(ir.VectorType(I32, n), [0] * n)
    return builder.shuffle_vector(one, ir.Constant(vec_ty, None), mask)


def call_llvm(builder, name, ret_ty, args):  # type: ignore[no-untyped-def]
    fnty = ir.FunctionType(ret_ty, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, args)


# ---------------------------------------------------------------------------------------------
# Constructors
# ---------------------------------------------------------------------------------------------
def _zero(element: str):  # type: ignore[no-untyped-def]
    def typer(typingctx, lanes):  # type: ignore[no-untyped-def]
        n = lanes_of(lanes)
        if n is None:
            return None
        ty = vec(element, n)

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            return ir.Constant(ty.llvm_type, None)

        return ty(lanes), codegen

    return typer


vzero_i32 = intrinsic(_zero("i32"))
vzero_i32.__doc__ = "All-zero int32 vector of ``lanes`` lanes."
vzero_i64 = intrinsic(_zero("i64"))
vzero_i64.__doc__ = "All-zero int64 vector of ``lanes`` lanes."
vzero_f32 = intrinsic(_zero("f32"))
vzero_f32.__doc__ = "All-zero float32 vector of ``lanes`` lanes."


def _splat_of(element: str, scalar: Any, as_type: Any):  # type: ignore[no-untyped-def]
    def typer(typingctx, x, lanes):  # type: ignore[no-untyped-def]
        n = lanes_of(lanes)
        if n is None or not isinstance(x, scalar):
            return None
        ty = vec(element, n)

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            value = context.cast(builder, args[0], sig.args[0], as_type)
            return splat(builder, ty.llvm_type, value)

        return ty(x, lanes), codegen

    return typer


vsplat_i32 = intrinsic(_splat_of("i32", types.Integer, types.int32))
vsplat_i32.__doc__ = "An integer scalar (truncated to int32) in every lane."
vsplat_f32 = intrinsic(_splat_of("f32", types.Float, types.float32))
vsplat_f32.__doc__ = "A float scalar (rounded to float32) in every lane."


def _load_int(element: str):  # type: ignore[no-untyped-def]
    def typer(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
        n = lanes_of(lanes)
        if n is None or not (isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer)):
            return None
        ty = vec(element, n)

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            ptr = element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                              ty.llvm_type)  # fmt: skip
            return builder.load(ptr, align=1)

        return ty(arr, idx, lanes), codegen

    return typer


vload_i32 = intrinsic(_load_int("i32"))
vload_i32.__doc__ = "The ``4 * lanes`` bytes at ``&arr[idx]`` as int32 lanes (any integer array)."
vload_i64 = intrinsic(_load_int("i64"))
vload_i64.__doc__ = "The ``8 * lanes`` bytes at ``&arr[idx]`` as int64 lanes (any integer array)."


def _float_source(arr: Any) -> Any:
    """The LLVM element type a float load reads: float32, or half for fp16 bits (uint16)."""
    if is_array_of(arr, types.float32):
        return F32
    if is_array_of(arr, types.uint16):
        return HALF
    return None


@intrinsic
def vload_f32(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
    """``lanes`` elements at ``&arr[idx]`` as float32: a float32 array, fp16 bits widened
    exactly (``vcvtph2ps``), or uint8 / int8 values converted exactly (``vpmovzxbd`` /
    ``vpmovsxbd``, ``vcvtdq2ps``)."""
    n, src = lanes_of(lanes), _float_source(arr)
    signed = is_array_of(arr, types.int8)
    if src is None and (signed or is_array_of(arr, types.uint8)):
        src = I8
    if n is None or src is None:
        return None
    ty = vec("f32", n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        src_ty = ir.VectorType(src, n)
        ptr = element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], src_ty)
        value = builder.load(ptr, align=1)
        if src is I8:
            wide = ir.VectorType(I32, n)
            value = builder.sext(value, wide) if signed else builder.zext(value, wide)
            return builder.sitofp(value, ty.llvm_type)
        return value if src is F32 else builder.fpext(value, ty.llvm_type)

    return ty(arr, idx, lanes), codegen


@intrinsic
def vbcast_f32(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
    """``arr[idx]`` as float32 in every lane (float32, or fp16 bits widened exactly)."""
    n, src = lanes_of(lanes), _float_source(arr)
    if n is None or src is None:
        return None
    ty = vec("f32", n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], src)
        value = builder.load(ptr, align=1)
        if src is HALF:
            value = builder.fpext(value, F32)
        return splat(builder, ty.llvm_type, value)

    return ty(arr, idx, lanes), codegen


# ---------------------------------------------------------------------------------------------
# Lane-wise operations
# ---------------------------------------------------------------------------------------------
def _binary(element: str, op: str):  # type: ignore[no-untyped-def]
    """An intrinsic applying the IR builder's ``op`` lane-wise to two equal vectors."""

    def typer(typingctx, a, b):  # type: ignore[no-untyped-def]
        if not (is_vec(a, element) and a == b):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            return getattr(builder, op)(args[0], args[1])

        return a(a, b), codegen

    return typer


vadd_i32 = intrinsic(_binary("i32", "add"))
vadd_i32.__doc__ = "Lane-wise wrapping int32 addition."
vadd_i64 = intrinsic(_binary("i64", "add"))
vadd_i64.__doc__ = "Lane-wise wrapping int64 addition."


@intrinsic
def vcvt_f32(typingctx, v):  # type: ignore[no-untyped-def]
    """int32 or int64 lanes -> float32 lanes, rounded to nearest even (``vcvtdq2ps``; int64
    lanes without AVX-512 DQ take a few instructions each, still correctly rounded)."""
    if not (is_vec(v, "i32") or is_vec(v, "i64")):
        return None
    ty = vec("f32", v.lanes)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.sitofp(args[0], ty.llvm_type)

    return ty(v), codegen


@intrinsic
def vfma(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """``acc + a * b`` with one rounding (``llvm.fma`` -> ``vfmadd231ps``)."""
    if not (is_vec(acc, "f32") and acc == a == b):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        acc_v, a_v, b_v = args
        return call_llvm(builder, f"llvm.fma.v{acc.lanes}f32", acc.llvm_type, [a_v, b_v, acc_v])

    return acc(acc, a, b), codegen


# The float ones are plain IEEE operations without fast-math flags: LLVM may not fuse or reorder
# them, so a vector epilogue rounds exactly like the same scalar float32 code (and numpy).
vadd_f32 = intrinsic(_binary("f32", "fadd"))
vadd_f32.__doc__ = "Lane-wise float32 ``a + b``."
vmul_f32 = intrinsic(_binary("f32", "fmul"))
vmul_f32.__doc__ = "Lane-wise float32 ``a * b``."
vdiv_f32 = intrinsic(_binary("f32", "fdiv"))
vdiv_f32.__doc__ = "Lane-wise float32 ``a / b``."


@intrinsic
def vselect_lt(typingctx, a, b, x, y):  # type: ignore[no-untyped-def]
    """Lane-wise ``x if a < b else y`` (false for NaN, as the scalar comparison)."""
    if not (is_vec(a, "f32") and a == b == x == y):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.select(builder.fcmp_ordered("<", args[0], args[1]), args[2], args[3])

    return a(a, b, x, y), codegen


@intrinsic
def vrint_f32(typingctx, v):  # type: ignore[no-untyped-def]
    """Round each lane to an integral value, half to even (``np.rint``)."""
    if not is_vec(v, "f32"):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return call_llvm(builder, f"llvm.rint.v{v.lanes}f32", v.llvm_type, [args[0]])

    return v(v), codegen


# ---------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------
def _store_all(element: str, dtype: Any):  # type: ignore[no-untyped-def]
    def typer(typingctx, arr, idx, v):  # type: ignore[no-untyped-def]
        if not (is_array_of(arr, dtype) and is_vec(v, element)):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            ptr = element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                              v.llvm_type)  # fmt: skip
            builder.store(args[2], ptr, align=1)
            return context.get_dummy_value()

        return types.void(arr, idx, v), codegen

    return typer


vstore_i32 = intrinsic(_store_all("i32", types.int32))
vstore_i32.__doc__ = "Store every int32 lane at ``&arr[idx]`` of an int32 array."
vstore_i64 = intrinsic(_store_all("i64", types.int64))
vstore_i64.__doc__ = "Store every int64 lane at ``&arr[idx]`` of an int64 array."
vstore_f32 = intrinsic(_store_all("f32", types.float32))
vstore_f32.__doc__ = "Store every float32 lane at ``&arr[idx]`` of a float32 array."


def _store_n(elem_ty, suffix, convert):  # type: ignore[no-untyped-def]
    """An intrinsic storing the first ``count`` lanes of a float32 vector, converted, into a byte
    buffer at element ``idx`` of the converted type: nothing past them is touched. A full vector
    (``count`` >= lanes) is one plain store; a partial one a masked store."""

    def typer(typingctx, buf, idx, v, count):  # type: ignore[no-untyped-def]
        if not (is_array_of(buf, types.uint8) and is_vec(v, "f32")):
            return None
        n = v.lanes
        vec_ty = ir.VectorType(elem_ty, n)
        idx_ty = ir.VectorType(I32, n)

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            data = context.make_array(sig.args[0])(context, builder, value=args[0]).data
            base = builder.bitcast(data, elem_ty.as_pointer())
            offset = context.cast(builder, args[1], sig.args[1], types.intp)
            ptr = builder.bitcast(builder.gep(base, [offset]), vec_ty.as_pointer())
            count_ = context.cast(builder, args[3], sig.args[3], types.int32)
            value = convert(builder, args[2], vec_ty, n)
            full = builder.icmp_signed(">=", count_, ir.Constant(I32, n))
            with builder.if_else(full) as (then, otherwise):
                with then:
                    builder.store(value, ptr, align=1)
                with otherwise:
                    lanes = ir.Constant(idx_ty, list(range(n)))
                    mask = builder.icmp_signed("<", lanes, splat(builder, idx_ty, count_))
                    name = f"llvm.masked.store.v{n}{suffix}.p0"
                    fnty = ir.FunctionType(ir.VoidType(), [vec_ty, ptr.type, I32, mask.type])
                    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
                    builder.call(fn, [value, ptr, ir.Constant(I32, 1), mask])
            return context.get_dummy_value()

        return types.void(buf, idx, v, count), codegen

    return typer


def _as_float(builder, v, vec_ty, n):  # type: ignore[no-untyped-def]
    return v


def _as_half(builder, v, vec_ty, n):  # type: ignore[no-untyped-def]
    return builder.fptrunc(v, vec_ty)


def _as_int(builder, v, vec_ty, n):  # type: ignore[no-untyped-def]
    return builder.trunc(builder.fptosi(v, ir.VectorType(I32, n)), vec_ty)


vstore_n_f32 = intrinsic(_store_n(F32, "f32", _as_float))
vstore_n_f32.__doc__ = "Store ``count`` float32 lanes at float32 element ``idx`` of a byte buffer."
vstore_n_f16 = intrinsic(_store_n(HALF, "f16", _as_half))
vstore_n_f16.__doc__ = "Store ``count`` lanes as fp16 (nearest even) at half element ``idx``."
vstore_n_u8 = intrinsic(_store_n(I8, "i8", _as_int))
vstore_n_u8.__doc__ = "Store ``count`` lanes (integral, in [0, 255]) as uint8 at byte ``idx``."
vstore_n_i16 = intrinsic(_store_n(I16, "i16", _as_int))
vstore_n_i16.__doc__ = "Store ``count`` lanes (integral, in int16 range) at int16 element ``idx``."
