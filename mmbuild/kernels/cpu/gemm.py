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
``K > 65793``, past which ``255 * 128 * K`` could overflow. The int16 SIMD kernels sum pairs
``a[k] * w[k] + a[k+1] * w[k+1]`` of raw activations with ``vpmaddwd`` (exact in int32 unless a
weight is -32768, see :func:`bind_gemm_s16`), recover their exact int64 sum (see
:func:`.dot.pair_cols`), and add ``-za * colsum(w)[n]`` (int64) in the epilogue; the portable
kernel sums ``(a - za) * w`` in int64: the same integer.

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
   ``np.maximum`` is free to return either zero); then ``y * mul + add`` where the activation
   has an affine after it (:mod:`.activate`);
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
int8 as ``[K/4][NR][4]`` per panel (each K segment padded to a multiple of 4 with zeros), int16
as ``[K/2][NR][2]`` (padded to a multiple of 2), float as ``[K][NR]``. The driver splits the
work into (panel, block of ``MC`` rows) items, n major, and runs them on all threads when the
product is large enough to pay for a parallel launch or streams many weights
(``PARALLEL_MIN_MACS`` of work, the products plus ``EPILOGUE_MACS`` per output, or
``PARALLEL_MIN_WEIGHT_BYTES``). A SIMD micro-kernel computes ``MR`` rows
of a tile of the panel (see ``gemm_codegen.TILES``: on AVX2 4 x 8 int8 and int16, 6 x 16 float;
a 1-row variant for a single row; the float one spans the whole panel) and applies the
epilogue to its registers, with masked stores at the right edge; the portable kernels fill a
scratch tile that a scalar epilogue stores.

A may have a row stride (``a = buf[:, :K]``), and K needs no padding: the int8 kernels read the
last ``K % 4`` bytes of a row one by one. ``out`` may have a row stride too (a slice of a wider
buffer, e.g. a channel concat), but its rows must be contiguous.

The work is split in three files: :mod:`.gemm_pack` (the epilogue and the packed weights, made
at build time), :mod:`.gemm_codegen` (the jitted building blocks and the generated micro-kernels
and drivers) and this one (the operand checks, the choice of kernel and thread count, and the
public entry points, which re-export the names of the other two).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, cast

import numba
import numpy as np

from mmbuild.errors import MMError
from mmbuild.kernels.cpu import features
from mmbuild.kernels.cpu.gemm_codegen import MC, generated_kernels
from mmbuild.kernels.cpu.gemm_pack import (
    NR,
    Activation,
    Epilogue,
    ImplicitRows,
    OutKind,
    PackedFloatWeights,
    PackedInt8Weights,
    PackedInt16Weights,
    _Packed,
    pack_float_weights,
    pack_int8_weights,
    pack_int16_weights,
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

# Multiply-accumulates below which a product runs on one thread. A parallel launch costs 1-2 us;
# one core does about 450 G int8 MAC/s and 110 G float MAC/s here, so these are a few us of work.
PARALLEL_MIN_MACS = {"u8s8": 1 << 21, "u8s7": 1 << 21, "f32": 1 << 18, "s16": 1 << 16}
# What the epilogue of one output costs, in multiply-accumulates of the product: ~20 vector
# operations per 16 outputs, which in a GEMM with K = 8 take longer than the products (a 1x1
# conv from 8 to 8 channels over 18432 pixels: 176 us on one thread).
EPILOGUE_MACS = {"u8s8": 64, "u8s7": 64, "f32": 16, "s16": 16}
PARALLEL_MIN_WEIGHT_BYTES = 1 << 18


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


def _quads_fit(a_flat: np.ndarray, w: _Packed, m: int, lda: int, rows: ImplicitRows | None) -> bool:
    """Whether the int8 kernels may read each K segment's last ``ktail`` bytes as a whole quad:
    the bytes past the segment exist in A (the next pixel's, or slack the caller allocated),
    and the packed weights of those K rows are zeros, so they add nothing to the exact sum. A
    quad broadcast then replaces the byte-by-byte tail: a first conv's 3 taps x 3 channels per
    kernel row (9 bytes) run 40 -> 29 us (M 2304, N 8, AVX-512 Xeon)."""
    quads = 4 * -(-w.seg_len // 4)
    if rows is None:
        return m == 0 or (m - 1) * lda + quads <= a_flat.size
    return (
        rows.m == 0 or rows.max_offset + (w.segments - 1) * rows.seg_stride + quads <= a_flat.size
    )


_NO_ROWS = np.empty(0, np.int64)
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
    isa: str | None,
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
    # integer kernels walk whole groups of K rows and a tail; the float ones every K row
    k_args = (w.seg_len,) if isinstance(w, PackedFloatWeights) else (w.kwhole, w.ktail)
    if isinstance(w, PackedInt8Weights) and w.ktail and _quads_fit(a_flat, w, m, lda, rows):
        k_args = (w.kwhole + 1, 0)  # the tail as one more quad: see _quads_fit
    panel_size = w.k_pad * NR
    if isinstance(w, PackedInt8Weights):
        z = _check_zero_point(za, 0, 255)
        # the zero-point term of every column, padded to whole vectors; |za * colsum| < 2**31
        comp = np.zeros(w.n_pad, np.int32)
        comp[: w.n] = -z * w.colsum
    elif isinstance(w, PackedInt16Weights):
        z = _check_zero_point(za, -32768, 32767)
    else:
        z = 0
    level = features.level() if isa is None else features.check_runnable(isa)
    if isinstance(w, PackedInt16Weights):
        if not w.pairs_exact:  # a weight of -32768, or K > 131070 (see PackedInt16Weights)
            level = features.get_level("portable")
        if level.simd:  # the SIMD kernels sum a * w and add -za * colsum in the epilogue
            comp = np.zeros(w.n_pad, np.int64)
            comp[: w.n] = -z * w.colsum
    if isinstance(w, PackedInt8Weights) and w.small and level.int8_dot == "madd":
        kind = "u8s7"  # vpmaddubsw: twice the int8 rate, exact for weights within [-64, 64]
    kernel = f"gemm_{kind}/{level.name}"
    if m == 0:
        return BoundGemm(_nothing, (), kernel)
    n_mb = -(-m // MC[kind])
    n_items = w.n_panels * n_mb
    out_bytes = out_flat.view(np.uint8)
    args = (n_mb, a_flat, lda, offsets, m, w.segments, seg_stride, *k_args, w.data, w.n_panels,
            w.nrv_last, panel_size, z, comp, ep._args, out_bytes, ldo, w.n)  # fmt: skip
    mod = generated_kernels(level.name)
    # Large products, and products that stream many weights (a batch-1 fully connected layer is
    # bound by reading them, which two cores do faster than one), run on all threads.
    work = m * w.n * (w.k + EPILOGUE_MACS[kind])
    large = n_items > 1 and (
        work >= PARALLEL_MIN_MACS[kind] or w.data.nbytes >= PARALLEL_MIN_WEIGHT_BYTES
    )
    threads = numba.get_num_threads() if large else 1
    if threads > 1:
        fn = getattr(mod, f"{kind}_parallel")
        return BoundGemm(fn, (n_items, min(n_items, threads), *args), f"{kernel}/mt")
    return BoundGemm(getattr(mod, f"{kind}_items"), (0, n_items, *args), kernel)


_P = ParamSpec("_P")


def _run_once(bind: Callable[_P, BoundGemm], name: str, doc: str) -> Callable[_P, None]:
    """The immediate form of a ``bind_gemm_*`` function: same arguments, binds and runs once."""

    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        bind(*args, **kwargs)()

    run.__name__ = run.__qualname__ = name
    run.__doc__ = doc
    run.__signature__ = inspect.signature(bind).replace(return_annotation="None")  # type: ignore[attr-defined]
    return run


def bind_gemm_u8s8(
    a: np.ndarray,
    za: int,
    w: PackedInt8Weights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
    isa: str | None = None,
) -> BoundGemm:
    """Check and bind ``out = epilogue((a - za) @ w)`` for uint8 activations and packed int8
    weights; call the result to run it (:func:`gemm_u8s8` binds and runs once).

    ``a`` is ``[M, K]`` and may be a view with a row stride (``buf[:, :K]``); with ``rows`` it is
    instead the contiguous input that the rows are gathered from (an implicit-GEMM convolution,
    ``M = rows.m``). ``za`` is the activations' zero point in [0, 255]; ``out`` is ``[M, N]`` of
    the epilogue's output type, rows contiguous. ``isa`` names the instruction-set level to run
    (``"avx2"``, ``"portable"``, ...: any level the CPU runs, see :mod:`.features`); by default
    the process's level. Every level gives the same bits.
    """
    return _bind("u8s8", a, za, w, ep, out, rows, isa)


def bind_gemm_s16(
    a: np.ndarray,
    za: int,
    w: PackedInt16Weights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
    isa: str | None = None,
) -> BoundGemm:
    """Check and bind ``out = epilogue((a - za) @ w)`` for int16 activations, accumulated
    exactly in int64; call the result to run it (:func:`gemm_s16` binds and runs once).

    The arguments are as for :func:`bind_gemm_u8s8`, with ``za`` in [-32768, 32767]. Weights
    holding -32768 (outside the symmetric range that mmbuild's quantizer gives), and products
    with K > 131070, run on the portable kernel on every level: a ``vpmaddwd`` pair of -32768 *
    -32768 would wrap, and the SIMD accumulator is exact for up to 65535 pairs of K rows.
    """
    return _bind("s16", a, za, w, ep, out, rows, isa)


def bind_gemm_f32(
    a: np.ndarray,
    w: PackedFloatWeights,
    ep: Epilogue,
    out: np.ndarray,
    *,
    rows: ImplicitRows | None = None,
    isa: str | None = None,
) -> BoundGemm:
    """Check and bind ``out = epilogue(a @ w)`` for float activations (float32, or fp16 as
    float16 or uint16 bits) and packed float32 or fp16 weights, accumulated in float32 with FMA;
    call the result to run it (:func:`gemm_f32` binds and runs once).

    The tolerance against an exact product is in the module docstring; the other arguments are
    as for :func:`bind_gemm_u8s8`. The float sums may differ between levels in the last bits
    (the SIMD kernels fuse each multiply-add; the portable ones round twice).
    """
    return _bind("f32", a, 0, w, ep, out, rows, isa)


gemm_u8s8 = _run_once(bind_gemm_u8s8, "gemm_u8s8", "Run :func:`bind_gemm_u8s8` once.")
gemm_s16 = _run_once(bind_gemm_s16, "gemm_s16", "Run :func:`bind_gemm_s16` once.")
gemm_f32 = _run_once(bind_gemm_f32, "gemm_f32", "Run :func:`bind_gemm_f32` once.")
