"""What a GEMM is given at build time: its fused epilogue and its weights, packed once.

- :class:`Epilogue`: per output column ``n``, ``y = float32(acc) * mult[n] + bias[n]``, then the
  fused activation (:mod:`.activate`) and the store, in the order the :mod:`.gemm` docstring
  fixes, with
  ``mult[n] = float32(scale_a) * float32(scale_w[n])`` rounded once here. Example: acc 1000,
  scale_a 0.02, scale_w 0.005 give mult 1.0e-4 and y 0.1; a bias of 0.25 makes it 0.35.
- ``pack_int8_weights`` / ``pack_int16_weights`` / ``pack_float_weights``: B ``[K, N]`` in column
  panels of ``NR = 64`` (the last one narrower, a multiple of 16, zero-filled), int8 as
  ``[K/4][NR][4]`` per panel with K padded to a multiple of 4 (per segment), int16 as
  ``[K/2][NR][2]`` (K padded to a multiple of 2), float as ``[K][NR]``. Example: int8 B of
  ``[6, 20]`` is one panel of 32 columns, ``[2][32][4]`` = 256 bytes, K rows 6 and 7 and columns
  20..31 zero; its ``colsum`` (int32, ``sum_k B[k, n]``) serves the zero-point term.
- :class:`ImplicitRows`: where each output row's K-run starts in a flat NHWC input, so that a
  convolution runs as a GEMM without an im2col buffer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mmbuild.errors import MMError
from mmbuild.kernels.cpu.activate import Activation, activation_args

__all__ = [
    "NR",
    "Activation",
    "Epilogue",
    "ImplicitRows",
    "OutKind",
    "PackedFloatWeights",
    "PackedInt8Weights",
    "PackedInt16Weights",
    "pack_float_weights",
    "pack_int8_weights",
    "pack_int16_weights",
]

NR = 64  # columns of a packed panel: four 16-lane vectors
_INT8_MAX_K = (2**31 - 1) // (255 * 128)  # |(a - za) * w| <= 255 * 128
_INT16_MAX_PAIRS = 65535  # pair steps the int16 SIMD accumulator sums exactly (K <= 131070)


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
    act_then: tuple[float, float] = (1.0, -0.0)  # (mul, add) after the activation
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
        # mult and bias padded to whole 16-lane vectors for the SIMD epilogue's loads
        n_pad = -(-self.n // 16) * 16
        mult = np.zeros(n_pad, np.float32)
        bias = np.zeros(n_pad, np.float32)
        mult[: self.n] = self.mult
        bias[: self.n] = self.bias
        f32 = np.float32
        # flat: a parallel region cannot take a tuple inside a tuple
        act_args = activation_args(act, self.act_a, self.act_b, *self.act_then)
        args = (mult, bias, *act_args, f32(self.out_scale), f32(self.out_zp), np.int64(kind))
        object.__setattr__(self, "_args", args)

    @property
    def n(self) -> int:
        return int(self.mult.size)

    def rescale(self, scale_a: Any, scale_w: np.ndarray) -> None:
        """``mult = float32(scale_a) * scale_w`` in place, in the arrays that bound kernels
        read: the scale of a dynamically quantized input, known only when a run starts.
        Example: scale_a 0.02 and scale_w [0.005] make mult [1.0e-4] for the next call."""
        mult = np.float32(scale_a) * scale_w
        self.mult[:] = mult
        self._args[0][: self.n] = mult

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
        act_then: tuple[float, float] = (1.0, -0.0),
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
            act_then=(float(act_then[0]), float(act_then[1])),
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

    group: ClassVar[int] = 1  # K rows packed side by side per column: 4 int8, 2 int16, 1 float

    @property
    def seg_len(self) -> int:
        """K rows per segment (K itself for a plain GEMM)."""
        return self.k // self.segments

    @property
    def kwhole(self) -> int:
        """Whole groups of ``group`` K rows per segment."""
        return self.seg_len // self.group

    @property
    def ktail(self) -> int:
        """K rows per segment past the whole groups (read one by one, padded with zeros)."""
        return self.seg_len % self.group

    @property
    def kgroups(self) -> int:
        """Groups of (zero-padded) K rows over all segments."""
        return self.segments * -(-self.seg_len // self.group)

    @property
    def k_pad(self) -> int:
        return self.group * self.kgroups

    @property
    def n_pad(self) -> int:
        return (self.n_panels - 1) * NR + 16 * self.nrv_last


@dataclass(frozen=True, eq=False)
class PackedInt8Weights(_Packed):
    """int8 weights in ``vpdpbusd`` panels, plus their column sums for the zero-point term and
    whether every weight is within [-64, 64] (``small``: then ``vpmaddubsw`` cannot saturate,
    and the levels without VNNI use it, see :func:`.dot.small_dot`)."""

    colsum: np.ndarray  # int32 [n]: sum_k w[k, n]
    small: bool
    group: ClassVar[int] = 4


@dataclass(frozen=True, eq=False)
class PackedInt16Weights(_Packed):
    """int16 weights in ``vpmaddwd`` panels (``[K/2][NR][2]``), plus their column sums for the
    zero-point term and whether the SIMD kernels are exact for them (``pairs_exact``: no weight
    is -32768, whose pair sums can leave int32, and at most ``_INT16_MAX_PAIRS`` pairs of K rows,
    see :func:`.dot.pair_cols`); where not, the product runs on the portable kernel."""

    colsum: np.ndarray  # int64 [n]: sum_k w[k, n]
    pairs_exact: bool
    group: ClassVar[int] = 2


@dataclass(frozen=True, eq=False)
class PackedFloatWeights(_Packed):
    """float32 weights in ``[K][NR]`` panels, stored as float32 or as fp16 bits (``half``)."""

    half: bool = False


def _grouped_panels(w: np.ndarray, segments: int, group: int) -> tuple[np.ndarray, int, int]:
    """(panels ``[K/group][NR][group]`` of each segment padded to whole groups, n_panels,
    nrv_last)."""
    k, n = w.shape
    n_panels, nrv_last = _panels(n)
    seg_len = k // segments
    groups = -(-seg_len // group)
    wk = np.zeros((segments, group * groups, n), w.dtype)
    wk[:, :seg_len] = w.reshape(segments, seg_len, n)
    wp = _padded_columns(wk.reshape(segments * group * groups, n), n_panels, nrv_last, w.dtype)
    return _pack_panels(wp, n_panels, nrv_last, group), n_panels, nrv_last


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
    data, n_panels, nrv_last = _grouped_panels(w, segments, 4)
    return PackedInt8Weights(
        data=data,
        k=k,
        n=n,
        segments=segments,
        n_panels=n_panels,
        nrv_last=nrv_last,
        colsum=w.astype(np.int32).sum(axis=0, dtype=np.int32),
        small=bool(np.abs(w.astype(np.int16)).max() <= 64),
    )


def pack_int16_weights(w_kn: np.ndarray, *, segments: int = 1) -> PackedInt16Weights:
    """Pack int16 weights ``[K, N]`` once, at build time (``segments`` as for int8, each run
    padded to a multiple of 2). Example: ``[3, 5]`` gives one panel of 16 columns,
    ``[2][16][2]``; K row 3 and columns 5..15 are zero."""
    w = _check_weights(w_kn, (np.int16,), segments, "pack_int16_weights")
    data, n_panels, nrv_last = _grouped_panels(w, segments, 2)
    pairs = segments * -(-(w.shape[0] // segments) // 2)
    return PackedInt16Weights(
        data=data,
        k=w.shape[0],
        n=w.shape[1],
        segments=segments,
        n_panels=n_panels,
        nrv_last=nrv_last,
        colsum=w.sum(axis=0, dtype=np.int64),
        pairs_exact=pairs <= _INT16_MAX_PAIRS and not (w == -32768).any(),
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
