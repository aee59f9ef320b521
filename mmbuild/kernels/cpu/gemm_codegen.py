"""The compiled side of the GEMM: jitted building blocks and the generated drivers that call them.

The micro-kernels keep their accumulators in named registers, so they are written as Python
source (:mod:`.codegen`) and loaded, with the drivers around them, as one generated module per
instruction-set level (:func:`generated_kernels`) whose cache digest covers this file. The level
changes the module's header (``LANES`` and the int8 dot-product primitives of :mod:`.dot`) and
the tile shape (:data:`TILES`), never the kernels' text.

A driver runs work items ``[first, last)``; item ``t`` is panel ``t // n_mb`` (``NR = 64``
columns) and block ``t % n_mb`` of ``MC`` rows. It walks the panel in column blocks as wide as a
tile and, in each, the block's rows in tiles of ``MR`` rows. Example: M = 100, N = 80 in int8 on
AVX2 (tiles of 4 rows x 8 columns) gives ``n_mb = ceil(100 / 64) = 2`` and 2 panels (64 and 16
columns), so 4 items; item 3 is panel 1, rows 64..99, in column blocks 64..71 and 72..79, each in
tiles of rows 64..67, ..., 96..99. On AVX-512 VNNI a tile is 4 rows x the whole panel.

Each finished tile goes through the epilogue of :class:`.gemm_pack.Epilogue`: in registers,
``LANES`` columns at a time, in the SIMD micro-kernels (``_vec_epilogue_*``, which take their
width from the vector they are given), or from a scratch tile in the portable kernels
(``_finish_tile``). Both perform the same float32 operations in the same order, so they give the
same bits: ``y = float32(acc) * mult[n]``, ``y = y + bias[n]``, the fused activation of
:mod:`.activate`, store.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import overload

from mmbuild.kernels.cpu import activate, codegen, convert, dot, features, gemm_pack, simd, vector
from mmbuild.kernels.cpu.activate import apply_fused, vapply_fused
from mmbuild.kernels.cpu.convert import store_output
from mmbuild.kernels.cpu.features import Level
from mmbuild.kernels.cpu.gemm_pack import NR
from mmbuild.kernels.cpu.simd import load_f32
from mmbuild.kernels.cpu.vector import (
    vadd_f32,
    vadd_i32,
    vadd_i64,
    vcvt_f32,
    vdiv_f32,
    vload_f32,
    vload_i32,
    vload_i64,
    vmul_f32,
    vrint_f32,
    vselect_lt,
    vsplat_f32,
    vstore_n_f16,
    vstore_n_f32,
    vstore_n_i16,
    vstore_n_u8,
)

__all__ = ["MC", "TILES", "Tile", "generated_kernels", "vec_store"]

MC = {"u8s8": 64, "u8s7": 64, "f32": 48, "s16": 32}  # rows of a work item


@dataclass(frozen=True)
class Tile:
    """A micro-kernel's shape: ``mr`` rows by ``vecs`` vectors of the level's ``LANES``."""

    mr: int
    vecs: int


# Tile shapes per (level, kind). The accumulators must fit the vector registers (32 zmm on
# AVX-512, 16 ymm on AVX2) beside the weights and the broadcast activation: AVX2 float 6 x 2
# is 12 accumulators + 2 weight vectors + 1 broadcast; the vpmaddwd int8 accumulator takes two
# registers per vector of columns, so AVX2 int8 is 4 x 1 (8 + 2 + 1 + a product), and so does
# the int64 accumulator of int16 (LANES int64 lanes are two registers).
TILES: dict[tuple[str, str], Tile] = {
    ("avx512_vnni", "u8s8"): Tile(4, 4),
    ("avx512_vnni", "f32"): Tile(6, 4),
    ("avx512_vnni", "s16"): Tile(4, 2),
    ("avx512", "u8s8"): Tile(4, 2),
    ("avx512", "u8s7"): Tile(4, 4),
    ("avx512", "f32"): Tile(6, 4),
    ("avx512", "s16"): Tile(4, 2),
    ("avx_vnni", "u8s8"): Tile(4, 2),
    ("avx_vnni", "f32"): Tile(6, 2),
    ("avx_vnni", "s16"): Tile(4, 1),
    ("avx2", "u8s8"): Tile(4, 1),
    ("avx2", "u8s7"): Tile(6, 2),
    ("avx2", "f32"): Tile(6, 2),
    ("avx2", "s16"): Tile(4, 1),
    # the portable kernels walk whole panels (four 16-column units), row by row
    ("portable", "u8s8"): Tile(4, 4),
    ("portable", "f32"): Tile(6, 4),
    ("portable", "s16"): Tile(4, 4),
}

# Taller tiles for column blocks of at most ``vecs`` vectors (N = 8-32 on AVX-512: the convs of
# mobile networks), where the tile of :data:`TILES` would load a weight vector and broadcast an
# activation for one or two products each: 8 rows x 2 vectors keep 16 accumulators beside 2
# weight vectors and the broadcast. Measured on the AVX-512 Xeon: the PP-OCRv4 detector's 3x3
# convs to 24 channels (M 2240, K 864) 196 -> 161 us; an 8 x 1 tile on avx_vnni and avx512
# gained nothing (within 5%, either way), so they keep their tiles.
TALL_TILES: dict[tuple[str, str], Tile] = {
    ("avx512_vnni", "u8s8"): Tile(8, 2),
}


# ---------------------------------------------------------------------------------------------
# Jitted building blocks of the generated drivers (compiled into them, never called alone)
# ---------------------------------------------------------------------------------------------


@njit(error_model="numpy", boundscheck=False)
def _row_offset(rows, lda, m):  # type: ignore[no-untyped-def]
    """Start of row ``m`` of A: ``rows[m]`` for an implicit GEMM, else ``m * lda``.

    One run-time test per row of a tile, so that a plain and an implicit GEMM share one
    compiled driver.
    """
    return rows[m] if rows.size > 0 else m * lda


def _acc_value(T: np.ndarray, i: int, comp: Any, n: int) -> np.float32:
    """The accumulator ``T[i]`` as float32, plus the int8 zero-point term ``comp[n]``."""
    if comp is None:
        return np.float32(T[i])
    return np.float32(np.int32(T[i] + comp[n]))


@overload(_acc_value)
def _acc_value_overload(T, i, comp, n):  # type: ignore[no-untyped-def]
    if isinstance(comp, types.NoneType):
        return lambda T, i, comp, n: np.float32(T[i])
    # the raw vpdpbusd sum plus -za * colsum, wrapped to int32 exactly as the hardware adds
    return lambda T, i, comp, n: np.float32(np.int32(T[i] + comp[n]))


def _comp_row(comp: Any, n0: int, nn: int) -> Any:
    return None if comp is None else comp[n0 : n0 + nn]


@overload(_comp_row)
def _comp_row_overload(comp, n0, nn):  # type: ignore[no-untyped-def]
    if isinstance(comp, types.NoneType):
        return lambda comp, n0, nn: None
    return lambda comp, n0, nn: comp[n0 : n0 + nn]


@njit(error_model="numpy", boundscheck=False)
def _epilogue_rows(T, ldt, mr, nn, comp, n0, ep_args, out, o_off, ldo):  # type: ignore[no-untyped-def]
    """``T[r * ldt + j]`` -> ``out[o_off + r * ldo + j]`` for one tile, ``out`` typed.

    Every activation is the same few operations (:mod:`.activate`), so the loop has no branch
    and vectorises.
    """
    mult, bias, slope, scale, shift, lo, hi, gated, mul, add, oscale, ozp, _ = ep_args
    act = (slope, scale, shift, lo, hi, gated, mul, add)
    # slices, not offsets: indexing with a computed signed offset keeps numba's negative-index
    # wrap-around test in the loop, and that test stops LLVM from vectorising it
    m_row = mult[n0 : n0 + nn]
    b_row = bias[n0 : n0 + nn]
    c_row = _comp_row(comp, n0, nn)
    for r in range(mr):
        acc = T[r * ldt : r * ldt + nn]
        dst = out[o_off + r * ldo : o_off + r * ldo + nn]
        for j in range(nn):
            y = _acc_value(acc, j, c_row, j) * m_row[j]
            y = apply_fused(y + b_row[j], act)
            store_output(dst, j, y, oscale, ozp)


@njit(error_model="numpy", boundscheck=False)
def _finish_tile(T, ldt, mr, nn, comp, n0, ep_args, out_bytes, o_off, ldo):  # type: ignore[no-untyped-def]
    """The scalar epilogue of one tile of the portable kernels, into ``out_bytes``.

    The output arrives as bytes and its type (``ep_args[-1]``) is chosen here, so that one
    compiled driver serves every output kind.
    """
    kind = ep_args[-1]
    if kind == 0:
        out = out_bytes.view(np.float32)
        _epilogue_rows(T, ldt, mr, nn, comp, n0, ep_args, out, o_off, ldo)
    elif kind == 1:
        out = out_bytes.view(np.uint16)
        _epilogue_rows(T, ldt, mr, nn, comp, n0, ep_args, out, o_off, ldo)
    elif kind == 2:
        _epilogue_rows(T, ldt, mr, nn, comp, n0, ep_args, out_bytes, o_off, ldo)
    else:
        out = out_bytes.view(np.int16)
        _epilogue_rows(T, ldt, mr, nn, comp, n0, ep_args, out, o_off, ldo)


# The same epilogue on one vector of accumulators, in the SIMD micro-kernels' registers: the same
# IEEE operations in the same order (no fast-math), so the bits equal the scalar epilogue's. Each
# takes its width from the vector ``y`` / ``acc`` it is given. Forced inline: a call per
# accumulator vector would cost as much as the epilogue itself.
@njit(forceinline=True, error_model="numpy", boundscheck=False)
def vec_store(y, out, o, count, ep_args):  # type: ignore[no-untyped-def]
    _, _, slope, scale, shift, lo, hi, gated, mul, add, oscale, ozp, kind = ep_args
    y = vapply_fused(y, (slope, scale, shift, lo, hi, gated, mul, add))
    if kind == 0:
        vstore_n_f32(out, o, y, count)
    elif kind == 1:
        vstore_n_f16(out, o, y, count)
    else:
        q = vadd_f32(vrint_f32(vdiv_f32(y, vsplat_f32(oscale, y))), vsplat_f32(ozp, y))
        qlo = vsplat_f32(0.0 if kind == 2 else -32768.0, y)
        qhi = vsplat_f32(255.0 if kind == 2 else 32767.0, y)
        q = vselect_lt(q, qlo, qlo, q)
        q = vselect_lt(qhi, q, qhi, q)
        # NaN, the one value the clamps let through, goes to the zero point (quant.params)
        q = vselect_lt(q, vadd_f32(qhi, vsplat_f32(1.0, y)), q, vsplat_f32(ozp, y))
        if kind == 2:
            vstore_n_u8(out, o, q, count)
        else:
            vstore_n_i16(out, o, q, count)


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _vec_epilogue_i32(acc, n, out, o, count, comp, ep_args):  # type: ignore[no-untyped-def]
    """Epilogue of the int32 column sums ``acc`` (columns ``n ..``); ``comp = -za * colsum``."""
    y = vmul_f32(vcvt_f32(vadd_i32(acc, vload_i32(comp, n, acc))), vload_f32(ep_args[0], n, acc))
    vec_store(vadd_f32(y, vload_f32(ep_args[1], n, acc)), out, o, count, ep_args)


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _vec_epilogue_i64(acc, n, out, o, count, comp, ep_args):  # type: ignore[no-untyped-def]
    """Epilogue of the int64 column sums ``acc`` (columns ``n ..``); ``comp = -za * colsum``."""
    y = vmul_f32(vcvt_f32(vadd_i64(acc, vload_i64(comp, n, acc))), vload_f32(ep_args[0], n, acc))
    vec_store(vadd_f32(y, vload_f32(ep_args[1], n, acc)), out, o, count, ep_args)


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _vec_epilogue_f32(acc, n, out, o, count, ep_args):  # type: ignore[no-untyped-def]
    """Epilogue of the float32 sums ``acc`` (columns ``n ..``)."""
    y = vmul_f32(acc, vload_f32(ep_args[0], n, acc))
    vec_store(vadd_f32(y, vload_f32(ep_args[1], n, acc)), out, o, count, ep_args)


@njit(error_model="numpy", boundscheck=False)
def _u8s8_row_portable(A, ao, nseg, seg_stride, k4, ktail, Bp, b_off, nr, T, t0):  # type: ignore[no-untyped-def]
    """One row of the int8 tile without intrinsics: the same int32 sums, wrapped the same way."""
    acc = T[t0 : t0 + nr]
    acc[:] = 0
    step = 4 * nr
    bo = b_off
    for s in range(nseg):
        base = ao + s * seg_stride
        for g in range(k4 + (1 if ktail > 0 else 0)):
            kq = 4 if g < k4 else ktail
            p = base + 4 * g
            a0 = np.int32(A[p])
            a1 = np.int32(A[p + 1]) if kq > 1 else np.int32(0)
            a2 = np.int32(A[p + 2]) if kq > 2 else np.int32(0)
            a3 = np.int32(A[p + 3]) if kq > 3 else np.int32(0)
            panel = Bp[bo : bo + step]
            for j in range(nr):
                q = 4 * j
                acc[j] += (
                    a0 * np.int32(panel[q])
                    + a1 * np.int32(panel[q + 1])
                    + a2 * np.int32(panel[q + 2])
                    + a3 * np.int32(panel[q + 3])
                )
            bo += step


@njit(error_model="numpy", boundscheck=False)
def _float_row_portable(A, ao, nseg, seg_stride, seg_len, Bp, b_off, nr, T, t0):  # type: ignore[no-untyped-def]
    """One row of the float tile without intrinsics (plain multiply and add, in k order)."""
    acc = T[t0 : t0 + nr]
    acc[:] = 0
    bo = b_off
    for s in range(nseg):
        base = ao + s * seg_stride
        for k in range(seg_len):
            a = load_f32(A, base + k)
            for j in range(nr):
                acc[j] += a * load_f32(Bp, bo + j)
            bo += nr


@njit(error_model="numpy", boundscheck=False)
def _s16_row(A, ao, nseg, seg_stride, k2, ktail, za, Bp, b_off, nr, T, t0):  # type: ignore[no-untyped-def]
    """One row of the int16 tile without intrinsics: exact int64 sums of (a - za) * w, stored
    as float32 (the epilogue's first step, so that the float GEMM's scalar epilogue serves)."""
    acc = np.zeros(nr, np.int64)
    step = 2 * nr
    bo = b_off
    for s in range(nseg):
        base = ao + s * seg_stride
        for g in range(k2 + ktail):
            p = base + 2 * g
            a0 = np.int64(A[p]) - za
            a1 = np.int64(A[p + 1]) - za if g < k2 else np.int64(0)
            panel = Bp[bo : bo + step]
            for j in range(nr):
                acc[j] += a0 * np.int64(panel[2 * j]) + a1 * np.int64(panel[2 * j + 1])
            bo += step
    out = T[t0 : t0 + nr]
    for j in range(nr):
        out[j] = np.float32(acc[j])


# ---------------------------------------------------------------------------------------------
# The generated modules: micro-kernels and the drivers that call them
# ---------------------------------------------------------------------------------------------
# Arguments of every generated driver, after the item range.
_COMMON = (
    "n_mb, A, lda, rows, M, nseg, seg_stride, {kargs}, Bp, n_panels, nrv_last, panel_size, za, "
    "comp, ep_args, out, ldo, N"
)
_KARGS = {"u8s8": "k4, ktail", "u8s7": "k4, ktail", "f32": "seg_len", "s16": "k2, ktail"}
_B_STEP = {"u8s8": 4, "u8s7": 4, "f32": 1, "s16": 2}  # packed elements per column in one K step

_ITEMS = '''
@njit({jit})
def {kind}_items(first, last, {common}):
    """Work items [first, last): item t is panel t // n_mb, rows block t % n_mb."""
{scratch}
    for t in range(first, last):
        p = t // n_mb
        mb = t - p * n_mb
        width = 16 * ({nrv} if p < n_panels - 1 else nrv_last)
        n0 = p * {nr}
        ldb = {bstep} * width
{row_block}
        for c0 in range(0, width, {tile_cols}):
            nn = min({tile_cols}, N - n0 - c0)
            if nn <= 0:
                break
            nv = min({vecs}, (width - c0) // LANES)
            b_off = p * panel_size + {bstep} * c0
            tall = nv <= {tall_vecs}
            rows_step = {tall_mr} if tall else {mr}
            for m0 in range(mb * {mc}, min(M, (mb + 1) * {mc}), rows_step):
                mr = min(rows_step, M - m0)
                o_off = m0 * ldo + n0 + c0
{offsets}
{tile_call}


@njit(parallel=True, {jit})
def {kind}_parallel(n_items, n_chunks, {common}):
    for c in prange(n_chunks):
        {kind}_items(c * n_items // n_chunks, (c + 1) * n_items // n_chunks, {common})
'''

_INDENT = " " * 16


def _simd_tile_call(
    tile_name: Any, kernel_args: str, tile: Tile, single_row: bool, tall: Tile | None = None
) -> str:
    """Dispatch to the micro-kernel for the column block's width (which also stores the tile).

    With ``single_row`` a lone row (M = 1, or the last row) has its own kernels: the ``mr``-row
    one would compute that row ``mr`` times, which costs int8 (whose inner loop is compute
    bound) more than float (bound by loading B). With ``tall``, a block of at most ``tall.vecs``
    vectors runs ``tall.mr`` rows at a time (the driver's ``tall``).
    """
    shapes = [(1, tile.vecs, "if mr == 1:")] if single_row else []
    if tall is not None:
        shapes.append((tall.mr, tall.vecs, "elif tall:" if shapes else "if tall:"))
    shapes.append((tile.mr, tile.vecs, "else:" if shapes else ""))
    lines = []
    for rows, vecs, test in shapes:
        indent = _INDENT + ("    " if test else "")
        if test:
            lines.append(f"{_INDENT}{test}")
        aos = ", ".join(f"ao{r}" for r in range(rows))
        for nv in range(vecs, 0, -1):
            lines.append(f"{indent}{'if' if nv == vecs else 'elif'} nv == {nv}:")
            lines.append(f"{indent}    {tile_name(rows, nv)}(A, {aos}, {kernel_args}, o_off, ldo)")
    return "\n".join(lines)


def _row_tile_call(row_fn: str, kernel_args: str, mr: int) -> str:
    """The portable kernels: one row at a time into the scratch tile, then the scalar epilogue."""
    lines = []
    for r in range(mr):
        call = f"{row_fn}(A, ao{r}, {kernel_args}, LANES * nv, T, {r * NR})"
        guard = [] if r == 0 else [f"{_INDENT}if mr > {r}:"]
        lines += [*guard, f"{_INDENT}{'    ' if r else ''}{call}"]
    lines.append(f"{_INDENT}_finish_tile(T, {NR}, mr, nn, comp, n0 + c0, ep_args, out, o_off, ldo)")
    return "\n".join(lines)


def _wide_row_call(lanes: int) -> str:
    """A block of one row (M = 1, or the last row) of the float GEMM: the whole panel in one
    call, ``NR / LANES`` vectors. The float tile's FMAs form one dependency chain per vector
    of accumulators, and a 1 x 2 tile has too few chains to cover the FMA latency; the
    multi-row tile would compute the lone row six times. Each column still sums in k order,
    so the row gets the same bits as in a multi-row tile."""
    mc = MC["f32"]
    lines = [
        f"        if min(M, (mb + 1) * {mc}) - mb * {mc} == 1:",
        f"            m0 = mb * {mc}",
        "            ao0 = _row_offset(rows, lda, m0)",
        "            nv = width // LANES",
        "            nn = min(width, N - n0)",
        "            b_off = p * panel_size",
    ]
    for nv in range(NR // lanes, 0, -1):
        lines.append(f"            {'if' if nv == NR // lanes else 'elif'} nv == {nv}:")
        lines.append(f"                {codegen.float_tile_name(1, nv)}(A, ao0, {_FLOAT_ARGS}, "
                     "ldb, 1, nn, n0, ep_args, out, m0 * ldo + n0, ldo)")  # fmt: skip
    lines.append("            continue")
    return "\n".join(lines)


def _items_source(
    kind: str, lanes: int, tile: Tile, acc: str | None, tile_call: str, row_block: str = "",
    tall: Tile | None = None,
) -> str:  # fmt: skip
    offsets = [f"{_INDENT}ao{r} = _row_offset(rows, lda, m0 + min({r}, mr - 1))"
               for r in range(tile.mr)]  # fmt: skip
    if tall is not None:  # the rows of a tall tile beyond the usual ones
        offsets.append(f"{_INDENT}if tall:")
        offsets += [f"{_INDENT}    ao{r} = _row_offset(rows, lda, m0 + min({r}, mr - 1))"
                    for r in range(tile.mr, tall.mr)]  # fmt: skip
    return _ITEMS.format(
        jit=codegen.JIT_OPTIONS, kind=kind, common=_COMMON.format(kargs=_KARGS[kind]),
        scratch=f"    T = np.empty({tile.mr * NR}, np.{acc})" if acc else "", nrv=NR // 16,
        nr=NR, bstep=_B_STEP[kind], tile_cols=lanes * tile.vecs, vecs=tile.vecs, mc=MC[kind],
        mr=tile.mr, offsets="\n".join(offsets), tile_call=tile_call, row_block=row_block,
        tall_vecs=tall.vecs if tall else 0, tall_mr=tall.mr if tall else tile.mr,
    )  # fmt: skip


_HEADER = [
    "import numpy as np",
    "from numba import njit, prange",
    "from mmbuild.kernels.cpu.simd import load_u8_tail",
    "from mmbuild.kernels.cpu.gemm_codegen import (",
    "    _finish_tile, _float_row_portable, _row_offset, _s16_row, _u8s8_row_portable,",
    "    _vec_epilogue_f32, _vec_epilogue_i32, _vec_epilogue_i64,",
    ")",
]
_INT8_ARGS = "nseg, seg_stride, k4, ktail, Bp, b_off"
_INT16_ARGS = "nseg, seg_stride, k2, ktail, Bp, b_off"
_FLOAT_ARGS = "nseg, seg_stride, seg_len, Bp, b_off"


def _simd_source(lv: Level) -> list[str]:
    """Micro-kernels and drivers of a SIMD level: its primitives bound to the generic names."""
    dot_names = ("zero", "bcast4", "quad", "weights", "dot", "cols")
    generic = ("vzero_acc", "vbcast4_u8", "vquad_u8", "vweights_s8", "vdot4", "vcols")
    parts = [
        f"LANES = {lv.lanes}",
        "from mmbuild.kernels.cpu.vector import vbcast_f32, vfma, vload_f32, vzero_f32",
        "from mmbuild.kernels.cpu.dot import (",
        "    pair_bcast2, pair_cols, pair_dot, pair_single, pair_weights, pair_zero, small_dot,",
        "    vnni_bcast4, vnni_cols, vnni_quad, vnni_weights, vnni_zero,",
        ")",
        "from mmbuild.kernels.cpu.dot import (",
        *[f"    {lv.int8_dot}_{d} as {g}," for d, g in zip(dot_names, generic)],
        ")",
        "",
    ]
    t8, t16, tf = (TILES[lv.name, kind] for kind in ("u8s8", "s16", "f32"))
    # int8 weights within [-64, 64] take vpmaddubsw where the int8 dot product is vpmaddwd
    t7 = TILES[lv.name, "u8s7"] if lv.int8_dot == "madd" else None
    integer = [("u8s8", t8, "_vec_epilogue_i32"), ("s16", t16, "_vec_epilogue_i64")]
    if t7 is not None:
        integer.append(("u8s7", t7, "_vec_epilogue_i32"))
    tall8 = TALL_TILES.get((lv.name, "u8s8"))
    for kind, tile, epilogue in integer:
        for nv in range(1, tile.vecs + 1):
            for rows in (1, tile.mr):
                parts.append(codegen.int_tile_source(kind, rows, nv, epilogue))
        tall = TALL_TILES.get((lv.name, kind))
        if tall is not None:
            parts += [codegen.int_tile_source(kind, tall.mr, nv, epilogue)
                      for nv in range(1, tall.vecs + 1)]  # fmt: skip
    for nv in range(1, tf.vecs + 1):
        parts.append(codegen.float_tile_source(tf.mr, nv, "_vec_epilogue_f32"))
    for nv in range(1, NR // lv.lanes + 1):
        parts.append(codegen.float_tile_source(1, nv, "_vec_epilogue_f32"))
    parts += [
        _items_source("u8s8", lv.lanes, t8, None, _simd_tile_call(
            functools.partial(codegen.int_tile_name, "u8s8"),
            _INT8_ARGS + ", ldb, mr, nn, n0 + c0, comp, ep_args, out", t8, True, tall8),
            tall=tall8),
        *([_items_source("u8s7", lv.lanes, t7, None, _simd_tile_call(
            functools.partial(codegen.int_tile_name, "u8s7"),
            _INT8_ARGS + ", ldb, mr, nn, n0 + c0, comp, ep_args, out", t7, True))] if t7 else []),
        _items_source("s16", lv.lanes, t16, None, _simd_tile_call(
            functools.partial(codegen.int_tile_name, "s16"),
            _INT16_ARGS + ", ldb, mr, nn, n0 + c0, comp, ep_args, out", t16, True)),
        _items_source("f32", lv.lanes, tf, None, _simd_tile_call(
            codegen.float_tile_name, _FLOAT_ARGS + ", ldb, mr, nn, n0 + c0, ep_args, out", tf,
            False), _wide_row_call(lv.lanes)),
    ]  # fmt: skip
    return parts


def _portable_source() -> list[str]:
    tiles = {kind: TILES["portable", kind] for kind in ("u8s8", "f32", "s16")}
    return [
        "LANES = 16",
        _items_source("u8s8", 16, tiles["u8s8"], "int32",
                      _row_tile_call("_u8s8_row_portable", _INT8_ARGS, tiles["u8s8"].mr)),
        _items_source("f32", 16, tiles["f32"], "float32",
                      _row_tile_call("_float_row_portable", _FLOAT_ARGS, tiles["f32"].mr)),
        _items_source("s16", 16, tiles["s16"], "float32",
                      _row_tile_call("_s16_row", "nseg, seg_stride, k2, ktail, za, Bp, b_off",
                                     tiles["s16"].mr)),
    ]  # fmt: skip


@functools.cache
def generated_kernels(level: str) -> ModuleType:
    """The generated module of ``level`` (written and imported on first use): ``{kind}_items``
    and ``{kind}_parallel`` for u8s8, s16 and f32: the SIMD kernels of the level, or, for
    ``"portable"``, the portable ones."""
    lv = features.get_level(level)
    doc = f'"""GEMM kernels of level {level}, generated by mmbuild.kernels.cpu.gemm_codegen."""'
    body = _simd_source(lv) if lv.simd else _portable_source()
    return codegen.load_module(
        f"gemm_kernels_{level}",
        "\n".join([doc, *_HEADER, *body]),
        dependencies=(
            vector,
            dot,
            simd,
            convert,
            activate,
            codegen,
            gemm_pack,
            sys.modules[__name__],
        ),
    )
