"""Range algorithms: the calibrated range of a tensor, chosen from its observers' statistics.

One table maps each algorithm's key to a small function; ``choose_range`` validates its arguments
and dispatches. Every function sees the same statistics (the exact min and max, and the histogram)
and returns ``(lo, hi)`` in data terms; the builder turns that range into scale and zero point with
``params.choose_qparams``. The formulas, with the reasons for each choice, are in
docs/quantization.md and docs/accuracy.md.

- ``linear``: the observed ``[min, max]``, as it is (not widened to be symmetric).
- ``percentile``: the range that keeps p% of the values (``|x|`` symmetric; equal tails otherwise).
- ``entropy``: TensorRT's calibrator, the threshold whose quantized histogram of ``|x|`` is
  closest (least KL divergence) to the clipped histogram; the zero bin and one-sided data are
  handled as NVIDIA's own calibrator does (see ``_entropy`` and ``entropy_levels``).
- ``eqnm``: the threshold minimising the expected quantization noise of a uniform quantizer,
  ``step^2 / 12`` per value inside the range and the squared clipping error outside.
- ``mse``: the range minimising the mean squared error of quantizing the observed values
  (``error.histogram_quant_error``, exact for values spread evenly inside each bin).
- ``auto``: per tensor, the range of whichever algorithm above has the least of that error, with
  the symmetric form of each competing under ``asymmetric`` (``rank_ranges``).

A saturating algorithm (all but ``linear``) picks a threshold T and gives ``[-T, T]`` under
``symmetric``; asymmetric, the ``|x|``-based ones give ``[-T, T]`` clipped to ``[min, max]``, so
post-ReLU data (min 0) keeps a range that starts at 0.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable

import numpy as np

from mmbuild.errors import Code, MMError, did_you_mean
from mmbuild.quant.error import histogram_quant_error
from mmbuild.quant.observers import HistogramObserver, MinMaxObserver
from mmbuild.quant.params import qrange

#: Counts given to a bin that the quantized histogram Q leaves empty where the reference P is not
#: (only the last bin of a candidate can be one). MXNet, TVM and onnxruntime smooth Q the same way,
#: so such a candidate is penalised by ``log(1 / eps)`` per value instead of being excluded.
ENTROPY_EPS = 1e-4
#: The entropy calibrator works on this many bins of |x| over [0, max|x|], as TensorRT does.
ENTROPY_BINS = 2048

# MSE search: a grid of candidates over (0, max], then the same number again around the best one
# (symmetric: thresholds; asymmetric: a square grid of the fractions kept at each end).
_MSE_GRID = 64
_MSE_GRID_2D = 20
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)


class QuantizationAlgorithm(enum.Enum):
    """Range algorithms of the calibrator, as MagicMind's ``mm.QuantizationAlgorithm``.

    ``.key`` is the algorithm's name in the table of ``choose_range``.

    >>> QuantizationAlgorithm.EQNM_ALGORITHM.key
    'eqnm'
    """

    LINEAR_ALGORITHM = "linear"
    EQNM_ALGORITHM = "eqnm"
    ENTROPY_ALGORITHM = "entropy"
    PERCENTILE_ALGORITHM = "percentile"
    MSE_ALGORITHM = "mse"
    #: Per tensor, the range of whichever algorithm above quantizes the calibration data with the
    #: least error (``rank_ranges``). ``AUTO_ALGORITHM`` is the same member, in MagicMind's style.
    AUTO = "auto"
    AUTO_ALGORITHM = "auto"

    @property
    def key(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"QuantizationAlgorithm.{self.name}"


@dataclasses.dataclass(frozen=True)
class _Stats:
    """What every range function reads: exact extremes, the histogram and the target type."""

    lo: float
    hi: float
    hist: HistogramObserver | None
    bits: int
    symmetric: bool
    percentile: float

    @property
    def amax(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    @property
    def histogram(self) -> HistogramObserver:
        if self.hist is None:  # choose_range checks this for every histogram algorithm
            raise MMError("range algorithm: no histogram", Code.INTERNAL)
        return self.hist


def _linear(s: _Stats) -> tuple[float, float]:
    return s.lo, s.hi


def _percentile(s: _Stats) -> tuple[float, float]:
    # p = 100 is the observed range exactly, in both modes (the builder derives the symmetric scale
    # from max(|min|, |max|) anyway), so PERCENTILE(100) equals LINEAR.
    if s.percentile == 100.0:
        return s.lo, s.hi
    q = s.percentile / 100.0
    if s.symmetric:
        counts, width = s.histogram.abs_histogram()
        return _saturate(s, _quantile(counts, 0.0, width, q))
    # equal tails, as onnxruntime's percentile calibrator: (100 - p) / 2 % cut at each end
    h = s.histogram
    tail = (1.0 - q) / 2.0
    lo = _quantile(h.counts, h.lo, h.width, tail)
    hi = _quantile(h.counts, h.lo, h.width, 1.0 - tail)
    return _clip_to_data(s, lo, hi)


def _entropy(s: _Stats) -> tuple[float, float]:
    levels = entropy_levels(s.bits, s.symmetric, s.lo, s.hi)
    if levels >= ENTROPY_BINS:
        # no candidate has more bins than levels: nothing to gain from clipping (16 bits)
        return _saturate(s, s.amax)
    counts, width = s.histogram.abs_histogram()
    counts = counts.astype(np.float64)
    if counts.size > 1:
        # The first bin holds the exact zeros (ReLU, padding, masks): up to half or more of a
        # post-ReLU tensor. Every quantizer represents 0 exactly, but to the KL divergence that
        # spike is a bin whose merging with its neighbours costs more than any clipping, so
        # thresholds that keep 128 bins unmerged (T = max|x| / 16) always won: post-ReLU, softmax
        # and padded tensors were clipped to a fraction of their range. NVIDIA's calibrator
        # (pytorch-quantization) gives the zero bin its neighbour's count; so do we, before the
        # resampling below would smear the spike over two bins.
        counts[0] = counts[1]
    # TensorRT's histogram: ENTROPY_BINS bins over [0, max|x|]. The folded histogram has about
    # half as many bins for symmetric data, fewer again after the observer widened its range, and
    # the smallest candidate is `levels` bins, so the resampling keeps that floor at max|x| / 16.
    width_t = s.amax / ENTROPY_BINS
    h = _resample(counts, width, width_t, ENTROPY_BINS)
    return _saturate(s, _least_kl_bins(h, levels) * width_t)


def entropy_levels(bits: int, symmetric: bool, lo: float, hi: float) -> int:
    """The number of quantization levels over ``[0, T]`` that the entropy calibrator models.

    Symmetric, ``2^(B-1)`` (128 for int8: the positive half). Asymmetric data of one sign
    (``min >= 0`` or ``max <= 0``: post-ReLU, sigmoid, softmax) gets the whole ``2^B`` integers
    over ``[0, T]``, as NVIDIA's calibrator does for unsigned tensors; modelling them with 128
    levels overstated the rounding noise and made the KL choose too small a threshold.

    >>> entropy_levels(8, True, 0.0, 6.0), entropy_levels(8, False, 0.0, 6.0)
    (128, 256)
    >>> entropy_levels(8, False, -1.0, 6.0)
    128
    """
    one_sided = lo >= 0.0 or hi <= 0.0
    return 2 ** (bits - (0 if one_sided and not symmetric else 1))


def _eqnm(s: _Stats) -> tuple[float, float]:
    counts, width = s.histogram.abs_histogram()
    n = counts.astype(np.float64)
    centres = np.minimum((np.arange(n.size) + 0.5) * width, s.amax)
    # candidate j keeps bins [0, j) and clips bins [j, N) to T_j = j * width (the last is max|x|)
    j = np.arange(1, n.size + 1)
    t = np.minimum(j * width, s.amax)
    inside = np.cumsum(n)
    # suffix sums of n, n c, n c^2 over the clipped bins j..N-1
    s0, s1, s2 = (np.append(np.cumsum((n * centres**p)[::-1])[::-1], 0.0)[j] for p in (0, 1, 2))
    clipping = np.maximum(s2 - 2.0 * t * s1 + t * t * s0, 0.0)
    step = t / qrange(s.bits)[1]
    noise = inside * step * step / 12.0 + clipping
    return _saturate(s, float(t[int(np.argmin(noise))]))


def _mse(s: _Stats) -> tuple[float, float]:
    if s.symmetric:
        t = _best_threshold(s.histogram, s.amax, s.bits)
        return -t, t
    low, high = min(s.lo, 0.0), max(s.hi, 0.0)
    a, b = _best_fractions(s.histogram, low, high, s.bits)
    return _clip_to_data(s, low * a, high * b)


@dataclasses.dataclass(frozen=True)
class RangeCandidate:
    """One range AUTO considered for a tensor, and its quantization error on the calibration data.

    ``algorithm`` is the key of the algorithm that proposed it; ``form`` is ``'symmetric'`` for a
    range ``[-T, T]`` and ``'asymmetric'`` for one that follows the data; ``error`` is the mean
    squared error per value of quantizing the observed values with it (``histogram_quant_error``).
    """

    algorithm: str
    form: str
    lo: float
    hi: float
    error: float


def _candidates(s: _Stats) -> list[RangeCandidate]:
    """Every fixed algorithm's range, in both forms where the quantizer allows, ranked by error.

    Symmetric quantization has no zero point, so only ``[-T, T]`` ranges qualify. Asymmetric, the
    zero point is chosen per tensor, so the symmetric form of each algorithm competes too: ``[-T,
    T]`` quantized asymmetrically has zero point 0 and a step of 2T / 255, i.e. it *is* symmetric
    quantization (one level finer). That is the per-tensor choice of symmetric vs asymmetric.
    """
    forms = [True] if s.symmetric else [False, True]
    proposals = []
    for form in forms:
        variant = dataclasses.replace(s, symmetric=form)
        for key in _FIXED:
            lo, hi = (float(v) for v in _ALGORITHMS[key](variant))
            if form:  # LINEAR's [min, max] means [-max|x|, max|x|] to a symmetric quantizer
                hi = max(-lo, hi)
                lo = -hi
            proposals.append((key, "symmetric" if form else "asymmetric", lo + 0.0, hi + 0.0))
    lo_all = np.array([p[2] for p in proposals])
    hi_all = np.array([p[3] for p in proposals])
    errors = histogram_quant_error(s.histogram, lo_all, hi_all, s.bits, s.symmetric)
    ranked = sorted(range(len(proposals)), key=lambda j: (float(errors[j]), j))  # stable on ties
    return [RangeCandidate(*proposals[j], error=float(errors[j])) for j in ranked]


def _auto(s: _Stats) -> tuple[float, float]:
    best = _candidates(s)[0]
    return best.lo, best.hi


_ALGORITHMS: dict[str, Callable[[_Stats], tuple[float, float]]] = {
    "linear": _linear,
    "eqnm": _eqnm,
    "entropy": _entropy,
    "percentile": _percentile,
    "mse": _mse,
    "auto": _auto,
}
#: The algorithm keys ``choose_range`` knows.
ALGORITHM_NAMES: tuple[str, ...] = tuple(_ALGORITHMS)
#: The algorithms AUTO chooses among.
_FIXED = ("linear", "eqnm", "entropy", "percentile", "mse")
_NEEDS_HISTOGRAM = frozenset({"eqnm", "entropy", "percentile", "mse", "auto"})


def choose_range(
    algorithm: str | QuantizationAlgorithm,
    hist: HistogramObserver | None,
    minmax: MinMaxObserver,
    bits: int = 8,
    symmetric: bool = True,
    percentile: float = 99.99,
) -> tuple[float, float]:
    """The range ``(lo, hi)`` that ``algorithm`` chooses from a tensor's statistics.

    ``algorithm`` is a key of the table (``'linear'``, ``'eqnm'``, ``'entropy'``, ``'percentile'``,
    ``'mse'``, ``'auto'``) or a ``QuantizationAlgorithm``. ``minmax`` gives the exact extremes
    (per tensor); ``hist`` the distribution, needed by every algorithm but ``linear``. ``bits``
    and ``symmetric`` describe the quantized type the range is for; ``percentile`` (in (0, 100])
    is read by ``'percentile'`` (and by ``'auto'``, for its percentile candidate).

    >>> mm, hist = MinMaxObserver(), HistogramObserver()
    >>> data = np.concatenate([np.linspace(-1.0, 1.0, 10_001), [40.0]])
    >>> mm.observe(data); hist.observe(data)
    >>> choose_range("linear", hist, mm)
    (-1.0, 40.0)
    >>> lo, hi = choose_range(QuantizationAlgorithm.PERCENTILE_ALGORITHM, hist, mm, percentile=99)
    >>> round(lo, 2), round(hi, 2)  # 99% of |x| lies below 0.99: the outlier 40 is clipped
    (-0.99, 0.99)
    """
    key = algorithm.key if isinstance(algorithm, QuantizationAlgorithm) else algorithm
    stats = _checked_stats(key, hist, minmax, bits, symmetric, percentile)
    if stats.amax / qrange(bits)[1] <= _F32_TINY:
        # the scale is at its floor (the smallest normal float32) whatever the threshold, so there
        # is nothing to choose (this includes all-zero data); the arithmetic would underflow
        lo, hi = _linear(stats) if key == "linear" else _saturate(stats, stats.amax)
    else:
        lo, hi = _ALGORITHMS[key](stats)
    return float(lo) + 0.0, float(hi) + 0.0  # + 0.0 turns -0.0 into 0.0


def rank_ranges(
    hist: HistogramObserver,
    minmax: MinMaxObserver,
    bits: int = 8,
    symmetric: bool = True,
    percentile: float = 99.99,
) -> list[RangeCandidate]:
    """The ranges AUTO chooses among, best (least quantization error) first.

    Each fixed algorithm proposes a range; with ``symmetric=False`` each also proposes its
    symmetric form ``[-T, T]``. Every proposal is scored by ``histogram_quant_error``: the mean
    squared error of quantizing the observed values with the scale and zero point the builder
    will derive from it. ``choose_range('auto', ...)`` is the first entry's range. A caller that
    can measure better (the error at a consumer's output, a user metric) can re-rank the list.

    >>> mm, hist = MinMaxObserver(), HistogramObserver()
    >>> data = np.maximum(np.random.default_rng(0).standard_normal(50_000), 0.0)  # post-ReLU
    >>> mm.observe(data); hist.observe(data)
    >>> best = rank_ranges(hist, mm, symmetric=False)[0]
    >>> best.algorithm, best.form, best.lo
    ('mse', 'asymmetric', 0.0)
    """
    stats = _checked_stats("auto", hist, minmax, bits, symmetric, percentile)
    if stats.amax / qrange(bits)[1] <= _F32_TINY:
        lo, hi = _saturate(stats, stats.amax)
        return [RangeCandidate("linear", "symmetric" if symmetric else "asymmetric", lo, hi, 0.0)]
    return _candidates(stats)


def _checked_stats(
    key: str,
    hist: HistogramObserver | None,
    minmax: MinMaxObserver,
    bits: int,
    symmetric: bool,
    percentile: float,
) -> _Stats:
    """The arguments of ``choose_range`` validated, as the statistics every algorithm reads."""
    if key not in _ALGORITHMS:
        raise MMError(
            f"unknown range algorithm {key!r}{did_you_mean(str(key), ALGORITHM_NAMES)}; "
            f"known algorithms: {', '.join(ALGORITHM_NAMES)}"
        )
    qrange(bits)  # validates bits
    p = float(percentile)
    if not 0.0 < p <= 100.0:
        raise MMError(f"percentile is {percentile!r}; choose a value in the interval (0, 100]")
    if not isinstance(minmax, MinMaxObserver) or minmax.empty:
        raise MMError(
            f"range algorithm {key!r}: the MinMaxObserver is missing or saw no data; observe "
            "at least one non-empty batch"
        )
    if minmax.axis is not None:
        raise MMError(
            f"range algorithm {key!r}: the MinMaxObserver is per axis (axis={minmax.axis}); range "
            "algorithms choose one range per tensor, so observe with axis=None"
        )
    if key in _NEEDS_HISTOGRAM and (not isinstance(hist, HistogramObserver) or hist.empty):
        raise MMError(
            f"range algorithm {key!r} reads a histogram, but the HistogramObserver is missing or "
            "saw no data; observe the same batches with a HistogramObserver"
        )
    stats = _Stats(float(minmax.min), float(minmax.max), hist, bits, bool(symmetric), p)
    if stats.amax > _F32_MAX:
        raise MMError(
            f"range algorithm {key!r}: the observed range [{stats.lo:g}, {stats.hi:g}] exceeds "
            f"float32 (|value| <= {_F32_MAX:.4g}); such values cannot be quantized, so keep this "
            "tensor in float or calibrate with float32 data"
        )
    return stats


def _saturate(s: _Stats, t: float) -> tuple[float, float]:
    """``[-T, T]`` (T at most max|x|), clipped to the data's ``[min, max]`` when asymmetric."""
    t = min(float(t), s.amax)
    if s.symmetric:
        return -t, t
    return _clip_to_data(s, -t, t)


def _clip_to_data(s: _Stats, lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]`` clipped into the observed ``[min, max]`` (never wider than the data)."""
    lo = min(max(lo, s.lo), s.hi)
    return lo, max(min(hi, s.hi), lo)


def _quantile(counts: np.ndarray, first_edge: float, width: float, q: float) -> float:
    """The value below which a fraction q of the histogram lies, interpolating inside a bin."""
    cum = np.cumsum(counts)
    target = q * float(cum[-1])
    j = min(int(np.searchsorted(cum, target, side="left")), counts.size - 1)
    before = float(cum[j - 1]) if j else 0.0
    inside = (target - before) / float(counts[j]) if counts[j] else 1.0
    return first_edge + (j + min(max(inside, 0.0), 1.0)) * width


def _least_kl_bins(h: np.ndarray, levels: int) -> int:
    """TensorRT's entropy calibration over the ``|x|`` histogram h: the best number of bins i.

    Candidate i (levels <= i <= N) keeps bins [0, i): P is h[:i] with everything above added to
    P[i - 1]; Q merges h[:i] into ``levels`` groups of i // levels bins (the last takes the rest)
    and spreads each group's count evenly over the group's bins where P is non-zero. The KL
    divergence is computed for every candidate at once from cumulative sums: the groups before the
    last are the same for every i with the same i // levels, and the last group is a difference of
    cumulative sums.
    """
    n = h.size
    total = float(h.sum())
    i = np.arange(levels, n + 1)
    cum = np.append(0.0, np.cumsum(h))
    xlogx = np.append(0.0, np.cumsum(_xlogx(h)))
    nonzero = np.append(0, np.cumsum(h > 0))
    merged = i // levels
    start_last = (levels - 1) * merged
    last_h = h[i - 1]
    outliers = total - cum[i]
    p_last = last_h + outliers
    sum_plogp = xlogx[i - 1] + _xlogx(p_last)

    groups = np.zeros(int(merged.max()) + 1)
    for m in np.unique(merged):
        block = h[: (levels - 1) * m].reshape(levels - 1, m)
        sums, nz = block.sum(axis=1), np.count_nonzero(block, axis=1)
        full = sums > 0
        groups[m] = float(np.sum(sums[full] * np.log(sums[full] / nz[full])))
    s_last = cum[i] - cum[start_last]
    nz_last = nonzero[i] - nonzero[start_last] + ((last_h == 0) & (outliers > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        q_last = np.where(s_last > 0, s_last / np.maximum(nz_last, 1), ENTROPY_EPS)
        sum_plogq = groups[merged] + (total - cum[start_last]) * np.log(q_last)
        kl = (sum_plogp - sum_plogq) / total - math.log(total) + np.log(cum[i])
    # A candidate that clips half the values or more is skipped: P is then mostly the spike in its
    # last bin, Q piles up there too, and their divergence tends to 0 as the threshold drops below
    # the data (data away from 0, e.g. uniform on [0.5, 3], would get T = 0.5). Real activations
    # have their KL minimum far above the median of |x|, where this changes nothing.
    kl = np.where(outliers < 0.5 * total, kl, np.inf)
    return int(i[int(np.argmin(kl))])


def _resample(counts: np.ndarray, width: float, new_width: float, new_bins: int) -> np.ndarray:
    """Counts over bins [j * width, (j + 1) * width) moved onto bins of ``new_width``, taking the
    values of a bin to be spread evenly inside it (linear interpolation of the cumulative count)."""
    cum = np.append(0.0, np.cumsum(counts, dtype=np.float64))
    edges = np.arange(counts.size + 1) * width
    new_cum = np.interp(np.arange(new_bins + 1) * new_width, edges, cum)
    new_cum[-1] = cum[-1]  # everything up to max|x|, whatever the rounding of the last edge
    return np.maximum(np.diff(new_cum), 0.0)


def _xlogx(v: np.ndarray) -> np.ndarray:
    out = np.zeros_like(v, dtype=np.float64)
    pos = v > 0
    out[pos] = v[pos] * np.log(v[pos])
    return out


def _best_threshold(hist: HistogramObserver, amax: float, bits: int) -> float:
    """Symmetric MSE search: T on a grid over (0, max|x|], then a finer grid around the best."""
    t = amax * np.arange(1, _MSE_GRID + 1) / _MSE_GRID
    best = int(np.argmin(histogram_quant_error(hist, -t, t, bits, True)))
    step = amax / _MSE_GRID
    fine = np.clip(t[best] + step * np.linspace(-1.0, 1.0, _MSE_GRID + 1), step / _MSE_GRID, amax)
    fine = np.append(fine, t[best])  # the coarse winner stays a candidate
    return float(fine[int(np.argmin(histogram_quant_error(hist, -fine, fine, bits, True)))])


def _best_fractions(
    hist: HistogramObserver, low: float, high: float, bits: int
) -> tuple[float, float]:
    """Asymmetric MSE search: ``[low * a, high * b]``, shrinking each end of the range
    (widened to contain 0) by fractions a, b in (0, 1], on a grid and then a finer grid."""
    k = _MSE_GRID_2D
    coarse = np.arange(1, k + 1) / k

    def search(fa: np.ndarray, fb: np.ndarray) -> tuple[float, float]:
        fa = fa if low < 0 else np.ones(1)  # an end at 0 cannot shrink
        fb = fb if high > 0 else np.ones(1)
        a, b = (g.ravel() for g in np.meshgrid(fa, fb, indexing="ij"))
        best = int(np.argmin(histogram_quant_error(hist, low * a, high * b, bits, False)))
        return float(a[best]), float(b[best])

    a0, b0 = search(coarse, coarse)
    around = np.linspace(-1.0, 1.0, k + 1) / k
    fa = np.append(np.clip(a0 + around, 1.0 / k**2, 1.0), a0)
    fb = np.append(np.clip(b0 + around, 1.0 / k**2, 1.0), b0)
    return search(fa, fb)
