"""The compiled side of the GEMM: jitted building blocks and the generated drivers that call them.

The micro-kernels keep their accumulators in named registers, so they are written as Python
source (:mod:`.codegen`) and loaded, with the drivers around them, as one generated module whose
cache digest covers this file. A driver runs work items ``[first, last)``; item ``t`` is panel
``t // n_mb`` (``NR = 64`` columns) and block ``t % n_mb`` of ``MC`` rows, which it walks in
tiles of ``MR`` rows (int8 4 x 64, float 6 x 64, int16 4 x 64). Example: M = 100, N = 80 in
int8 gives ``n_mb = ceil(100 / 64) = 2`` and 2 panels (64 and 16 columns), so 4 items; item 3
is panel 1, rows 64..99, in tiles of rows 64..67, ..., 96..99.

Each finished tile goes through the epilogue of :class:`.gemm_pack.Epilogue`: in registers, 16
columns at a time, in the SIMD micro-kernels (``_vec_epilogue_*``), or from a scratch tile in
the portable kernels (``_finish_tile``). Both perform the same float32 operations in the same
order, so they give the same bits: ``y = float32(acc) * mult[n]``, ``y = y + bias[n]``, ``y < 0
-> y * slope``, clamp to ``[lo, hi]``, store.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import overload

from mmbuild.kernels.cpu import codegen, convert, gemm_pack, simd
from mmbuild.kernels.cpu.convert import store_output
from mmbuild.kernels.cpu.gemm_pack import NR
from mmbuild.kernels.cpu.simd import (
    load_f32,
    vadd_f32,
    vadd_i32,
    vcvt_f32,
    vdiv_f32,
    vload_f32,
    vload_i32,
    vmul_f32,
    vrint_f32,
    vselect_lt,
    vsplat_f32,
    vstore_n_f16,
    vstore_n_f32,
    vstore_n_i16,
    vstore_n_u8,
    vzero_f32,
)

__all__ = ["FLOAT_MC", "FLOAT_MR", "INT8_MC", "INT8_MR", "S16_MC", "S16_MR", "generated_kernels"]

_NRV = NR // 16
INT8_MR, INT8_MC = 4, 64  # rows of an int8 micro-kernel, rows of a work item
FLOAT_MR, FLOAT_MC = 6, 48
S16_MR, S16_MC = 4, 32


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

    Every activation is the same two steps, ``y < 0 -> y * slope`` then a clamp to ``[lo, hi]``
    (see ``Epilogue``), so the loop has no branch and vectorises.
    """
    mult, bias, slope, lo, hi, oscale, ozp, _ = ep_args
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
            y = y + b_row[j]
            if y < 0:
                y = y * slope
            if y < lo:
                y = lo
            if y > hi:
                y = hi
            store_output(dst, j, y, oscale, ozp)


@njit(error_model="numpy", boundscheck=False)
def _finish_tile(T, ldt, mr, nn, comp, n0, ep_args, out_bytes, o_off, ldo):  # type: ignore[no-untyped-def]
    """The scalar epilogue of one tile of the portable kernels, into ``out_bytes``.

    The output arrives as bytes and its type (``ep_args[7]``) is chosen here, so that one
    compiled driver serves every output kind.
    """
    kind = ep_args[7]
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


# The same epilogue on 16 accumulators at once, in the SIMD micro-kernels' registers: the same
# IEEE operations in the same order (no fast-math), so the bits equal the scalar epilogue's.
# Forced inline: a call per accumulator vector would cost as much as the epilogue itself.
@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _vec_store(y, out, o, count, ep_args):  # type: ignore[no-untyped-def]
    _, _, slope, lo, hi, oscale, ozp, kind = ep_args
    y = vselect_lt(y, vzero_f32(), vmul_f32(y, vsplat_f32(slope)), y)
    vlo = vsplat_f32(lo)
    vhi = vsplat_f32(hi)
    y = vselect_lt(y, vlo, vlo, y)
    y = vselect_lt(vhi, y, vhi, y)
    n = min(count, 16)
    if kind == 0:
        vstore_n_f32(out, o, y, n)
    elif kind == 1:
        vstore_n_f16(out, o, y, n)
    else:
        q = vadd_f32(vrint_f32(vdiv_f32(y, vsplat_f32(oscale))), vsplat_f32(ozp))
        qlo = vsplat_f32(0.0 if kind == 2 else -32768.0)
        qhi = vsplat_f32(255.0 if kind == 2 else 32767.0)
        q = vselect_lt(q, qlo, qlo, q)
        q = vselect_lt(qhi, q, qhi, q)
        if kind == 2:
            vstore_n_u8(out, o, q, n)
        else:
            vstore_n_i16(out, o, q, n)


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _vec_epilogue_i32(acc, n, out, o, count, comp, ep_args):  # type: ignore[no-untyped-def]
    """Epilogue of int32 lanes ``acc`` (columns ``n .. n+15``); ``comp = -za * colsum``."""
    y = vmul_f32(vcvt_f32(vadd_i32(acc, vload_i32(comp, n))), vload_f32(ep_args[0], n))
    _vec_store(vadd_f32(y, vload_f32(ep_args[1], n)), out, o, count, ep_args)


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def _vec_epilogue_f32(acc, n, out, o, count, ep_args):  # type: ignore[no-untyped-def]
    """Epilogue of float32 lanes ``acc`` (columns ``n .. n+15``)."""
    y = vmul_f32(acc, vload_f32(ep_args[0], n))
    _vec_store(vadd_f32(y, vload_f32(ep_args[1], n)), out, o, count, ep_args)


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
def _s16_row(A, ao, nseg, seg_stride, seg_len, za, Bp, b_off, nr, T, t0):  # type: ignore[no-untyped-def]
    """One row of the int16 tile: exact int64 sums of (a - za) * w, stored as float32.

    Converting here (the epilogue's first step) lets the int16 GEMM share the float GEMM's
    compiled epilogue.
    """
    acc = np.zeros(nr, np.int64)
    bo = b_off
    for s in range(nseg):
        base = ao + s * seg_stride
        for k in range(seg_len):
            a = np.int64(A[base + k]) - za
            w = Bp[bo : bo + nr]
            for j in range(nr):
                acc[j] += a * np.int64(w[j])
            bo += nr
    out = T[t0 : t0 + nr]
    for j in range(nr):
        out[j] = np.float32(acc[j])


# ---------------------------------------------------------------------------------------------
# The generated module: micro-kernels and the drivers that call them
# ---------------------------------------------------------------------------------------------
# Arguments of every generated driver, after the item range.
_COMMON = (
    "n_mb, A, lda, rows, M, nseg, seg_stride, {kargs}, Bp, n_panels, nrv_last, panel_size, za, "
    "comp, ep_args, out, ldo, N"
)
_KARGS = {"u8s8": "k4, ktail", "f32": "seg_len", "s16": "seg_len"}

_ITEMS = '''
@njit({jit})
def {kind}_items_{flavor}(first, last, {common}):
    """Work items [first, last): item t is panel t // n_mb, rows block t % n_mb."""
{scratch}
    for t in range(first, last):
        p = t // n_mb
        mb = t - p * n_mb
        nrv = {nrv} if p < n_panels - 1 else nrv_last
        n0 = p * {nr}
        nn = min({nr}, N - n0)
        b_off = p * panel_size
        for m0 in range(mb * {mc}, min(M, (mb + 1) * {mc}), {mr}):
            mr = min({mr}, M - m0)
{offsets}
{tile_call}


@njit(parallel=True, {jit})
def {kind}_parallel_{flavor}(n_items, n_chunks, {common}):
    for c in prange(n_chunks):
        {kind}_items_{flavor}(c * n_items // n_chunks, (c + 1) * n_items // n_chunks, {common})
'''


def _simd_tile_call(tile_name: Any, kernel_args: str, mr: int, single_row: bool) -> str:
    """Dispatch to the micro-kernel for the panel width (which also stores the tile).

    With ``single_row`` a lone row (M = 1, or the last row) has its own kernels: the ``mr``-row
    one would compute that row ``mr`` times, which costs int8 (whose inner loop is compute
    bound) more than float (bound by loading B).
    """
    lines = ["            if mr == 1:"] if single_row else []
    for rows in (1, mr) if single_row else (mr,):
        indent = " " * (16 if single_row else 12)
        if single_row and rows == mr:
            lines.append("            else:")
        aos = ", ".join(f"ao{r}" for r in range(rows))
        for nrv in range(_NRV, 0, -1):
            lines.append(f"{indent}{'if' if nrv == _NRV else 'elif'} nrv == {nrv}:")
            lines.append(
                f"{indent}    {tile_name(rows, nrv)}(A, {aos}, {kernel_args}, m0 * ldo + n0, ldo)"
            )
    return "\n".join(lines)


def _row_tile_call(row_fn: str, kernel_args: str, mr: int) -> str:
    """The portable kernels: one row at a time into the scratch tile, then the scalar epilogue."""
    lines = []
    for r in range(mr):
        call = f"{row_fn}(A, ao{r}, {kernel_args}, 16 * nrv, T, {r * NR})"
        lines += (
            [f"            {call}"]
            if r == 0
            else [f"            if mr > {r}:", f"{' ' * 16}{call}"]
        )
    lines.append(
        f"            _finish_tile(T, {NR}, mr, nn, comp, n0, ep_args, out, m0 * ldo + n0, ldo)"
    )
    return "\n".join(lines)


def _items_source(kind: str, flavor: str, acc: str | None, mr: int, mc: int, tile_call: str) -> str:
    offsets = "\n".join(
        f"            ao{r} = _row_offset(rows, lda, m0 + min({r}, mr - 1))" for r in range(mr)
    )
    return _ITEMS.format(
        jit=codegen.JIT_OPTIONS, kind=kind, flavor=flavor,
        common=_COMMON.format(kargs=_KARGS[kind]),
        scratch=f"    T = np.empty({mr * NR}, np.{acc})" if acc else "", nrv=_NRV, nr=NR, mc=mc,
        mr=mr, offsets=offsets, tile_call=tile_call,
    )  # fmt: skip


def _generated_source() -> str:
    parts = [
        '"""GEMM micro-kernels and drivers, generated by mmbuild.kernels.cpu.gemm_codegen."""',
        "import numpy as np",
        "from numba import njit, prange",
        "from mmbuild.kernels.cpu.simd import (",
        "    load_u8_tail, vbcast4_u8, vbcast_f32, vdpbusd, vfma, vload_f32, vload_i32,",
        "    vsplat_i32, vzero_f32, vzero_i32,",
        ")",
        "from mmbuild.kernels.cpu.gemm_codegen import (",
        "    _finish_tile, _float_row_portable, _row_offset, _s16_row, _u8s8_row_portable,",
        "    _vec_epilogue_f32, _vec_epilogue_i32,",
        ")",
        "",
    ]
    for nrv in range(1, _NRV + 1):
        for rows in (1, INT8_MR):
            parts.append(codegen.int8_tile_source(rows, nrv, "_vec_epilogue_i32"))
        parts.append(codegen.float_tile_source(FLOAT_MR, nrv, "_vec_epilogue_f32"))
    int8_args = "nseg, seg_stride, k4, ktail, Bp, b_off"
    float_args = "nseg, seg_stride, seg_len, Bp, b_off"
    s16_args = "nseg, seg_stride, seg_len, za, Bp, b_off"
    parts += [
        _items_source("u8s8", "simd", None, INT8_MR, INT8_MC, _simd_tile_call(
            codegen.int8_tile_name, int8_args + ", mr, nn, n0, comp, ep_args, out", INT8_MR, True)),
        _items_source("u8s8", "portable", "int32", INT8_MR, INT8_MC,
                      _row_tile_call("_u8s8_row_portable", int8_args, INT8_MR)),
        _items_source("f32", "simd", None, FLOAT_MR, FLOAT_MC, _simd_tile_call(
            codegen.float_tile_name, float_args + ", mr, nn, n0, ep_args, out", FLOAT_MR, False)),
        _items_source("f32", "portable", "float32", FLOAT_MR, FLOAT_MC,
                      _row_tile_call("_float_row_portable", float_args, FLOAT_MR)),
        _items_source("s16", "portable", "float32", S16_MR, S16_MC,
                      _row_tile_call("_s16_row", s16_args, S16_MR)),
    ]  # fmt: skip
    return "\n".join(parts)


@functools.cache
def generated_kernels() -> ModuleType:
    """The generated module (written and imported on first use): ``{kind}_items_{flavor}`` and
    ``{kind}_parallel_{flavor}`` for kind u8s8 / f32 / s16 and flavor simd / portable."""
    return codegen.load_module(
        "gemm_kernels",
        _generated_source(),
        dependencies=(simd, convert, codegen, gemm_pack, sys.modules[__name__]),
    )
