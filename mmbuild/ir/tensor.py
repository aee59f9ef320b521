"""ITensor: an edge of the network, with its shape, data type, name and dynamic range."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mmbuild._aliases import CamelCaseAliases
from mmbuild._checks import checked
from mmbuild.errors import MMError, Status
from mmbuild.ir.types import DataType, Dims, Range

if TYPE_CHECKING:
    from mmbuild.ir.network import Network
    from mmbuild.ir.node import INode


class ITensor(CamelCaseAliases):
    """A tensor of a network: a network input, or output ``index`` of node ``producer``.

    Shapes and types are inferred when the producing node is added; only network inputs take
    ``set_dimension``. The dynamic range feeds quantization (see ``set_dynamic_range``).
    """

    def __init__(
        self,
        network: Network,
        name: str,
        dims: Dims,
        dtype: DataType,
        producer: INode | None = None,
        index: int = 0,
    ) -> None:
        self._network = network
        self._name = name
        self._dims = dims
        self._dtype = dtype
        self._producer = producer
        self._index = index
        self._consumers: list[INode] = []
        self._range: Range | None = None
        self._user_range = False

    # -- identity -------------------------------------------------------------------------
    def get_tensor_name(self) -> str:
        return self._name

    @checked
    def set_tensor_name(self, name: str) -> Status:
        self._network._rename_tensor(self, name)
        return Status.OK()

    def get_producer(self) -> INode | None:
        """The node that computes this tensor, or None for a network input."""
        return self._producer

    def get_consumers(self) -> list[INode]:
        return list(self._consumers)

    @property
    def network(self) -> Network:
        return self._network

    @property
    def index(self) -> int:
        """Which output of its producer this tensor is (0 for a network input)."""
        return self._index

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_input(self) -> bool:
        return self._producer is None

    # -- shape and type -------------------------------------------------------------------
    def get_dimension(self) -> Dims:
        return self._dims

    @checked
    def set_dimension(self, dims: Dims | Sequence[int]) -> Status:
        """Change the shape of a network input; every node downstream is re-inferred."""
        if not self.is_input:
            raise MMError(
                f"tensor {self._name!r}: its shape is inferred from node "
                f"{self._producer.get_node_name()!r}; set the dimension of a network input instead"  # type: ignore[union-attr]
            )
        self._network._set_input_spec(self, Dims(dims), self._dtype)
        return Status.OK()

    def get_data_type(self) -> DataType:
        """The declared type of an input; for a node output, its ``set_output_type`` if any,
        else the type shape inference gave it."""
        if self._producer is not None:
            return self._producer._output_types.get(self._index, self._dtype)
        return self._dtype

    @checked
    def set_data_type(self, dtype: DataType) -> Status:
        """For a network input, its declared type; for a node output, the node's output type."""
        if not isinstance(dtype, DataType):
            raise MMError(
                f"tensor {self._name!r}: set_data_type takes an mm.DataType, not {dtype!r}"
            )
        if self.is_input:
            self._network._set_input_spec(self, self._dims, dtype)
        else:
            self._producer.set_output_type(self._index, dtype)  # type: ignore[union-attr]
        return Status.OK()

    @property
    def shape(self) -> list[int]:
        return self._dims.get_dims()

    @property
    def dtype(self) -> DataType:
        return self._dtype

    # -- dynamic range ----------------------------------------------------------------------
    @checked
    def set_dynamic_range(self, rng: Range, force: bool = False) -> Status:
        """Set the float range ``[min, max]`` that quantizes this tensor.

        A range set here outranks calibration and ``custom_ranges`` (see docs/calibration.md).
        ``force`` is accepted for MagicMind compatibility: a range is always applied as given.
        """
        if not isinstance(rng, Range):
            raise MMError(
                f"tensor {self._name!r}: set_dynamic_range takes mm.Range(min, max), not {rng!r}"
            )
        if rng.per_axis:
            return self.set_dynamic_range_per_axis(
                [Range(a, b) for a, b in zip(_listed(rng.min), _listed(rng.max))],
                force,  # type: ignore[arg-type]
            )
        self._range = rng
        self._user_range = True
        return Status.OK()

    @checked
    def set_dynamic_range_per_axis(self, ranges: Sequence[Range], force: bool = False) -> Status:
        """One range per channel (the last axis in NHWC, axis 0 for weights)."""
        if not ranges or not all(isinstance(r, Range) and not r.per_axis for r in ranges):
            raise MMError(
                f"tensor {self._name!r}: set_dynamic_range_per_axis takes a non-empty list of "
                "scalar mm.Range values, one per channel"
            )
        lo = [float(r.min) for r in ranges]  # type: ignore[arg-type]
        hi = [float(r.max) for r in ranges]  # type: ignore[arg-type]
        self._range = Range(lo, hi)
        self._user_range = True
        return Status.OK()

    def get_dynamic_range(self) -> Range | None:
        return self._range

    @property
    def has_user_range(self) -> bool:
        """True when the range came from ``set_dynamic_range`` rather than calibration."""
        return self._user_range and self._range is not None

    def _set_calibrated_range(self, rng: Range | None) -> None:
        self._range = rng
        self._user_range = False

    def __repr__(self) -> str:
        return f"ITensor({self._name!r}, {self._dims}, {self._dtype.name})"


def _listed(v: float | list[float]) -> list[float]:
    return v if isinstance(v, list) else [v]
