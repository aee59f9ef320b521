"""Network: the graph of nodes and tensors, built node by node with shapes inferred as it grows.

Every change (adding a node, a setter, ``update_input``, a new input shape) is checked first and
applied whole: a refused change leaves the network exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmbuild._aliases import CamelCaseAliases
from mmbuild._checks import checked
from mmbuild.errors import Code, MMError, Status
from mmbuild.ir.node import INode, TensorSpec
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import DataType, Dims


class Network(CamelCaseAliases):
    """A network under construction.

    >>> import mmbuild as mm
    >>> net = mm.Network()
    >>> x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 8]))
    >>> y = net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0)
    >>> net.mark_output(y).ok(), y.get_dimension()
    (True, Dims([-1, 8]))

    The ``add_i_*_node`` methods come from the op declarations in ``mmbuild.ops``.
    """

    def __init__(self) -> None:
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._nodes: list[INode] = []
        self._node_names: dict[str, INode] = {}
        self._tensor_names: dict[str, ITensor] = {}
        self._unshaped: set[ITensor] = set()  # inputs added without dims, not yet set
        # what the last calibration's ranges were taken on: None before any, "" without
        # cross-layer equalisation, else the digest of its equalised weights (quant.equalize)
        self._calibration_equalization: str | None = None
        # per conv / inner product name, the mean of its input per filter tap, from the last
        # calibration from data with precision_config.bias_correction (quant.bias_correction)
        self._calibration_means: dict[str, Any] | None = None

    # -- inputs and outputs ------------------------------------------------------------------
    @checked
    def add_input(self, dtype: DataType, dims: Dims | Sequence[int] | None = None) -> ITensor:
        """A network input; ``-1`` in ``dims`` marks a dimension given at run time.

        Without ``dims`` (MagicMind's ``add_input(dtype)``) the shape is not known yet: give it
        with ``tensor.set_dimension(mm.Dims([...]))`` before a node reads the input.
        """
        if not isinstance(dtype, DataType):
            raise MMError(f"add_input: the data type must be an mm.DataType, not {dtype!r}")
        name = self._free_name("input", self._tensor_names)
        tensor = ITensor(self, name, Dims([]) if dims is None else Dims(dims), dtype)
        if dims is None:
            self._unshaped.add(tensor)
        self._inputs.append(tensor)
        self._tensor_names[name] = tensor
        return tensor

    def check_input_shapes_known(self, what: str) -> None:
        """Refuse (naming the input) an input added without dims whose shape was never set."""
        for t in self._inputs:
            if t in self._unshaped:
                raise MMError(
                    f"{what}: network input {self._inputs.index(t)} ({t.name!r}) was added "
                    "without dimensions; give them with "
                    f"net.get_input({self._inputs.index(t)}).set_dimension(mm.Dims([...]))"
                )

    @checked
    def get_input(self, i: int) -> ITensor:
        return self._inputs[_index(i, len(self._inputs), "input")]

    def get_input_count(self) -> int:
        return len(self._inputs)

    @checked
    def mark_output(self, tensor: ITensor) -> Status:
        """Make ``tensor`` an output of the network, in the order outputs are marked."""
        self._own(tensor, "mark_output")
        if tensor in self._outputs:
            raise MMError(
                f"mark_output: tensor {tensor.name!r} is already output "
                f"{self._outputs.index(tensor)}; mark each tensor once"
            )
        self._outputs.append(tensor)
        return Status.OK()

    @checked
    def unmark_output(self, tensor: ITensor) -> Status:
        self._own(tensor, "unmark_output")
        if tensor not in self._outputs:
            raise MMError(
                f"unmark_output: tensor {tensor.name!r} is not an output of the network",
                Code.NOT_FOUND,
            )
        self._outputs.remove(tensor)
        return Status.OK()

    @checked
    def get_output(self, i: int) -> ITensor:
        return self._outputs[_index(i, len(self._outputs), "output")]

    def get_output_count(self) -> int:
        return len(self._outputs)

    # -- nodes -------------------------------------------------------------------------------
    def get_all_nodes_in_network(self) -> list[INode]:
        """Every node, producers before consumers."""
        return list(self._nodes)

    @checked
    def find_node_by_name(self, name: str) -> INode | None:
        return self._node_names.get(name)

    @checked
    def find_tensor_by_name(self, name: str) -> ITensor | None:
        return self._tensor_names.get(name)

    @property
    def inputs(self) -> list[ITensor]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[ITensor]:
        return list(self._outputs)

    @property
    def nodes(self) -> list[INode]:
        return list(self._nodes)

    def tensors(self) -> list[ITensor]:
        """Every tensor: the inputs, then each node's outputs in node order."""
        return self._inputs + [t for n in self._nodes for t in n._outputs]

    # -- internals used by INode, ITensor and the op declarations ------------------------------
    def _add_node(
        self, cls: type[INode], inputs: list[ITensor | None], attrs: dict[str, Any]
    ) -> INode:
        """Check, infer and append one node; on any refusal nothing is added."""
        call = f"add_i_{cls.op}_node"
        while inputs and inputs[-1] is None:
            inputs = inputs[:-1]
        for i, t in enumerate(inputs):
            label = cls.input_names[i] if i < len(cls.input_names) else f"input{i}"
            if t is None:
                raise MMError(f"{call}: input {i} ({label}) is missing; pass an ITensor")
            self._own(t, f"{call}: input {i} ({label})")
            if t in self._unshaped:
                self.check_input_shapes_known(call)
        name = self._free_name(cls.op, self._node_names)
        node = cls(self, name, inputs, attrs)  # type: ignore[arg-type]
        specs = _infer(node, [_spec(t) for t in node._inputs])
        for i, spec in enumerate(specs):
            t_name = self._free_name(f"{name}:{i}", self._tensor_names, numbered=False)
            t = ITensor(self, t_name, Dims(spec.dims), spec.dtype, node, i)
            node._outputs.append(t)
            self._tensor_names[t.name] = t
        for t in node._inputs:
            if node not in t._consumers:
                t._consumers.append(node)
        self._nodes.append(node)
        self._node_names[name] = node
        return node

    def _set_attrs(self, node: INode, attrs: dict[str, Any]) -> None:
        old = dict(node.attrs)
        node.attrs.update(attrs)
        try:
            self._reinfer({node: None})
        except MMError:
            node.attrs = old
            raise

    def _set_input_spec(self, tensor: ITensor, dims: Dims, dtype: DataType) -> None:
        if tensor in self._unshaped and dims is tensor.get_dimension():
            tensor._dtype = dtype  # set_data_type before set_dimension: still no shape
            return
        self._reinfer({}, {tensor: TensorSpec(tuple(dims), dtype)})
        self._unshaped.discard(tensor)

    def _set_output_type(self, node: INode, i: int, dtype: DataType) -> None:
        # a precision choice: shape inference keeps working on the logical (inferred) types
        node._output_types[i] = dtype

    def _update_input(self, node: INode, i: int, tensor: ITensor) -> None:
        label = f"{node.node_type} {node.name!r}: update_input({i}, ...)"
        self._own(tensor, label)
        producer = tensor.get_producer()
        if producer is not None and node in self._upstream(producer):
            raise MMError(
                f"{label}: tensor {tensor.name!r} is computed from this node's own output; "
                "the update would make a cycle"
            )
        old_tensor, old_nodes = node._inputs[i], list(self._nodes)
        node._inputs[i] = tensor
        self._nodes = self._topological(self._nodes)
        try:
            self._reinfer({node: None})
        except MMError:
            node._inputs[i], self._nodes = old_tensor, old_nodes
            raise
        if old_tensor not in node._inputs and node in old_tensor._consumers:
            old_tensor._consumers.remove(node)
        if node not in tensor._consumers:
            tensor._consumers.append(node)

    def _reinfer(
        self, changed_nodes: dict[INode, None], changed: dict[ITensor, TensorSpec] | None = None
    ) -> None:
        """Re-infer the changed nodes and everything downstream; commit only if all of it fits."""
        specs: dict[ITensor, TensorSpec] = dict(changed or {})
        for node in self._nodes:
            if node in changed_nodes or any(t in specs for t in node._inputs):
                outs = _infer(node, [specs.get(t) or _spec(t) for t in node._inputs])
                if len(outs) != len(node._outputs):
                    raise node.error(
                        f"the change would give this node {len(outs)} outputs instead of "
                        f"{len(node._outputs)}; make a new node instead"
                    )
                for t, s in zip(node._outputs, outs):
                    if s != _spec(t):
                        specs[t] = s
        for t, s in specs.items():
            t._dims, t._dtype = Dims(s.dims), s.dtype

    def _upstream(self, node: INode) -> set[INode]:
        seen: set[INode] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(p for t in n._inputs if (p := t.get_producer()) is not None)
        return seen

    def _topological(self, nodes: list[INode]) -> list[INode]:
        done: set[INode] = set()
        order: list[INode] = []

        def visit(n: INode) -> None:
            if n in done:
                return
            done.add(n)
            for t in n._inputs:
                p = t.get_producer()
                if p is not None:
                    visit(p)
            order.append(n)

        for n in nodes:
            visit(n)
        return order

    def _rename_node(self, node: INode, name: str) -> None:
        _rename(self._node_names, node, node._name, name, "node")
        node._name = name

    def _rename_tensor(self, tensor: ITensor, name: str) -> None:
        _rename(self._tensor_names, tensor, tensor._name, name, "tensor")
        tensor._name = name

    def _own(self, tensor: Any, where: str) -> ITensor:
        if not isinstance(tensor, ITensor):
            hint = (
                " (make a constant with add_i_const_node and pass its get_output(0))"
                if type(tensor).__module__ == "numpy"
                else ""
            )
            raise MMError(f"{where}: expected an ITensor, got {type(tensor).__name__}{hint}")
        if tensor.network is not self:
            raise MMError(
                f"{where}: tensor {tensor.name!r} belongs to another network; "
                "use tensors of this network"
            )
        return tensor

    @staticmethod
    def _free_name(stem: str, taken: dict[str, Any], numbered: bool = True) -> str:
        """``stem_0``, ``stem_1``, ...: deterministic, so the same code gives the same names."""
        if not numbered and stem not in taken:
            return stem
        i = 0
        while f"{stem}_{i}" in taken:
            i += 1
        return f"{stem}_{i}"

    def __repr__(self) -> str:
        return (
            f"Network({len(self._inputs)} inputs, {len(self._nodes)} nodes, "
            f"{len(self._outputs)} outputs)"
        )


def _spec(t: ITensor) -> TensorSpec:
    return TensorSpec(tuple(t._dims), t._dtype)


def _infer(node: INode, specs: list[TensorSpec]) -> list[TensorSpec]:
    return [TensorSpec(tuple(int(d) for d in s.dims), s.dtype) for s in node.infer(specs)]


def _index(i: int, count: int, what: str) -> int:
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
        raise MMError(
            f"network {what} index {i!r} is out of range; the network has {count} {what}s",
            Code.OUT_OF_RANGE,
        )
    return i


def _rename(table: dict[str, Any], obj: Any, old: str, new: str, what: str) -> None:
    if not isinstance(new, str) or not new:
        raise MMError(f"{what} {old!r}: a name must be a non-empty string, not {new!r}")
    if new in table and table[new] is not obj:
        raise MMError(
            f"{what} {old!r}: the name {new!r} is taken by another {what}; names are unique"
        )
    del table[old]
    table[new] = obj
