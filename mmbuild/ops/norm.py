"""Normalizations: IFusedBatchNormNode, ILayerNormNode and ISoftmaxNode.

All three compute in float64 inside the reference and never run quantized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmbuild.errors import MMError, Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec, check_ints
from mmbuild.ir.tensor import ITensor
from mmbuild.ops._common import norm_axis, require_float
from mmbuild.ops.registry import register_op

__all__ = ["IFusedBatchNormNode", "ILayerNormNode", "ISoftmaxNode"]


def _axis_arg(axis: Any, call: str) -> int:
    return check_ints(axis, 1, f"{call}: axis")[0]


def _eps_arg(eps: Any, call: str) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise MMError(f"{call}: epsilon must be a number, not {eps!r}") from None
    if isinstance(eps, (bool, np.bool_)) or not np.isfinite(value) or value < 0:
        raise MMError(f"{call}: epsilon is {eps!r}; use a finite number >= 0 (typically 1e-5)")
    return value


class _AxisNode(INode):
    """The axis setter and rule of the nodes that work along an axis."""

    policy = Policy.NEVER

    def set_axis(self, axis: int) -> Status:
        return self._set(axis=self.int_args(axis, 1, "set_axis")[0])

    def get_axis(self) -> int:
        return self.attrs["axis"]

    def axis_of(self, spec: TensorSpec) -> int:
        if spec.rank == 0:
            raise self.error(
                f"{self.input_label(0)} is a scalar (shape []); it has no axis "
                f"{self.attrs['axis']}; give it at least one dimension"
            )
        return norm_axis(self, self.attrs["axis"], spec.rank)


class _NormNode(_AxisNode):
    """An axis node with an epsilon under the square root."""

    def set_epsilon(self, eps: float) -> Status:
        try:
            value = _eps_arg(eps, "set_epsilon")
        except MMError as exc:
            raise self.error(str(exc)) from None
        return self._set(eps=value)

    def get_epsilon(self) -> float:
        return self.attrs["eps"]


def _fits(dims: Sequence[int], want: Sequence[int]) -> bool:
    """Same rank, and each dimension equal or known only at run time on either side."""
    return len(dims) == len(want) and all(a == b or -1 in (a, b) for a, b in zip(dims, want))


@register_op
class IFusedBatchNormNode(_NormNode):
    """Inference batch normalization along ``axis``:
    ``y = (x - mean) / sqrt(var + eps) * scale + offset``.

    ``mean``, ``var``, ``scale`` and ``offset`` have shape [C], C the size of ``axis`` of ``x``
    (-1 for the channels of NHWC, 1 for NCHW). Example: x = [[1.0, 4.0]] (axis -1, C = 2), mean
    [0, 2], var [1, 4], scale [1, 1], offset [0, 1], eps 0: y = [[1 / 1, (4 - 2) / 2 + 1]] =
    [[1, 2]].
    """

    node_type = "IFusedBatchNormNode"
    op = "fused_batch_norm"
    input_names = ("input", "mean", "var", "scale", "offset")
    defaults = {"eps": 1e-5}

    @classmethod
    def create(  # type: ignore[override]
        cls,
        network: Network,
        x: ITensor,
        mean: ITensor,
        var: ITensor,
        scale: ITensor,
        offset: ITensor,
        axis: int,
        eps: float = 1e-5,
    ) -> INode:
        call = "add_i_fused_batch_norm_node"
        attrs = {"axis": _axis_arg(axis, call), "eps": _eps_arg(eps, call)}
        return network._add_node(cls, [x, mean, var, scale, offset], attrs)

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        if len(inputs) != 5:
            raise self.error(
                f"{self.input_label(len(inputs))} is missing; batch norm takes five inputs "
                "(input, mean, var, scale, offset)"
            )
        require_float(self, inputs, range(5))
        x = inputs[0]
        axis = self.axis_of(x)
        c = x.dims[axis]
        for i in range(1, 5):
            if not _fits(inputs[i].dims, (c,)):
                raise self.error(
                    f"{self.input_label(i)} has shape {list(inputs[i].dims)}; it must be [{c}], "
                    f"one value per channel of axis {axis} of the input {list(x.dims)}"
                )
        return [x]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x, mean, var, scale, offset = (np.asarray(a, dtype=np.float64) for a in arrays)
        axis = self.attrs["axis"] % x.ndim
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        mean, var, scale, offset = (p.reshape(shape) for p in (mean, var, scale, offset))
        with np.errstate(divide="ignore", invalid="ignore"):
            y = (x - mean) / np.sqrt(var + self.attrs["eps"]) * scale + offset
        return [y.astype(np.float32)]


@register_op
class ILayerNormNode(_NormNode):
    """Layer normalization over the axes ``[axis, rank)``:
    ``y = (x - mean) / sqrt(var + eps) * scale + bias``, with the mean and the (biased) variance
    taken over those axes.

    ``scale`` and ``bias`` are optional and have the normalized shape ``x.dims[axis:]``; a bias
    needs a scale (as in ONNX LayerNormalization). Example: x = [[1, 3]], axis -1, eps 0: mean
    2, var 1, y = [[-1, 1]]; with scale [2, 2] and bias [0, 1], y = [[-2, 3]].
    """

    node_type = "ILayerNormNode"
    op = "layer_norm"
    input_names = ("input", "scale", "bias")
    defaults = {"axis": -1, "eps": 1e-5}

    @classmethod
    def create(  # type: ignore[override]
        cls,
        network: Network,
        x: ITensor,
        scale: ITensor | None = None,
        bias: ITensor | None = None,
        axis: int = -1,
        eps: float = 1e-5,
    ) -> INode:
        call = "add_i_layer_norm_node"
        if scale is None and bias is not None:
            raise MMError(
                f"{call}: a bias was given without a scale; pass a scale (a constant of ones "
                "of the normalized shape keeps the values unscaled)"
            )
        attrs = {"axis": _axis_arg(axis, call), "eps": _eps_arg(eps, call)}
        return network._add_node(cls, [x, scale, bias], attrs)

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_float(self, inputs, range(len(inputs)))
        x = inputs[0]
        axis = self.axis_of(x)
        normalized = x.dims[axis:]
        for i in range(1, len(inputs)):
            if not _fits(inputs[i].dims, normalized):
                raise self.error(
                    f"{self.input_label(i)} has shape {list(inputs[i].dims)}; it must have the "
                    f"normalized shape {list(normalized)} (axes {axis}.. of the input "
                    f"{list(x.dims)}); fix its shape or set_axis"
                )
        return [x]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(arrays[0], dtype=np.float64)
        axes = tuple(range(self.attrs["axis"] % x.ndim, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=axes, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = centered / np.sqrt(var + self.attrs["eps"])
        if len(arrays) > 1:
            y = y * np.asarray(arrays[1], dtype=np.float64)
        if len(arrays) > 2:
            y = y + np.asarray(arrays[2], dtype=np.float64)
        return [y.astype(np.float32)]


@register_op
class ISoftmaxNode(_AxisNode):
    """``y = exp(x - max(x)) / sum(exp(x - max(x)))`` along ``axis``.

    Subtracting the maximum first keeps exp from overflowing and does not change the result.
    Example: softmax([1, 2, 3]) = [0.0900, 0.2447, 0.6652]; softmax([1000, 1000]) = [0.5, 0.5].
    """

    node_type = "ISoftmaxNode"
    op = "softmax"

    @classmethod
    def create(cls, network: Network, x: ITensor, axis: int) -> INode:  # type: ignore[override]
        return network._add_node(cls, [x], {"axis": _axis_arg(axis, "add_i_softmax_node")})

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_float(self, inputs, [0])
        self.axis_of(inputs[0])
        return [inputs[0]]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(arrays[0], dtype=np.float64)
        if x.size == 0:
            return [x.astype(np.float32)]
        axis = self.attrs["axis"] % x.ndim
        with np.errstate(invalid="ignore"):
            e = np.exp(x - x.max(axis=axis, keepdims=True))
            y = e / e.sum(axis=axis, keepdims=True)
        return [y.astype(np.float32)]
