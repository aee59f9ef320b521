"""Quantization parameters and (de)quantization: pure functions, the arithmetic of API.md.

This file owns the one definition of how a float range becomes a scale and zero point
(``choose_qparams``) and how values cross between float and integer (``quantize``,
``dequantize``, ``fake_quantize``). Every kernel and reference implementation uses these numbers.

Worked example, the range (-3.5, 10.2) to int8 (B = 8, so q lies in [-128, 127]).

Symmetric: ``scale = max(|-3.5|, |10.2|) / (2^7 - 1) = 10.2 / 127 = 0.0803149...``, zero point 0.
Then ``-3.5 / scale = -43.578`` rounds to -44, and -44 dequantizes to ``-44 * scale = -3.5338...``:

>>> qp = choose_qparams(-3.5, 10.2, bits=8, symmetric=True)
>>> qp
QuantParams(scale=0.080314964, zero_point=0, bits=8, axis=None)
>>> quantize(np.array([-3.5, 0.0, 10.2]), qp)
array([-44,   0, 127], dtype=int8)
>>> dequantize(np.array([-44, 0, 127], dtype=np.int8), qp)
array([-3.5338583,  0.       , 10.200001 ], dtype=float32)

Asymmetric: the range already contains 0, so ``scale = (10.2 - -3.5) / (2^8 - 1) = 13.7 / 255 =
0.0537254...``; ``-3.5 / scale = -65.146`` rounds to -65, so ``zero_point = -128 - (-65) = -63``.
The range's ends land on the ends of int8 and 0 lands exactly on the zero point. Rounding the zero
point moved the grid by 0.146 steps, so 10.2 comes back as ``(127 + 63) * scale = 10.2078``, off by
less than half a step (``scale / 2 = 0.0269``):

>>> qp = choose_qparams(-3.5, 10.2, bits=8, symmetric=False)
>>> qp
QuantParams(scale=0.05372549, zero_point=-63, bits=8, axis=None)
>>> quantize(np.array([-3.5, 0.0, 10.2]), qp)
array([-128,  -63,  127], dtype=int8)
>>> fake_quantize(np.array([-3.5, 0.0, 10.2]), qp)
array([-3.4921567,  0.       , 10.207843 ], dtype=float32)

Numerical decisions (see docs/quantization.md):

- The scale is computed in float64 and stored as float32. The kernels multiply by float32
  scales, so the float32 value is the scale: the zero point, ``quantize`` and ``dequantize`` all use
  it, never the float64 value it was rounded from.
- The asymmetric zero point is ``-2^(B-1) - rint(float32(min) / scale)`` with the same float32
  division as ``quantize``, so ``quantize(min)`` is exactly ``qmin`` (``min`` being the range
  widened to contain 0).
- ``rint`` is ``np.rint``: round half to even.
- A scale is never below the smallest normal float32 (``1.18e-38``): a narrower range would need
  a subnormal or zero scale, and ``x / scale`` would lose precision or divide by zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmbuild.errors import MMError

#: Bit widths of the quantized types (QINT8, QINT16) and the storage dtype of each.
STORAGE_DTYPES: dict[int, type[np.integer]] = {8: np.int8, 16: np.int16}

_F32_MAX = float(np.finfo(np.float32).max)
_MIN_SCALE = float(np.finfo(np.float32).tiny)
# The largest int8 weight code under precision_config.weight_quant_range "reduced": a pair of
# uint8 x int8 products is then at most 255 * 64 * 2 = 32640, which vpmaddubsw sums exactly.
REDUCED_INT8_QMAX = 64


def weight_qmax(options: Mapping[str, Any], bits: int, gemm: bool = True) -> int | None:
    """The largest weight code of ``bits``-bit weights under the build options (the graph's
    copy of ``precision_config``): ``REDUCED_INT8_QMAX`` for int8 with ``weight_quant_range``
    "reduced" where the weights feed a GEMM, else None (the type's own: 127 or 32767). A
    depthwise conv (``gemm=False``) runs its own loop, exact and as fast for the full range, so
    its filter keeps it.

    >>> weight_qmax({"weight_quant_range": "reduced"}, 8), weight_qmax({}, 8)
    (64, None)
    """
    reduced = options.get("weight_quant_range", "full") == "reduced"
    return REDUCED_INT8_QMAX if reduced and bits == 8 and gemm else None


def qrange(bits: int) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a signed B-bit type.

    >>> qrange(8), qrange(16)
    ((-128, 127), (-32768, 32767))
    """
    _check_bits(bits)
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@dataclasses.dataclass(frozen=True, eq=False)
class QuantParams:
    """Scale and zero point of a quantized tensor, per tensor (``axis=None``) or per axis.

    ``scale`` is float32 and ``zero_point`` int32, both of shape ``()`` per tensor or ``(C,)`` per
    axis, where C is the size of ``axis`` in the tensors they quantize. Both arrays are read-only.
    Build one with ``choose_qparams``; the constructor validates and copies what it is given.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int = 8
    axis: int | None = None

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        scale = np.array(self.scale, dtype=np.float32)
        zero_point = np.array(self.zero_point, dtype=np.int32)
        if scale.shape != zero_point.shape:
            raise MMError(
                f"QuantParams: scale has shape {scale.shape} and zero_point {zero_point.shape}; "
                "give both the same shape"
            )
        if self.axis is None and scale.ndim != 0:
            raise MMError(
                f"QuantParams: per-tensor parameters need scalar scale and zero_point, got shape "
                f"{scale.shape}; pass axis= for per-axis parameters"
            )
        if self.axis is not None and scale.ndim != 1:
            raise MMError(
                f"QuantParams: per-axis parameters (axis={self.axis}) need 1-D scale and "
                f"zero_point, got shape {scale.shape}"
            )
        if not (np.all(np.isfinite(scale)) and np.all(scale >= _MIN_SCALE)):
            raise MMError(
                f"QuantParams: every scale must be a finite float32 >= {_MIN_SCALE:.3g}, got "
                f"{scale}; build the parameters with choose_qparams"
            )
        qmin, qmax = qrange(self.bits)
        if np.any(zero_point < qmin) or np.any(zero_point > qmax):
            raise MMError(
                f"QuantParams: zero_point {zero_point} lies outside [{qmin}, {qmax}] of "
                f"{self.bits}-bit integers"
            )
        scale.setflags(write=False)
        zero_point.setflags(write=False)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero_point)
        if self.axis is not None:
            object.__setattr__(self, "axis", int(self.axis))

    @property
    def qmin(self) -> int:
        return qrange(self.bits)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits)[1]

    @property
    def dtype(self) -> np.dtype:
        """The storage dtype of quantized values: int8 or int16."""
        return np.dtype(STORAGE_DTYPES[self.bits])

    @property
    def symmetric(self) -> bool:
        """True when every zero point is 0."""
        return not np.any(self.zero_point)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (
            self.bits == other.bits
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def __hash__(self) -> int:
        return hash((self.bits, self.axis, self.scale.tobytes(), self.zero_point.tobytes()))

    def __repr__(self) -> str:
        def show(a: np.ndarray) -> str:
            return str(a[()]) if a.ndim == 0 else np.array2string(a, separator=", ")

        return (
            f"QuantParams(scale={show(self.scale)}, zero_point={show(self.zero_point)}, "
            f"bits={self.bits}, axis={self.axis})"
        )


def choose_qparams(
    lo: Any,
    hi: Any,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
    qmax: int | None = None,
) -> QuantParams:
    """Scale and zero point that map the float range ``[lo, hi]`` onto B-bit integers.

    ``lo`` and ``hi`` are floats (per tensor, ``axis=None``) or equal-length 1-D sequences, one
    entry per index of ``axis`` (per axis). They must be finite float32 values with ``lo <= hi``.

    Symmetric: ``scale = max(|lo|, |hi|) / (2^(B-1) - 1)``, zero point 0; ``qmax`` replaces
    ``2^(B-1) - 1`` for a reduced range (``REDUCED_INT8_QMAX`` = 64 for int8 weights that the
    ``vpmaddubsw`` kernels take exactly), so the codes stay within ``[-qmax, qmax]``.
    Asymmetric: the range is widened to contain 0, ``scale = (hi - lo) / (2^B - 1)`` and
    ``zero_point = -2^(B-1) - rint(lo / scale)``, clipped into ``[qmin, qmax]``.

    A zero-width range gets scale 1, so it quantizes to the zero point. Symmetric, that is only
    ``[0, 0]``. Asymmetric, widening to contain 0 leaves zero width only for ``[0, 0]`` too (zero
    point ``qmin``, from the formula); ``[a, a]`` with ``a != 0`` becomes
    ``[min(a, 0), max(a, 0)]``, a range of width ``|a|`` in which both 0 and ``a`` are
    representable.

    >>> choose_qparams(0.0, 0.0)
    QuantParams(scale=1.0, zero_point=0, bits=8, axis=None)
    >>> choose_qparams(0.0, 0.0, symmetric=False)
    QuantParams(scale=1.0, zero_point=-128, bits=8, axis=None)
    >>> choose_qparams(2.0, 2.0, symmetric=False)  # widened to [0, 2]: 2 / 255
    QuantParams(scale=0.007843138, zero_point=-128, bits=8, axis=None)
    >>> choose_qparams([-1.0, 0.0], [1.0, 254.0], bits=16, axis=0)
    QuantParams(scale=[3.0518509e-05, 7.7517014e-03], zero_point=[0, 0], bits=16, axis=0)
    """
    _check_bits(bits)
    lo64, hi64 = _range_arrays(lo, hi, axis)
    qmin, top = qrange(bits)
    if qmax is not None and not (symmetric and 0 < qmax <= top):
        raise MMError(f"choose_qparams: qmax {qmax} needs symmetric and 1..{top} for {bits} bits")
    qmax = top if qmax is None else qmax
    if symmetric:
        amax = np.maximum(np.abs(lo64), np.abs(hi64))
        scale = _store_scale(amax, qmax)
        zero_point = np.zeros(scale.shape, dtype=np.int32)
    else:
        lo64 = np.minimum(lo64, 0.0)
        hi64 = np.maximum(hi64, 0.0)
        scale = _store_scale(hi64 - lo64, qmax - qmin)
        # float32 division, as quantize does it, so that quantize(lo) == qmin exactly.
        steps = np.rint(lo64.astype(np.float32) / scale)
        zero_point = np.clip(qmin - steps, qmin, qmax).astype(np.int32)
    return QuantParams(scale=scale, zero_point=zero_point, bits=bits, axis=axis)


def dynamic_scale(amax: float, bits: int = 8) -> np.float32:
    """The symmetric scale of a tensor whose largest finite magnitude is ``amax``: the scale of
    ``choose_qparams(-amax, amax, bits)``, for one number known only at run time (a dynamically
    quantized input, ``precision_config.activation_quant_mode: "dynamic"``), without building
    arrays.

    >>> dynamic_scale(2.54), dynamic_scale(0.0), dynamic_scale(1.0, bits=16)
    (np.float32(0.02), np.float32(1.0), np.float32(3.051851e-05))
    """
    if amax == 0.0:
        return np.float32(1.0)
    return np.float32(max(float(amax) / qrange(bits)[1], _MIN_SCALE))


def quantize(x: Any, qp: QuantParams) -> np.ndarray:
    """``clip(rint(x / scale) + zero_point, qmin, qmax)`` as int8 (8 bits) or int16 (16 bits).

    ``x`` is cast to float32 and divided by the float32 scale in float32, as the kernels do.
    Per axis, the scale and zero point of index c apply to ``x[..., c, ...]`` along ``qp.axis``.
    NaN maps to the zero point (it has no quantized value; callers that must not meet NaN reject
    it before); +inf and -inf saturate to ``qmax`` and ``qmin``.

    Half to even: with scale 1, 0.5 and 2.5 round down, 1.5 rounds up.

    >>> qp = QuantParams(np.float32(1.0), np.int32(0), bits=8)
    >>> quantize([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -np.inf, np.nan], qp)
    array([   0,    2,    2,    0,   -2,  127, -128,    0], dtype=int8)
    """
    with np.errstate(over="ignore", invalid="ignore"):
        xf = np.asarray(x, dtype=np.float32)  # beyond float32, values become +-inf and saturate
        scale, zero_point = _broadcast(qp, xf.ndim, xf.shape, "quantize")
        steps = np.rint(xf / scale)
    # NaN has no integer value: send it to the zero point (steps = 0) instead of casting NaN.
    steps = np.where(np.isnan(steps), np.float32(0.0), steps)
    # zero points are integers of at most 16 bits, exact in float32; the sum is exact below 2^24
    # and anything larger is clipped anyway.
    q = np.clip(steps + zero_point.astype(np.float32), qp.qmin, qp.qmax)
    return q.astype(qp.dtype)


def dequantize(q: Any, qp: QuantParams) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32; ``q`` is an integer array (from ``quantize``).

    >>> qp = choose_qparams(-1.0, 1.0)
    >>> dequantize(np.array([-127, 0, 127], dtype=np.int8), qp)
    array([-1.,  0.,  1.], dtype=float32)
    """
    qa = np.asarray(q)
    if not np.issubdtype(qa.dtype, np.integer):
        raise MMError(
            f"dequantize: q has dtype {qa.dtype}; pass the integer array that quantize returned"
        )
    scale, zero_point = _broadcast(qp, qa.ndim, qa.shape, "dequantize")
    # integer subtraction in int32 is exact for 8- and 16-bit values, and so is the cast.
    centred = (qa.astype(np.int32) - zero_point).astype(np.float32)
    return centred * scale


def fake_quantize(x: Any, qp: QuantParams) -> np.ndarray:
    """``dequantize(quantize(x, qp), qp)``: x rounded to the nearest representable float32 value.

    >>> fake_quantize([0.26, 1.0], choose_qparams(-1.0, 1.0, bits=8))  # 0.26 * 127 = 33.02 -> 33
    array([0.25984251, 1.        ], dtype=float32)
    """
    return dequantize(quantize(x, qp), qp)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or bits not in STORAGE_DTYPES:
        raise MMError(f"bits is {bits!r}; quantized types have 8 bits (QINT8) or 16 bits (QINT16)")


def _range_arrays(lo: Any, hi: Any, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        lo64 = np.array(lo, dtype=np.float64)
        hi64 = np.array(hi, dtype=np.float64)
    except (TypeError, ValueError):
        raise MMError(
            f"choose_qparams: lo {lo!r} and hi {hi!r} must be floats, or sequences of floats "
            "for per-axis parameters"
        ) from None
    if axis is None:
        if lo64.ndim != 0 or hi64.ndim != 0:
            raise MMError(
                f"choose_qparams: lo and hi have shapes {lo64.shape} and {hi64.shape}; per-tensor "
                "parameters take one float each; pass axis= for one range per channel"
            )
    else:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise MMError(f"choose_qparams: axis is {axis!r}; pass an int or None")
        if lo64.ndim != 1 or lo64.shape != hi64.shape or lo64.size == 0:
            raise MMError(
                f"choose_qparams: per-axis parameters (axis={axis}) need lo and hi as non-empty "
                f"1-D sequences of equal length, got shapes {lo64.shape} and {hi64.shape}"
            )
    for name, v in (("lo", lo64), ("hi", hi64)):
        bad = ~np.isfinite(v) | (np.abs(v) > _F32_MAX)
        if np.any(bad):
            raise MMError(
                f"choose_qparams: {name} holds {v[bad].ravel()[0]}; a range must be finite and "
                f"within float32 (|value| <= {_F32_MAX:.4g})"
            )
    inverted = lo64 > hi64
    if np.any(inverted):
        where = "" if axis is None else f" at index {int(np.flatnonzero(inverted)[0])}"
        a, b = lo64[inverted].ravel()[0], hi64[inverted].ravel()[0]
        raise MMError(
            f"choose_qparams: lo {a} is above hi {b}{where}; pass the smaller value first"
        )
    return lo64, hi64


def _store_scale(width: np.ndarray, steps: int) -> np.ndarray:
    """``width / steps`` in float64, stored as the float32 scale that is used everywhere.

    Zero width gets scale 1; any other width at least the smallest normal float32.
    """
    scale64 = np.maximum(width / steps, _MIN_SCALE)
    return np.where(width == 0.0, 1.0, scale64).astype(np.float32)


def _broadcast(
    qp: QuantParams, ndim: int, shape: tuple[int, ...], who: str
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point shaped to broadcast against an array of ``shape``."""
    if qp.axis is None:
        return qp.scale, qp.zero_point
    axis = qp.axis
    if not -ndim <= axis < ndim:
        raise MMError(
            f"{who}: axis {axis} of the per-axis parameters is out of range for an array with "
            f"{ndim} dimension(s) (shape {shape}); quantize along an axis in [-{ndim}, {ndim - 1}]"
        )
    axis %= ndim
    channels = qp.scale.shape[0]
    if shape[axis] != channels:
        raise MMError(
            f"{who}: the parameters hold {channels} channel(s) along axis {axis} but the array "
            f"has {shape[axis]} there (shape {shape}); build the parameters from one range per "
            "channel of that axis"
        )
    view = [1] * ndim
    view[axis] = channels
    return qp.scale.reshape(view), qp.zero_point.reshape(view)
