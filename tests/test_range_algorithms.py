"""Tests of the range algorithms: LINEAR, PERCENTILE, ENTROPY, EQNM and MSE."""

from __future__ import annotations

import doctest
from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mmbuild.quant.algorithms as algorithms_module
from mmbuild.errors import Code, MMError
from mmbuild.quant.algorithms import (
    ALGORITHM_NAMES,
    ENTROPY_BINS,
    ENTROPY_EPS,
    QuantizationAlgorithm,
    choose_range,
    entropy_levels,
    rank_ranges,
)
from mmbuild.quant.error import histogram_quant_error
from mmbuild.quant.observers import HistogramObserver, MinMaxObserver
from mmbuild.quant.params import choose_qparams, fake_quantize

SATURATING = ("entropy", "eqnm", "mse", "percentile")


def _observe(data: np.ndarray, batches: int = 10, bins: int = 2048):
    hist, minmax = HistogramObserver(bins=bins), MinMaxObserver()
    for part in np.array_split(data, batches):
        hist.observe(part)
        minmax.observe(part)
    return hist, minmax


def _quant_mse(values: np.ndarray, lo: float, hi: float, symmetric: bool, bits: int = 8) -> float:
    qp = choose_qparams(lo, hi, bits=bits, symmetric=symmetric)
    err = fake_quantize(values, qp).astype(np.float64) - values.astype(np.float32)
    return float(np.mean(err * err))


@cache
def _distribution(kind: str) -> np.ndarray:
    """Activations of the kinds that calibrate badly: one-sided, concentrated near 0, tiny."""
    rng = np.random.default_rng(sum(map(ord, kind)))
    if kind == "normal":
        return rng.standard_normal(32_768)
    if kind == "student_t_with_outliers":
        return np.concatenate([rng.standard_t(3, size=50_000), rng.uniform(-40, 60, 5)])
    if kind == "relu":  # post-ReLU after a batch norm: half zeros
        return np.maximum(rng.standard_normal(100_000), 0.0)
    if kind == "relu_shifted":  # 84% zeros
        return np.maximum(rng.standard_normal(100_000) - 1.0, 0.0)
    if kind == "softmax":  # 100 classes
        logits = 3.0 * rng.standard_normal((1_000, 100))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).ravel()
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-2.0 * rng.standard_normal(100_000)))
    if kind == "hard_swish":
        x = 2.0 * rng.standard_normal(100_000)
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    if kind == "tiny":
        return 1e-6 * rng.standard_normal(50_000)
    raise ValueError(kind)


@cache
def _gaussian_with_outliers() -> tuple[np.ndarray, np.ndarray, HistogramObserver, MinMaxObserver]:
    """200k samples of N(0, 1) plus 10 outliers in [50, 100], shuffled, observed in 10 batches."""
    rng = np.random.default_rng(2024)
    bulk = rng.standard_normal(200_000)
    data = rng.permutation(np.concatenate([bulk, rng.uniform(50.0, 100.0, 10)]))
    return (bulk, data, *_observe(data))


def test_docstring_examples_hold() -> None:
    result = doctest.testmod(algorithms_module)
    assert result.attempted >= 5
    assert result.failed == 0


# --- LINEAR and PERCENTILE(100) -----------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_linear_is_the_observed_extremes(symmetric: bool) -> None:
    rng = np.random.default_rng(0)
    for data in (rng.uniform(0.5, 3.0, 5000), rng.normal(-2.0, 0.5, 5000), np.zeros(10)):
        hist, minmax = _observe(data)
        lo, hi = choose_range("linear", hist, minmax, symmetric=symmetric)
        assert (lo, hi) == (data.min(), data.max())  # not widened to contain 0 or to be symmetric
        assert choose_range("linear", None, minmax) == (lo, hi)  # LINEAR needs no histogram


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 16])
def test_percentile_100_equals_linear(symmetric: bool, bits: int) -> None:
    rng = np.random.default_rng(1)
    for data in (
        rng.uniform(0.5, 3.0, 5000),
        _gaussian_with_outliers()[1],
        rng.exponential(size=999),
    ):
        hist, minmax = _observe(data, batches=3)
        linear = choose_range("linear", hist, minmax, bits=bits, symmetric=symmetric)
        percentile = choose_range(
            "percentile", hist, minmax, bits=bits, symmetric=symmetric, percentile=100
        )
        assert percentile == linear


def test_percentile_matches_numpy_within_a_bin() -> None:
    rng = np.random.default_rng(2)
    data = rng.laplace(size=100_000)
    hist, minmax = _observe(data)
    for p in (90.0, 99.0, 99.9):
        lo, hi = choose_range("percentile", hist, minmax, percentile=p)
        assert lo == -hi
        assert abs(hi - np.percentile(np.abs(data), p)) <= hist.width
        lo, hi = choose_range("percentile", hist, minmax, percentile=p, symmetric=False)
        tail = (100.0 - p) / 2  # equal tails
        assert abs(lo - np.percentile(data, tail)) <= hist.width
        assert abs(hi - np.percentile(data, 100.0 - tail)) <= hist.width


# --- Gaussian bulk plus outliers ----------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_saturating_algorithms_beat_linear_on_the_bulk(symmetric: bool) -> None:
    bulk, _, hist, minmax = _gaussian_with_outliers()
    linear = choose_range("linear", hist, minmax, symmetric=symmetric)
    linear_mse = _quant_mse(bulk, *linear, symmetric=symmetric)
    for name in SATURATING:
        lo, hi = choose_range(name, hist, minmax, symmetric=symmetric)
        assert np.isfinite([lo, hi]).all() and lo <= 0.0 <= hi
        if symmetric:
            assert lo == -hi
        else:
            assert minmax.min <= lo and hi <= minmax.max
        assert hi < 0.9 * minmax.max, name  # every one clips the outliers
        assert _quant_mse(bulk, lo, hi, symmetric) < 0.7 * linear_mse, name


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name", ["entropy", "percentile"])
def test_entropy_and_percentile_clip_well_below_the_outliers(name: str, symmetric: bool) -> None:
    _, _, hist, minmax = _gaussian_with_outliers()
    lo, hi = choose_range(name, hist, minmax, symmetric=symmetric, percentile=99.99)
    assert max(-lo, hi) < 10.0
    assert hi > 3.5  # and keep the bulk (|x| <= 4.6 here)


def test_eqnm_and_mse_weigh_clipping_error_against_rounding_noise() -> None:
    # EQNM and MSE minimise squared error, in which clipping one outlier at 75 to T = 5 costs
    # (75 - 5)^2 = 4900, the rounding noise of about 170k values at T = 75 ((75 / 127)^2 / 12 =
    # 0.029 each). With 10 such outliers among 200k values they clip the outliers only partly;
    # what they guarantee is a lower total error than LINEAR.
    _, data, hist, minmax = _gaussian_with_outliers()
    linear_total = _quant_mse(data, minmax.min, minmax.max, symmetric=True)
    for name in ("eqnm", "mse"):
        lo, hi = choose_range(name, hist, minmax, symmetric=True)
        assert 10.0 < hi < 0.9 * minmax.max
        assert _quant_mse(data, lo, hi, symmetric=True) < linear_total
    lo, hi = choose_range("mse", hist, minmax, symmetric=False)
    assert _quant_mse(data, lo, hi, False) < _quant_mse(data, minmax.min, minmax.max, False)


def test_every_saturating_algorithm_clips_a_rare_outlier_well_below_it() -> None:
    # 2M samples and one outlier at 50: now the outlier's clipping error is small next to the
    # rounding noise it would cause, and all four clip it.
    rng = np.random.default_rng(7)
    bulk = rng.standard_normal(2_000_000).astype(np.float32)
    data = np.append(bulk, np.float32(50.0))
    hist, minmax = _observe(data)
    linear_mse = _quant_mse(bulk, minmax.min, minmax.max, symmetric=True)
    for name in SATURATING:
        lo, hi = choose_range(name, hist, minmax)
        assert lo == -hi and 3.5 < hi < 10.0, name
        assert _quant_mse(bulk, lo, hi, symmetric=True) < 0.1 * linear_mse, name


def test_post_relu_ranges_start_at_zero_when_asymmetric() -> None:
    rng = np.random.default_rng(3)
    data = np.concatenate([np.maximum(rng.standard_normal(100_000), 0.0), [60.0]])
    hist, minmax = _observe(data)
    for name in ("entropy", "eqnm", "mse"):
        lo, hi = choose_range(name, hist, minmax, symmetric=False)
        assert lo == 0.0 and 0.0 < hi < 60.0, name
    lo, hi = choose_range("percentile", hist, minmax, symmetric=False, percentile=99.9)
    assert 0.0 <= lo <= hist.width and hi < 10.0


def test_sixteen_bits_clip_less_than_eight() -> None:
    _, _, hist, minmax = _gaussian_with_outliers()
    for name in ("eqnm", "mse"):
        t8 = choose_range(name, hist, minmax, bits=8)[1]
        t16 = choose_range(name, hist, minmax, bits=16)[1]
        assert t16 >= t8, name
    # 2^15 levels exceed the 2048 bins of the entropy calibrator: nothing to clip
    assert choose_range("entropy", hist, minmax, bits=16)[1] == max(-minmax.min, minmax.max)


# --- each algorithm against a direct evaluation of its definition -------------------------------


def _kl_direct(h: np.ndarray, levels: int) -> dict[int, float]:
    """The entropy calibrator's KL divergence for each candidate, one candidate at a time."""
    total, out = h.sum(), {}
    for i in range(levels, h.size + 1):
        p = h[:i].astype(np.float64).copy()
        p[-1] += h[i:].sum()
        if h[i:].sum() >= 0.5 * total:
            out[i] = np.inf  # candidates that clip half the values or more are skipped
            continue
        merged = i // levels
        starts = np.arange(levels) * merged  # the last group takes the rest, up to i
        lengths = np.diff(np.append(starts, i))
        sums = np.add.reduceat(h[:i], starts)
        nonzero = np.add.reduceat((p > 0).astype(np.int64), starts)
        spread = np.where(nonzero > 0, sums / np.maximum(nonzero, 1), 0.0)
        q = np.where(p > 0, np.repeat(spread, lengths), 0.0)
        q = np.where((p > 0) & (q == 0), ENTROPY_EPS, q)
        pn, qn = p / p.sum(), q / h[:i].sum()
        m = pn > 0
        out[i] = float(np.sum(pn[m] * np.log(pn[m] / qn[m])))
    return out


def _entropy_procedure(data: np.ndarray, symmetric: bool, bits: int = 8) -> dict[float, float]:
    """TensorRT's entropy calibration written out on the samples themselves, as NVIDIA publishes
    it: 2048 bins of |x| over [0, max|x|], the zero bin given its neighbour's count, 2^(B-1)
    levels (2^B for one-sided data quantized asymmetrically), and for each candidate of i bins
    the KL divergence of the quantized histogram from the clipped one. Threshold -> divergence."""
    magnitude = np.abs(data)
    amax = float(magnitude.max())
    h = np.histogram(magnitude, bins=ENTROPY_BINS, range=(0.0, amax))[0].astype(np.float64)
    h[0] = h[1]
    one_sided = data.min() >= 0 or data.max() <= 0
    levels = 2 ** (bits if one_sided and not symmetric else bits - 1)
    return {i * amax / ENTROPY_BINS: kl for i, kl in _kl_direct(h, levels).items()}


def test_entropy_levels_follow_the_quantizer() -> None:
    assert entropy_levels(8, True, -1.0, 1.0) == entropy_levels(8, True, 0.0, 1.0) == 128
    assert entropy_levels(8, False, 0.0, 1.0) == entropy_levels(8, False, -1.0, 0.0) == 256
    assert entropy_levels(8, False, -0.1, 1.0) == 128
    assert entropy_levels(16, False, 0.0, 1.0) == 65_536


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "kind", ["normal", "relu", "relu_shifted", "softmax", "sigmoid", "hard_swish", "tiny"]
)
def test_entropy_matches_a_brute_force_of_the_published_procedure(
    kind: str, symmetric: bool
) -> None:
    data = _distribution(kind)
    # one batch: the observer's grid is then the procedure's 2048 bins (up to resampling)
    hist, minmax = _observe(data, batches=1)
    lo, hi = choose_range("entropy", hist, minmax, symmetric=symmetric)
    divergence = _entropy_procedure(data, symmetric)
    best_t = min(divergence, key=divergence.__getitem__)
    thresholds = np.array(list(divergence))
    ours = float(thresholds[np.argmin(np.abs(thresholds - max(-lo, hi)))])
    assert divergence[ours] <= divergence[best_t] * 1.01 + 1e-12, (ours, best_t)
    if symmetric:
        assert lo == -hi
    else:
        assert minmax.min <= lo <= hi <= minmax.max


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("kind", ["relu", "relu_shifted"])
def test_entropy_no_longer_clips_post_relu_tensors_to_a_sixteenth(
    kind: str, symmetric: bool
) -> None:
    # The zero spike used to decide the KL minimum: every post-ReLU tensor got T = max / 16 or
    # less, i.e. its largest values clipped by 15/16 (0.898 cosine on a MobileNet classifier).
    data = _distribution(kind)
    hist, minmax = _observe(data)
    _, hi = choose_range("entropy", hist, minmax, symmetric=symmetric)
    assert hi > 0.6 * minmax.max
    linear_error = _quant_mse(data, 0.0, minmax.max, symmetric)
    assert (
        _quant_mse(data, *choose_range("entropy", hist, minmax, symmetric=symmetric), symmetric)
        < 4.0 * linear_error
    )


def test_entropy_kl_matches_a_direct_evaluation() -> None:
    rng = np.random.default_rng(11)
    for _ in range(150):
        n, levels = int(rng.integers(8, 70)), int(rng.integers(2, 9))
        h = (rng.integers(0, 6, n) * (rng.random(n) < 0.6)).astype(np.float64)
        if h.sum() == 0 or n < levels:
            continue
        direct = _kl_direct(h, levels)
        best = algorithms_module._least_kl_bins(h, levels)
        assert direct[best] == pytest.approx(min(direct.values()), rel=1e-9, abs=1e-12)


def test_eqnm_minimises_the_expected_noise() -> None:
    rng = np.random.default_rng(12)
    data = np.concatenate([rng.laplace(size=20_000), [30.0, -25.0]])
    hist, minmax = _observe(data, bins=256)
    _, t = choose_range("eqnm", hist, minmax)
    counts, width = hist.abs_histogram()
    amax = max(-minmax.min, minmax.max)
    centres = np.minimum((np.arange(counts.size) + 0.5) * width, amax)

    def noise(threshold: float) -> float:
        clipped = centres > threshold
        step = threshold / 127
        return float(
            np.sum(counts[~clipped]) * step**2 / 12
            + np.sum(counts[clipped] * (centres[clipped] - threshold) ** 2)
        )

    candidates = np.minimum(np.arange(1, counts.size + 1) * width, amax)
    assert noise(t) == pytest.approx(min(noise(c) for c in candidates), rel=1e-9)
    assert noise(t) < noise(amax)


def _brute_force_best(data: np.ndarray, los: np.ndarray, his: np.ndarray, symmetric: bool):
    """The least real quantization MSE of ``data`` over the candidate ranges, and its range."""
    errors = [_quant_mse(data, lo, hi, symmetric) for lo, hi in zip(los, his)]
    j = int(np.argmin(errors))
    return errors[j], (float(los[j]), float(his[j]))


def test_mse_finds_the_least_error_of_standard_normal_samples() -> None:
    # the case of the bug report: on 32,768 N(0, 1) samples the error is least at T = 3.84; the
    # error of the histogram's bin centres had put the choice at 3.58 (16% more noise)
    data = np.random.default_rng(2).standard_normal(32_768)
    hist, minmax = _observe(data, batches=8)
    amax = float(np.abs(data).max())
    t = np.linspace(2.5, amax, 800)
    best, (_, t_best) = _brute_force_best(data, -t, t, symmetric=True)
    lo, hi = choose_range("mse", hist, minmax)
    assert lo == -hi
    assert _quant_mse(data, lo, hi, symmetric=True) <= 1.02 * best
    assert abs(hi - t_best) < 0.15


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "kind", ["normal", "student_t_with_outliers", "relu", "softmax", "sigmoid", "tiny"]
)
def test_mse_is_within_two_percent_of_a_brute_force_search(kind: str, symmetric: bool) -> None:
    data = _distribution(kind)
    hist, minmax = _observe(data)
    chosen = _quant_mse(data, *choose_range("mse", hist, minmax, symmetric=symmetric), symmetric)
    amax = float(np.abs(data).max())
    if symmetric:
        t = np.geomspace(amax / 200, amax, 300)
        best, _ = _brute_force_best(data, -t, t, symmetric)
    else:
        frac = np.geomspace(1 / 200, 1.0, 28)
        lo_end, hi_end = min(minmax.min, 0.0), max(minmax.max, 0.0)
        a, b = (g.ravel() for g in np.meshgrid(frac, frac, indexing="ij"))
        best, _ = _brute_force_best(data, lo_end * a, hi_end * b, symmetric)
    assert chosen <= 1.02 * best
    assert chosen <= _quant_mse(data, minmax.min, minmax.max, symmetric) * (1 + 1e-9)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("kind", ["normal", "student_t_with_outliers", "relu", "softmax", "tiny"])
def test_histogram_error_matches_the_error_of_the_samples(kind: str, symmetric: bool) -> None:
    data = _distribution(kind)
    hist, minmax = _observe(data)
    amax = float(np.abs(data).max())
    t = amax * np.array([0.05, 0.2, 0.5, 0.8, 1.0])
    lo = np.maximum(-t, minmax.min) if not symmetric else -t
    hi = np.minimum(t, minmax.max) if not symmetric else t
    estimate = histogram_quant_error(hist, lo, hi, symmetric=symmetric)
    real = [_quant_mse(data, a, b, symmetric) for a, b in zip(lo, hi)]
    # Values are taken as spread evenly inside their bin. Where a bin holds values that all round
    # to one level (softmax: most values lie in the first bin, far below the step), the error of
    # each is overstated by at most the mean square of the bin's width, width^2 / 3.
    np.testing.assert_allclose(estimate, real, rtol=0.05, atol=hist.width**2 / 3)


# --- AUTO -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "kind",
    ["normal", "student_t_with_outliers", "relu", "softmax", "sigmoid", "hard_swish", "tiny"],
)
def test_auto_quantizes_at_least_as_well_as_every_fixed_algorithm(
    kind: str, symmetric: bool
) -> None:
    data = _distribution(kind)
    hist, minmax = _observe(data)
    ranked = rank_ranges(hist, minmax, symmetric=symmetric)
    errors = [c.error for c in ranked]
    assert errors == sorted(errors)
    forms = {c.form for c in ranked}
    assert forms == ({"symmetric"} if symmetric else {"symmetric", "asymmetric"})
    assert {c.algorithm for c in ranked} == set(ALGORITHM_NAMES) - {"auto"}
    auto = choose_range("auto", hist, minmax, symmetric=symmetric)
    assert auto == (ranked[0].lo, ranked[0].hi)
    # on the samples themselves, not only on the histogram it was chosen from
    real = _quant_mse(data, *auto, symmetric)
    for name in set(ALGORITHM_NAMES) - {"auto"}:
        other = _quant_mse(data, *choose_range(name, hist, minmax, symmetric=symmetric), symmetric)
        assert real <= 1.02 * other, name


def test_auto_picks_per_tensor() -> None:
    # a post-ReLU tensor and a softmax one get different winners: the choice is per tensor
    picks = {}
    for kind in ("relu", "softmax", "student_t_with_outliers"):
        hist, minmax = _observe(_distribution(kind))
        best = rank_ranges(hist, minmax, symmetric=False)[0]
        picks[kind] = best
        assert best.form == "asymmetric" or kind == "student_t_with_outliers"
    assert picks["relu"].lo == 0.0 and picks["softmax"].lo >= 0.0
    assert QuantizationAlgorithm.AUTO is QuantizationAlgorithm.AUTO_ALGORITHM
    assert QuantizationAlgorithm.AUTO.key == "auto"


def test_auto_on_a_constant_or_zero_tensor() -> None:
    for value in (0.0, 3.0, -2.5):
        hist, minmax = _observe(np.full(1000, value))
        for symmetric in (True, False):
            lo, hi = choose_range("auto", hist, minmax, symmetric=symmetric)
            # the value itself is represented (to half a step at most; 0 exactly)
            qp = choose_qparams(lo, hi, symmetric=symmetric)
            error = _quant_mse(np.full(10, value), lo, hi, symmetric)
            assert error <= float(qp.scale / 2) ** 2 and (value != 0.0 or error == 0.0)


# --- properties and errors ----------------------------------------------------------------------


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200),
    st.sampled_from([8, 16]),
    st.booleans(),
    st.floats(0.01, 100.0),
)
def test_every_algorithm_returns_a_usable_range(
    values: list[float], bits: int, symmetric: bool, percentile: float
) -> None:
    data = np.array(values)
    hist, minmax = _observe(data, batches=min(3, data.size), bins=64)
    amax = float(np.abs(data).max())
    for name in ALGORITHM_NAMES:
        lo, hi = choose_range(name, hist, minmax, bits, symmetric, percentile)
        assert np.isfinite([lo, hi]).all() and lo <= hi, name
        choose_qparams(lo, hi, bits=bits, symmetric=symmetric)  # accepted by the builder's step
        if name == "auto":  # the range of the algorithm it chose, in the form it chose
            best = rank_ranges(hist, minmax, bits, symmetric, percentile)[0]
            assert (lo, hi) == (best.lo, best.hi)
            assert symmetric <= (best.form == "symmetric")
            if amax / (2 ** (bits - 1) - 1) > np.finfo(np.float32).tiny:
                form = best.form == "symmetric"
                again = choose_range(best.algorithm, hist, minmax, bits, form, percentile)
                if form:
                    again = (-max(-again[0], again[1]), max(-again[0], again[1]))
                assert again == (lo, hi)
        elif name == "linear" or (name == "percentile" and percentile == 100.0):
            assert (lo, hi) == (data.min(), data.max())
        elif symmetric:
            assert lo == -hi and hi <= amax, name
        else:
            assert data.min() <= lo and hi <= data.max(), name


def test_enum_keys_are_the_table() -> None:
    assert {a.key for a in QuantizationAlgorithm} == set(ALGORITHM_NAMES)
    assert QuantizationAlgorithm.LINEAR_ALGORITHM.key == "linear"
    _, _, hist, minmax = _gaussian_with_outliers()
    for algo in QuantizationAlgorithm:
        assert choose_range(algo, hist, minmax) == choose_range(algo.key, hist, minmax)


@pytest.mark.parametrize("bad", [0, 0.0, -1, 100.01, 1e9, float("nan")])
def test_percentile_outside_its_interval_raises(bad: float) -> None:
    _, _, hist, minmax = _gaussian_with_outliers()
    with pytest.raises(
        MMError, match=r"percentile is .*; choose a value in the interval \(0, 100\]"
    ):
        choose_range("percentile", hist, minmax, percentile=bad)


def test_unknown_algorithm_lists_the_known_ones() -> None:
    _, _, hist, minmax = _gaussian_with_outliers()
    with pytest.raises(MMError) as info:
        choose_range("entropi", hist, minmax)
    message = str(info.value)
    assert "unknown range algorithm 'entropi'" in message and "did you mean 'entropy'" in message
    for name in ALGORITHM_NAMES:
        assert name in message
    assert info.value.code == Code.INVALID_ARGUMENT


def test_missing_or_unsuitable_statistics_raise() -> None:
    _, _, hist, minmax = _gaussian_with_outliers()
    with pytest.raises(MMError, match="'entropy' reads a histogram"):
        choose_range("entropy", None, minmax)
    with pytest.raises(MMError, match="'mse' reads a histogram"):
        choose_range("mse", HistogramObserver(), minmax)
    with pytest.raises(MMError, match="saw no data"):
        choose_range("linear", hist, MinMaxObserver())
    per_axis = MinMaxObserver(axis=0)
    per_axis.observe(np.ones((2, 2)))
    with pytest.raises(MMError, match="per axis .* observe with axis=None"):
        choose_range("linear", hist, per_axis)
    with pytest.raises(MMError, match="8 bits"):
        choose_range("linear", hist, minmax, bits=4)
    huge = MinMaxObserver()
    huge.observe(np.array([1e39]))
    with pytest.raises(MMError, match="exceeds float32"):
        choose_range("linear", None, huge)
