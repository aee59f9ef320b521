"""Observers: bounded, mergeable statistics of the values a tensor takes during calibration.

An observer only accumulates; the range algorithms (``algorithms.py``) turn its statistics into a
range, and ``params.choose_qparams`` turns a range into scale and zero point.

- ``MinMaxObserver`` keeps the exact minimum and maximum, per tensor or per channel of one axis.
- ``HistogramObserver`` keeps a histogram with a fixed number of bins over a range that widens by
  whole multiples of the bin width, so its memory never grows with the number of batches.

Both refuse NaN and Inf (they have no quantized value), and both ``merge`` another observer of the
same kind, so statistics gathered in parallel can be combined.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Any

import numpy as np

from mmbuild.errors import MMError

# The narrowest bin is 2^-30 of the largest magnitude seen: calibration data runs in float32 (24
# bits of mantissa), so narrower bins could not be told apart, and the bound keeps the integer
# position of the grid (``origin``) below 2^31.
_RELATIVE_MIN_WIDTH = 2.0**-30
_MIN_WIDTH = float(np.finfo(np.float64).tiny)


def _finite_values(x: Any, who: str) -> np.ndarray:
    """``x`` as a float64 array; raises MMError when it is not real-valued or holds NaN/Inf."""
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise MMError(f"{who}: got an array of dtype {a.dtype}; observe real-valued (float) data")
    a = a.astype(np.float64, copy=False)
    if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):
        n_nan = int(np.count_nonzero(np.isnan(a)))
        n_inf = int(np.count_nonzero(np.isinf(a)))
        raise MMError(
            f"{who}: the batch holds {n_nan} NaN and {n_inf} Inf value(s) out of {a.size}; "
            "remove them before calibrating (NaN and Inf have no quantized value)"
        )
    return a


class MinMaxObserver:
    """The exact minimum and maximum of everything observed, per tensor or per axis.

    >>> obs = MinMaxObserver()
    >>> obs.observe(np.array([0.5, -2.0, 3.0]))
    >>> obs.observe(np.array([[1.0, 4.5]]))
    >>> obs.min, obs.max, obs.count
    (-2.0, 4.5, 5)

    With ``axis``, ``min`` and ``max`` are arrays with one entry per index of that axis (a
    channel); every batch must have the same number of channels:

    >>> obs = MinMaxObserver(axis=1)
    >>> obs.observe(np.array([[1.0, -1.0], [2.0, 5.0]]))
    >>> obs.min, obs.max
    (array([ 1., -1.]), array([2., 5.]))
    """

    def __init__(self, axis: int | None = None) -> None:
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
            raise MMError(f"MinMaxObserver: axis is {axis!r}; pass an int or None")
        self.axis = None if axis is None else int(axis)
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self.count = 0

    @property
    def empty(self) -> bool:
        """True until a non-empty batch has been observed."""
        return self._min is None

    @property
    def min(self) -> Any:
        """The minimum: a float per tensor, a float64 array of shape (C,) per axis."""
        return self._value(self._min, "min")

    @property
    def max(self) -> Any:
        """The maximum: a float per tensor, a float64 array of shape (C,) per axis."""
        return self._value(self._max, "max")

    def observe(self, x: Any) -> None:
        """Widen the minimum and maximum to cover ``x``; an empty batch changes nothing."""
        a = _finite_values(x, "MinMaxObserver.observe")
        if a.size == 0:
            return
        if self.axis is None:
            lo, hi = a.min(), a.max()
        else:
            if not -a.ndim <= self.axis < a.ndim:
                raise MMError(
                    f"MinMaxObserver.observe: axis {self.axis} is out of range for a batch of "
                    f"shape {a.shape}; observe batches that have that axis"
                )
            others = tuple(d for d in range(a.ndim) if d != self.axis % a.ndim)
            lo, hi = a.min(axis=others), a.max(axis=others)
        self._include(np.asarray(lo), np.asarray(hi), a.size)

    def merge(self, other: MinMaxObserver) -> MinMaxObserver:
        """Add ``other``'s statistics to this observer (in place) and return it.

        The result is exactly that of observing both observers' batches.
        """
        if not isinstance(other, MinMaxObserver):
            raise MMError(
                f"MinMaxObserver.merge: got {type(other).__name__}; merge a MinMaxObserver"
            )
        if other.axis != self.axis:
            raise MMError(
                f"MinMaxObserver.merge: this observer has axis={self.axis} and the other "
                f"axis={other.axis}; merge observers of the same granularity"
            )
        if other._min is not None and other._max is not None:
            self._include(other._min, other._max, other.count)
        return self

    def _include(self, lo: np.ndarray, hi: np.ndarray, n: int) -> None:
        if self._min is None or self._max is None:
            self._min, self._max = lo.astype(np.float64), hi.astype(np.float64)
        else:
            if lo.shape != self._min.shape:
                raise MMError(
                    f"MinMaxObserver: axis {self.axis} had {self._min.shape[0]} channel(s) before "
                    f"and {lo.shape[0]} now; every batch must have the same channel count"
                )
            self._min = np.minimum(self._min, lo)
            self._max = np.maximum(self._max, hi)
        self.count += int(n)

    def _value(self, v: np.ndarray | None, what: str) -> Any:
        if v is None:
            raise MMError(f"MinMaxObserver.{what}: nothing observed yet; observe a non-empty batch")
        return float(v) if self.axis is None else v.copy()

    def __repr__(self) -> str:
        if self.empty:
            return f"MinMaxObserver(axis={self.axis}, empty)"
        return (
            f"MinMaxObserver(axis={self.axis}, min={self.min}, max={self.max}, count={self.count})"
        )


class HistogramObserver:
    """A histogram with a fixed number of bins whose range widens to cover every batch.

    The bins lie on a grid of width ``width`` that has 0 on an edge: bin i covers
    ``[(origin + i) * width, (origin + i + 1) * width)``. The first batch sets the grid to cover its
    ``[min, max]`` (``width = (max - min) / (bins - 1)``). When a later batch falls outside, the
    width grows by a whole factor k and the first edge moves down by whole old bins, so every old
    bin lies inside exactly one new bin and the counts are merged exactly; 0 stays on an edge, which
    lets the histogram of ``|x|`` be folded from this one exactly (``abs_histogram``). The exact
    minimum and maximum are kept beside the counts, and so is ``zeros``, the number of values
    exactly 0 (ReLU, padding and masks make up to most of a tensor of them; every quantizer
    represents 0 exactly, so the error of a range should not spread them over the bin at 0).

    >>> h = HistogramObserver(bins=4)
    >>> h.observe(np.array([0.0, 1.0, 1.5, 3.0]))
    >>> h.edges, h.counts
    (array([0., 1., 2., 3., 4.]), array([1, 2, 0, 1]))
    >>> h.observe(np.array([-2.0, 7.5]))  # 3 times wider, first edge down by 3 old bins
    >>> h.edges, h.counts, h.total, (h.min, h.max)
    (array([-3.,  0.,  3.,  6.,  9.]), array([1, 3, 1, 1]), 6, (-2.0, 7.5))
    """

    def __init__(self, bins: int = 2048) -> None:
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
            raise MMError(f"HistogramObserver: bins is {bins!r}; pass an integer >= 2")
        self.bins = int(bins)
        self._counts = np.zeros(self.bins, dtype=np.int64)
        self._width = 0.0  # 0 until the first non-empty batch sets the grid
        self._origin = 0  # the first edge is origin * width; a Python int, exact
        self._min = math.inf
        self._max = -math.inf
        self.total = 0
        self.zeros = 0  # values exactly 0 (they lie in the bin that starts at 0)

    @property
    def empty(self) -> bool:
        return self.total == 0

    @property
    def width(self) -> float:
        self._require("width")
        return self._width

    @property
    def lo(self) -> float:
        """The first edge of the histogram (at or below ``min``)."""
        self._require("lo")
        # the grid covers min exactly in rational terms; the float product may round past it
        return min(self._origin * self._width, self._min)

    @property
    def hi(self) -> float:
        """The last edge of the histogram (at or above ``max``)."""
        self._require("hi")
        return max((self._origin + self.bins) * self._width, self._max)

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges, from ``lo`` to ``hi``."""
        self._require("edges")
        edges = (float(self._origin) + np.arange(self.bins + 1, dtype=np.float64)) * self._width
        edges[0], edges[-1] = self.lo, self.hi
        return edges

    @property
    def centers(self) -> np.ndarray:
        """The bin centres."""
        self._require("centers")
        return (float(self._origin) + 0.5 + np.arange(self.bins, dtype=np.float64)) * self._width

    @property
    def counts(self) -> np.ndarray:
        """The number of values in each bin (a copy, int64)."""
        return self._counts.copy()

    @property
    def min(self) -> float:
        """The exact minimum observed."""
        self._require("min")
        return self._min

    @property
    def max(self) -> float:
        """The exact maximum observed."""
        self._require("max")
        return self._max

    def observe(self, x: Any) -> None:
        """Add the values of ``x`` (any shape); an empty batch changes nothing."""
        v = _finite_values(x, "HistogramObserver.observe").ravel()
        if v.size == 0:
            return
        dmin, dmax = float(v.min()), float(v.max())
        if self.empty:
            self._start_grid(dmin, dmax)
        else:
            self._cover(dmin, dmax)
        self._counts += np.bincount(self._index(v), minlength=self.bins)
        self._min, self._max = min(self._min, dmin), max(self._max, dmax)
        self.total += v.size
        self.zeros += int(np.count_nonzero(v == 0.0))

    def merge(self, other: HistogramObserver) -> HistogramObserver:
        """Add ``other``'s statistics to this observer (in place) and return it.

        ``min``, ``max`` and ``total`` always come out exact. The counts are exact (equal to
        observing both observers' batches in turn) when the two grids line up, in particular when
        both have the same edges. Otherwise the coarser grid is widened to cover both, and each bin
        of the finer one is added to the bin holding its centre (clamped into that observer's
        ``[min, max]``); that re-binning moves a value by less than one bin of the result.
        """
        if not isinstance(other, HistogramObserver):
            raise MMError(
                f"HistogramObserver.merge: got {type(other).__name__}; merge a HistogramObserver"
            )
        if other.bins != self.bins:
            raise MMError(
                f"HistogramObserver.merge: this observer has {self.bins} bins and the other "
                f"{other.bins}; merge observers created with the same bins"
            )
        if other.empty:
            return self
        if self.empty:
            self._set_state(other)
            return self
        coarse, fine = (self, other) if self._width >= other._width else (other, self)
        merged = copy.deepcopy(coarse)
        merged._cover(fine._min, fine._max)
        if fine._width == merged._width and fine._origin == merged._origin:
            merged._counts += fine._counts
        else:
            used = fine._counts > 0
            centres = np.clip(fine.centers[used], fine._min, fine._max)
            merged._counts += np.bincount(
                merged._index(centres), weights=fine._counts[used], minlength=self.bins
            ).astype(np.int64)
        merged._min, merged._max = min(coarse._min, fine._min), max(coarse._max, fine._max)
        merged.total = coarse.total + fine.total
        merged.zeros = coarse.zeros + fine.zeros
        self._set_state(merged)
        return self

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """The histogram of ``|x|``: counts over bins ``[j * width, (j + 1) * width)``, and width.

        Folded exactly from the signed histogram, since 0 is on an edge of its grid: the bin
        ``[-(j + 1) * width, -j * width)`` folds onto ``[j * width, (j + 1) * width)`` (so a
        negative value exactly on an edge lands one bin lower than its magnitude would). The bins
        reach up to ``max(|min|, |max|)``, and there are at most ``bins`` of them: when the signed
        range lies away from 0, k adjacent bins of ``|x|`` are merged and the width is k times the
        observer's.

        >>> h = HistogramObserver(bins=4)
        >>> h.observe(np.array([-1.75, -0.5, 0.25, 0.5, 1.25]))
        >>> h.edges, h.counts
        (array([-2., -1.,  0.,  1.,  2.]), array([1, 1, 2, 1]))
        >>> h.abs_histogram()  # [0, 1) holds -0.5, 0.25, 0.5; [1, 2) holds -1.75, 1.25
        (array([3, 2]), 1.0)
        """
        self._require("abs_histogram")
        size = max(self._origin + self.bins, -self._origin)
        # A range that excludes 0 would fold onto more bins than it has (up to 2^30 for data far
        # from 0): merge k adjacent |x| bins, exactly, since 0 stays an edge.
        k = -(-size // self.bins)
        grid = self._origin + np.arange(self.bins, dtype=np.int64)
        folded = np.where(grid >= 0, grid, -grid - 1) // k
        size, width = -(-size // k), self._width * k
        counts = np.bincount(folded, weights=self._counts, minlength=size).astype(np.int64)
        amax = max(abs(self._min), abs(self._max))
        # trim the empty bins above the largest magnitude (keep at least the bin holding it)
        keep = min(size, max(1, math.floor(amax / width) + 1))
        return counts[:keep], width

    def _start_grid(self, dmin: float, dmax: float) -> None:
        scale = max(abs(dmin), abs(dmax))
        width = max((dmax - dmin) / (self.bins - 1), scale * _RELATIVE_MIN_WIDTH, _MIN_WIDTH)
        self._width = width
        # the first edge is the grid point at or below dmin; bins - 1 widths above dmin leave one
        # width of slack for that shift, so dmax is covered.
        self._origin = math.floor(Fraction(dmin) / Fraction(width))
        self._cover(dmin, dmax)  # guards against rounding in the width

    def _cover(self, dmin: float, dmax: float) -> None:
        """Widen the grid (whole factor k, shift by whole old bins) to cover [dmin, dmax]."""
        w = Fraction(self._width)
        o, n = self._origin, self.bins
        # in units of old bins: the grid cells [a, b) that must be covered
        a = min(o, math.floor(Fraction(dmin) / w))
        b = max(o + n, math.floor(Fraction(dmax) / w) + 1)
        if a == o and b == o + n:
            return
        # The new first edge is the multiple of k at or below a (so 0 stays on an edge); it can
        # sit up to k - 1 cells below a, so the least k that covers [a, b) lies between these two.
        k = max(1, -(-(b - a) // n))
        k_safe = max(1, -(-(b - a - 1) // (n - 1)))
        for _ in range(64):
            if k >= k_safe or (a // k) * k + n * k >= b:
                break
            k += 1
        else:
            k = k_safe  # a huge factor: k_safe is within a factor n / (n - 1) of the least
        start = (a // k) * k
        shift = o - start  # old bin i is new bin (shift + i) // k
        self._counts = np.bincount(
            _coarsen_index(shift, k, n), weights=self._counts, minlength=n
        ).astype(np.int64)
        self._origin = start // k
        self._width = float(w * k)

    def _index(self, v: np.ndarray) -> np.ndarray:
        """The bin of each value; values a rounding error outside the grid go to the end bins."""
        idx = np.floor(v / self._width) - float(self._origin)
        return np.clip(idx, 0, self.bins - 1).astype(np.int64)

    def _set_state(self, other: HistogramObserver) -> None:
        self._counts = other._counts.copy()
        self._width, self._origin = other._width, other._origin
        self._min, self._max, self.total = other._min, other._max, other.total
        self.zeros = other.zeros

    def _require(self, what: str) -> None:
        if self.empty:
            raise MMError(
                f"HistogramObserver.{what}: nothing observed yet; observe a non-empty batch"
            )

    def __repr__(self) -> str:
        if self.empty:
            return f"HistogramObserver(bins={self.bins}, empty)"
        return (
            f"HistogramObserver(bins={self.bins}, lo={self.lo:.6g}, hi={self.hi:.6g}, "
            f"min={self._min:.6g}, max={self._max:.6g}, total={self.total})"
        )


def _coarsen_index(shift: int, k: int, n: int) -> np.ndarray:
    """``(shift + i) // k`` for i in range(n), with Python-int shift and k of any size."""
    base, rest = divmod(shift, k)  # (shift + i) // k == base + (rest + i) // k, rest < k
    i = np.arange(n, dtype=np.int64)
    if k + n < 2**62:
        return base + (rest + i) // k
    # k is astronomically large (a grid first set by data of one value): at most one step
    return base + (i >= k - rest).astype(np.int64)
