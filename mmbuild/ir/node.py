"""INode: the base of every node class, and the hooks an op declaration fills in.

An op is declared once, as one ``INode`` subclass (see ``mmbuild/ops``): its MagicMind class name,
the ``add_i_*`` method that creates it (``create``), its attributes with defaults and setters, its
shape rule (``infer``), its fp32 numpy reference (``reference``) and its mixed-precision
``policy``. Everything else (passes, precision planning, lowering, docs) reads these.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmbuild._aliases import CamelCaseAliases
from mmbuild._checks import checked
from mmbuild.errors import Code, MMError, Status
from mmbuild.ir.types import DataType

if TYPE_CHECKING:
    from mmbuild.ir.network import Network
    from mmbuild.ir.tensor import ITensor


class Policy(enum.Enum):
    """How an op takes part in mixed precision (TVM's ALWAYS / FOLLOW / NEVER)."""

    ALWAYS = "always"  # its quantizable inputs may run in QINT8 / QINT16
    FOLLOW = "follow"  # moves data without arithmetic: runs in the type of its input
    NEVER = "never"  # computes in float (float32 or float16), never quantized


PRECISION_TYPES = (DataType.FLOAT32, DataType.FLOAT16, DataType.QINT8, DataType.QINT16)


@dataclass(frozen=True)
class TensorSpec:
    """What shape inference knows of a tensor: its dimensions (-1 = run time) and type."""

    dims: tuple[int, ...]
    dtype: DataType

    @property
    def rank(self) -> int:
        return len(self.dims)


class INode(CamelCaseAliases):
    """A node of a network. Subclasses are op declarations; see the module docstring."""

    node_type: ClassVar[str] = "INode"
    op: ClassVar[str] = ""
    policy: ClassVar[Policy] = Policy.NEVER
    quantizable_inputs: ClassVar[tuple[int, ...]] = ()
    input_names: ClassVar[tuple[str, ...]] = ("input",)
    defaults: ClassVar[dict[str, Any]] = {}
    # True when the output type is an attribute of the node (a cast), not chosen by precision
    fixed_output_type: ClassVar[bool] = False

    def __init__(
        self, network: Network, name: str, inputs: list[ITensor], attrs: dict[str, Any]
    ) -> None:
        self._network = network
        self._name = name
        self._inputs = list(inputs)
        self._outputs: list[ITensor] = []
        self.attrs: dict[str, Any] = {**self.defaults, **attrs}
        self._precisions: dict[int, DataType] = {}
        self._output_types: dict[int, DataType] = {}

    # -- declaration hooks -------------------------------------------------------------------
    @classmethod
    def create(cls, network: Network, *args: Any, **kwargs: Any) -> INode:
        """The ``add_i_*`` method of this op; the default takes the inputs positionally."""
        return network._add_node(cls, list(args), dict(kwargs))

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        """Output specs for these input specs; raise ``self.error(...)`` when they cannot fit."""
        raise NotImplementedError

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """The fp32 numpy reference: the definition of the op's result."""
        raise NotImplementedError

    def validate(self) -> None:
        """Checks that wait for the build (the builder calls it on every node before its passes);
        e.g. a layout or transpose that only the input shapes implied and no setter confirmed."""

    def const_inputs(self) -> tuple[int, ...]:
        """Input slots that must be constants (weights); checked when the node is added."""
        return ()

    # -- MagicMind API -----------------------------------------------------------------------
    def get_node_name(self) -> str:
        return self._name

    @checked
    def set_node_name(self, name: str) -> Status:
        self._network._rename_node(self, name)
        return Status.OK()

    def get_node_type(self) -> str:
        return self.node_type

    def get_input_count(self) -> int:
        return len(self._inputs)

    def get_output_count(self) -> int:
        return len(self._outputs)

    @checked
    def get_input(self, i: int) -> ITensor:
        return self._inputs[self._check_index(i, len(self._inputs), "input")]

    @checked
    def get_output(self, i: int) -> ITensor:
        return self._outputs[self._check_index(i, len(self._outputs), "output")]

    @checked
    def update_input(self, i: int, tensor: ITensor) -> Status:
        """Connect input ``i`` to another tensor of the same network; shapes are re-inferred."""
        self._check_index(i, len(self._inputs), "input")
        self._network._update_input(self, i, tensor)
        return Status.OK()

    @checked
    def set_precision(self, i: int, dtype: DataType) -> Status:
        """Run input ``i`` in ``dtype`` (FLOAT32, FLOAT16, QINT8 or QINT16), whatever the mode.

        Whether the op allows it is checked when the model is built, where a refusal names this
        node and slot.
        """
        self._check_index(i, len(self._inputs), "input")
        self._precisions[i] = self._check_precision(dtype, f"set_precision({i}, ...)")
        return Status.OK()

    @checked
    def get_precision(self, i: int) -> DataType:
        """The precision set for input ``i``, or the input's data type when none was set."""
        self._check_index(i, len(self._inputs), "input")
        return self._precisions.get(i, self._inputs[i].get_data_type())

    @checked
    def set_output_type(self, i: int, dtype: DataType) -> Status:
        """Make output ``i`` of this node ``dtype`` (FLOAT32 or FLOAT16, or QINT8 / QINT16)."""
        self._check_index(i, len(self._outputs), "output")
        dtype = self._check_precision(dtype, f"set_output_type({i}, ...)")
        self._network._set_output_type(self, i, dtype)
        return Status.OK()

    @checked
    def get_output_type(self, i: int) -> DataType:
        self._check_index(i, len(self._outputs), "output")
        return self._outputs[i].get_data_type()

    @property
    def precision_overrides(self) -> dict[int, DataType]:
        return dict(self._precisions)

    @property
    def output_type_overrides(self) -> dict[int, DataType]:
        return dict(self._output_types)

    @property
    def inputs(self) -> list[ITensor]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[ITensor]:
        return list(self._outputs)

    @property
    def name(self) -> str:
        return self._name

    @property
    def network(self) -> Network:
        return self._network

    # -- helpers for declarations ------------------------------------------------------------
    def error(self, message: str, code: Code = Code.INVALID_ARGUMENT) -> MMError:
        """An MMError whose message starts with this node's type and name."""
        return MMError(f"{self.node_type} {self._name!r}: {message}", code)

    def input_label(self, i: int) -> str:
        """'input 1 (filter)': how messages name an input slot."""
        name = self.input_names[i] if i < len(self.input_names) else f"input{i}"
        return f"input {i} ({name})"

    def int_args(
        self, values: Any, count: int | None, call: str, minimum: int | None = None
    ) -> tuple[int, ...]:
        """Validate integer setter arguments; a refusal names this node and the call."""
        try:
            return check_ints(values, count, call, minimum)
        except MMError as exc:
            raise self.error(str(exc)) from None

    def _set(self, **attrs: Any) -> Status:
        """Change attributes; the node and everything downstream is re-inferred or nothing is."""
        self._network._set_attrs(self, attrs)
        return Status.OK()

    def _check_index(self, i: int, count: int, what: str) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < count:
            raise self.error(
                f"{what} index {i!r} is out of range; this node has {count} {what}s "
                f"(0..{count - 1})",
                Code.OUT_OF_RANGE,
            )
        return int(i)

    def _check_precision(self, dtype: Any, call: str) -> DataType:
        if dtype not in PRECISION_TYPES:
            allowed = ", ".join(f"mm.DataType.{d.name}" for d in PRECISION_TYPES)
            raise self.error(f"{call}: {dtype!r} is not a precision; use one of {allowed}")
        return dtype

    def __repr__(self) -> str:
        return f"{self.node_type}({self._name!r})"


def check_ints(
    values: Any, count: int | None, what: str, minimum: int | None = None
) -> tuple[int, ...]:
    """Validate ``count`` integers (each >= ``minimum``); ``what`` names the call in errors."""
    seq = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    if count is not None and len(seq) != count:
        raise MMError(f"{what} takes {count} integers, got {len(seq)}: {seq!r}")
    out = []
    for v in seq:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise MMError(f"{what}: {v!r} is not an integer")
        if minimum is not None and v < minimum:
            raise MMError(f"{what}: {int(v)} is below {minimum}; use values >= {minimum}")
        out.append(int(v))
    return tuple(out)
