"""The fused activation: one formula that every epilogue and float kernel applies, scalar or SIMD.

A fused activation (``node.attrs["activation"]``, the dicts of ``mmbuild.passes.fuse``) is
carried into the kernels as eight float32 numbers ``(slope, scale, shift, lo, hi, gated, mul,
add)`` and applied to a float32 value ``y`` as::

    y = y * slope          where y < 0
    z = y * scale + shift
    z = min(max(z, lo), hi)   (by comparisons: NaN passes, -0.0 stays)
    r = y * z if gated else z
    result = r * mul + add   (skipped when mul is 1 and add is +-0)

Every activation the epilogues take is one choice of the first six numbers (the unused parts are
identities: ``y * 1 + (-0.0)`` is ``y`` itself, -0.0 included); ``mul`` and ``add`` are a scalar
affine after it (the dict's ``"mul"`` and ``"add"``, ``(1, -0.0)`` without them: PPLCNetV3's
learnable affine after its hard swish, fused by ``mmbuild.passes.fuse``):

=====================  =========================================================
none                   ``(1, 1, -0.0, -inf, inf, 0)``
relu                   ``(1, 1, -0.0, 0, inf, 0)``
clip(lo, hi)           ``(1, 1, -0.0, lo, hi, 0)``
leaky_relu(a)          ``(a, 1, -0.0, -inf, inf, 0)``
leaky_relu(a), lo      ``(a, 1, -0.0, lo, inf, 0)``: ``max(leaky_relu(y), lo)``
hard_sigmoid           ``(1, alpha, beta, 0, 1, 0)``: ``clip(alpha * y + beta, 0, 1)``
hard_swish             ``(1, 1/6, 1/2, 0, 1, 1)``: ``y * clip(y / 6 + 1/2, 0, 1)``
=====================  =========================================================

These are the float32 operations of the activation nodes' own formulas in the same order, so a
fused activation gives the bits of the unfused node on the same float32 value. Example: hard
swish of y = 1.5 is z = 1.5 * 0.16666667 + 0.5 = 0.75, then 1.5 * 0.75 = 1.125; with the affine
``"mul": 0.5, "add": 0.25`` after it, 1.125 * 0.5 + 0.25 = 0.8125.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from mmbuild.errors import Code, MMError
from mmbuild.kernels.cpu.vector import vadd_f32, vmul_f32, vselect_lt, vsplat_f32, vzero_f32

__all__ = [
    "IDENTITY",
    "Activation",
    "ActivationArgs",
    "activation_args",
    "affine_after",
    "apply_fused",
    "is_identity",
    "vapply_fused",
]

ActivationArgs = tuple[np.float32, ...]  # the eight numbers of the module docstring
HARD_SWISH_ALPHA = 1 / 6
HARD_SWISH_BETA = 0.5


class Activation(enum.IntEnum):
    """The activation fused into an epilogue; ``act_a``/``act_b`` hold its parameters."""

    NONE = 0
    RELU = 1
    CLIP = 2  # act_a = lo, act_b = hi; relu6 is CLIP(0, 6)
    LEAKY_RELU = 3  # act_a = alpha
    HARD_SIGMOID = 4  # act_a = alpha, act_b = beta
    HARD_SWISH = 5  # y * hard_sigmoid(y) with alpha 1/6, beta 1/2
    LEAKY_RELU_FLOOR = 6  # act_a = alpha, act_b = lo: max(leaky_relu(y), lo) by comparison

    @classmethod
    def of(cls, fused: Mapping[str, Any] | None) -> tuple[Activation, float, float]:
        """A fused-activation dict (or None) as ``(activation, act_a, act_b)``."""
        if fused is None:
            return cls.NONE, 0.0, 0.0
        fn = fused.get("function")
        if fn == "relu":
            return cls.RELU, 0.0, 0.0
        if fn == "clip":
            return cls.CLIP, float(fused["lo"]), float(fused["hi"])
        if fn == "leaky_relu" and "lo" in fused:
            return cls.LEAKY_RELU_FLOOR, float(fused["alpha"]), float(fused["lo"])
        if fn == "leaky_relu":
            return cls.LEAKY_RELU, float(fused["alpha"]), 0.0
        if fn == "hard_sigmoid":
            return cls.HARD_SIGMOID, float(fused["alpha"]), float(fused["beta"])
        if fn == "hard_swish":
            return cls.HARD_SWISH, 0.0, 0.0
        raise MMError(f"unknown fused activation {fn!r}", Code.INTERNAL)


def affine_after(fused: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(mul, add)`` of a fused-activation dict: its ``"mul"`` and ``"add"``, the affine after
    the activation, or ``(1.0, -0.0)`` (the identity, -0.0 included) for those it lacks.

    >>> affine_after({"function": "hard_swish", "mul": 0.5, "add": 0.25})
    (0.5, 0.25)
    >>> affine_after(None)
    (1.0, -0.0)
    """
    if fused is None:
        return 1.0, -0.0
    return float(fused.get("mul", 1.0)), float(fused.get("add", -0.0))


def activation_args(
    act: Activation, a: float = 0.0, b: float = 0.0, mul: float = 1.0, add: float = -0.0
) -> ActivationArgs:
    """The eight float32 numbers of ``act`` then ``* mul + add`` (the module docstring)."""
    slope, scale, shift, lo, hi, gated = 1.0, 1.0, -0.0, -np.inf, np.inf, 0.0
    if act is Activation.RELU:
        lo = 0.0
    elif act is Activation.CLIP:
        lo, hi = a, b
    elif act is Activation.LEAKY_RELU:
        slope = a
    elif act is Activation.LEAKY_RELU_FLOOR:
        slope, lo = a, b
    elif act is Activation.HARD_SIGMOID:
        scale, shift, lo, hi = a, b, 0.0, 1.0
    elif act is Activation.HARD_SWISH:
        scale, shift, lo, hi, gated = HARD_SWISH_ALPHA, HARD_SWISH_BETA, 0.0, 1.0, 1.0
    f32 = np.float32
    return (f32(slope), f32(scale), f32(shift), f32(lo), f32(hi), f32(gated), f32(mul), f32(add))


IDENTITY = activation_args(Activation.NONE)


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def is_identity(act):  # type: ignore[no-untyped-def]
    """Whether ``act`` changes no value: loops then skip :func:`apply_fused`, whose selects
    cost a loop that does little else up to three times its time (float64 relu, measured)."""
    slope, scale, shift, lo, hi, gated, mul, add = act
    unbounded = lo == -np.inf and hi == np.inf
    no_affine = mul == 1 and add == 0
    return slope == 1 and scale == 1 and shift == 0 and unbounded and gated == 0 and no_affine


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def apply_fused(y, act):  # type: ignore[no-untyped-def]
    """The fused activation ``act`` on one float32 value (the module docstring's formula): the
    same operations for every activation, so a loop that applies it vectorises.

    Example: relu ``(1, 1, -0.0, 0, inf, 0, 1, -0.0)`` sends -2 to -2 * 1 = -2, -2 * 1 + -0.0 =
    -2, then below lo to 0.0, then 0.0 * 1 + -0.0 = 0.0.
    """
    slope, scale, shift, lo, hi, gated, mul, add = act
    if y < 0:
        y = y * slope
    z = y * scale + shift
    z = lo if z < lo else (hi if z > hi else z)
    r = y * z if gated != 0 else z
    return r * mul + add if mul != 1 or add != 0 else r


@njit(forceinline=True, error_model="numpy", boundscheck=False)
def vapply_fused(y, act):  # type: ignore[no-untyped-def]
    """:func:`apply_fused` on a SIMD vector: the same IEEE operations lane by lane."""
    slope, scale, shift, lo, hi, gated, mul, add = act
    y = vselect_lt(y, vzero_f32(y), vmul_f32(y, vsplat_f32(slope, y)), y)
    z = vadd_f32(vmul_f32(y, vsplat_f32(scale, y)), vsplat_f32(shift, y))
    vlo = vsplat_f32(lo, y)
    vhi = vsplat_f32(hi, y)
    z = vselect_lt(z, vlo, vlo, z)
    z = vselect_lt(vhi, z, vhi, z)
    if gated != 0:
        z = vmul_f32(y, z)
    if mul != 1 or add != 0:
        z = vadd_f32(vmul_f32(z, vsplat_f32(mul, y)), vsplat_f32(add, y))
    return z
