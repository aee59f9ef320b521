"""Tests of the observers: exact extremes, bounded exact histograms, merging."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mmbuild.quant.observers as observers_module
from mmbuild.errors import MMError
from mmbuild.quant.observers import HistogramObserver, MinMaxObserver


def test_docstring_examples_hold() -> None:
    result = doctest.testmod(observers_module)
    assert result.attempted >= 10
    assert result.failed == 0


def _batches(seed: int, n: int = 20) -> list[np.ndarray]:
    """Batches of varying shape, scale and offset, so that ranges grow in both directions."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = tuple(int(d) for d in rng.integers(1, 6, size=rng.integers(1, 4)))
        out.append(
            rng.normal(rng.normal() * i, 1 + i * rng.random(), size=shape).astype(np.float32)
        )
    return out


def _reference_counts(h: HistogramObserver, values: np.ndarray) -> np.ndarray:
    """The histogram of all values over the observer's final edges (last bin closed)."""
    return np.histogram(values, bins=h.edges)[0]


# --- MinMaxObserver -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minmax_is_exact(seed: int) -> None:
    batches = _batches(seed)
    obs = MinMaxObserver()
    assert obs.empty
    for b in batches:
        obs.observe(b)
    everything = np.concatenate([b.ravel() for b in batches])
    assert obs.min == float(everything.min()) and obs.max == float(everything.max())
    assert obs.count == everything.size and not obs.empty


def test_minmax_per_axis_keeps_one_range_per_channel() -> None:
    rng = np.random.default_rng(5)
    spread = np.array([1.0, 10.0, 0.1])[None, :, None]
    batches = [rng.normal(size=(n, 3, 4)) * spread for n in (1, 2, 5)]
    obs = MinMaxObserver(axis=1)
    for b in batches:
        obs.observe(b)
    everything = np.concatenate(batches)
    np.testing.assert_array_equal(obs.min, everything.min(axis=(0, 2)))
    np.testing.assert_array_equal(obs.max, everything.max(axis=(0, 2)))
    with pytest.raises(MMError, match="had 3 channel\\(s\\) before and 2 now"):
        obs.observe(np.zeros((1, 2, 4)))
    with pytest.raises(MMError, match="axis 1 is out of range for a batch of shape \\(4,\\)"):
        obs.observe(np.zeros(4))


@pytest.mark.parametrize("axis", [None, -1])
def test_minmax_merge_equals_observing_everything(axis: int | None) -> None:
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(10, 3)), rng.normal(5.0, 2.0, size=(4, 3))
    a, b, both = MinMaxObserver(axis), MinMaxObserver(axis), MinMaxObserver(axis)
    a.observe(x)
    b.observe(y)
    both.observe(np.concatenate([x, y]))
    merged = a.merge(b)
    assert merged is a
    np.testing.assert_array_equal(a.min, both.min)
    np.testing.assert_array_equal(a.max, both.max)
    assert a.count == both.count
    assert MinMaxObserver(axis).merge(b).count == b.count  # merging into an empty observer
    np.testing.assert_array_equal(b.merge(MinMaxObserver(axis)).min, b.min)


def test_minmax_refusals() -> None:
    obs = MinMaxObserver()
    with pytest.raises(MMError, match="nothing observed yet"):
        _ = obs.min
    obs.observe(np.zeros(0))  # an empty batch changes nothing
    assert obs.empty
    with pytest.raises(MMError, match="2 NaN and 1 Inf value\\(s\\) out of 5"):
        obs.observe(np.array([1.0, np.nan, np.inf, np.nan, 0.0]))
    assert obs.empty  # a refused batch leaves the observer as it was
    with pytest.raises(MMError, match="dtype complex128"):
        obs.observe(np.zeros(2, dtype=complex))
    with pytest.raises(MMError, match="same granularity"):
        obs.merge(MinMaxObserver(axis=0))
    with pytest.raises(MMError, match="merge a MinMaxObserver"):
        obs.merge(HistogramObserver())  # type: ignore[arg-type]


# --- HistogramObserver --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_histogram_counts_every_value_in_its_bin(seed: int) -> None:
    batches = _batches(seed)
    h = HistogramObserver(bins=64)
    for b in batches:
        h.observe(b)
    everything = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    assert h.total == everything.size == int(h.counts.sum())
    assert h.min == everything.min() and h.max == everything.max()
    assert h.lo <= h.min and h.max <= h.hi
    # re-binning on every widening is exact: the counts are those of all data on the final edges
    np.testing.assert_array_equal(h.counts, _reference_counts(h, everything))


def test_zero_is_always_an_edge() -> None:
    h = HistogramObserver(bins=100)
    for b in _batches(4):
        h.observe(b)
        if h.lo <= 0.0 <= h.hi:
            assert np.any(h.edges == 0.0)
        assert round(h.lo / h.width) == pytest.approx(h.lo / h.width, abs=1e-6)


def test_memory_is_constant_over_a_thousand_growing_batches() -> None:
    h = HistogramObserver(bins=2048)
    rng = np.random.default_rng(0)
    sizes, total = set(), 0
    for i in range(1000):
        batch = rng.normal(0.0, 1.0 + i, size=50)  # the range keeps growing
        h.observe(batch)
        total += batch.size
        sizes.add((h.counts.size, h.counts.nbytes))
    assert sizes == {(2048, 2048 * 8)}
    assert h.total == total == int(h.counts.sum())
    assert h.hi - h.lo >= h.max - h.min


def test_histogram_after_a_constant_first_batch() -> None:
    rng = np.random.default_rng(1)
    for first in (np.zeros(100), np.full(10, 5.0), np.full(3, -1e-3)):
        h = HistogramObserver(bins=256)
        h.observe(first)
        assert h.total == first.size and h.min == h.max == first[0]
        later = rng.normal(size=1000)
        h.observe(later)
        everything = np.concatenate([first, later])
        np.testing.assert_array_equal(h.counts, _reference_counts(h, everything))
        # the grid adapts to the spread data: about as wide as the data, not of the constant
        assert h.hi - h.lo <= 2 * (everything.max() - everything.min())


def test_histogram_of_extreme_magnitudes() -> None:
    h = HistogramObserver(bins=16)
    h.observe(np.array([1e-300, 2e-300]))
    h.observe(np.array([1e30, -3e29]))
    assert h.total == 4 and h.counts.sum() == 4
    assert (h.min, h.max) == (-3e29, 1e30)
    assert h.lo <= -3e29 and h.hi >= 1e30


def test_abs_histogram_is_the_folded_histogram() -> None:
    rng = np.random.default_rng(2)
    data = np.concatenate([rng.normal(size=5000), rng.uniform(-3, 7, 500)])
    h = HistogramObserver(bins=512)
    for part in np.array_split(data, 7):
        h.observe(part)
    counts, width = h.abs_histogram()
    assert width == h.width
    assert counts.sum() == h.total
    edges = np.arange(counts.size + 1) * width
    assert edges[-1] >= np.abs(data).max() > edges[-2]
    np.testing.assert_array_equal(counts, np.histogram(np.abs(data), bins=edges)[0])


def test_abs_histogram_of_data_away_from_zero_stays_bounded() -> None:
    h = HistogramObserver(bins=128)
    data = np.random.default_rng(3).uniform(1000.0, 1000.5, 10_000)
    h.observe(data)
    counts, width = h.abs_histogram()
    assert counts.size <= 128 and counts.sum() == data.size
    assert counts.size * width >= data.max()


def test_merge_of_identical_grids_is_exact() -> None:
    rng = np.random.default_rng(4)
    x = np.clip(rng.normal(size=3000), -3.9, 3.9)
    y = np.clip(rng.normal(0.5, 0.7, size=2000), -3.9, 3.9)
    x[:2], y[:2] = [-4.0, 4.0], [-4.0, 4.0]  # same extremes, so both observers share a grid
    a, b, seq, concat = (HistogramObserver(bins=128) for _ in range(4))
    a.observe(x)
    b.observe(y)
    seq.observe(x)
    seq.observe(y)
    concat.observe(np.concatenate([x, y]))
    np.testing.assert_array_equal(a.edges, b.edges)
    a.merge(b)
    for other in (seq, concat):
        np.testing.assert_array_equal(a.edges, other.edges)
        np.testing.assert_array_equal(a.counts, other.counts)
        assert (a.min, a.max, a.total) == (other.min, other.max, other.total)


def test_merge_of_nested_grids_is_exact() -> None:
    rng = np.random.default_rng(5)
    x = np.append(rng.uniform(0.0, 2047.0, 4000), [0.0, 2047.0])  # width 1
    y = np.append(rng.uniform(0.0, 1023.5, 4000), [0.0, 1023.5])  # width 0.5, nested in x's bins
    a, b = HistogramObserver(bins=2048), HistogramObserver(bins=2048)
    a.observe(x)
    b.observe(y)
    assert (a.width, b.width) == (1.0, 0.5)
    b.merge(a)  # the coarser grid (a's) is kept, whichever observer merges
    assert b.width == 1.0
    np.testing.assert_array_equal(b.counts, _reference_counts(b, np.concatenate([x, y])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_of_unrelated_grids_moves_values_by_less_than_a_bin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.normal(), 1.0, size=4000)
    y = rng.normal(rng.normal() * 3, 0.3, size=3000)
    a, b = HistogramObserver(bins=256), HistogramObserver(bins=256)
    a.observe(x)
    b.observe(y)
    a.merge(b)
    everything = np.concatenate([x, y])
    assert (a.min, a.max, a.total) == (everything.min(), everything.max(), everything.size)
    assert a.counts.sum() == everything.size
    # each value moved by less than one bin: cumulative counts agree up to one bin's shift
    exact = np.cumsum(_reference_counts(a, everything))
    got = np.cumsum(a.counts)
    assert np.all(got[1:] >= exact[:-1]) and np.all(got[:-1] <= exact[1:])


@given(
    st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_subnormal=False), min_size=1, max_size=30),
        min_size=1,
        max_size=6,
    ),
    st.integers(2, 40),
)
def test_histogram_totals_and_extremes_for_any_batches(
    batches: list[list[float]], bins: int
) -> None:
    h, mm = HistogramObserver(bins=bins), MinMaxObserver()
    for b in batches:
        h.observe(np.array(b))
        mm.observe(np.array(b))
    everything = np.concatenate([np.array(b) for b in batches])
    assert h.total == everything.size == int(h.counts.sum()) == mm.count
    assert h.counts.size == bins
    assert (h.min, h.max) == (mm.min, mm.max) == (everything.min(), everything.max())
    assert h.lo <= h.min and h.max <= h.hi
    counts, width = h.abs_histogram()
    assert (
        counts.sum() == h.total
        and counts.size <= bins
        and counts.size * width >= max(abs(h.min), abs(h.max))
    )


def test_histogram_refusals() -> None:
    for bad in (1, 0, 2.5, True):
        with pytest.raises(MMError, match="bins is .*; pass an integer >= 2"):
            HistogramObserver(bins=bad)  # type: ignore[arg-type]
    h = HistogramObserver(bins=8)
    with pytest.raises(MMError, match="nothing observed yet"):
        _ = h.edges
    h.observe([])
    assert h.empty
    with pytest.raises(MMError, match="0 NaN and 1 Inf"):
        h.observe(np.array([1.0, -np.inf]))
    assert h.empty
    with pytest.raises(MMError, match="created with the same bins"):
        h.merge(HistogramObserver(bins=16))
    h.observe([1.0, 2.0])
    assert h.merge(HistogramObserver(bins=8)).total == 2  # merging an empty observer
    assert HistogramObserver(bins=8).merge(h).counts.tolist() == h.counts.tolist()


def test_exact_zeros_are_counted_and_merged() -> None:
    rng = np.random.default_rng(8)
    x = np.maximum(rng.standard_normal(5000), 0.0)  # about half exact zeros
    y = np.concatenate([np.zeros(7), rng.uniform(-3.0, 5.0, 100), [-0.0]])  # -0.0 is 0 too
    a, b, both = (HistogramObserver(bins=256) for _ in range(3))
    a.observe(x)
    b.observe(y)
    both.observe(x)
    both.observe(y)
    assert a.zeros == int(np.count_nonzero(x == 0.0)) > 2000
    assert b.zeros == 8
    assert both.zeros == a.zeros + b.zeros == a.merge(b).zeros
    # the zeros lie in the bin that starts at 0, and never exceed its count
    at_zero = int(np.argmin(np.abs(both.edges[:-1])))
    assert both.edges[at_zero] == 0.0 and both.counts[at_zero] >= both.zeros
    empty = HistogramObserver(bins=256)
    assert empty.zeros == 0 and empty.merge(a).zeros == a.zeros
