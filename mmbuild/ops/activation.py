"""Activations and clip: elementwise functions of one float tensor.

Each activation is one formula in ``ACTIVATIONS``; the node, the fused epilogues and the docs read
that table.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mmbuild.errors import MMError, Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec
from mmbuild.ir.tensor import ITensor
from mmbuild.ops._common import require_float
from mmbuild.ops.registry import register_op

__all__ = ["ACTIVATIONS", "IActivation", "IActivationNode", "IClipNode"]


class IActivation(enum.Enum):
    RELU = "relu"
    RELU6 = "relu6"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    GELU = "gelu"
    SILU = "silu"
    LEAKY_RELU = "leaky_relu"
    HARD_SIGMOID = "hard_sigmoid"
    HARD_SWISH = "hard_swish"
    ELU = "elu"
    EXP = "exp"
    LOG = "log"
    SQRT = "sqrt"
    ERF = "erf"
    SOFTPLUS = "softplus"
    MISH = "mish"


@dataclass(frozen=True)
class ActivationDef:
    formula: str
    fn: Callable[[np.ndarray, float, float], np.ndarray]
    alpha: float | None = None  # default alpha, None when the function has none
    beta: float | None = None
    # evaluated in float32 (the ONNX formula, as onnxruntime and the fused epilogues compute
    # it) rather than in float64 and rounded once
    in_float32: bool = False


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf, otypes=[np.float64])(x)


def _one_plus_erf(z: np.ndarray) -> np.ndarray:
    """``1 + erf(z)``, computed as ``erfc(-z)``: the same value without the cancellation that
    loses every digit of ``1 + erf(z)`` below z = -5.5 in float64."""
    from math import erfc

    return np.vectorize(lambda v: erfc(-v), otypes=[np.float64])(z)


ACTIVATIONS: dict[IActivation, ActivationDef] = {
    IActivation.RELU: ActivationDef("max(x, 0)", lambda x, a, b: np.maximum(x, 0)),
    IActivation.RELU6: ActivationDef("min(max(x, 0), 6)", lambda x, a, b: np.clip(x, 0, 6)),
    IActivation.SIGMOID: ActivationDef("1 / (1 + exp(-x))", lambda x, a, b: 1 / (1 + np.exp(-x))),
    IActivation.TANH: ActivationDef("tanh(x)", lambda x, a, b: np.tanh(x)),
    IActivation.GELU: ActivationDef(
        "x / 2 * (1 + erf(x / sqrt(2)))", lambda x, a, b: x / 2 * _one_plus_erf(x / np.sqrt(2))
    ),
    IActivation.SILU: ActivationDef("x / (1 + exp(-x))", lambda x, a, b: x / (1 + np.exp(-x))),
    IActivation.LEAKY_RELU: ActivationDef(
        "x if x >= 0 else alpha * x", lambda x, a, b: np.where(x >= 0, x, a * x), alpha=0.01
    ),
    IActivation.HARD_SIGMOID: ActivationDef(
        "max(0, min(1, x * alpha + beta)) in float32",
        lambda x, a, b: np.clip(x * np.float32(a) + np.float32(b), 0, 1),
        alpha=0.2,
        beta=0.5,
        in_float32=True,
    ),
    IActivation.HARD_SWISH: ActivationDef(
        "x * max(0, min(1, x * (1/6) + 1/2)) in float32",
        lambda x, a, b: x * np.clip(x * np.float32(1 / 6) + np.float32(0.5), 0, 1),
        in_float32=True,
    ),
    IActivation.ELU: ActivationDef(
        "x if x > 0 else alpha * (exp(x) - 1)",
        lambda x, a, b: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))),
        alpha=1.0,
    ),
    IActivation.EXP: ActivationDef("exp(x)", lambda x, a, b: np.exp(x)),
    IActivation.LOG: ActivationDef("log(x) (-inf at 0, NaN below)", lambda x, a, b: np.log(x)),
    IActivation.SQRT: ActivationDef("sqrt(x) (NaN below 0)", lambda x, a, b: np.sqrt(x)),
    IActivation.ERF: ActivationDef("erf(x)", lambda x, a, b: _erf(x)),
    IActivation.SOFTPLUS: ActivationDef("log1p(exp(x))", lambda x, a, b: np.log1p(np.exp(x))),
    IActivation.MISH: ActivationDef(
        "x * tanh(log1p(exp(x)))", lambda x, a, b: x * np.tanh(np.log1p(np.exp(x)))
    ),
}


@register_op
class IActivationNode(INode):
    """``y = f(x)`` elementwise, ``f`` one of ``mm.IActivation`` (formulas in ACTIVATIONS).

    ``set_alpha`` / ``set_beta`` set the parameters of LEAKY_RELU (alpha 0.01), ELU (alpha 1.0)
    and HARD_SIGMOID (alpha 0.2, beta 0.5). Example: RELU of [-1.5, 2.0] is [0.0, 2.0].
    """

    node_type = "IActivationNode"
    op = "activation"
    policy = Policy.NEVER

    @classmethod
    def create(cls, network: Network, x: ITensor, mode: IActivation) -> INode:  # type: ignore[override]
        if not isinstance(mode, IActivation):
            known = ", ".join(f"mm.IActivation.{m.name}" for m in IActivation)
            raise MMError(f"add_i_activation_node: mode {mode!r} is not one of {known}")
        d = ACTIVATIONS[mode]
        return network._add_node(cls, [x], {"mode": mode, "alpha": d.alpha, "beta": d.beta})

    @property
    def mode(self) -> IActivation:
        return self.attrs["mode"]

    def set_alpha(self, alpha: float) -> Status:
        return self._set(alpha=self._param("alpha", alpha))

    def set_beta(self, beta: float) -> Status:
        return self._set(beta=self._param("beta", beta))

    def get_alpha(self) -> float | None:
        return self.attrs["alpha"]

    def get_beta(self) -> float | None:
        return self.attrs["beta"]

    def _param(self, what: str, value: float) -> float:
        if getattr(ACTIVATIONS[self.mode], what) is None:
            users = [m.name for m, d in ACTIVATIONS.items() if getattr(d, what) is not None]
            raise self.error(f"{self.mode.name} has no {what}; only {', '.join(users)} take one")
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number):
            raise self.error(f"{what} must be a finite number, not {value!r}")
        return number

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_float(self, inputs, [0])
        return [inputs[0]]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        d = ACTIVATIONS[self.mode]
        x = arrays[0].astype(np.float32 if d.in_float32 else np.float64)
        # exp(-x) -> inf for x << 0 gives the right limit, 0; log and sqrt give -inf / NaN
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            y = d.fn(x, self.attrs["alpha"] or 0.0, self.attrs["beta"] or 0.0)
        return [np.asarray(y, dtype=np.float32)]


@register_op
class IClipNode(INode):
    """``y = min(max(x, lo), hi)``; example: clip([-1, 0.5, 9], 0, 6) = [0, 0.5, 6]."""

    node_type = "IClipNode"
    op = "clip"
    policy = Policy.NEVER

    @classmethod
    def create(cls, network: Network, x: ITensor, lo: float, hi: float) -> INode:  # type: ignore[override]
        try:
            lo, hi = float(lo), float(hi)
        except (TypeError, ValueError):
            raise MMError(
                f"add_i_clip_node: bounds must be numbers, got {lo!r} and {hi!r}"
            ) from None
        if np.isnan(lo) or np.isnan(hi) or lo > hi:
            raise MMError(f"add_i_clip_node: lo {lo} must not be above hi {hi}, and neither NaN")
        return network._add_node(cls, [x], {"lo": lo, "hi": hi})

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_float(self, inputs, [0])
        return [inputs[0]]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return [np.clip(arrays[0], self.attrs["lo"], self.attrs["hi"]).astype(np.float32)]
