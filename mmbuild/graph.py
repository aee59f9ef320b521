"""The builder's working copy of a network: plain records that passes rewrite and lowering reads.

``Graph.from_network(network, plan)`` copies a user's ``Network`` (which the build never edits)
together with its precision plan: every node becomes a :class:`Node` (op name, attributes,
input and output tensor names, the precision of each input slot and the type of each output),
every tensor a :class:`Tensor` (dims, runtime type, the value of a constant). Constant nodes
disappear: their tensors carry ``value``.

A node's attributes are those of its op declaration, plus what passes add (``activation`` for
a fused activation). ``Node.declaration()`` rebuilds the op's ``INode`` from them, so shape
inference and the numpy reference are the op's own, also after a model is loaded from a file.

>>> import mmbuild as mm
>>> net = mm.Network()
>>> x = net.add_input(mm.DataType.FLOAT32, mm.Dims([2]))
>>> _ = net.mark_output(net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0))
>>> g = Graph.from_network(net)
>>> [(n.name, n.op, n.inputs, n.outputs) for n in g.nodes]
[('activation_0', 'activation', ['input_0'], ['activation_0:0'])]
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mmbuild.errors import Code, MMError
from mmbuild.ir.node import INode, TensorSpec
from mmbuild.ir.types import DataType, Range
from mmbuild.ops.registry import get_op

if TYPE_CHECKING:
    from mmbuild.ir.network import Network
    from mmbuild.ir.tensor import ITensor
    from mmbuild.precision import PrecisionPlan


@dataclass
class Tensor:
    """A tensor of the graph: dims (-1 = known at run time), runtime type, constant value."""

    name: str
    dims: tuple[int, ...]
    dtype: DataType
    value: np.ndarray | None = None
    range: Range | None = None

    @property
    def is_const(self) -> bool:
        return self.value is not None


@dataclass
class Node:
    """One op application: tensor names in, tensor names out (absent optional inputs, such as
    a missing bias, are not listed)."""

    name: str
    op: str
    attrs: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    precisions: list[DataType]
    output_types: list[DataType]
    notes: list[str] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)  # names of the nodes folded into this one

    @property
    def node_type(self) -> str:
        return get_op(self.op).node_type

    def declaration(self) -> INode:
        """The op's INode with these attributes, detached from any network (for ``infer`` and
        ``reference``)."""
        cls = get_op(self.op)
        return cls(None, self.name, [], self.attrs)  # type: ignore[arg-type]

    @property
    def compute_precision(self) -> DataType:
        """What the node computes in: its first quantized input's type, else its first float
        input's precision, else its first output type."""
        cls = get_op(self.op)
        for i in cls.quantizable_inputs:
            if i < len(self.precisions) and self.precisions[i].is_quantized:
                return self.precisions[i]
        for p in self.precisions:
            if p.is_float:
                return p
        return self.output_types[0] if self.output_types else DataType.FLOAT32


@dataclass
class Graph:
    tensors: dict[str, Tensor]
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    # the config's quantization choices: weight_quant_granularity ("per_tensor" | "per_axis"),
    # weight_quant_range ("full" | "reduced"), activation_quant_algo ("symmetric" | "asymmetric"),
    # activation_quant_mode ("static" | "dynamic")
    options: dict[str, str] = field(
        default_factory=lambda: {
            "weight_quant_granularity": "per_tensor",
            "weight_quant_range": "full",
            "activation_quant_algo": "symmetric",
            "activation_quant_mode": "static",
        }
    )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_network(cls, network: Network, plan: PrecisionPlan | None = None) -> Graph:
        """Copy ``network`` with ``plan``'s precisions (all float32 when ``plan`` is None).

        Every tensor's range is the one the plan resolved (``PrecisionPlan.tensor_ranges``, from
        ``precision.resolve_range``), never read from the network again. Without a plan (and so
        without a config) that is the tensor's own range, set or calibrated.
        """
        graph = cls({}, [], [t.name for t in network.inputs], [t.name for t in network.outputs])

        def range_of(t: ITensor) -> Range | None:
            return plan.tensor_ranges.get(t.name) if plan is not None else t.get_dynamic_range()

        for t in network.inputs:
            graph.tensors[t.name] = Tensor(
                t.name, tuple(t.get_dimension()), t.get_data_type(), range=range_of(t)
            )
        for inode in network.nodes:
            decided = plan[inode] if plan is not None else None
            out_types = (
                list(decided.outputs) if decided else [t.get_data_type() for t in inode.outputs]
            )
            if inode.op == "const":
                t = inode.outputs[0]
                value = np.asarray(inode.attrs["value"])
                graph.tensors[t.name] = Tensor(
                    t.name, value.shape, t.get_data_type(), value, range=range_of(t)
                )
                continue
            for t, dtype in zip(inode.outputs, out_types):
                graph.tensors[t.name] = Tensor(
                    t.name, tuple(t.get_dimension()), dtype, range=range_of(t)
                )
            graph.nodes.append(
                Node(
                    name=inode.get_node_name(),
                    op=inode.op,
                    attrs=dict(inode.attrs),
                    inputs=[t.name for t in inode.inputs],
                    outputs=[t.name for t in inode.outputs],
                    precisions=(
                        list(decided.inputs)
                        if decided
                        else [t.get_data_type() for t in inode.inputs]
                    ),
                    output_types=out_types,
                    notes=list(decided.notes) if decided else [],
                )
            )
        return graph

    # -- queries -----------------------------------------------------------------------------
    def producer(self, tensor: str) -> Node | None:
        for node in self.nodes:
            if tensor in node.outputs:
                return node
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise MMError(f"the graph has no node {name!r}", Code.NOT_FOUND)

    def value(self, tensor: str) -> np.ndarray | None:
        """The constant value of ``tensor``, or None when it is not a constant."""
        return self.tensors[tensor].value

    def is_private(self, tensor: str) -> bool:
        """True when only one node reads ``tensor`` and it is not a network output, so that a
        pass may fold its producer into that reader."""
        return tensor not in self.outputs and len(self.consumers(tensor)) == 1

    # -- edits -------------------------------------------------------------------------------
    def remove(self, node: Node) -> None:
        self.nodes.remove(node)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` (and the network outputs) read ``new``."""
        for n in self.nodes:
            n.inputs = [new if t == old else t for t in n.inputs]
        self.outputs = [new if t == old else t for t in self.outputs]

    def add_const(self, name: str, value: np.ndarray, dtype: DataType | None = None) -> str:
        """A new constant tensor with a name not yet used (``name``, ``name_1``, ...)."""
        unique, k = name, 0
        while unique in self.tensors:
            k += 1
            unique = f"{name}_{k}"
        dtype = dtype or DataType.from_numpy(value.dtype)
        self.tensors[unique] = Tensor(unique, tuple(value.shape), dtype, np.asarray(value))
        return unique

    def unique_node_name(self, name: str) -> str:
        taken = {n.name for n in self.nodes}
        unique, k = name, 0
        while unique in taken:
            k += 1
            unique = f"{name}_{k}"
        return unique

    def prune_tensors(self) -> None:
        """Forget tensors that no node, input or output mentions any more."""
        used = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            used.update(t for t in n.inputs if t is not None)
            used.update(n.outputs)
        for name in [k for k in self.tensors if k not in used]:
            del self.tensors[name]

    def infer_dims(self) -> None:
        """Re-run every node's shape rule in order (after a pass changed attributes). A float
        tensor is seen in the float precision its slot reads it in (``insert_conversions``
        casts it there later), so a float16 add of a float32 network input infers."""
        for node in self.nodes:
            specs = [
                TensorSpec(self.tensors[t].dims, _as_read(self.tensors[t].dtype, p))
                for t, p in zip(node.inputs, node.precisions)
            ]
            outs = node.declaration().infer(specs)
            for name, spec in zip(node.outputs, outs):
                self.tensors[name].dims = spec.dims

    # -- evaluation --------------------------------------------------------------------------
    def run_reference(
        self, inputs: Sequence[np.ndarray], keep_all: bool = False
    ) -> dict[str, np.ndarray]:
        """Evaluate in fp32 numpy with each op's reference (fused activations applied)."""
        values: dict[str, np.ndarray] = {
            name: np.asarray(a) for name, a in zip(self.inputs, inputs)
        }
        for t in self.tensors.values():
            if t.value is not None:
                values[t.name] = t.value
        for node in self.nodes:
            args = [_as_float32(values[t]) for t in node.inputs]
            for name, r in zip(node.outputs, reference_outputs(node, args)):
                values[name] = r
        wanted: Iterable[str] = values.keys() if keep_all else self.outputs
        return {k: values[k] for k in wanted}


def reference_outputs(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The fp32 reference of one graph node: its op's reference, then a fused activation."""
    results = [np.asarray(r) for r in node.declaration().reference(*args)]
    act = node.attrs.get("activation")
    if act is not None:
        results = [apply_activation(r, act) for r in results]
    return [r.astype(np.float32) if r.dtype.kind == "f" else r for r in results]


def apply_activation(y: np.ndarray, act: Mapping[str, Any]) -> np.ndarray:
    """A fused activation (the dicts of ``mmbuild.passes.fuse``: ``relu``, ``clip`` (lo, hi),
    ``leaky_relu`` (alpha, and an optional floor ``lo``), ``hard_sigmoid`` (alpha, beta),
    ``hard_swish``; any of them with an affine ``* mul + add`` after it) applied in float32
    exactly as the epilogues do (``mmbuild.kernels.cpu.activate``): the clamps by comparisons,
    so NaN passes and -0.0 stays. Example: hard_swish of [-4, 1.5] is [-0, 1.125]; with
    ``"mul": 2.0, "add": 1.0`` [1, 3.25]."""
    y = _activation(np.asarray(y, dtype=np.float32), act)
    mul, add = np.float32(act.get("mul", 1.0)), np.float32(act.get("add", -0.0))
    return y * mul + add if mul != 1 or add != 0 else y  # the identity affine is skipped


def _activation(y: np.ndarray, act: Mapping[str, Any]) -> np.ndarray:
    f32 = np.float32
    fn = act["function"]
    if fn == "relu":
        return np.where(y < 0, f32(0), y)
    if fn == "clip":
        lo, hi = f32(act["lo"]), f32(act["hi"])
        return np.where(y < lo, lo, np.where(y > hi, hi, y))
    if fn == "leaky_relu":
        y = np.where(y < 0, y * f32(act["alpha"]), y)
        if "lo" in act:  # a floor after it (openWakeWord's max(leaky_relu(x), -0.4))
            lo = f32(act["lo"])
            y = np.where(y < lo, lo, y)
        return y
    if fn in ("hard_sigmoid", "hard_swish"):
        gate = fn == "hard_swish"
        alpha, beta = (1 / 6, 0.5) if gate else (act["alpha"], act["beta"])
        z = y * f32(alpha) + f32(beta)
        z = np.where(z < 0, f32(0), np.where(z > 1, f32(1), z))
        return y * z if gate else z
    raise MMError(f"unknown fused activation {fn!r}", Code.INTERNAL)


def _as_read(dtype: DataType, precision: DataType) -> DataType:
    return precision if dtype.is_float and precision.is_float else dtype


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype == np.float16 else a


# -- attributes as JSON ----------------------------------------------------------------------
def _enum_types() -> dict[str, type[enum.Enum]]:
    import mmbuild.ir.types as ir_types
    import mmbuild.ops as ops

    found: dict[str, type[enum.Enum]] = {}
    for module in (ir_types, ops):
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, enum.Enum):
                found[obj.__name__] = obj
    return found


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as JSON values: enums become ``{"enum": class, "name": member}``, tuples
    lists, numpy scalars Python numbers. ``decode_attrs`` inverts it."""
    return {k: _encode(v) for k, v in attrs.items()}


def decode_attrs(data: Mapping[str, Any]) -> dict[str, Any]:
    enums = _enum_types()
    return {k: _decode(v, enums) for k, v in data.items()}


def _encode(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return {"enum": type(v).__name__, "name": v.name}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {"dict": {k: _encode(x) for k, x in v.items()}}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        raise MMError("an array attribute cannot be written as JSON", Code.INTERNAL)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise MMError(f"attribute value {v!r} cannot be written as JSON", Code.INTERNAL)


def _decode(v: Any, enums: Mapping[str, type[enum.Enum]]) -> Any:
    if isinstance(v, list):
        return tuple(_decode(x, enums) for x in v)
    if isinstance(v, dict):
        if "enum" in v:
            cls = enums.get(v["enum"])
            if cls is None or v.get("name") not in cls.__members__:
                raise MMError(f"unknown enum value {v!r} in a model file", Code.INVALID_ARGUMENT)
            return cls[v["name"]]
        if "dict" in v and isinstance(v["dict"], dict):
            return {k: _decode(x, enums) for k, x in v["dict"].items()}
        raise MMError(f"unreadable attribute {v!r} in a model file", Code.INVALID_ARGUMENT)
    return v
