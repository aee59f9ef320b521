"""Shape-rule and argument helpers shared by the op declarations.

Dimensions are ints with -1 for "known only at run time"; every rule lets -1 flow through.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmbuild.ir.node import INode, TensorSpec, check_ints
from mmbuild.ir.types import DataType

FLOAT_TYPES = (DataType.FLOAT32, DataType.FLOAT16)


def norm_axis(node: INode, axis: int, rank: int, what: str = "axis") -> int:
    """A non-negative axis for a tensor of ``rank`` dimensions (negative counts from the end)."""
    if (
        isinstance(axis, bool)
        or not isinstance(axis, (int, np.integer))
        or not -rank <= axis < rank
    ):
        raise node.error(
            f"{what} {axis!r} is out of range for a tensor of rank {rank}; use -{rank}..{rank - 1}"
        )
    return int(axis) % rank


def broadcast(
    node: INode, a: Sequence[int], b: Sequence[int], labels: str = "inputs"
) -> tuple[int, ...]:
    """numpy broadcasting of two shapes; -1 stays -1 unless the other side fixes the size."""
    out = []
    ra, rb = len(a), len(b)
    for i in range(max(ra, rb)):
        x = a[ra - 1 - i] if i < ra else 1
        y = b[rb - 1 - i] if i < rb else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif x == -1 or y == -1:
            out.append(max(x, y))
        else:
            raise node.error(
                f"the {labels} cannot broadcast: shapes {list(a)} and {list(b)} differ in "
                f"dimension {max(ra, rb) - 1 - i} ({x} vs {y}); sizes must match or be 1"
            )
    return tuple(reversed(out))


def require_float(node: INode, specs: Sequence[TensorSpec], slots: Sequence[int]) -> None:
    for i in slots:
        if specs[i].dtype not in FLOAT_TYPES:
            raise node.error(
                f"{node.input_label(i)} is {specs[i].dtype.name}; this op computes on FLOAT32 or "
                "FLOAT16 tensors (cast it with add_i_cast_node)"
            )


def require_rank(node: INode, spec: TensorSpec, i: int, *ranks: int) -> None:
    if spec.rank not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise node.error(
            f"{node.input_label(i)} has shape {list(spec.dims)} (rank {spec.rank}); "
            f"this op takes rank {want}"
        )


def window_out(size: int, k: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Output length of a sliding window: floor((size + pad - dilation*(k-1) - 1) / stride) + 1.

    ``pad`` is the total of both sides. Pooling's ceil mode has its own rule (``pool.pool_out``),
    which needs the start pad on its own.

    >>> window_out(32, 3, 2, 2), window_out(7, 2, 2, 0)
    (16, 3)
    """
    if size < 0:
        return -1
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


def same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow SAME padding (extra at the end): output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def as_float32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


__all__ = [
    "FLOAT_TYPES",
    "as_float32",
    "broadcast",
    "check_ints",
    "norm_axis",
    "require_float",
    "require_rank",
    "same_pads",
    "window_out",
]
