"""Linear ops: IInnerProductNode (a fully connected layer) and IMatMulNode (batched matmul).

``matmul_nd`` is the arithmetic of both, usable on int64 arrays for exact integer references.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mmbuild.errors import Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec
from mmbuild.ir.tensor import ITensor
from mmbuild.ops._common import broadcast, require_float, require_rank
from mmbuild.ops.conv import ImpliedAttrs
from mmbuild.ops.registry import register_op

__all__ = ["IInnerProductNode", "IMatMulNode", "matmul_nd"]


@register_op
class IInnerProductNode(INode):
    """A fully connected layer: ``y[n, o] = b[o] + sum_k x2[n, k] * W[o, k]``, i.e.
    ``y = x2 Wᵀ + b``.

    As in MagicMind, an input of rank >= 2 is flattened to ``x2 = [N, K]``: N is its first
    dimension and K the product of all the others, in row-major order (an NHWC [N, H, W, C]
    input is read as [N, H*W*C] with C fastest, so the weight's columns must be in H, W, C
    order). The weight is [N_out, K], the optional bias [N_out], the output [N, N_out].
    To apply a weight along the last axis only (per token of a [B, T, C] input), use
    ``add_i_matmul_node`` with ``set_transpose_b(True)`` instead.

    Example: x [2, 2, 3] flattens to [2, 6]; with W [4, 6] and b [4] the output is [2, 4]. By
    hand, x = [[1, 2]], W = [[1, 0], [1, 1], [0, 2]], b = [0.5, 0, 0] give [[1.5, 3, 4]].
    """

    node_type = "IInnerProductNode"
    op = "inner_product"
    policy = Policy.ALWAYS
    quantizable_inputs = (0, 1)
    input_names = ("input", "weight", "bias")

    @classmethod
    def create(cls, network: Network, x: ITensor, w: ITensor, b: ITensor | None = None) -> INode:  # type: ignore[override]
        return network._add_node(cls, [x, w, b], {})

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        x, w = inputs[0], inputs[1]
        if x.rank < 2:
            raise self.error(
                f"{self.input_label(0)} has shape {list(x.dims)}; an inner product takes a "
                "batch [N, ...] of rank >= 2 (reshape a single vector to [1, K])"
            )
        require_rank(self, w, 1, 2)
        require_float(self, inputs, range(len(inputs)))
        k = -1 if any(d < 0 for d in x.dims[1:]) else int(np.prod(x.dims[1:], dtype=np.int64))
        n_out, k_w = w.dims
        if k >= 0 and k_w >= 0 and k != k_w:
            raise self.error(
                f"{self.input_label(0)} of shape {list(x.dims)} flattens to K = {k} features "
                f"but the weight has shape {list(w.dims)} ([N_out, K] with K = {k_w}); give the "
                f"weight {k} columns, or reshape the input"
            )
        if len(inputs) > 2:
            b = inputs[2]
            if b.rank != 1 or not _fits(b.dims[0], n_out):
                raise self.error(
                    f"{self.input_label(2)} has shape {list(b.dims)}; it must be [{n_out}], one "
                    f"value per row of the weight (shape {list(w.dims)})"
                )
        return [TensorSpec((x.dims[0], n_out), x.dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x, w = arrays[0].astype(np.float64), arrays[1].astype(np.float64)
        x2 = x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))
        y = matmul_nd(x2, w, transpose_b=True)
        if len(arrays) > 2:
            y = y + arrays[2].astype(np.float64)
        return [y.astype(np.float32)]


@register_op
class IMatMulNode(ImpliedAttrs):
    """Batched matrix product ``y[..., m, n] = sum_k op(a)[..., m, k] * op(b)[..., k, n]``,
    ``op`` a transpose of the last two axes when ``set_transpose_a`` / ``set_transpose_b`` ask.

    The batch dimensions (all but the last two) broadcast as in numpy. As in ``numpy.matmul``, a
    rank-1 ``a`` [K] is a row vector and a rank-1 ``b`` [K] a column vector, and the vector's axis
    is dropped from the result; transposing a vector changes nothing, so the flags only act on
    operands of rank >= 2. Both operands may be activations or constants; the output has the
    data type of ``a``.

    As MagicMind code calls ``set_transpose_a`` / ``set_transpose_b`` after adding the node, a
    flag not set yet is implied by the shapes (see ``ImpliedAttrs``): the current value first,
    then flipping b, then a, then both. ``validate`` refuses the node while a flag the shapes
    set to True has not been confirmed by its setter.

    Example: a [8, 1, 4, 3] and b [5, 3, 2] give [8, 5, 4, 2]; with ``set_transpose_b(True)``
    b must be [5, 2, 3]. By hand, [[1, 2], [3, 4]] times [[5], [6]] is [[17], [39]].
    """

    node_type = "IMatMulNode"
    op = "matmul"
    policy = Policy.ALWAYS
    quantizable_inputs = (0, 1)
    input_names = ("a", "b")
    implied_names = ("transpose_a", "transpose_b")
    defaults = {"transpose_a": False, "transpose_b": False}

    @classmethod
    def create(cls, network: Network, a: ITensor, b: ITensor) -> INode:  # type: ignore[override]
        return cls._create_implied(network, [a, b])

    def fitting_choices(
        self, inputs: Sequence[TensorSpec], fixed: set[str]
    ) -> Iterator[dict[str, Any]]:
        ta, tb = (
            [self.attrs[k]] if k in fixed else [self.attrs[k], not self.attrs[k]]
            for k in self.implied_names
        )
        return ({"transpose_a": a, "transpose_b": b} for a, b in itertools.product(ta, tb))

    def set_transpose_a(self, transpose: bool) -> Status:
        return self._set_implied(transpose_a=self._flag(transpose, "set_transpose_a"))

    def set_transpose_b(self, transpose: bool) -> Status:
        return self._set_implied(transpose_b=self._flag(transpose, "set_transpose_b"))

    def get_transpose_a(self) -> bool:
        return self.attrs["transpose_a"]

    def get_transpose_b(self) -> bool:
        return self.attrs["transpose_b"]

    def _flag(self, value: object, call: str) -> bool:
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (int, np.integer)) and value in (0, 1)
        ):
            return bool(value)
        raise self.error(f"{call} takes True or False, not {value!r}")

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        a, b = inputs[0].dims, inputs[1].dims
        for i in (0, 1):
            if inputs[i].rank < 1:
                raise self.error(
                    f"{self.input_label(i)} is a scalar (shape []); a matrix product takes "
                    "operands of rank >= 1 (use add_i_elementwise_node MUL to scale)"
                )
        require_float(self, inputs, (0, 1))
        ta = self.attrs["transpose_a"] and len(a) >= 2
        tb = self.attrs["transpose_b"] and len(b) >= 2
        # the contracted (K), kept row (M) and kept column (N) axes of each operand
        ka = a[-2] if ta else a[-1]
        kb = b[-1] if tb else b[0] if len(b) == 1 else b[-2]
        if not _fits(ka, kb):
            raise self.error(
                f"a has shape {list(a)} (transpose_a={ta}, so K = {ka}) but b has shape "
                f"{list(b)} (transpose_b={tb}, so K = {kb}); the contracted sizes must match: "
                "fix a shape or set_transpose_a / set_transpose_b"
            )
        batch = broadcast(self, a[:-2], b[:-2], f"batch dimensions of a {list(a)} and b {list(b)}")
        rows = (a[-1] if ta else a[-2],) if len(a) >= 2 else ()
        cols = (b[-2] if tb else b[-1],) if len(b) >= 2 else ()
        return [TensorSpec((*batch, *rows, *cols), inputs[0].dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        a, b = (x.astype(np.float64) for x in arrays)
        y = matmul_nd(a, b, self.attrs["transpose_a"], self.attrs["transpose_b"])
        return [np.asarray(y, dtype=np.float32)]


def matmul_nd(
    a: np.ndarray, b: np.ndarray, transpose_a: bool = False, transpose_b: bool = False
) -> np.ndarray:
    """``numpy.matmul`` after swapping the last two axes of an operand of rank >= 2 whose flag is
    set. Computes in the dtype of the inputs: integer inputs accumulate exactly (pass int64)."""
    if transpose_a and a.ndim >= 2:
        a = np.swapaxes(a, -1, -2)
    if transpose_b and b.ndim >= 2:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


def _fits(x: int, y: int) -> bool:
    """Two sizes that can be equal at run time (-1 is unknown)."""
    return x == y or x < 0 or y < 0
