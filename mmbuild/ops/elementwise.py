"""IElementwiseNode: a binary arithmetic op with numpy broadcasting."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np

from mmbuild.errors import MMError
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec
from mmbuild.ir.tensor import ITensor
from mmbuild.ops._common import broadcast, require_float
from mmbuild.ops.registry import register_op

__all__ = ["ELEMENTWISE", "IElementwise", "IElementwiseNode"]


class IElementwise(enum.Enum):
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    MAX = "max"
    MIN = "min"


ELEMENTWISE = {
    IElementwise.ADD: np.add,
    IElementwise.SUB: np.subtract,
    IElementwise.MUL: np.multiply,
    IElementwise.DIV: np.divide,
    IElementwise.MAX: np.maximum,
    IElementwise.MIN: np.minimum,
}


@register_op
class IElementwiseNode(INode):
    """``y = a (op) b`` with numpy broadcasting; ``op`` one of ``mm.IElementwise``.

    Example: ADD of shapes [2, 1, 3] and [4, 1] gives shape [2, 4, 3]. DIV follows IEEE 754
    (x / 0 is +-inf, 0 / 0 is NaN).
    """

    node_type = "IElementwiseNode"
    op = "elementwise"
    policy = Policy.NEVER
    input_names = ("a", "b")

    @classmethod
    def create(cls, network: Network, a: ITensor, b: ITensor, mode: IElementwise) -> INode:  # type: ignore[override]
        if not isinstance(mode, IElementwise):
            known = ", ".join(f"mm.IElementwise.{m.name}" for m in IElementwise)
            raise MMError(f"add_i_elementwise_node: mode {mode!r} is not one of {known}")
        return network._add_node(cls, [a, b], {"mode": mode})

    @property
    def mode(self) -> IElementwise:
        return self.attrs["mode"]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_float(self, inputs, [0, 1])
        if inputs[0].dtype != inputs[1].dtype:
            raise self.error(
                f"inputs are {inputs[0].dtype.name} and {inputs[1].dtype.name}; give both one "
                "type (cast one with add_i_cast_node)"
            )
        dims = broadcast(self, inputs[0].dims, inputs[1].dims, "inputs a and b")
        return [TensorSpec(dims, inputs[0].dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        a, b = (x.astype(np.float32) for x in arrays)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return [ELEMENTWISE[self.mode](a, b).astype(np.float32)]
