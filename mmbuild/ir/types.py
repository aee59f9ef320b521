"""Value types of the IR: DataType, Dims, Layout, Range."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mmbuild._aliases import CamelCaseAliases
from mmbuild.errors import MMError


class DataType(enum.Enum):
    """Tensor element types. ``DataType.FLOAT16.numpy_dtype`` is ``np.float16``.

    QINT8 and QINT16 are quantized types: their numpy dtype is the storage (int8, int16); scale
    and zero point come from the tensor's range.

    UINT16, UINT32 and FLOAT64 are MagicMind's too. Data movement (copy, permute, reshape,
    concat, slice, ...) and ``cast`` run in every type; no kernel computes in these three, so a
    node that would compute in one is refused at build time, named, with the types it runs in
    (cast to FLOAT32 or INT32 first). ``is_float`` means a float type mmbuild computes in
    (FLOAT32, FLOAT16): FLOAT64 is not one.
    """

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    QINT8 = "qint8"
    QINT16 = "qint16"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    FLOAT64 = "float64"
    BOOL = "bool"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_NUMPY[self])

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT16)

    @property
    def is_quantized(self) -> bool:
        return self in (DataType.QINT8, DataType.QINT16)

    @property
    def bits(self) -> int:
        return self.numpy_dtype.itemsize * 8 if self is not DataType.BOOL else 1

    @classmethod
    def from_numpy(cls, dtype: Any) -> DataType:
        """The DataType of a numpy dtype (int8 maps to INT8, never to QINT8)."""
        dt = np.dtype(dtype)
        for member, name in _NUMPY.items():
            if not member.is_quantized and np.dtype(name) == dt:
                return member
        known = ", ".join(sorted({np.dtype(n).name for n in _NUMPY.values()}))
        raise MMError(f"numpy dtype {dt.name!r} has no mmbuild DataType; use one of {known}")

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


_NUMPY = {
    DataType.FLOAT32: "float32",
    DataType.FLOAT16: "float16",
    DataType.QINT8: "int8",
    DataType.QINT16: "int16",
    DataType.INT8: "int8",
    DataType.INT16: "int16",
    DataType.INT32: "int32",
    DataType.INT64: "int64",
    DataType.UINT8: "uint8",
    DataType.UINT16: "uint16",
    DataType.UINT32: "uint32",
    DataType.FLOAT64: "float64",
    DataType.BOOL: "bool",
}


def get_datatype_by_numpy(dtype: Any) -> DataType:
    """MagicMind's ``get_datatype_by_numpy``: the DataType of a numpy dtype (or of anything
    ``np.dtype`` accepts). int8 gives INT8, never QINT8.

    >>> get_datatype_by_numpy(np.float32), get_datatype_by_numpy(np.dtype("uint16"))
    (DataType.FLOAT32, DataType.UINT16)
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise MMError(
            f"get_datatype_by_numpy: {dtype!r} is not a numpy dtype; pass array.dtype"
        ) from None
    return DataType.from_numpy(dt)


class Layout(enum.Enum):
    """Data layouts. Activations default to NHWC; NCHW networks say so with ``set_layout``."""

    NCHW = "NCHW"
    NHWC = "NHWC"
    HWCN = "HWCN"
    NONE = "NONE"


class Dims(CamelCaseAliases):
    """A shape; ``-1`` marks a dimension known only at run time.

    >>> d = Dims([-1, 32, 32, 3])
    >>> d.get_dims(), d.GetDimsNum(), d.GetElementCount()
    ([-1, 32, 32, 3], 4, -1)
    """

    __slots__ = ("_dims",)

    def __init__(self, dims: Iterable[int] | Dims = ()) -> None:
        values = list(dims)
        out = []
        for i, v in enumerate(values):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise MMError(f"Dims: dimension {i} is {v!r}; every dimension must be an integer")
            if v < -1:
                raise MMError(
                    f"Dims: dimension {i} is {int(v)}; use a size >= 0, or -1 for a dimension "
                    "known only at run time"
                )
            out.append(int(v))
        self._dims: tuple[int, ...] = tuple(out)

    def get_dims(self) -> list[int]:
        return list(self._dims)

    def get_dim_value(self, i: int) -> int:
        if not -len(self._dims) <= i < len(self._dims):
            raise MMError(
                f"Dims {self}: index {i} is out of range for {len(self._dims)} dimensions"
            )
        return self._dims[i]

    def get_dims_num(self) -> int:
        return len(self._dims)

    def get_element_count(self) -> int:
        if any(d < 0 for d in self._dims):
            return -1
        return int(np.prod(self._dims, dtype=np.int64))

    @property
    def is_static(self) -> bool:
        return all(d >= 0 for d in self._dims)

    def __len__(self) -> int:
        return len(self._dims)

    def __iter__(self) -> Iterator[int]:
        return iter(self._dims)

    def __getitem__(self, i: int) -> int:
        return self._dims[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Dims):
            return self._dims == other._dims
        if isinstance(other, (list, tuple)):
            return list(self._dims) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._dims)

    def __repr__(self) -> str:
        return f"Dims({list(self._dims)})"

    def __str__(self) -> str:
        return "[" + ", ".join(str(d) for d in self._dims) + "]"


class Range(CamelCaseAliases):
    """A value range ``[min, max]``: floats, or equal-length lists for a per-axis range.

    >>> Range(-3.5, 10.2).max
    10.2
    """

    __slots__ = ("max", "min")

    def __init__(
        self,
        min: float | Sequence[float],
        max: float | Sequence[float],
    ) -> None:
        lo, hi = _range_value(min, "min"), _range_value(max, "max")
        if isinstance(lo, list) != isinstance(hi, list) or (
            isinstance(lo, list) and isinstance(hi, list) and len(lo) != len(hi)
        ):
            raise MMError(
                f"Range: min {lo!r} and max {hi!r} must both be floats or equal-length lists"
            )
        for a, b in zip(_as_list(lo), _as_list(hi)):
            if a > b:
                raise MMError(f"Range: min {a} is above max {b}; pass the smaller value first")
        self.min: float | list[float] = lo
        self.max: float | list[float] = hi

    @property
    def per_axis(self) -> bool:
        return isinstance(self.min, list)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Range):
            return NotImplemented
        return self.min == other.min and self.max == other.max

    def __hash__(self) -> int:
        return hash((str(self.min), str(self.max)))

    def __repr__(self) -> str:
        return f"Range({self.min!r}, {self.max!r})"


def _range_value(v: Any, what: str) -> float | list[float]:
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise MMError(f"Range: {what} is {v!r}; pass a float or a list of floats") from None
    if not np.all(np.isfinite(arr)):
        raise MMError(
            f"Range: {what} holds {arr[~np.isfinite(arr)].ravel()[0]}; a range must be finite"
        )
    if isinstance(v, (list, tuple, np.ndarray)):
        return [float(x) for x in arr.ravel()]
    return float(arr)


def _as_list(v: float | list[float]) -> list[float]:
    return list(v) if isinstance(v, list) else [float(v)]
