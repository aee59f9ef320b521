"""GEMM for every precision of mmbuild, with weights packed at build time and fused epilogues.

Three products, each split into a build-time ``pack_*`` step and a run-time call that writes a
caller-supplied ``out``:

=============  ======================================  ==========================  ============
entry          A (activations)                         B (packed weights)          accumulator
=============  ======================================  ==========================  ============
``gemm_u8s8``  uint8 with zero point ``za``            int8, symmetric             int32
``gemm_s16``   int16 with zero point ``za``            int16, symmetric            int64
``gemm_f32``   float32, or uint16 holding fp16 bits    float32, or fp16 bits       float32
=============  ======================================  ==========================  ============

Each takes ``rows=`` for an implicit-GEMM convolution (see :class:`ImplicitRows`), and has a
``bind_*`` form that checks the operands once and returns a :class:`BoundGemm` to run many times.

Integer accumulation is exact: ``acc[m, n] = sum_k (a[m, k] - za) * w[k, n]``. The int8 kernels
compute it as ``vpdpbusd`` on the raw uint8 bytes plus ``-za * colsum(w)[n]`` in the epilogue,
which is the same integer as long as it fits int32: ``pack_int8_weights`` refuses
``K > 65793``, past which ``255 * 128 * K`` could overflow. The int16 product is summed in int64.

The epilogue (:class:`Epilogue`) runs on each finished tile, in float32, in exactly this order,
with no fused multiply-add or reordering (the kernels are compiled without fastmath):

1. ``y = float32(acc) * mult[n]`` where ``mult[n] = float32(scale_a) * float32(scale_w[n])`` is
   computed once at build time; the float GEMM uses its float32 sum as ``acc`` (``mult`` is
   usually 1 there, and multiplying by 1 is exact);
2. ``y = y + bias[n]``; for a node whose float precision is fp16 the caller passes the bias
   already rounded to fp16 and widened back, the kernel does not round it;
3. the activation: ``RELU`` ``y < 0 -> 0``; ``CLIP`` ``y < lo -> lo, y > hi -> hi`` (relu6 is
   CLIP with 0 and 6); ``LEAKY_RELU`` ``y < 0 -> y * alpha``. Written as comparisons, so NaN
   passes through and ``-0.0`` stays ``-0.0`` (a reference must use the same comparisons:
   ``np.maximum`` is free to return either zero);
4. the store (:func:`.convert.store_output`): float32; fp16 bits (round to nearest even); uint8
   or int16 ``clip(rint(y / out_scale) + out_zp)``, dividing by the float32 scale as the numpy
   reference does (multiplying by a reciprocal would differ in the last bit).

So the integer paths match a numpy reference written with the same float32 operations bit for
bit, on the SIMD and the portable kernels alike. The float path cannot match numpy's matmul
exactly (the summation order differs, and the SIMD kernels fuse each multiply-add); against an
exact product its error is bounded by ``K * 2**-24 * sum_k |a[m, k] * b[k, n]|`` (a few ulps in
practice) before the epilogue, plus one fp16 rounding of each operand or of the output where
those are fp16.

Layout. B is packed into column panels of ``NR = 64`` (the last one narrower, a multiple of 16),
int8 as ``[K/4][NR][4]`` per panel (each K segment padded to a multiple of 4 with zeros), float
and int16 as ``[K][NR]``. The driver splits the work into (panel, block of ``MC`` rows) items, n
major, and runs them on all threads when the product is large enough to pay for a parallel
launch or streams many weights (``PARALLEL_MIN_MACS``, ``PARALLEL_MIN_WEIGHT_BYTES``). A SIMD
micro-kernel computes ``MR`` rows of one panel (4 x 64 int8, 6 x 64 float, and a 1-row variant
for a single row) and applies the epilogue to its registers, with masked stores at the right
edge; the portable kernels fill a scratch tile that a scalar epilogue stores.

A may have a row stride (``a = buf[:, :K]``), and K needs no padding: the int8 kernels read the
last ``K % 4`` bytes of a row one by one. ``out`` may have a row stride too (a slice of a wider
buffer, e.g. a channel concat), but its rows must be contiguous.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast

import numba
import numpy as np
from numba import njit, types
from numba.extending import overload

from mmbuild.errors import MMError
from mmbuild.kernels.cpu import codegen, convert, features, simd
from mmbuild.kernels.cpu.convert import store_output
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

__all__ = [
    "NR",
    "Activation",
    "BoundGemm",
    "Epilogue",
    "ImplicitRows",
    "OutKind",
    "PackedFloatWeights",
    "PackedInt8Weights",
    "PackedInt16Weights",
    "bind_gemm_f32",
    "bind_gemm_s16",
    "bind_gemm_u8s8",
    "gemm_f32",
    "gemm_s16",
    "gemm_u8s8",
    "pack_float_weights",
    "pack_int8_weights",
    "pack_int16_weights",
]

NR = 64  # columns of a packed panel: four 16-lane vectors
_NRV = NR // 16
INT8_MR, INT8_MC = 4, 64  # rows of an int8 micro-kernel, rows of a work item
FLOAT_MR, FLOAT_MC = 6, 48
S16_MR, S16_MC = 4, 32

# Multiply-accumulates below which a product runs on one thread. A parallel launch costs 1-2 us;
# one core does about 450 G int8 MAC/s and 110 G float MAC/s here, so these are a few us of work.
PARALLEL_MIN_MACS = {"u8s8": 1 << 21, "f32": 1 << 18, "s16": 1 << 16}
PARALLEL_MIN_WEIGHT_BYTES = 1 << 18

_INT8_MAX_K = (2**31 - 1) // (255 * 128)  # |(a - za) * w| <= 255 * 128


class Activation(enum.IntEnum):
    """The activation fused into an epilogue; ``act_a``/``act_b`` hold its parameters."""

    NONE = 0
    RELU = 1
    CLIP = 2  # act_a = lo, act_b = hi; relu6 is CLIP(0, 6)
    LEAKY_RELU = 3  # act_a = alpha


class OutKind(enum.IntEnum):
    """What the epilogue stores."""

    F32 = 0
    F16 = 1  # IEEE half bits in a uint16 array
    U8 = 2  # clip(rint(y / out_scale) + out_zp, 0, 255)
    I16 = 3  # clip(rint(y / out_scale) + out_zp, -32768, 32767)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_OUT_DTYPES[self])


_OUT_DTYPES = {OutKind.F32: np.float32, OutKind.F16: np.uint16, OutKind.U8: np.uint8,
               OutKind.I16: np.int16}  # fmt: skip
_OUT_ZP_RANGE = {OutKind.U8: (0, 255), OutKind.I16: (-32768, 32767)}


def _float32_vector(values: Any, n: int, what: str, default: float) -> np.ndarray:
    if values is None:
        return np.full(n, default, np.float32)
    arr = np.asarray(values)
    if arr.ndim == 0:
        return np.full(n, arr, np.float32)
    if arr.shape != (n,):
        raise MMError(f"{what} has shape {arr.shape}; expected a scalar or ({n},)")
    return np.ascontiguousarray(arr, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Epilogue:
    """The per-column scale, bias, activation and output conversion fused into a GEMM's store.

    Build it with :meth:`create`, which computes ``mult`` the way the contract says; the kernels
    use copies of ``mult`` and ``bias`` taken when the epilogue is made. Worked
    through for one column: acc = 1000, scale_a = 0.02, scale_w = 0.005 -> mult =
    float32(0.02) * float32(0.005) = 1.0e-4 (in float32); y = 1000 * 1.0e-4 = 0.1; + bias 0.25
    -> 0.35; RELU keeps 0.35; U8 with out_scale 0.01, out_zp 10 -> rint(35.0) + 10 = 45.
    """

    mult: np.ndarray
    bias: np.ndarray
    act: Activation = Activation.NONE
    act_a: float = 0.0
    act_b: float = 0.0
    out_kind: OutKind = OutKind.F32
    out_scale: float = 1.0
    out_zp: int = 0
    _args: tuple[Any, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("mult", "bias"):
            arr = getattr(self, name)
            if not (isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.ndim == 1):
                raise MMError(f"Epilogue.{name} must be a 1-D float32 array")
            if not arr.flags.c_contiguous:
                raise MMError(f"Epilogue.{name} must be contiguous")
        if self.mult.shape != self.bias.shape:
            raise MMError(f"Epilogue: mult has {self.mult.size} columns, bias {self.bias.size}")
        act = Activation(self.act)
        kind = OutKind(self.out_kind)
        if act is Activation.CLIP and not self.act_a <= self.act_b:
            raise MMError(f"Epilogue: CLIP needs lo <= hi, got ({self.act_a}, {self.act_b})")
        if kind in _OUT_ZP_RANGE:
            zlo, zhi = _OUT_ZP_RANGE[kind]
            if not zlo <= self.out_zp <= zhi:
                raise MMError(f"Epilogue: out_zp {self.out_zp} is outside [{zlo}, {zhi}] of {kind}")
            scale = np.float32(self.out_scale)
            if not (np.isfinite(scale) and scale > 0):
                raise MMError(f"Epilogue: out_scale must be finite and > 0, got {self.out_scale}")
        object.__setattr__(self, "act", act)
        object.__setattr__(self, "out_kind", kind)
        # The kernels apply every activation as ``y < 0 -> y * slope`` and a clamp to [lo, hi];
        # the unused parts are identities (a slope of 1 and infinite bounds change no value).
        slope: float = 1.0
        lo: float = -np.inf
        hi: float = np.inf
        if act is Activation.RELU:
            lo = 0.0
        elif act is Activation.CLIP:
            lo, hi = self.act_a, self.act_b
        elif act is Activation.LEAKY_RELU:
            slope = self.act_a
        # mult and bias padded to whole 16-lane vectors for the SIMD epilogue's loads
        n_pad = -(-self.n // 16) * 16
        mult = np.zeros(n_pad, np.float32)
        bias = np.zeros(n_pad, np.float32)
        mult[: self.n] = self.mult
        bias[: self.n] = self.bias
        f32 = np.float32
        args = (mult, bias, f32(slope), f32(lo), f32(hi), f32(self.out_scale), f32(self.out_zp),
                np.int64(kind))  # fmt: skip
        object.__setattr__(self, "_args", args)

    @property
    def n(self) -> int:
        return int(self.mult.size)

    @classmethod
    def create(
        cls,
        n: int,
        *,
        scale_a: float = 1.0,
        scale_w: float | np.ndarray = 1.0,
        bias: np.ndarray | None = None,
        act: Activation = Activation.NONE,
        act_a: float = 0.0,
        act_b: float = 0.0,
        out_kind: OutKind = OutKind.F32,
        out_scale: float = 1.0,
        out_zp: int = 0,
    ) -> Epilogue:
        """An epilogue for ``n`` columns; ``scale_w`` is per tensor (scalar) or per column."""
        w = _float32_vector(scale_w, n, "scale_w", 1.0)
        mult = np.float32(scale_a) * w  # float32 * float32, rounded once: the contract's mult
        return cls(
            mult=np.ascontiguousarray(mult, dtype=np.float32),
            bias=_float32_vector(bias, n, "bias", 0.0),
            act=act,
            act_a=float(act_a),
            act_b=float(act_b),
            out_kind=out_kind,
            out_scale=float(out_scale),
            out_zp=int(out_zp),
        )


# ---------------------------------------------------------------------------------------------
# Packed weights
# ---------------------------------------------------------------------------------------------
def _panels(n: int) -> tuple[int, int]:
    """(number of panels, 16-lane vectors in the last one) for ``n`` columns."""
    n_panels = -(-n // NR)
    return n_panels, -(-(n - (n_panels - 1) * NR) // 16)


def _check_weights(w: Any, dtypes: tuple[type, ...], segments: int, what: str) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype.type not in dtypes:
        names = " or ".join(np.dtype(t).name for t in dtypes)
        raise MMError(f"{what}: weights must be a 2-D [K, N] {names} array")
    k, n = w.shape
    if k < 1 or n < 1:
        raise MMError(f"{what}: weights of shape {w.shape} are empty")
    if segments < 1 or k % segments:
        raise MMError(f"{what}: K = {k} does not split into {segments} equal segments")
    return w


def _pack_panels(wp: np.ndarray, n_panels: int, nrv_last: int, group: int) -> np.ndarray:
    """``wp[Kp, Np]`` (padded) -> panels ``[Kp / group][width][group]``, concatenated."""
    kp = wp.shape[0]
    parts = []
    for p in range(n_panels):
        width = NR if p < n_panels - 1 else 16 * nrv_last
        block = wp[:, p * NR : p * NR + width].reshape(kp // group, group, width)
        parts.append(block.transpose(0, 2, 1).reshape(-1))
    return np.ascontiguousarray(np.concatenate(parts))


def _padded_columns(w: np.ndarray, n_panels: int, nrv_last: int, dtype: Any) -> np.ndarray:
    wp = np.zeros((w.shape[0], (n_panels - 1) * NR + 16 * nrv_last), dtype)
    wp[:, : w.shape[1]] = w
    return wp


@dataclass(frozen=True, eq=False)
class _Packed:
    data: np.ndarray
    k: int
    n: int
    segments: int
    n_panels: int
    nrv_last: int

    @property
    def seg_len(self) -> int:
        """K rows per segment (K itself for a plain GEMM)."""
        return self.k // self.segments

    @property
    def n_pad(self) -> int:
        return (self.n_panels - 1) * NR + 16 * self.nrv_last


@dataclass(frozen=True, eq=False)
class PackedInt8Weights(_Packed):
    """int8 weights in ``vpdpbusd`` panels, plus their column sums for the zero-point term."""

    colsum: np.ndarray  # int32 [n]: sum_k w[k, n]

    @property
    def k4(self) -> int:
        """Whole groups of four K rows per segment."""
        return self.seg_len // 4

    @property
    def ktail(self) -> int:
        return self.seg_len % 4

    @property
    def kgroups(self) -> int:
        """Groups of four (zero-padded) K rows over all segments."""
        return self.segments * -(-self.seg_len // 4)

    @property
    def k_pad(self) -> int:
        return 4 * self.kgroups


@dataclass(frozen=True, eq=False)
class PackedInt16Weights(_Packed):
    """int16 weights in ``[K][NR]`` panels."""


@dataclass(frozen=True, eq=False)
class PackedFloatWeights(_Packed):
    """float32 weights in ``[K][NR]`` panels, stored as float32 or as fp16 bits (``half``)."""

    half: bool = False


def pack_int8_weights(w_kn: np.ndarray, *, segments: int = 1) -> PackedInt8Weights:
    """Pack int8 weights ``[K, N]`` once, at build time.

    ``segments`` splits K into equal runs that the implicit GEMM reads from different places
    (``KH`` for a convolution whose weights are ``[KH][KW][Cin][Cout]``); each run is padded to a
    multiple of 4 on its own. A plain GEMM uses 1.
    """
    w = _check_weights(w_kn, (np.int8,), segments, "pack_int8_weights")
    k, n = w.shape
    if k > _INT8_MAX_K:
        raise MMError(
            f"pack_int8_weights: K = {k} exceeds {_INT8_MAX_K}, where an int32 accumulator "
            "could overflow; split K or run the node in QINT16"
        )
    n_panels, nrv_last = _panels(n)
    seg_len = k // segments
    groups = -(-seg_len // 4)
    wk = np.zeros((segments, 4 * groups, n), np.int8)
    wk[:, :seg_len] = w.reshape(segments, seg_len, n)
    wp = _padded_columns(wk.reshape(segments * 4 * groups, n), n_panels, nrv_last, np.int8)
    return PackedInt8Weights(
        data=_pack_panels(wp, n_panels, nrv_last, 4),
        k=k,
        n=n,
        segments=segments,
        n_panels=n_panels,
        nrv_last=nrv_last,
        colsum=w.astype(np.int32).sum(axis=0, dtype=np.int32),
    )


def pack_int16_weights(w_kn: np.ndarray, *, segments: int = 1) -> PackedInt16Weights:
    """Pack int16 weights ``[K, N]`` once, at build time (``segments`` as for int8)."""
    w = _check_weights(w_kn, (np.int16,), segments, "pack_int16_weights")
    n_panels, nrv_last = _panels(w.shape[1])
    wp = _padded_columns(w, n_panels, nrv_last, np.int16)
    return PackedInt16Weights(
        data=_pack_panels(wp, n_panels, nrv_last, 1),
        k=w.shape[0],
        n=w.shape[1],
        segments=segments,
        n_panels=n_panels,
        nrv_last=nrv_last,
    )


def pack_float_weights(
    w_kn: np.ndarray, *, half: bool = False, segments: int = 1
) -> PackedFloatWeights:
    """Pack float weights ``[K, N]`` (float32 or float16) once, at build time.

    ``half=True`` stores them as fp16 bits ("fp16 weights": half the memory traffic; the kernel
    widens them exactly and accumulates in float32); float32 weights are rounded to nearest even.
    """
    w = _check_weights(w_kn, (np.float32, np.float16), segments, "pack_float_weights")
    n_panels, nrv_last = _panels(w.shape[1])
    dtype = np.float16 if half else np.float32
    wp = _padded_columns(w.astype(dtype), n_panels, nrv_last, dtype)
    data = _pack_panels(wp, n_panels, nrv_last, 1)
    return PackedFloatWeights(
        data=data.view(np.uint16) if half else data,
        k=w.shape[0],
        n=w.shape[1],
        segments=segments,
        n_panels=n_panels,
        nrv_last=nrv_last,
        half=half,
    )


@dataclass(frozen=True, eq=False)
class ImplicitRows:
    """Where the K-row of each output row starts in a flat input (implicit GEMM).

    Output row ``m`` reads ``segments`` runs of ``seg_len`` elements of the flat input, the
    first at ``offsets[m]`` and each next one ``seg_stride`` further (``segments`` and
    ``seg_len`` come from the packed weights). For a convolution over an NHWC input that the
    caller has already padded (with the zero point), a run is one kernel row: ``KW * Cin``
    contiguous elements. So no im2col buffer is written.
    """

    offsets: np.ndarray
    seg_stride: int
    max_offset: int = field(init=False)

    def __post_init__(self) -> None:
        o = self.offsets
        if not (isinstance(o, np.ndarray) and o.dtype == np.int64 and o.ndim == 1):
            raise MMError("ImplicitRows.offsets must be a 1-D int64 array")
        if o.size and int(o.min()) < 0:
            raise MMError("ImplicitRows.offsets must not be negative")
        if self.seg_stride < 0:
            raise MMError("ImplicitRows.seg_stride must not be negative")
        object.__setattr__(self, "max_offset", int(o.max()) if o.size else 0)

    @property
    def m(self) -> int:
        return int(self.offsets.size)

    @classmethod
    def conv2d_nhwc(
        cls,
        batch: int,
        height: int,
        width: int,
        channels: int,
        kernel: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        dilation: tuple[int, int] = (1, 1),
    ) -> ImplicitRows:
        """The rows of a 2-D convolution over a padded ``[batch, height, width, channels]`` input.

        Output pixels are numbered ``(b, y, x)`` row-major, so ``out`` is the NHWC output viewed
        as ``[batch * Ho * Wo, Cout]``; pack the ``[KH, KW, Cin, Cout]`` weights reshaped to
        ``[KH * KW * Cin, Cout]`` with ``segments=KH``. A horizontal dilation breaks a kernel row
        into ``KW`` pieces, so it is refused here: lower such a conv through im2col instead.
        """
        kh, kw = kernel
        sh, sw = stride
        dh, dw = dilation
        if dw != 1:
            raise MMError("ImplicitRows.conv2d_nhwc: dilation along W needs im2col")
        if min(kh, kw, sh, sw, dh, batch, channels) < 1:
            raise MMError("ImplicitRows.conv2d_nhwc: sizes, strides and dilation must be >= 1")
        ho = (height - dh * (kh - 1) - 1) // sh + 1
        wo = (width - (kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1:
            raise MMError(
                f"ImplicitRows.conv2d_nhwc: a {kh}x{kw} kernel does not fit {height}x{width}"
            )
        b = np.arange(batch, dtype=np.int64)[:, None, None] * (height * width * channels)
        y = np.arange(ho, dtype=np.int64)[None, :, None] * (sh * width * channels)
        x = np.arange(wo, dtype=np.int64)[None, None, :] * (sw * channels)
        return cls(offsets=(b + y + x).reshape(-1), seg_stride=dh * width * channels)


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
        '"""GEMM micro-kernels and drivers, generated by mmbuild.kernels.cpu.gemm."""',
        "import numpy as np",
        "from numba import njit, prange",
        "from mmbuild.kernels.cpu.simd import (",
        "    load_u8_tail, vbcast4_u8, vbcast_f32, vdpbusd, vfma, vload_f32, vload_i32,",
        "    vsplat_i32, vzero_f32, vzero_i32,",
        ")",
        "from mmbuild.kernels.cpu.gemm import (",
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
def _kernels() -> ModuleType:
    import sys

    return codegen.load_module(
        "gemm_kernels",
        _generated_source(),
        dependencies=(simd, convert, codegen, sys.modules[__name__]),
    )


# ---------------------------------------------------------------------------------------------
# Run time
# ---------------------------------------------------------------------------------------------
def _flat_matrix(arr: Any, rows: int, cols: int, dtypes: tuple[type, ...], what: str) -> tuple:
    """A ``[rows, cols]`` matrix with contiguous rows -> (flat 1-D view, row stride)."""
    if not isinstance(arr, np.ndarray) or arr.dtype.type not in dtypes:
        names = " or ".join(np.dtype(t).name for t in dtypes)
        got = arr.dtype.name if isinstance(arr, np.ndarray) else type(arr).__name__
        raise MMError(f"{what} must be a {names} array, got {got}")
    if arr.shape != (rows, cols):
        raise MMError(f"{what} has shape {arr.shape}; expected ({rows}, {cols})")
    if arr.flags.c_contiguous:
        flat = arr.reshape(-1)
        ld = cols
    else:
        item = arr.itemsize
        s0, s1 = arr.strides
        if s1 != item or s0 % item or s0 < cols * item:
            raise MMError(f"{what}: rows must be contiguous and must not overlap")
        ld = s0 // item
        flat = np.lib.stride_tricks.as_strided(arr, ((rows - 1) * ld + cols,), (item,))
    if flat.dtype == np.float16:
        flat = flat.view(np.uint16)
    return flat, ld


def _flat_buffer(x: Any, dtypes: tuple[type, ...], what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype.type not in dtypes:
        names = " or ".join(np.dtype(t).name for t in dtypes)
        raise MMError(f"{what} must be a contiguous {names} array")
    if not x.flags.c_contiguous:
        raise MMError(f"{what} must be C-contiguous")
    flat = x.reshape(-1)
    return flat.view(np.uint16) if flat.dtype == np.float16 else flat


def _check_epilogue(ep: Any, w: _Packed, out: Any, m: int) -> tuple[np.ndarray, int]:
    if not isinstance(ep, Epilogue):
        raise MMError(f"expected an Epilogue, got {type(ep).__name__}")
    if ep.n != w.n:
        raise MMError(f"the epilogue has {ep.n} columns but the weights have N = {w.n}")
    kind = ep.out_kind
    dtypes: tuple[type, ...] = (
        (np.uint16, np.float16) if kind is OutKind.F16 else (kind.dtype.type,)
    )
    flat, ldo = _flat_matrix(out, m, w.n, dtypes, f"out (for {kind.name} output)")
    if not out.flags.writeable:
        raise MMError("out is read-only")
    return flat, ldo


def _check_zero_point(za: Any, lo: int, hi: int) -> int:
    z = int(za)
    if not lo <= z <= hi:
        raise MMError(f"activation zero point {za} is outside [{lo}, {hi}]")
    return z


def _check_implicit(x: np.ndarray, rows: Any, w: _Packed) -> None:
    if not isinstance(rows, ImplicitRows):
        raise MMError(f"expected ImplicitRows, got {type(rows).__name__}")
    if rows.m and rows.max_offset + (w.segments - 1) * rows.seg_stride + w.seg_len > x.size:
        raise MMError(
            f"ImplicitRows reach element {rows.max_offset + (w.segments - 1) * rows.seg_stride} "
            f"+ {w.seg_len} of an input of {x.size} elements"
        )


_NO_ROWS = np.empty(0, np.int64)
_MC = {"u8s8": INT8_MC, "f32": FLOAT_MC, "s16": S16_MC}
_PACKED = {"u8s8": PackedInt8Weights, "f32": PackedFloatWeights, "s16": PackedInt16Weights}


def _nothing() -> None:
    return None


class BoundGemm:
    """A GEMM whose operands are checked and bound once: each call runs the kernel again.

    A plan runs the same products on the same buffers many times; binding moves the argument
    checks and the kernel choice out of the run, leaving about a microsecond of call overhead.
    The bound buffers are used in place, so their contents may change between calls, but they
    must not be replaced. ``kernel`` names the kernel for layer reports.
    """

    __slots__ = ("_args", "_fn", "kernel")

    def __init__(self, fn: Any, args: tuple, kernel: str) -> None:
        self._fn = fn
        self._args = args
        self.kernel = kernel

    def __call__(self) -> None:
        self._fn(*self._args)

    def __repr__(self) -> str:
        return f"BoundGemm({self.kernel})"


def _bind(
    kind: str,
    a: Any,
    za: Any,
    w: Any,
    ep: Any,
    out: Any,
    rows: ImplicitRows | None,
    portable: bool,
) -> BoundGemm:
    """Check the operands of a product and choose its kernel (see ``bind_gemm_u8s8``)."""
    if not (isinstance(w, _Packed) and isinstance(w, _PACKED[kind])):
        raise MMError(f"gemm_{kind} needs {_PACKED[kind].__name__}, got {type(w).__name__}")
    w = cast(_Packed, w)
    a_dtypes = {"u8s8": (np.uint8,), "s16": (np.int16,),
                "f32": (np.float32, np.float16, np.uint16)}[kind]  # fmt: skip
    if rows is None:
        m = a.shape[0] if isinstance(a, np.ndarray) and a.ndim == 2 else -1
        a_flat, lda = _flat_matrix(a, m, w.k, a_dtypes, "a")
        offsets, seg_stride = _NO_ROWS, w.seg_len
    else:
        a_flat = _flat_buffer(a, a_dtypes, "a (the input of an implicit GEMM)")
        _check_implicit(a_flat, rows, w)
        m, lda, offsets, seg_stride = rows.m, 0, rows.offsets, rows.seg_stride
    out_flat, ldo = _check_epilogue(ep, w, out, m)
    comp: np.ndarray | None = None
    if isinstance(w, PackedInt8Weights):
        z = _check_zero_point(za, 0, 255)
        k_args: tuple[int, ...] = (w.k4, w.ktail)
        panel_size = w.kgroups * 4 * NR
        # the zero-point term of every column, padded to whole vectors; |za * colsum| < 2**31
        comp = np.zeros(w.n_pad, np.int32)
        comp[: w.n] = -z * w.colsum
        simd_path = features.use_int8_simd()
    else:
        z = _check_zero_point(za, -32768, 32767)
        k_args, panel_size = (w.seg_len,), w.k * NR
        simd_path = kind == "f32" and features.use_float_simd()
    flavor = "simd" if simd_path and not portable else "portable"
    if m == 0:
        return BoundGemm(_nothing, (), f"gemm_{kind}/{flavor}")
    n_mb = -(-m // _MC[kind])
    n_items = w.n_panels * n_mb
    out_bytes = out_flat.view(np.uint8)
    args = (n_mb, a_flat, lda, offsets, m, w.segments, seg_stride, *k_args, w.data, w.n_panels,
            w.nrv_last, panel_size, z, comp, ep._args, out_bytes, ldo, w.n)  # fmt: skip
    mod = _kernels()
    # Large products, and products that stream many weights (a batch-1 fully connected layer is
    # bound by reading them, which two cores do faster than one), run on all threads.
    large = n_items > 1 and (
        m * w.n * w.k >= PARALLEL_MIN_MACS[kind] or w.data.nbytes >= PARALLEL_MIN_WEIGHT_BYTES
    )
    threads = numba.get_num_threads() if large else 1
    if threads > 1:
        fn = getattr(mod, f"{kind}_parallel_{flavor}")
        return BoundGemm(fn, (n_items, min(n_items, threads), *args), f"gemm_{kind}/{flavor}/mt")
    fn = getattr(mod, f"{kind}_items_{flavor}")
    return BoundGemm(fn, (0, n_items, *args), f"gemm_{kind}/{flavor}")


def bind_gemm_u8s8(
    a: np.ndarray,
    za: int,
    w: PackedInt8Weights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
    portable: bool = False,
) -> BoundGemm:
    """Check and bind ``out = epilogue((a - za) @ w)`` for uint8 activations; see
    :func:`gemm_u8s8`. Call the result to run it."""
    return _bind("u8s8", a, za, w, ep, out, rows, portable)


def gemm_u8s8(
    a: np.ndarray,
    za: int,
    w: PackedInt8Weights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
    portable: bool = False,
) -> None:
    """``out = epilogue((a - za) @ w)`` for uint8 activations and packed int8 weights.

    ``a`` is ``[M, K]`` and may be a view with a row stride (``buf[:, :K]``); with ``rows`` it is
    instead the contiguous input that the rows are gathered from (an implicit-GEMM convolution,
    ``M = rows.m``). ``za`` is the activations' zero point in [0, 255]; ``out`` is ``[M, N]`` of
    the epilogue's output type, rows contiguous. ``portable=True`` runs the portable kernels,
    which give the same bits and run on any CPU (the SIMD ones run only where the CPU has
    AVX512-VNNI, and never under ``MMBUILD_PORTABLE=1``).
    """
    _bind("u8s8", a, za, w, ep, out, rows, portable)()


def bind_gemm_s16(
    a: np.ndarray,
    za: int,
    w: PackedInt16Weights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
) -> BoundGemm:
    """Check and bind :func:`gemm_s16`. Call the result to run it."""
    return _bind("s16", a, za, w, ep, out, rows, True)


def gemm_s16(
    a: np.ndarray,
    za: int,
    w: PackedInt16Weights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
) -> None:
    """``out = epilogue((a - za) @ w)`` for int16 activations, accumulated exactly in int64.

    One portable kernel serves every CPU; the arguments are as for :func:`gemm_u8s8`, with
    ``za`` in [-32768, 32767].
    """
    _bind("s16", a, za, w, ep, out, rows, True)()


def bind_gemm_f32(
    a: np.ndarray,
    w: PackedFloatWeights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
    portable: bool = False,
) -> BoundGemm:
    """Check and bind :func:`gemm_f32`. Call the result to run it."""
    return _bind("f32", a, 0, w, ep, out, rows, portable)


def gemm_f32(
    a: np.ndarray,
    w: PackedFloatWeights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
    portable: bool = False,
) -> None:
    """``out = epilogue(a @ w)`` for float activations (float32, or fp16 as float16 or uint16
    bits) and packed float32 or fp16 weights, accumulated in float32 with FMA.

    The tolerance against an exact product is in the module docstring; the other arguments are
    as for :func:`gemm_u8s8`. The SIMD kernels need AVX-512 F/BW/VL, FMA and F16C.
    """
    _bind("f32", a, 0, w, ep, out, rows, portable)()
