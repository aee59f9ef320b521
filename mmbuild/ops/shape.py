"""Shape ops: reshape, permute, squeeze and unsqueeze.

They move data without arithmetic (policy FOLLOW), so each reference keeps its input's dtype. Shape
arguments are plain integers, read when the node is added: a list, an ``mm.Dims``, a numpy array,
or an integer constant tensor (the output of ``add_i_const_node``). A tensor computed at run time
is refused, because the output shape must be known when the network is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmbuild.errors import MMError
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec, check_ints
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import Dims
from mmbuild.ops.const import IConstNode
from mmbuild.ops.registry import register_op

__all__ = ["IPermuteNode", "IReshapeNode", "ISqueezeNode", "IUnsqueezeNode"]


def const_array(network: Network, value: Any, call: str, what: str) -> np.ndarray:
    """The integers of a shape-like argument as an int64 array (its own shape kept).

    ``value`` is a list, tuple, ``mm.Dims``, numpy array, or an integer constant ITensor of
    ``network``; anything else, or a tensor computed at run time, is refused naming ``call``.
    """
    if isinstance(value, ITensor):
        network._own(value, f"{call}: {what}")
        producer = value.get_producer()
        if not isinstance(producer, IConstNode):
            source = "a network input" if producer is None else f"node {producer.name!r}"
            raise MMError(
                f"{call}: the {what} tensor {value.name!r} is computed at run time (by {source}); "
                "the output shape must be known when the network is built, so pass a list or an "
                "integer constant tensor (add_i_const_node)"
            )
        arr = producer.value
        if arr.dtype.kind not in "iu":
            raise MMError(
                f"{call}: the {what} tensor {value.name!r} is {value.get_data_type().name}; "
                "it must hold integers (INT32 or INT64)"
            )
        return arr.astype(np.int64)
    if isinstance(value, Dims):
        value = value.get_dims()
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (list, tuple, np.ndarray, int, np.integer)
    ):
        raise MMError(
            f"{call}: {what} must be a list of integers, an mm.Dims or an integer constant "
            f"tensor, not {type(value).__name__}"
        )
    arr = np.asarray(value, dtype=object)
    flat = arr.ravel().tolist()
    check_ints(flat, None, f"{call}: {what}")
    return np.asarray([int(v) for v in flat], dtype=np.int64).reshape(arr.shape)


def int_values(network: Network, value: Any, call: str, what: str) -> tuple[int, ...]:
    """A flat tuple of integers from a shape-like argument (see ``const_array``)."""
    arr = const_array(network, value, call, what)
    if arr.ndim > 1:
        raise MMError(f"{call}: {what} has shape {list(arr.shape)}; pass a flat list of integers")
    return tuple(int(v) for v in arr.ravel())


def _axes(node: INode, axes: Sequence[int], rank: int, what: str = "axes") -> tuple[int, ...]:
    """Axes normalized to 0..rank-1 (negative counts from the end), each at most once."""
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise node.error(
                f"{what} {list(axes)}: axis {a} is out of range for rank {rank}; "
                f"use -{rank}..{rank - 1}"
            )
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise node.error(f"{what} {list(axes)} name an axis twice; list each axis once")
    return tuple(out)


def _count(dims: Sequence[int]) -> int:
    return int(np.prod(dims, dtype=np.int64))


@register_op
class IReshapeNode(INode):
    """``y = reshape(x, shape)``: the same elements in row-major order under a new shape.

    In ``shape``, ``-1`` (at most once) is inferred from the element count and ``0`` copies the
    input's dimension at that index (ONNX Reshape with allowzero=0). Example: x of shape
    [2, 3, 4] with shape [0, -1] gives [2, 12]; with [4, 0, 2] gives [4, 3, 2].

    With a run-time (-1) input dimension the output keeps what can be known: [-1, 3, 4] with
    [0, -1] gives [-1, 12] (the copied -1 cancels), but with [-1, 6] it gives [-1, 6] and the
    element count is checked when the network runs. ``shape`` is a list, ``mm.Dims`` or an
    integer constant tensor, whose value is read when the node is added (the node keeps the
    shape, not the tensor).
    """

    node_type = "IReshapeNode"
    op = "reshape"
    policy = Policy.FOLLOW

    @classmethod
    def create(cls, network: Network, x: ITensor, shape: Any) -> INode:  # type: ignore[override]
        call = "add_i_reshape_node"
        spec = int_values(network, shape, call, "shape")
        bad = [s for s in spec if s < -1]
        if bad:
            raise MMError(
                f"{call}: shape {list(spec)} holds {bad[0]}; use sizes >= 1, 0 to copy the input's "
                "dimension, or one -1 to infer it"
            )
        if spec.count(-1) > 1:
            raise MMError(f"{call}: shape {list(spec)} has more than one -1; infer at most one")
        return network._add_node(cls, [x], {"shape": spec})

    def get_shape(self) -> tuple[int, ...]:
        """The shape as given (with its 0 and -1 entries)."""
        return self.attrs["shape"]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        return [TensorSpec(self._out_dims(inputs[0].dims), inputs[0].dtype)]

    def _out_dims(self, dims: Sequence[int]) -> tuple[int, ...]:
        shape = self.attrs["shape"]
        fix = "fix the shape so that the element counts match"
        out = []
        for i, s in enumerate(shape):
            if s == 0:
                if i >= len(dims):
                    raise self.error(
                        f"shape {list(shape)} has 0 at index {i}, which copies input dimension "
                        f"{i}, but the input shape {list(dims)} has rank {len(dims)}; give the "
                        "size there"
                    )
                out.append(dims[i])
            else:
                out.append(s)
        at = shape.index(-1) if -1 in shape else None
        # Count elements symbolically: a run-time input dimension that is copied to the output
        # cancels out; any other one leaves the count known only at run time.
        unknown_in = {i for i, d in enumerate(dims) if d == -1}
        copied = {i for i, s in enumerate(shape) if s == 0 and dims[i] == -1}
        known_in = _count([d for d in dims if d != -1])
        known_out = _count([d for i, d in enumerate(out) if i != at and d != -1])
        resolved = f" (that is {out})" if out != list(shape) else ""
        known = "known " if unknown_in else ""
        where = (
            f"cannot reshape the input of shape {list(dims)} to {list(shape)}{resolved}: "
            f"{known_in} {known}input elements"
        )
        if copied == unknown_in:
            if at is not None:
                if known_out == 0:
                    raise self.error(
                        f"{where}, and the other dimensions hold 0 elements, so -1 is ambiguous; "
                        "give that size"
                    )
                if known_in % known_out:
                    raise self.error(
                        f"{where} do not divide into the {known_out} of the other dimensions; "
                        + fix
                    )
                out[at] = known_in // known_out
            elif known_in != known_out:
                raise self.error(f"{where} vs {known_out} output elements; " + fix)
        elif (
            at is None
            and not copied
            and -1 not in out
            and ((known_in == 0 and known_out != 0) or (known_in and known_out % known_in))
        ):
            # one free run-time input size d would have to give known_in * d == known_out
            raise self.error(
                f"{where} times any run-time size can never make the {known_out} output "
                "elements; " + fix
            )
        return tuple(out)

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = arrays[0]
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(self.attrs["shape"])]
        try:
            return [x.reshape(shape)]
        except ValueError:
            raise self.error(
                f"at run time the input of shape {list(x.shape)} ({x.size} elements) cannot "
                f"take the shape {list(self.attrs['shape'])}; feed an input that fits"
            ) from None


@register_op
class IPermuteNode(INode):
    """``y = transpose(x, perm)``: output dimension ``i`` is input dimension ``perm[i]``.

    ``perm`` is a permutation of 0..rank-1 (a list, ``mm.Dims`` or an integer constant tensor).
    Example: NHWC to NCHW is perm [0, 3, 1, 2]; x of shape [2, 5, 7, 3] gives [2, 3, 5, 7].
    """

    node_type = "IPermuteNode"
    op = "permute"
    policy = Policy.FOLLOW

    @classmethod
    def create(cls, network: Network, x: ITensor, perm: Any) -> INode:  # type: ignore[override]
        call = "add_i_permute_node"
        p = int_values(network, perm, call, "perm")
        if sorted(p) != list(range(len(p))):
            raise MMError(
                f"{call}: perm {list(p)} is not a permutation of 0..{len(p) - 1}; list every "
                "axis of the input exactly once"
            )
        return network._add_node(cls, [x], {"perm": p})

    def get_perm(self) -> tuple[int, ...]:
        return self.attrs["perm"]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        perm, dims = self.attrs["perm"], inputs[0].dims
        if len(perm) != len(dims):
            raise self.error(
                f"perm {list(perm)} has {len(perm)} axes but the input shape {list(dims)} has "
                f"rank {len(dims)}; give one axis per input dimension"
            )
        return [TensorSpec(tuple(dims[p] for p in perm), inputs[0].dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(np.transpose(arrays[0], self.attrs["perm"]))]


@register_op
class ISqueezeNode(INode):
    """Remove dimensions of size 1: ``add_i_squeeze_node(x, axes=None)``.

    ``axes`` (negative counts from the end) must name dimensions of size 1; ``None`` removes
    every dimension of size 1, and is refused when the input has a run-time (-1) dimension,
    since the output rank would then depend on the run. Example: [1, 3, 1, 2] with axes [0, 2]
    (or None) gives [3, 2]; with axes [-2] it gives [1, 3, 2].
    """

    node_type = "ISqueezeNode"
    op = "squeeze"
    policy = Policy.FOLLOW

    @classmethod
    def create(cls, network: Network, x: ITensor, axes: Any = None) -> INode:  # type: ignore[override]
        a = None if axes is None else int_values(network, axes, "add_i_squeeze_node", "axes")
        return network._add_node(cls, [x], {"axes": a})

    def get_axes(self) -> tuple[int, ...] | None:
        return self.attrs["axes"]

    def _squeezed(self, dims: Sequence[int]) -> tuple[int, ...]:
        if self.attrs["axes"] is None:
            if -1 in dims:
                raise self.error(
                    f"axes=None squeezes every size-1 dimension, but the input shape {list(dims)} "
                    "has run-time (-1) dimensions that may or may not be 1; pass the axes"
                )
            return tuple(i for i, d in enumerate(dims) if d == 1)
        axes = _axes(self, self.attrs["axes"], len(dims))
        for a in axes:
            if dims[a] not in (1, -1):
                raise self.error(
                    f"axis {a} of the input shape {list(dims)} has size {dims[a]}, not 1; only "
                    "dimensions of size 1 can be squeezed (use add_i_reshape_node otherwise)"
                )
        return axes

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        dims = inputs[0].dims
        axes = self._squeezed(dims)
        return [TensorSpec(tuple(d for i, d in enumerate(dims) if i not in axes), inputs[0].dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = arrays[0]
        axes = self._squeezed(x.shape)  # checks the run-time sizes too
        return [np.squeeze(x, axis=axes)]


@register_op
class IUnsqueezeNode(INode):
    """Insert dimensions of size 1: ``add_i_unsqueeze_node(x, axes)``.

    ``axes`` index the output (rank r + len(axes)), as in ONNX Unsqueeze; negative counts from
    the end of the output. Example: [3, 4] with axes [0, 3] gives [1, 3, 4, 1]; with [-1] it
    gives [3, 4, 1].
    """

    node_type = "IUnsqueezeNode"
    op = "unsqueeze"
    policy = Policy.FOLLOW

    @classmethod
    def create(cls, network: Network, x: ITensor, axes: Any) -> INode:  # type: ignore[override]
        call = "add_i_unsqueeze_node"
        a = int_values(network, axes, call, "axes")
        if not a:
            raise MMError(f"{call}: axes is empty; name at least one axis to insert")
        return network._add_node(cls, [x], {"axes": a})

    def get_axes(self) -> tuple[int, ...]:
        return self.attrs["axes"]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        dims = inputs[0].dims
        rank = len(dims) + len(self.attrs["axes"])
        axes = _axes(self, self.attrs["axes"], rank, "axes (in the output rank)")
        rest = iter(dims)
        return [
            TensorSpec(tuple(1 if i in axes else next(rest) for i in range(rank)), inputs[0].dtype)
        ]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        rank = arrays[0].ndim + len(self.attrs["axes"])
        return [np.expand_dims(arrays[0], tuple(a % rank for a in self.attrs["axes"]))]
