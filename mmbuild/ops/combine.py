"""Ops that join, cut or extend tensors: concat, split, slice and pad.

They move data without arithmetic (policy FOLLOW): each reference keeps its input's dtype. Their
integer arguments (sizes, begins, pads) are read when the node is added; see ``shape.const_array``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmbuild.errors import MMError, Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec, check_ints
from mmbuild.ir.tensor import ITensor
from mmbuild.ops._common import norm_axis
from mmbuild.ops.registry import register_op
from mmbuild.ops.shape import const_array, int_values

__all__ = ["IConcatNode", "IPadMode", "IPadNode", "ISliceNode", "ISplitNode"]


def _axis_arg(axis: Any, call: str) -> int:
    return check_ints(axis, 1, f"{call}: axis")[0]


@register_op
class IConcatNode(INode):
    """``y = concatenate(tensors, axis)``: ``add_i_concat_node(axis, tensors)``, axis first as in
    MagicMind.

    Every input has the same rank and type, and the same size in every dimension but ``axis``
    (negative counts from the end). Example: [2, 3] and [2, 5] on axis 1 (or -1) give [2, 8].
    A run-time (-1) size on ``axis`` makes the output's -1 there; elsewhere a -1 takes the size
    another input fixes: [-1, 3] and [4, 3] on axis 1 give [4, 6].
    """

    node_type = "IConcatNode"
    op = "concat"
    policy = Policy.FOLLOW
    input_names = ()

    @classmethod
    def create(cls, network: Network, axis: int, tensors: Sequence[ITensor]) -> INode:  # type: ignore[override]
        call = "add_i_concat_node"
        if isinstance(axis, (list, tuple, ITensor)):
            raise MMError(f"{call}: the axis comes first: add_i_concat_node(axis, [tensors])")
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise MMError(f"{call}: tensors must be a non-empty list of ITensor, not {tensors!r}")
        return network._add_node(cls, list(tensors), {"axis": _axis_arg(axis, call)})

    def get_axis(self) -> int:
        return self.attrs["axis"]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        first = inputs[0]
        axis = norm_axis(self, self.attrs["axis"], first.rank)
        out = list(first.dims)
        for i, s in enumerate(inputs[1:], 1):
            if s.dtype != first.dtype:
                raise self.error(
                    f"{self.input_label(i)} is {s.dtype.name} but input 0 is {first.dtype.name}; "
                    "give every input one type (cast with add_i_cast_node)"
                )
            if s.rank != first.rank:
                raise self.error(
                    f"{self.input_label(i)} has shape {list(s.dims)} (rank {s.rank}) but input 0 "
                    f"has shape {list(first.dims)} (rank {first.rank}); concatenated tensors "
                    "have one rank"
                )
            for d, (a, b) in enumerate(zip(out, s.dims)):
                if d == axis:
                    out[d] = -1 if -1 in (a, b) else a + b
                elif a == -1:
                    out[d] = b
                elif b not in (-1, a):
                    raise self.error(
                        f"{self.input_label(i)} has shape {list(s.dims)} and input 0 has "
                        f"{list(first.dims)}: dimension {d} differs ({b} vs {a}); only the "
                        f"concat axis {axis} may differ"
                    )
        return [TensorSpec(tuple(out), first.dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return [np.concatenate(arrays, axis=self.attrs["axis"])]


@register_op
class ISplitNode(INode):
    """Cut ``x`` along ``axis`` into several outputs: ``add_i_split_node(x, axis, n)``.

    ``n`` an int splits into ``n`` equal parts (the size on ``axis`` must divide by it); ``n`` a
    list of sizes gives one output per size, and the sizes must sum to the size on ``axis``.
    Example: [2, 6] split on axis 1 with n=3 gives three [2, 2]; with [1, 5] gives [2, 1] and
    [2, 5]. On a run-time (-1) axis equal parts are -1 and the sum is checked when it runs.
    """

    node_type = "ISplitNode"
    op = "split"
    policy = Policy.FOLLOW

    @classmethod
    def create(cls, network: Network, x: ITensor, axis: int, n: Any) -> INode:  # type: ignore[override]
        call = "add_i_split_node"
        split: int | tuple[int, ...]
        if isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)):
            split = check_ints(n, 1, f"{call}: n", 1)[0]
        else:
            split = int_values(network, n, call, "n (the list of sizes)")
            if not split or min(split) < 0:
                raise MMError(
                    f"{call}: sizes {list(split)} must be a non-empty list of sizes >= 0 "
                    "(or pass n as an int for equal parts)"
                )
        return network._add_node(cls, [x], {"axis": _axis_arg(axis, call), "split": split})

    def get_axis(self) -> int:
        return self.attrs["axis"]

    def _sizes(self, dims: Sequence[int], axis: int) -> list[int]:
        """The output sizes along ``axis`` of an input of shape ``dims`` (-1 = run time)."""
        split, size = self.attrs["split"], dims[axis]
        where = f"axis {axis} of the input shape {list(dims)} has size {size}"
        if isinstance(split, int):
            if size != -1 and size % split:
                raise self.error(
                    f"{where}, which does not divide into {split} equal parts; pass a list of "
                    "sizes instead, or another n"
                )
            return [-1 if size == -1 else size // split] * split
        if size != -1 and sum(split) != size:
            raise self.error(
                f"{where} but the sizes {list(split)} sum to {sum(split)}; make them sum to {size}"
            )
        return list(split)

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        dims = inputs[0].dims
        axis = norm_axis(self, self.attrs["axis"], len(dims))
        return [
            TensorSpec((*dims[:axis], s, *dims[axis + 1 :]), inputs[0].dtype)
            for s in self._sizes(dims, axis)
        ]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = arrays[0]
        axis = self.attrs["axis"] % x.ndim
        bounds = np.cumsum(self._sizes(x.shape, axis))[:-1]
        return [np.ascontiguousarray(p) for p in np.split(x, bounds, axis=axis)]


@register_op
class ISliceNode(INode):
    """A strided window, TensorRT / TensorFlow style: ``add_i_slice_node(x, begin, size,
    stride=None)``, with one value per dimension in each list.

    Along dimension ``d`` the output takes ``size[d]`` elements at ``begin[d] + i * stride[d]``.
    ``begin`` counts from the end when negative; ``size`` -1 takes every element up to the end,
    ``ceil((dim - begin) / stride)`` of them; ``stride`` defaults to 1 and must be >= 1 (reverse
    a dimension with another op). A window that runs past the end is refused. Example: x of
    shape [4, 10] with begin [1, -8], size [2, -1], stride [1, 3] takes rows 1..2 and columns
    2, 5, 8: shape [2, 3].
    """

    node_type = "ISliceNode"
    op = "slice"
    policy = Policy.FOLLOW

    @classmethod
    def create(
        cls, network: Network, x: ITensor, begin: Any, size: Any, stride: Any = None
    ) -> INode:  # type: ignore[override]
        call = "add_i_slice_node"
        b = int_values(network, begin, call, "begin")
        s = int_values(network, size, call, "size")
        st = (1,) * len(b) if stride is None else int_values(network, stride, call, "stride")
        if not len(b) == len(s) == len(st):
            raise MMError(
                f"{call}: begin {list(b)}, size {list(s)} and stride {list(st)} must have one "
                "value per input dimension"
            )
        if any(v < -1 for v in s):
            raise MMError(
                f"{call}: size {list(s)} holds a value below -1; use >= 0, or -1 for 'to the end'"
            )
        if any(v < 1 for v in st):
            raise MMError(
                f"{call}: stride {list(st)} holds a value below 1; only positive strides are "
                "supported (reverse a dimension with another op)"
            )
        return network._add_node(cls, [x], {"begin": b, "size": s, "stride": st})

    def _window(self, dims: Sequence[int]) -> list[tuple[int, int, int]]:
        """(begin, count, stride) per dimension; begin -1 / count -1 when known only at run time."""
        b, s, st = self.attrs["begin"], self.attrs["size"], self.attrs["stride"]
        if len(b) != len(dims):
            raise self.error(
                f"begin {list(b)} has {len(b)} values but the input shape {list(dims)} has rank "
                f"{len(dims)}; give one per dimension"
            )
        out = []
        for d, dim in enumerate(dims):
            start = b[d] + dim if b[d] < 0 and dim != -1 else b[d]
            if dim != -1 and not 0 <= start <= dim:
                raise self.error(
                    f"begin {b[d]} is out of range for dimension {d} of the input shape "
                    f"{list(dims)}; use -{dim}..{dim}"
                )
            if s[d] == -1:
                count = -1 if dim == -1 or start < 0 else -(-(dim - start) // st[d])
            else:
                count = s[d]
                if dim != -1 and start >= 0 and count and start + (count - 1) * st[d] >= dim:
                    raise self.error(
                        f"dimension {d} of the input shape {list(dims)}: {count} elements from "
                        f"{start} with stride {st[d]} end at {start + (count - 1) * st[d]}, past "
                        f"the last index {dim - 1}; lower the size or use -1 for 'to the end'"
                    )
            out.append((start, count, st[d]))
        return out

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        window = self._window(inputs[0].dims)
        return [TensorSpec(tuple(c for _, c, _ in window), inputs[0].dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = arrays[0]
        index = tuple(
            slice(b, b + (c - 1) * st + 1, st) if c else slice(b, b)
            for b, c, st in self._window(x.shape)
        )
        return [np.ascontiguousarray(x[index])]


class IPadMode(enum.Enum):
    CONSTANT = "constant"  # the value of set_value (0 by default)
    REFLECT = "reflect"  # mirror without repeating the edge: [1, 2, 3] pad 2 -> 3 2 | 1 2 3 | 2 1
    EDGE = "edge"  # repeat the edge element: [1, 2, 3] pad 2 -> 1 1 | 1 2 3 | 3 3


@register_op
class IPadNode(INode):
    """Extend every dimension: ``add_i_pad_node(x, pads, value=0.0)``.

    ``pads`` gives (before, after) for each dimension: a list of pairs ``[(b0, a0), (b1, a1),
    ...]``, a flat list ``[b0, a0, b1, a1, ...]`` (TensorFlow order; note ONNX Pad lists all the
    befores first), or an integer constant tensor of shape [rank, 2]. Pads are >= 0 (crop with
    add_i_slice_node). ``set_mode(mm.IPadMode.CONSTANT | REFLECT | EDGE)`` picks the fill;
    REFLECT needs each pad smaller than its dimension, EDGE a non-empty dimension. The constant
    ``value`` must be representable in the input's type. Example: [[1, 2], [3, 4]] with pads
    [(0, 1), (1, 0)] and value 9 gives [[9, 1, 2], [9, 3, 4], [9, 9, 9]].
    """

    node_type = "IPadNode"
    op = "pad"
    policy = Policy.FOLLOW
    defaults = {"mode": IPadMode.CONSTANT, "value": 0.0}

    @classmethod
    def create(cls, network: Network, x: ITensor, pads: Any, value: float = 0.0) -> INode:  # type: ignore[override]
        call = "add_i_pad_node"
        arr = const_array(network, pads, call, "pads")
        if not (arr.ndim == 2 and arr.shape[1] == 2) and not (arr.ndim == 1 and arr.size % 2 == 0):
            raise MMError(
                f"{call}: pads of shape {list(arr.shape)} are neither (before, after) pairs nor a "
                "flat list [b0, a0, b1, a1, ...]; give two values per dimension"
            )
        pairs = tuple((int(b), int(a)) for b, a in arr.reshape(-1, 2))
        if any(v < 0 for p in pairs for v in p):
            raise MMError(
                f"{call}: pads {[list(p) for p in pairs]} hold a negative value; pads are >= 0 "
                "(crop with add_i_slice_node)"
            )
        return network._add_node(cls, [x], {"pads": pairs, "value": _float(value, call)})

    def set_mode(self, mode: IPadMode) -> Status:
        if not isinstance(mode, IPadMode):
            known = ", ".join(f"mm.IPadMode.{m.name}" for m in IPadMode)
            raise self.error(f"set_mode takes one of {known}, not {mode!r}")
        return self._set(mode=mode)

    def set_value(self, value: float) -> Status:
        return self._set(value=_float(value, f"{self.node_type} {self.name!r}: set_value"))

    def get_mode(self) -> IPadMode:
        return self.attrs["mode"]

    def get_value(self) -> float:
        return self.attrs["value"]

    def get_pads(self) -> tuple[tuple[int, int], ...]:
        return self.attrs["pads"]

    def _check(self, dims: Sequence[int]) -> None:
        pads, mode = self.attrs["pads"], self.attrs["mode"]
        if len(pads) != len(dims):
            raise self.error(
                f"pads {[list(p) for p in pads]} give {len(pads)} (before, after) pairs but the "
                f"input shape {list(dims)} has rank {len(dims)}; give one pair per dimension"
            )
        for d, ((b, a), dim) in enumerate(zip(pads, dims)):
            if dim == -1 or not (b or a):
                continue
            if mode is IPadMode.REFLECT and max(b, a) >= dim:
                raise self.error(
                    f"REFLECT pads ({b}, {a}) of dimension {d} of the input shape {list(dims)} "
                    f"must be below its size {dim}; lower the pads or use EDGE"
                )
            if mode is IPadMode.EDGE and dim == 0:
                raise self.error(
                    f"EDGE padding of dimension {d} of the input shape {list(dims)}: the "
                    "dimension is empty, so it has no edge to repeat"
                )

    def _fill(self, dtype: np.dtype) -> Any:
        value = self.attrs["value"]
        if dtype.kind == "f":
            return value
        with np.errstate(invalid="ignore", over="ignore"):
            cast = np.array(value).astype(dtype)
        if cast.astype(np.float64) != value:
            raise self.error(
                f"the pad value {value} is not representable in the input's type "
                f"{dtype.name}; give a value that is (or set_value one)"
            )
        return cast

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        dims = inputs[0].dims
        self._check(dims)
        self._fill(inputs[0].dtype.numpy_dtype)
        out = tuple(-1 if d == -1 else d + b + a for d, (b, a) in zip(dims, self.attrs["pads"]))
        return [TensorSpec(out, inputs[0].dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = arrays[0]
        self._check(x.shape)
        if x.ndim == 0:  # nothing to pad (np.pad refuses an empty pad list)
            return [x.copy()]
        mode = self.attrs["mode"]
        if mode is IPadMode.CONSTANT:
            return [np.pad(x, self.attrs["pads"], constant_values=self._fill(x.dtype))]
        return [np.pad(x, self.attrs["pads"], mode=mode.value)]


def _float(value: Any, call: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise MMError(f"{call}: the pad value must be a number, not {value!r}")
    return float(value)
