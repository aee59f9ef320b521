"""The float32 exp, sigmoid, SiLU, tanh, GELU and ELU of mmbuild.kernels.cpu.fastmath against
their float64 values: within the stated ulps over every binade, the limits at +-inf, NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernelcheck import assert_ulps
from numba import njit

import mmbuild as mm
from mmbuild.kernels.cpu import fastmath

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32 = mm.DataType.FLOAT32
_erfc = np.vectorize(math.erfc, otypes=[np.float64])

# name -> (the float32 function, its float64 value)
FUNCTIONS = {
    "exp": (fastmath.exp32, np.exp),
    "sigmoid": (fastmath.sigmoid32, lambda x: 1 / (1 + np.exp(-x))),
    "silu": (fastmath.silu32, lambda x: x / (1 + np.exp(-x))),
    "tanh": (fastmath.tanh32, np.tanh),
    "gelu": (fastmath.gelu32, lambda x: x / 2 * _erfc(-x / np.sqrt(2))),
    "elu": (lambda x: fastmath.elu32(x, np.float32(1.0)),
            lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
}  # fmt: skip


def _inputs(n: int) -> np.ndarray:
    """Random mantissas in every binade from 2**-30 to 2**7, both signs, a grid over
    [-110, 100] (where exp under- and overflows) and the special values."""
    rng = np.random.default_rng(0)
    mant = rng.uniform(1, 2, n)
    x = mant * np.exp2(rng.integers(-30, 8, n)) * rng.choice([-1.0, 1.0], n)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 88.72, 88.73, -87.4, -104.0]
    return np.concatenate([x, np.linspace(-110, 100, n // 2), specials]).astype(np.float32)


def _vector_loop(fn):  # type: ignore[no-untyped-def]
    @njit
    def run(x, out):  # type: ignore[no-untyped-def]
        for i in range(x.size):
            out[i] = fn(x[i])

    return run


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_within_stated_ulps_of_float64(name: str) -> None:
    fn, ref = FUNCTIONS[name]
    x = _inputs(400_000)
    got = np.empty_like(x)
    _vector_loop(njit(fn) if not hasattr(fn, "py_func") else fn)(x, got)
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64)).astype(np.float32)
    assert_ulps(got, want, F32, ulps=fastmath.MAX_ULPS[name], atol=fastmath.ATOL)


def test_stated_bounds_are_tight() -> None:
    """The table is what the functions reach, not a loose bound: some input is at it."""
    x = _inputs(400_000)
    for name in ("gelu", "sigmoid"):
        fn, ref = FUNCTIONS[name]
        got = np.empty_like(x)
        _vector_loop(fn)(x, got)
        with np.errstate(all="ignore"):
            want = ref(x.astype(np.float64)).astype(np.float32)
        ok = np.isfinite(want) & (np.abs(want) > 1e-30)
        dist = np.abs(got[ok].view(np.int32).astype(np.int64) - want[ok].view(np.int32))
        assert dist.max() >= fastmath.MAX_ULPS[name] - 1, (name, dist.max())


def test_worked_values_and_limits() -> None:
    @njit
    def values():  # type: ignore[no-untyped-def]
        f = np.float32
        return (fastmath.exp32(f(1.0)), fastmath.exp32(f(np.inf)), fastmath.exp32(f(-np.inf)),
                fastmath.sigmoid32(f(np.inf)), fastmath.sigmoid32(f(-np.inf)),
                fastmath.tanh32(f(-np.inf)), fastmath.gelu32(f(np.inf)),
                fastmath.gelu32(f(-np.inf)), fastmath.gelu32(f(1.0)),
                fastmath.exp32(f(-100.0)))  # fmt: skip

    e, e_inf, e_ninf, s_inf, s_ninf, t_ninf, g_inf, g_ninf, g1, e_sub = values()
    assert e == np.float32(math.e)
    assert (e_inf, e_ninf, s_inf, s_ninf, t_ninf) == (np.inf, 0.0, 1.0, 0.0, -1.0)
    assert g_inf == np.inf and np.isnan(g_ninf)  # -inf / 2 * 0, as the formula gives
    # GELU(1) = 0.8413447460685429 rounds to float32 0.8413448; the polynomial gives the float
    # one ulp below it
    assert np.float32(g1) == np.nextafter(np.float32(0.8413447460685429), np.float32(0))
    assert 0 < e_sub < 1e-43  # e**-100 = 3.7e-44 is a float32 subnormal, kept
