"""The exact integer dot products of the int8 and int16 GEMMs, in the forms x86 CPUs offer.

The GEMM packs weights as ``[K/4][columns][4]`` int8 (every level the same, so a model file runs
anywhere) and reads activations as uint8; a micro-kernel repeats, for each group of four K rows::

    acc = dot(acc, quad(A[m, k:k+4]), weights(B[k/4, n:n+lanes, :]))

and hands ``cols(acc)``, one int32 per column ``sum_k A[m, k] * B[k, n]`` (wrapping modulo 2**32
as any int32 addition), to its epilogue. Both forms give that same integer:

- ``vnni_*``: ``vpdpbusd`` (AVX-512 VNNI with 16 lanes; AVX-VNNI with 8) sums the four u8 x s8
  products of a lane into it. The accumulator has one int32 lane per column.
- ``madd_*``: AVX2 (8 lanes) or AVX-512 BW without VNNI (16 lanes). Both operands are widened
  to int16 (activations zero-extended, weights sign-extended) and ``vpmaddwd`` sums pairs of
  products into int32: ``|255 * -128 + 255 * -128| = 65280``, so no pair ever saturates or
  wraps (the saturating ``vpmaddubsw`` could: 255 * 127 * 2 > 32767, so it is not used). The
  accumulator has two int32 lanes per column (K rows 0-1 and 2-3 of each group), summed by
  ``madd_cols``. Worked through for one column: A = (200, 3, 0, 255), B = (-128, 5, 7, -1)
  gives lanes 200 * -128 + 3 * 5 = -25585 and 0 * 7 + 255 * -1 = -255, so the column holds
  -25840 = the four products' sum, as ``vpdpbusd`` gives it.

``quad(word, lanes)`` takes the four bytes as a little-endian integer (``load_u8_tail`` reads
the last, shorter group); ``bcast4(A, i, lanes)`` loads them from ``A[i:i+4]``.

The int16 GEMM has one form on every SIMD level, ``pair_*``: weights packed as ``[K/2][columns]
[2]`` int16, two activations broadcast as one int32 (``pair_bcast2``, or ``pair_single`` for the
last, odd K row, whose partner weight is zero), and ``vpmaddwd`` summing the two products of each
column into an int32 pair sum ``p``::

    acc = pair_dot(acc, pair_bcast2(A, m * lda + k, lanes), pair_weights(B, ..., lanes))

``p`` is exact as long as no weight is -32768: then each product is at most ``32768 * 32767`` in
magnitude and two of them stay inside int32 (``pack_int16_weights`` records a weight of -32768,
and such weights run on the portable kernel). Worked through for one column: A = (-32768, 1000),
B = (32767, -3) gives -1073709056 - 3000 = -1073712056. The sum over K does not fit int32, and
sign-extending every ``p`` to int64 costs three shuffles; instead the accumulator keeps two int32
lanes per column, ``sum p`` (wrapping) and ``sum (p >> 16)``, from which ``pair_cols`` recovers
the exact int64 sum (two cheap operations per step instead of three shuffles).

Call these only from kernels chosen through :mod:`.features`: an instruction the CPU lacks aborts
the process.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types

from mmbuild.kernels.cpu.vector import (
    I8,
    I16,
    I32,
    I64,
    call_llvm,
    element_ptr,
    intrinsic,
    is_array_of,
    is_vec,
    lanes_of,
    splat,
    vec,
)

__all__ = [
    "madd_bcast4",
    "madd_cols",
    "madd_dot",
    "madd_quad",
    "madd_weights",
    "madd_zero",
    "pair_bcast2",
    "pair_cols",
    "pair_dot",
    "pair_single",
    "pair_weights",
    "pair_zero",
    "small_dot",
    "vnni_bcast4",
    "vnni_cols",
    "vnni_dot",
    "vnni_quad",
    "vnni_weights",
    "vnni_zero",
]

_VPDPBUSD = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}
_PMADDWD = {32: "llvm.x86.avx512.pmaddw.d.512", 16: "llvm.x86.avx2.pmadd.wd"}
_PMADDUBSW = {64: "llvm.x86.avx512.pmaddubs.w.512", 32: "llvm.x86.avx2.pmadd.ub.sw"}


def _word(context, builder, sig, args):  # type: ignore[no-untyped-def]
    return context.cast(builder, args[0], sig.args[0], types.int32)


def _load_word(context, builder, sig, args):  # type: ignore[no-untyped-def]
    ptr = element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], I32)
    return builder.load(ptr, align=1)


# ---------------------------------------------------------------------------------------------
# VNNI: one int32 lane per column
# ---------------------------------------------------------------------------------------------
def _vnni_quad_value(builder, word, n):  # type: ignore[no-untyped-def]
    return splat(builder, ir.VectorType(I32, n), word)


@intrinsic
def vnni_quad(typingctx, word, lanes):  # type: ignore[no-untyped-def]
    """Four activation bytes (an integer, little-endian) in every int32 lane."""
    n = lanes_of(lanes)
    if n not in _VPDPBUSD or not isinstance(word, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _vnni_quad_value(builder, _word(context, builder, sig, args), n)

    return vec("i32", n)(word, lanes), codegen


@intrinsic
def vnni_bcast4(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
    """The four bytes at ``&arr[idx]`` repeated in every int32 lane (``vpbroadcastd``)."""
    n = lanes_of(lanes)
    if n not in _VPDPBUSD or not is_array_of(arr, types.uint8, types.int8):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _vnni_quad_value(builder, _load_word(context, builder, sig, args), n)

    return vec("i32", n)(arr, idx, lanes), codegen


@intrinsic
def vnni_weights(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
    """``4 * lanes`` packed weight bytes at ``&arr[idx]`` (four K rows of ``lanes`` columns)."""
    n = lanes_of(lanes)
    if n not in _VPDPBUSD or not is_array_of(arr, types.int8):
        return None
    ty = vec("i32", n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                          ty.llvm_type)  # fmt: skip
        return builder.load(ptr, align=1)

    return ty(arr, idx, lanes), codegen


@intrinsic
def vnni_zero(typingctx, lanes):  # type: ignore[no-untyped-def]
    """A zero accumulator for ``lanes`` columns."""
    n = lanes_of(lanes)
    if n not in _VPDPBUSD:
        return None
    ty = vec("i32", n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(ty.llvm_type, None)

    return ty(lanes), codegen


@intrinsic
def vnni_dot(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """``acc + the four u8(a) * s8(b) products of each lane``, wrapping (``vpdpbusd``)."""
    if not (is_vec(acc, "i32") and acc.lanes in _VPDPBUSD and acc == a == b):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return call_llvm(builder, _VPDPBUSD[acc.lanes], acc.llvm_type, list(args))

    return acc(acc, a, b), codegen


@intrinsic
def vnni_cols(typingctx, acc):  # type: ignore[no-untyped-def]
    """The column sums: the accumulator itself."""
    if not is_vec(acc, "i32"):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return args[0]

    return acc(acc), codegen


# ---------------------------------------------------------------------------------------------
# vpmaddwd: two int32 lanes per column
# ---------------------------------------------------------------------------------------------
def _madd_quad_value(builder, word, n):  # type: ignore[no-untyped-def]
    """``[a0, a1, a2, a3]`` zero-extended to int16 and repeated to ``2 * n`` lanes."""
    quad = builder.bitcast(word, ir.VectorType(I8, 4))
    repeated = builder.shuffle_vector(
        quad, ir.Constant(ir.VectorType(I8, 4), None),
        ir.Constant(ir.VectorType(I32, 2 * n), [i % 4 for i in range(2 * n)]),
    )  # fmt: skip
    return builder.zext(repeated, ir.VectorType(I16, 2 * n))


@intrinsic
def madd_quad(typingctx, word, lanes):  # type: ignore[no-untyped-def]
    """Four activation bytes (an integer, little-endian) as int16 lanes ``a0 a1 a2 a3 a0 ...``."""
    n = lanes_of(lanes)
    if n is None or 2 * n not in _PMADDWD or not isinstance(word, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _madd_quad_value(builder, _word(context, builder, sig, args), n)

    return vec("i16", 2 * n)(word, lanes), codegen


@intrinsic
def madd_bcast4(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
    """The four bytes at ``&arr[idx]`` as :func:`madd_quad` gives them."""
    n = lanes_of(lanes)
    if n is None or 2 * n not in _PMADDWD or not is_array_of(arr, types.uint8, types.int8):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _madd_quad_value(builder, _load_word(context, builder, sig, args), n)

    return vec("i16", 2 * n)(arr, idx, lanes), codegen


@intrinsic
def madd_weights(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
    """``4 * lanes`` packed weight bytes at ``&arr[idx]``, sign-extended to int16."""
    n = lanes_of(lanes)
    if n is None or 2 * n not in _PMADDWD or not is_array_of(arr, types.int8):
        return None
    ty = vec("i16", 4 * n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        src = ir.VectorType(I8, 4 * n)
        ptr = element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], src)
        return builder.sext(builder.load(ptr, align=1), ty.llvm_type)

    return ty(arr, idx, lanes), codegen


@intrinsic
def madd_zero(typingctx, lanes):  # type: ignore[no-untyped-def]
    """A zero accumulator for ``lanes`` columns (two int32 lanes each)."""
    n = lanes_of(lanes)
    if n is None or 2 * n not in _PMADDWD:
        return None
    ty = vec("i32", 2 * n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(ty.llvm_type, None)

    return ty(lanes), codegen


@intrinsic
def madd_dot(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """``acc + pairwise sums of int16(a) * int16(b)``: ``vpmaddwd`` on each half of ``b``."""
    if not (is_vec(acc, "i32") and is_vec(a, "i16") and is_vec(b, "i16")):
        return None
    half = a.lanes
    if not (half in _PMADDWD and acc.lanes == half and b.lanes == 2 * half):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        acc_v, a_v, b_v = args
        out_ty = ir.VectorType(I32, half // 2)
        parts = []
        for lo in (0, half):
            b_half = builder.shuffle_vector(
                b_v, b_v, ir.Constant(ir.VectorType(I32, half), list(range(lo, lo + half)))
            )
            parts.append(call_llvm(builder, _PMADDWD[half], out_ty, [a_v, b_half]))
        both = builder.shuffle_vector(
            parts[0], parts[1], ir.Constant(ir.VectorType(I32, half), list(range(half)))
        )
        return builder.add(acc_v, both)

    return acc(acc, a, b), codegen


@intrinsic
def madd_cols(typingctx, acc):  # type: ignore[no-untyped-def]
    """Column ``c`` = lanes ``2c`` + ``2c + 1`` of the accumulator (wrapping)."""
    if not (is_vec(acc, "i32") and acc.lanes % 2 == 0):
        return None
    n = acc.lanes // 2
    ty = vec("i32", n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = args[0]
        mask = ir.VectorType(I32, n)
        even = builder.shuffle_vector(v, v, ir.Constant(mask, [2 * i for i in range(n)]))
        odd = builder.shuffle_vector(v, v, ir.Constant(mask, [2 * i + 1 for i in range(n)]))
        return builder.add(even, odd)

    return ty(acc), codegen


# ---------------------------------------------------------------------------------------------
# vpmaddubsw for weights within [-64, 64]: one int32 lane per column, as VNNI
# ---------------------------------------------------------------------------------------------
@intrinsic
def small_dot(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """``acc + the four u8(a) * s8(b) products of each lane`` for ``|b| <= 64``: ``vpmaddubsw``
    sums byte pairs into int16 (at most ``255 * 64 * 2 = 32640``, so it never saturates), and
    ``vpmaddwd`` by ones sums the two pairs of a lane into int32. Operands as for the ``vnni_*``
    primitives, which serve as its zero, bcast4, quad, weights and cols."""
    if not (is_vec(acc, "i32") and acc == a == b and 4 * acc.lanes in _PMADDUBSW):
        return None
    n = acc.lanes

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        acc_v, a_v, b_v = args
        bytes_ty = ir.VectorType(I8, 4 * n)
        operands = [builder.bitcast(a_v, bytes_ty), builder.bitcast(b_v, bytes_ty)]
        pairs = call_llvm(builder, _PMADDUBSW[4 * n], ir.VectorType(I16, 2 * n), operands)
        ones = ir.Constant(ir.VectorType(I16, 2 * n), [1] * (2 * n))
        quads = call_llvm(builder, _PMADDWD[2 * n], ir.VectorType(I32, n), [pairs, ones])
        return builder.add(acc_v, quads)

    return acc(acc, a, b), codegen


# ---------------------------------------------------------------------------------------------
# int16: pairs of K rows through vpmaddwd, summed in int64
# ---------------------------------------------------------------------------------------------
def _pair_value(builder, word, n):  # type: ignore[no-untyped-def]
    """An int32 holding two int16 (low: K row k, high: k + 1) in every lane, as int16 lanes."""
    return builder.bitcast(splat(builder, ir.VectorType(I32, n), word), ir.VectorType(I16, 2 * n))


@intrinsic
def pair_bcast2(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
    """``arr[idx], arr[idx + 1]`` (int16) repeated in every pair of int16 lanes."""
    n = lanes_of(lanes)
    if n is None or 2 * n not in _PMADDWD or not is_array_of(arr, types.int16):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _pair_value(builder, _load_word(context, builder, sig, args), n)

    return vec("i16", 2 * n)(arr, idx, lanes), codegen


@intrinsic
def pair_single(typingctx, x, lanes):  # type: ignore[no-untyped-def]
    """``x, 0`` repeated in every pair of int16 lanes (the last row of an odd K)."""
    n = lanes_of(lanes)
    if n is None or 2 * n not in _PMADDWD or not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        low = context.cast(builder, args[0], sig.args[0], types.int16)
        return _pair_value(builder, builder.zext(low, I32), n)

    return vec("i16", 2 * n)(x, lanes), codegen


@intrinsic
def pair_weights(typingctx, arr, idx, lanes):  # type: ignore[no-untyped-def]
    """``2 * lanes`` packed int16 weights at ``&arr[idx]`` (two K rows of ``lanes`` columns)."""
    n = lanes_of(lanes)
    if n is None or 2 * n not in _PMADDWD or not is_array_of(arr, types.int16):
        return None
    ty = vec("i16", 2 * n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                          ty.llvm_type)  # fmt: skip
        return builder.load(ptr, align=1)

    return ty(arr, idx, lanes), codegen


# the int16 accumulator has the vpmaddwd int8 one's shape: two int32 lanes per column
pair_zero = madd_zero


@intrinsic
def pair_dot(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """Add the pair sums ``p[j] = a[2j] * b[2j] + a[2j+1] * b[2j+1]`` (``vpmaddwd``) of each
    column ``j`` to the accumulator: lane ``j`` sums ``p`` (wrapping), lane ``n + j`` sums
    ``p >> 16`` (arithmetic shift). ``pair_cols`` recovers the exact sums from the two."""
    if not (is_vec(acc, "i32") and is_vec(a, "i16") and a == b and a.lanes in _PMADDWD):
        return None
    if acc.lanes != a.lanes:
        return None
    n = a.lanes // 2

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        acc_v, a_v, b_v = args
        p = call_llvm(builder, _PMADDWD[a.lanes], ir.VectorType(I32, n), [a_v, b_v])
        high = builder.ashr(p, ir.Constant(ir.VectorType(I32, n), [16] * n))
        both = builder.shuffle_vector(p, high, ir.Constant(ir.VectorType(I32, 2 * n),
                                                           list(range(2 * n))))  # fmt: skip
        return builder.add(acc_v, both)

    return acc(acc, a, b), codegen


@intrinsic
def pair_cols(typingctx, acc):  # type: ignore[no-untyped-def]
    """The exact int64 column sums ``S = sum p`` of a ``pair_dot`` accumulator.

    With ``H = sum (p >> 16)`` and ``L = sum (p mod 2**16)``, ``S = 2**16 * H + L`` where
    ``0 <= L <= 65535 * steps``; the wrapping lane holds ``S mod 2**32``, so ``L = (S - 2**16 *
    H) mod 2**32`` exactly while ``65535 * steps < 2**32``, and ``|H| <= 32767 * steps`` fits
    int32: both hold for up to 65535 pair steps (``pack_int16_weights`` checks K). Example: two
    steps of p = 2**30 give lanes 2**31 (wrapped to -2**31) and H = 2**15; L = (-2**31 - 2**31)
    mod 2**32 = 0, so S = 2**31.
    """
    if not (is_vec(acc, "i32") and acc.lanes % 2 == 0 and 2 * (acc.lanes // 2) in _PMADDWD):
        return None
    n = acc.lanes // 2
    ty = vec("i64", n)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = args[0]
        mask = ir.VectorType(I32, n)
        wrapped = builder.shuffle_vector(v, v, ir.Constant(mask, list(range(n))))
        high = builder.shuffle_vector(v, v, ir.Constant(mask, list(range(n, 2 * n))))
        sixteen32 = ir.Constant(mask, [16] * n)
        low = builder.sub(wrapped, builder.shl(high, sixteen32))
        wide = ir.VectorType(I64, n)
        high64 = builder.shl(builder.sext(high, wide), ir.Constant(wide, [16] * n))
        return builder.add(high64, builder.zext(low, wide))

    return ty(acc), codegen
