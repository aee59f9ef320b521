"""IReduceNode: MEAN, SUM, MAX or MIN over a set of axes."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmbuild.errors import MMError, Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec, check_ints
from mmbuild.ir.tensor import ITensor
from mmbuild.ops._common import require_float
from mmbuild.ops.registry import register_op

__all__ = ["IReduce", "IReduceNode"]


class IReduce(enum.Enum):
    MEAN = "mean"
    SUM = "sum"
    MAX = "max"
    MIN = "min"


def _axes_arg(axes: Any, call: str) -> tuple[int, ...]:
    """An int or a sequence of ints, at least one, none repeated as written."""
    if isinstance(axes, np.ndarray) and axes.ndim == 0:
        axes = axes.item()
    values = check_ints(axes, None, f"{call}: axes")
    if not values:
        raise MMError(
            f"{call}: axes is empty; name the axes to reduce (every axis: list(range(rank)))"
        )
    return values


@register_op
class IReduceNode(INode):
    """``y = reduce_mode(x, axes)``: MEAN, SUM, MAX or MIN of ``x`` over ``axes``.

    ``axes`` is an int or a list of distinct ints (negative ones count from the end). With
    ``keep_dims`` each reduced axis stays as size 1, otherwise it is dropped. SUM and MEAN add in
    float64. Example: x of shape [2, 3] = [[1, 2, 3], [4, 5, 6]], axes -1, MEAN gives [2, 5]
    (shape [2]), or [[2], [5]] (shape [2, 1]) with ``keep_dims=True``.

    Over an empty axis (size 0) SUM gives 0, MEAN NaN, MAX -inf and MIN +inf, as ONNX.
    """

    node_type = "IReduceNode"
    op = "reduce"
    policy = Policy.NEVER
    defaults = {"keep_dims": False}

    @classmethod
    def create(  # type: ignore[override]
        cls,
        network: Network,
        x: ITensor,
        axes: int | Sequence[int],
        mode: IReduce,
        keep_dims: bool = False,
    ) -> INode:
        call = "add_i_reduce_node"
        if not isinstance(mode, IReduce):
            known = ", ".join(f"mm.IReduce.{m.name}" for m in IReduce)
            raise MMError(f"{call}: mode {mode!r} is not one of {known}")
        if not isinstance(keep_dims, (bool, np.bool_)):
            raise MMError(f"{call}: keep_dims must be True or False, not {keep_dims!r}")
        attrs = {"axes": _axes_arg(axes, call), "mode": mode, "keep_dims": bool(keep_dims)}
        return network._add_node(cls, [x], attrs)

    @property
    def mode(self) -> IReduce:
        return self.attrs["mode"]

    def set_axes(self, axes: int | Sequence[int]) -> Status:
        try:
            values = _axes_arg(axes, "set_axes")
        except MMError as exc:
            raise self.error(str(exc)) from None
        return self._set(axes=values)

    def set_keep_dims(self, keep_dims: bool) -> Status:
        if not isinstance(keep_dims, (bool, np.bool_)):
            raise self.error(f"set_keep_dims takes True or False, not {keep_dims!r}")
        return self._set(keep_dims=bool(keep_dims))

    def get_axes(self) -> tuple[int, ...]:
        return self.attrs["axes"]

    def get_keep_dims(self) -> bool:
        return self.attrs["keep_dims"]

    def reduced_axes(self, rank: int) -> tuple[int, ...]:
        """The axes as sorted non-negative ints for an input of ``rank``; refuses a bad or
        repeated axis."""
        axes = self.attrs["axes"]
        if rank == 0:
            raise self.error(
                f"the input is a scalar (shape []); it has no axis {list(axes)} to reduce"
            )
        out: dict[int, int] = {}
        for a in axes:
            if not -rank <= a < rank:
                raise self.error(
                    f"axis {a} of axes {list(axes)} is out of range for the input of rank {rank}; "
                    f"use -{rank}..{rank - 1}"
                )
            if a % rank in out:
                raise self.error(
                    f"axes {list(axes)} name axis {a % rank} twice ({out[a % rank]} and {a}); "
                    "name each axis once"
                )
            out[a % rank] = a
        return tuple(sorted(out))

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_float(self, inputs, [0])
        x = inputs[0]
        axes = self.reduced_axes(x.rank)
        if self.attrs["keep_dims"]:
            dims = tuple(1 if i in axes else d for i, d in enumerate(x.dims))
        else:
            dims = tuple(d for i, d in enumerate(x.dims) if i not in axes)
        return [TensorSpec(dims, x.dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(arrays[0])
        axes, keep = self.reduced_axes(x.ndim), self.attrs["keep_dims"]
        mode = self.mode
        if mode is IReduce.MAX:
            y = np.max(x.astype(np.float32), axis=axes, keepdims=keep, initial=-np.inf)
        elif mode is IReduce.MIN:
            y = np.min(x.astype(np.float32), axis=axes, keepdims=keep, initial=np.inf)
        else:
            y = np.sum(x.astype(np.float64), axis=axes, keepdims=keep)
            if mode is IReduce.MEAN:
                count = int(np.prod([x.shape[a] for a in axes]))
                y = y / count if count else np.full_like(y, np.nan)
        return [np.asarray(y, dtype=np.float32)]
