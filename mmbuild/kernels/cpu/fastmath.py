"""float32 exp, sigmoid, SiLU, tanh, GELU and ELU that LLVM vectorises (no libm call per element).

The activation kernels used to call float64 libm (``exp``, ``tanh``, ``erf``) element by element:
a scalar call each, ten to fifty times slower than the piecewise activations. These are written in
float32 arithmetic, comparisons and integer bit operations only, so a loop over them runs in
SIMD lanes (8 on AVX2, 16 on AVX-512), and every branch is a select.

- ``exp32``: Cody-Waite reduction ``x = n ln2 + r`` (``|r| <= ln2 / 2``; ln2 split in a part
  exact in float32 and a remainder), Cephes' degree-6 minimax polynomial for ``e**r``, and
  ``2**n`` built from its exponent bits (in two halves, so subnormal results are kept).
  Worked through: x = 1.0 -> n = 1, r = 1 - 0.693359375 + 2.1219444e-4 = 0.30685282,
  e**r = 1.3591409, times 2 = 2.7182817 (float32 e is 2.7182817).
- ``sigmoid32(x) = 1 / (1 + exp32(-x))`` and ``silu32(x) = x / (1 + exp32(-x))``.
- ``tanh32``: ``x + x**3 P(x**2)`` (Cephes) for ``|x| < 0.625``, else ``1 - 2 / (exp32(2|x|) + 1)``
  with the sign of x (no cancellation near 0).
- ``gelu32(x) = x / 2 * (1 + erf(x / sqrt 2))`` with ``1 + erf(z)`` as ``2 - erfc(z)`` for
  ``z >= 0`` and ``erfc(-z)`` for ``z < 0``, and ``erfc`` from Numerical Recipes' Chebyshev
  fit (fractional error below 1.2e-7 everywhere), so no cancellation at either end; its
  ``e**(-t*t)`` splits t so that the square loses nothing.
- ``expm1_32``: a degree-8 Taylor polynomial for ``|x| < 0.5`` (relative error below 1e-8),
  ``exp32(x) - 1`` elsewhere; ``elu32(x) = x if x > 0 else alpha * expm1_32(x)``.

Errors, measured against the float64 functions on three million float32 inputs (random
mantissas in every binade from 2**-30 to 2**7, both signs, and a grid over [-110, 100];
``tests/test_kernels_fastmath.py`` checks them): within :data:`MAX_ULPS` units in the last place
of float32 (exp, tanh and ELU 1, sigmoid and SiLU 2, GELU 7), or :data:`ATOL` absolutely for
results below 1e-30 in magnitude. NaN passes, +-inf give the functions' limits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mmbuild.kernels.cpu.simd import bits_to_f32, f32_to_bits

__all__ = ["ATOL", "MAX_ULPS", "elu32", "exp32", "expm1_32", "gelu32", "sigmoid32", "silu32",
           "tanh32"]  # fmt: skip

#: float32 ulps each function is within, against its float64 value (see the module docstring)
MAX_ULPS = {"exp": 1, "sigmoid": 2, "silu": 2, "tanh": 1, "gelu": 7, "elu": 1}
#: absolute tolerance for results of magnitude below 1e-30 (subnormal-range rounding)
ATOL = 1e-36

_F = np.float32
_LOG2E = _F(1.44269504088896341)
_LN2_HI = _F(0.693359375)  # exact in float32 with 9 bits, so n * _LN2_HI is exact
_LN2_LO = _F(-2.12194440e-4)
_EXP_HI = _F(88.7228394)  # above: inf
_EXP_LO = _F(-103.972076)  # below: 0
_P = (_F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3), _F(4.1665795894e-2),
      _F(1.6666665459e-1), _F(5.0000001201e-1))  # fmt: skip
_T = (_F(-5.70498872745e-3), _F(2.06390887954e-2), _F(-5.37397155531e-2), _F(1.33314422036e-1),
      _F(-3.33332819422e-1))  # fmt: skip
_ERFC = tuple(
    _F(c)
    for c in (
        0.17087277,
        -0.82215223,
        1.48851587,
        -1.13520398,
        0.27886807,
        -0.18628806,
        0.09678418,
        0.37409196,
        1.00002368,
        -1.26551223,
    )
)
_INV_SQRT2 = _F(0.70710678118654752)

_jit = njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)


@_jit
def _pow2(n):  # type: ignore[no-untyped-def]
    """``(2**(n // 2), 2**(n - n // 2))`` for an integral float32 ``n`` in [-150, 128]: two
    normal floats whose product is ``2**n`` (one alone would overflow or be subnormal)."""
    half = np.int32(n) >> 1
    return bits_to_f32((half + 127) << 23), bits_to_f32((np.int32(n) - half + 127) << 23)


@_jit
def exp32(x):  # type: ignore[no-untyped-def]
    """``e**x`` in float32 (see the module docstring)."""
    xc = min(max(x, _EXP_LO), _EXP_HI)
    n = np.rint(xc * _LOG2E)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = _P[0]
    for c in _P[1:]:
        p = p * r + c
    lo, hi = _pow2(n)
    y = ((p * r * r + r + _F(1.0)) * lo) * hi  # e**r first: 2**128 alone would overflow
    y = np.float32(np.inf) if x > _EXP_HI else y
    y = _F(0.0) if x < _EXP_LO else y
    return x if x != x else y


@_jit
def sigmoid32(x):  # type: ignore[no-untyped-def]
    """``1 / (1 + e**-x)``."""
    return _F(1.0) / (_F(1.0) + exp32(-x))


@_jit
def silu32(x):  # type: ignore[no-untyped-def]
    """``x / (1 + e**-x)``; -inf gives NaN as the formula does (-inf / inf)."""
    return x / (_F(1.0) + exp32(-x))


@_jit
def tanh32(x):  # type: ignore[no-untyped-def]
    """``tanh x``: a polynomial near 0, ``1 - 2 / (e**2|x| + 1)`` elsewhere."""
    ax = abs(x)
    z = x * x
    p = _T[0]
    for c in _T[1:]:
        p = p * z + c
    small = x + x * z * p
    big = _F(1.0) - _F(2.0) / (exp32(ax + ax) + _F(1.0))
    big = big if x >= 0 else -big
    return small if ax < _F(0.625) else big


@_jit
def _erfc_scaled(ax):  # type: ignore[no-untyped-def]
    """``erfc(ax / sqrt 2)`` for ``ax >= 0`` (Numerical Recipes' erfcc).

    The exponent ``-t*t = -ax*ax / 2`` is computed from ``ax`` itself, split into a 12-bit head
    whose square is exact and the rest: rounding ``t = ax / sqrt 2`` or ``t*t`` first would put a
    relative error of ``t*t * 2**-24`` into the result (1e-5 at ax = 11).
    """
    ax = min(ax, _F(30.0))  # erfc is 0 in float32 long before; keeps inf out of the split
    t = ax * _INV_SQRT2
    tau = _F(1.0) / (_F(1.0) + _F(0.5) * t)
    p = _ERFC[0]
    for c in _ERFC[1:]:
        p = p * tau + c
    head = bits_to_f32(f32_to_bits(ax) & 0xFFFFF000)
    rest = ax - head
    return tau * exp32(-(head * head) * _F(0.5)) * exp32(p - rest * (ax + head) * _F(0.5))


@_jit
def gelu32(x):  # type: ignore[no-untyped-def]
    """``x / 2 * (1 + erf(x / sqrt 2))`` without cancellation at either end."""
    e = _erfc_scaled(abs(x))
    one_plus_erf = _F(2.0) - e if x >= 0 else e
    return x / _F(2.0) * one_plus_erf


@_jit
def expm1_32(x):  # type: ignore[no-untyped-def]
    """``e**x - 1``: Taylor terms near 0, where ``exp32(x) - 1`` would cancel."""
    p = _F(1.0 / 40320.0)
    for c in (1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0):
        p = p * x + _F(c)
    small = p * x
    return small if abs(x) < _F(0.5) else exp32(x) - _F(1.0)


@_jit
def elu32(x, alpha):  # type: ignore[no-untyped-def]
    """``x if x > 0 else alpha * (e**x - 1)`` (NaN passes)."""
    neg = alpha * expm1_32(min(x, _F(0.0)))
    return x if (x > 0 or x != x) else neg
