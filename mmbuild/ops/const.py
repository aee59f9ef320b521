"""IConstNode: a constant tensor (weights, biases, shapes) held by the network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmbuild.errors import MMError
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec
from mmbuild.ir.types import DataType, Dims
from mmbuild.ops.registry import register_op

__all__ = ["IConstNode"]


@register_op
class IConstNode(INode):
    """A constant: ``add_i_const_node(dtype, dimensions, value)``.

    ``value`` is any array-like whose element count equals ``dimensions``; it is copied and
    stored as ``dtype``. Example: ``net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([2]),
    [0.5, 1.5])``; MagicMind's keywords work too: ``add_i_const_node(dtype=...,
    dimensions=..., value=...)``.
    """

    node_type = "IConstNode"
    op = "const"
    policy = Policy.FOLLOW
    input_names = ()

    @classmethod
    def create(
        cls, network: Network, dtype: DataType, dimensions: Dims | Sequence[int], value: Any
    ) -> INode:  # type: ignore[override]
        dims, data = dimensions, value
        if not isinstance(dtype, DataType):
            raise MMError(f"add_i_const_node: the data type must be an mm.DataType, not {dtype!r}")
        dims = dims if isinstance(dims, Dims) else Dims(dims)
        if not dims.is_static:
            raise MMError(f"add_i_const_node: dims {dims} hold -1; a constant has a fixed shape")
        try:
            arr = np.asarray(data)
        except Exception as exc:
            raise MMError(f"add_i_const_node: data cannot be read as an array: {exc}") from None
        if arr.size != dims.get_element_count():
            raise MMError(
                f"add_i_const_node: data has {arr.size} elements (shape {list(arr.shape)}) but "
                f"dims {dims} need {dims.get_element_count()}; pass data of that size"
            )
        if arr.dtype.kind not in "biuf":
            raise MMError(f"add_i_const_node: data of numpy dtype {arr.dtype} is not numeric")
        with np.errstate(over="ignore", invalid="ignore"):
            value = np.array(arr, dtype=dtype.numpy_dtype).reshape(dims.get_dims())
        if dtype.is_float and np.any(np.isinf(value) != np.isinf(arr.reshape(value.shape))):
            raise MMError(f"add_i_const_node: data holds values too large for {dtype.name}")
        value.setflags(write=False)
        return network._add_node(cls, [], {"value": value, "dtype": dtype})

    @property
    def value(self) -> np.ndarray:
        return self.attrs["value"]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        return [TensorSpec(tuple(self.value.shape), self.attrs["dtype"])]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return [self.value]
