"""Tests of quantization parameters and (de)quantization: the arithmetic of API.md."""

from __future__ import annotations

import dataclasses
import doctest

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import mmbuild.quant.params as params_module
from mmbuild.errors import Code, MMError
from mmbuild.quant.params import (
    QuantParams,
    choose_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
)

EPS32 = float(np.finfo(np.float32).eps)


def test_docstring_examples_hold() -> None:
    result = doctest.testmod(params_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 15
    assert result.failed == 0


# --- the worked example: (-3.5, 10.2) to int8 ---------------------------------------------------


def test_worked_example_symmetric_int8() -> None:
    qp = choose_qparams(-3.5, 10.2, bits=8, symmetric=True)
    assert qp.scale.dtype == np.float32 and qp.scale.shape == ()
    assert qp.scale == np.float32(10.2 / 127)
    assert qp.zero_point == 0 and qp.zero_point.dtype == np.int32
    assert (qp.qmin, qp.qmax) == (-128, 127)
    q = quantize(np.array([-3.5, 0.0, 10.2]), qp)
    assert q.dtype == np.int8
    assert q.tolist() == [-44, 0, 127]  # -3.5 / 0.0803 = -43.58 -> -44
    back = dequantize(q, qp)
    assert back.dtype == np.float32
    assert back[0] == np.float32(-44) * np.float32(10.2 / 127)


def test_worked_example_asymmetric_int8() -> None:
    qp = choose_qparams(-3.5, 10.2, bits=8, symmetric=False)
    assert qp.scale == np.float32(13.7 / 255)
    assert int(qp.zero_point) == -63  # -128 - rint(-3.5 / 0.05373) = -128 - (-65)
    assert quantize(np.array([-3.5, 0.0, 10.2]), qp).tolist() == [-128, -63, 127]
    back = fake_quantize(np.array([-3.5, 0.0, 10.2]), qp)
    assert back[1] == 0.0
    assert np.all(np.abs(back - np.array([-3.5, 0.0, 10.2])) <= float(qp.scale) / 2)


def test_sixteen_bits() -> None:
    sym = choose_qparams(-1.0, 1.0, bits=16)
    assert sym.scale == np.float32(1 / 32767) and (sym.qmin, sym.qmax) == (-32768, 32767)
    q = quantize([-1.0, 0.0, 1.0], sym)
    assert q.dtype == np.int16 and q.tolist() == [-32767, 0, 32767]
    asym = choose_qparams(-1.0, 1.0, bits=16, symmetric=False)
    assert asym.scale == np.float32(2 / 65535)
    # -1 / scale = -32767.5 rounds half to even to -32768, so the zero point is exactly 0
    assert int(asym.zero_point) == 0
    assert quantize([-1.0, 0.0, 1.0], asym).tolist() == [-32768, 0, 32767]


def test_qrange_and_storage_dtype() -> None:
    assert qrange(8) == (-128, 127) and qrange(16) == (-32768, 32767)
    assert choose_qparams(-1, 1, bits=8).dtype == np.int8
    assert choose_qparams(-1, 1, bits=16).dtype == np.int16


# --- per axis -----------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [1, -2])
def test_per_axis_equals_per_tensor_on_each_channel(symmetric: bool, axis: int) -> None:
    rng = np.random.default_rng(3)
    spread = np.array([0.1, 1.0, 30.0])[None, :, None]
    offset = np.array([0.0, 2.0, -1.0])[None, :, None]
    x = rng.normal(size=(4, 3, 5)) * spread + offset
    lo, hi = x.min(axis=(0, 2)), x.max(axis=(0, 2))
    qp = choose_qparams(lo, hi, bits=8, symmetric=symmetric, axis=axis)
    assert qp.scale.shape == (3,) and qp.axis == axis
    q = quantize(x, qp)
    back = dequantize(q, qp)
    for c in range(3):
        one = choose_qparams(lo[c], hi[c], bits=8, symmetric=symmetric)
        assert qp.scale[c] == one.scale and qp.zero_point[c] == one.zero_point
        np.testing.assert_array_equal(q[:, c, :], quantize(x[:, c, :], one))
        np.testing.assert_array_equal(back[:, c, :], dequantize(q[:, c, :], one))


def test_per_axis_scale_follows_the_axis() -> None:
    qp = choose_qparams([-1.0, -100.0], [1.0, 100.0], axis=0)
    x = np.array([[0.5, 0.5], [50.0, 50.0]])
    # row 0 uses scale 1/127, row 1 uses 100/127
    assert quantize(x, qp).tolist() == [[64, 64], [64, 64]]


# --- zero width, rounding, non-finite values ----------------------------------------------------


def test_zero_width_symmetric_range_gets_scale_one() -> None:
    qp = choose_qparams(0.0, 0.0, symmetric=True)
    assert float(qp.scale) == 1.0 and int(qp.zero_point) == 0
    assert quantize(np.zeros(3), qp).tolist() == [0, 0, 0]
    per_axis = choose_qparams([0.0, -2.0], [0.0, 2.0], axis=0)
    assert per_axis.scale.tolist() == [1.0, np.float32(2 / 127)]


def test_zero_width_asymmetric_range() -> None:
    qp = choose_qparams(0.0, 0.0, symmetric=False)
    assert float(qp.scale) == 1.0 and int(qp.zero_point) == -128
    assert quantize([0.0], qp).tolist() == [-128]
    assert dequantize(quantize([0.0], qp), qp).tolist() == [0.0]
    # [a, a] with a != 0 is widened to contain 0, so it is no longer zero width
    for a in (2.0, -2.0):
        qp = choose_qparams(a, a, symmetric=False)
        assert qp.scale == np.float32(2.0 / 255)
        back = fake_quantize([a, 0.0], qp)
        assert back[1] == 0.0 and abs(back[0] - a) <= float(qp.scale) / 2


def test_rounding_is_half_to_even() -> None:
    qp = choose_qparams(-63.5, 63.5)  # scale 0.5: x / scale lands exactly on .5 points
    assert float(qp.scale) == 0.5
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 62.25])
    assert quantize(x, qp).tolist() == [0, 2, 2, 0, -2, -2, 124]
    # asymmetric: rint happens before the zero point is added
    asym = QuantParams(np.float32(1.0), np.int32(-3), bits=8)
    assert quantize([0.5, 1.5, 2.5], asym).tolist() == [-3, -1, -1]


def test_nan_maps_to_zero_point_and_inf_saturates() -> None:
    for symmetric in (True, False):
        qp = choose_qparams(-1.0, 3.0, symmetric=symmetric)
        q = quantize([np.nan, np.inf, -np.inf, 1e30, -1e30], qp)
        assert q.tolist() == [int(qp.zero_point), 127, -128, 127, -128]


def test_quantize_divides_in_float32() -> None:
    # float64 input is cast to float32 first; the result is rint(float32(x) / scale)
    qp = choose_qparams(-1.0, 1.0)
    x = np.random.default_rng(0).uniform(-1, 1, 1000)
    expected = np.clip(np.rint(x.astype(np.float32) / qp.scale), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(quantize(x, qp), expected)


# --- properties ---------------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=True)


@st.composite
def ranges_and_values(draw: st.DrawFn) -> tuple[float, float, int, bool, list[float]]:
    a, b = draw(finite), draw(finite)
    lo, hi = min(a, b), max(a, b)
    bits = draw(st.sampled_from([8, 16]))
    symmetric = draw(st.booleans())
    if symmetric:
        amax = max(abs(lo), abs(hi))
        inside_lo, inside_hi = -amax, amax
    else:
        inside_lo, inside_hi = min(lo, 0.0), max(hi, 0.0)
    xs = draw(st.lists(st.floats(inside_lo, inside_hi), min_size=1, max_size=20))
    return lo, hi, bits, symmetric, xs


@given(ranges_and_values())
def test_round_trip_error_is_at_most_half_a_step(
    case: tuple[float, float, int, bool, list[float]],
) -> None:
    lo, hi, bits, symmetric, xs = case
    qp = choose_qparams(lo, hi, bits=bits, symmetric=symmetric)
    x = np.array(xs)
    err = np.abs(fake_quantize(x, qp).astype(np.float64) - x)
    scale = float(qp.scale)
    # half a step, plus the float32 rounding of x, of the scale and of the product
    bound = scale / 2 * (1 + 1e-5) + 4 * EPS32 * np.maximum(np.abs(x), max(abs(lo), abs(hi)))
    assert np.all(err <= bound)


@given(
    ranges_and_values(),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20),
)
def test_quantized_values_stay_in_range_and_are_monotone(
    case: tuple[float, float, int, bool, list[float]], extra: list[float]
) -> None:
    lo, hi, bits, symmetric, xs = case
    qp = choose_qparams(lo, hi, bits=bits, symmetric=symmetric)
    x = np.array(xs + extra)
    q = quantize(x, qp)
    assert q.dtype == qp.dtype
    assert q.min() >= qp.qmin and q.max() <= qp.qmax
    ordered = quantize(np.sort(x[~np.isnan(x)]), qp).astype(np.int64)
    assert np.all(np.diff(ordered) >= 0)  # no wrap-around: larger values never quantize lower
    assert quantize([np.nan], qp)[0] == qp.zero_point


@given(finite, finite, st.sampled_from([8, 16]))
def test_asymmetric_zero_is_exact_and_range_ends_hit_the_integer_ends(
    a: float, b: float, bits: int
) -> None:
    lo, hi = min(a, b), max(a, b)
    qp = choose_qparams(lo, hi, bits=bits, symmetric=False)
    assert qp.qmin <= int(qp.zero_point) <= qp.qmax
    assert quantize([0.0], qp)[0] == qp.zero_point
    assert dequantize(quantize([0.0], qp), qp)[0] == 0.0
    if min(lo, 0.0) < max(hi, 0.0):
        assert quantize([min(lo, 0.0)], qp)[0] == qp.qmin


@given(finite, finite, st.sampled_from([8, 16]))
@example(0.0, 5e-324, 8)  # a non-zero range whose scale underflows float64: not "zero width"
def test_symmetric_zero_point_is_zero_and_scale_covers_the_range(
    a: float, b: float, bits: int
) -> None:
    qp = choose_qparams(min(a, b), max(a, b), bits=bits, symmetric=True)
    assert int(qp.zero_point) == 0
    amax = max(abs(a), abs(b))
    if amax == 0:
        assert float(qp.scale) == 1.0
    else:
        # float32 rounding of amax / qmax; never below the smallest normal float32
        expected = max(amax / qp.qmax, float(np.finfo(np.float32).tiny))
        assert float(qp.scale) == pytest.approx(expected, rel=1e-7)


# --- the dataclass and bad input ----------------------------------------------------------------


def test_quant_params_is_frozen_and_read_only() -> None:
    qp = choose_qparams([-1.0, -2.0], [1.0, 2.0], axis=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        qp.bits = 16  # type: ignore[misc]
    with pytest.raises(ValueError):
        qp.scale[0] = 5.0
    same = choose_qparams([-1.0, -2.0], [1.0, 2.0], axis=0)
    assert qp == same and hash(qp) == hash(same)
    assert qp != choose_qparams([-1.0, -2.0], [1.0, 2.0], axis=1)
    assert "axis=0" in repr(qp)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: choose_qparams(-1, 1, bits=4), "8 bits .* or 16 bits"),
        (lambda: choose_qparams(-1, 1, bits=True), "bits is True"),
        (lambda: choose_qparams(2.0, 1.0), "lo 2.0 is above hi 1.0; pass the smaller value first"),
        (lambda: choose_qparams([0, 3], [1, 2], axis=0), "above hi 2.0 at index 1"),
        (lambda: choose_qparams(np.nan, 1.0), "lo holds nan; a range must be finite"),
        (lambda: choose_qparams(-1.0, np.inf), "hi holds inf"),
        (lambda: choose_qparams(-1.0, 1e39), "within float32"),
        (lambda: choose_qparams([-1, -2], [1, 2]), "pass axis= for one range per channel"),
        (lambda: choose_qparams(-1.0, 1.0, axis=0), "need lo and hi as non-empty 1-D"),
        (lambda: choose_qparams([-1], [1, 2], axis=0), "equal length"),
        (lambda: choose_qparams("a", 1.0), "must be floats"),
        (lambda: QuantParams(np.float32(1), np.zeros(2, np.int32)), "same shape"),
        (lambda: QuantParams(np.float32(0), np.int32(0)), "finite float32"),
        (lambda: QuantParams(np.float32(1), np.int32(200)), "outside \\[-128, 127\\]"),
    ],
)
def test_bad_parameters_raise_mmerror(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MMError, match=match) as info:
        call()
    assert info.value.code == Code.INVALID_ARGUMENT


def test_axis_that_does_not_fit_the_array_raises() -> None:
    qp = choose_qparams([-1.0, -2.0, -3.0], [1.0, 2.0, 3.0], axis=2)
    with pytest.raises(MMError, match="axis 2 .* out of range for an array with 2 dimension"):
        quantize(np.zeros((3, 3)), qp)
    with pytest.raises(MMError, match="3 channel\\(s\\) along axis 2 but the array has 4"):
        quantize(np.zeros((1, 1, 4)), qp)
    with pytest.raises(MMError, match="out of range"):
        dequantize(np.zeros(3, dtype=np.int8), qp)


def test_dequantize_refuses_float_input() -> None:
    with pytest.raises(MMError, match="pass the integer array that quantize returned"):
        dequantize(np.zeros(3, dtype=np.float32), choose_qparams(-1, 1))
