"""The graph walk: ONNX graph -> nodes of an ``mm.Network``, one ONNX node at a time.

For each node, in file order: if every input is known at parse time the node is folded
(``fold``); a shape computation over run-time dimensions is folded symbolically; otherwise the
import table's handler adds mmbuild nodes. Names are the ONNX names: the node that computes an
ONNX output takes the ONNX node's name and the output's tensor name; helper nodes a handler adds
are named ``<onnx node>/<op>``. Constants (initializers, ``Constant``, folded values) become
const nodes, named after their ONNX value, only when a computing node reads them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mmbuild.errors import Code, MMError
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import DataType, Dims
from mmbuild.parser import fold, patterns
from mmbuild.parser.table import IMPORTS, OpEntry, UnsupportedFeatureError, load_table
from mmbuild.parser.values import Value

log = logging.getLogger(__name__)

# ONNX TensorProto element types -> mmbuild data types
ONNX_TYPES = {
    1: DataType.FLOAT32,
    10: DataType.FLOAT16,
    3: DataType.INT8,
    5: DataType.INT16,
    6: DataType.INT32,
    7: DataType.INT64,
    2: DataType.UINT8,
    9: DataType.BOOL,
}
MIN_OPSET = 7


class Importer:
    """Fills ``network`` (empty) from ``model`` (an ``onnx.ModelProto``); see the module doc."""

    def __init__(
        self, model: Any, network: Network, source: str, input_dtypes: list[DataType] | None
    ) -> None:
        self.model = model
        self.net = network
        self.source = source
        self.input_dtypes = input_dtypes
        self.values: dict[str, Value] = {}
        self.claimed_nodes: set[INode] = set()
        self.recognised: set[int] = set()  # ids of nodes that stand for a recognised chain
        self.opset = self._opset()
        load_table()

    def _opset(self) -> int:
        import onnx

        newest = onnx.defs.onnx_opset_version()
        versions = {o.domain or "ai.onnx": o.version for o in self.model.opset_import}
        opset = versions.get("ai.onnx", versions.get("", 1))
        if not MIN_OPSET <= opset <= newest:
            raise MMError(
                f"{self.source}: the model uses ONNX opset {opset}; mmbuild imports opsets "
                f"{MIN_OPSET} to {newest} (convert it with onnx.version_converter)",
                Code.UNAVAILABLE,
            )
        return opset

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> None:
        from onnx import numpy_helper

        graph = self.model.graph
        for init in graph.initializer:
            self.values[init.name] = Value(init.name, array=_checked(numpy_helper.to_array(init)))
        inputs = [i for i in graph.input if i.name not in self.values]
        if self.input_dtypes is not None and len(self.input_dtypes) != len(inputs):
            raise MMError(
                f"{self.source}: onnx-input-dtypes lists {len(self.input_dtypes)} types but the "
                f"model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); give "
                "one per input"
            )
        for k, info in enumerate(inputs):
            self._add_input(k, info)
        nodes, self.recognised = patterns.layer_norm_chains(self.model)
        for node in nodes:
            self.import_node(node)
        for out in graph.output:
            self._mark_output(out.name)

    def _add_input(self, k: int, info: Any) -> None:
        tt = info.type.tensor_type
        if self.input_dtypes is not None:
            dtype = self.input_dtypes[k]
        elif tt.elem_type in ONNX_TYPES:
            dtype = ONNX_TYPES[tt.elem_type]
        else:
            raise MMError(
                f"{self.source}: input {k} ({info.name!r}) has ONNX element type "
                f"{tt.elem_type}, which mmbuild does not take; give its type with "
                "set_model_param('onnx-input-dtypes', [...])",
                Code.UNAVAILABLE,
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        tensor = self.net.add_input(dtype, Dims(dims))
        self._claim_tensor(tensor, info.name)
        self.values[info.name] = Value(info.name, tensor=tensor)

    def import_node(self, node: Any) -> None:
        op, name = node.op_type, node.name or f"{node.op_type}_{len(self.claimed_nodes)}"
        where = f"ONNX node {name!r} ({op}, opset {self.opset})"
        if node.domain not in ("", "ai.onnx"):
            raise self._unknown(op, name, f" of domain {node.domain!r}")
        ins = [self.values.get(i) if i else None for i in node.input]
        for i, (tname, v) in enumerate(zip(node.input, ins)):
            if tname and v is None:
                raise MMError(f"{where}: input {i} ({tname!r}) is not computed before it")
        entry = IMPORTS.get(op)
        if entry is not None and self.opset < entry.since and id(node) not in self.recognised:
            raise MMError(
                f"{where}: mmbuild imports {op} from opset {entry.since}; opset {self.opset} of "
                f"{op} is not supported (convert the model to opset {entry.since} or newer)",
                Code.UNAVAILABLE,
            )
        ctx = NodeContext(self, node, name, ins, entry)
        outs = fold.try_fold(ctx)
        if outs is None:
            if entry is None or entry.handler is None:
                if entry is None:
                    raise self._unknown(op, name, "")
                raise UnsupportedFeatureError(
                    f"{where}: {op} is imported only when its inputs are known at parse time, "
                    "and here they are computed at run time",
                    op,
                    "runtime_inputs",
                )
            before = len(self.net.nodes)
            try:
                outs = entry.handler(ctx)
            except UnsupportedFeatureError:
                raise
            except MMError as exc:
                raise MMError(f"{where}: {exc}", exc.code) from None
            self._name_new(ctx, before, outs)
        for oname, v in zip(node.output, outs):
            if oname:
                value = v if isinstance(v, Value) else Value(oname, tensor=v)
                value.name = oname
                self.values[oname] = value

    def _name_new(self, ctx: NodeContext, before: int, outs: list[Any]) -> None:
        new = self.net.nodes[before:]
        out_tensors = {
            id(v.tensor if isinstance(v, Value) else v): o
            for o, v in zip(ctx.node.output, outs)
            if o and (v.tensor if isinstance(v, Value) else v) is not None
        }
        main = None
        for n in new:
            if any(id(t) in out_tensors for t in n.outputs):
                main = n
                break
        for n in new:
            if n in self.claimed_nodes:
                continue
            self._claim_node(n, ctx.name if n is main else f"{ctx.name}/{n.op}")
            for i, t in enumerate(n.outputs):
                onnx_name = out_tensors.get(id(t))
                self._claim_tensor(t, onnx_name or f"{n.name}:{i}")

    def _mark_output(self, name: str) -> None:
        v = self.values[name]
        t = v.tensor
        producer = t.get_producer() if t is not None else None
        if t is None or t.is_input or (producer is not None and producer.op == "const"):
            what = "a graph input" if t is not None and t.is_input else "a constant"
            raise UnsupportedFeatureError(
                f"{self.source}: graph output {name!r} is {what} (folded at parse time "
                "or passed through); mmbuild runs computed outputs only",
                "(graph output)",
                "constant_output",
            )
        if t.name != name:
            if t in self.net.outputs:  # two outputs of one tensor: the second is a copy
                copy = self.net.add_i_reshape_node(t, [0] * len(t.get_dimension()))
                self._claim_node(copy, f"{name}/copy")
                t = copy.get_output(0)
            self._rename_tensor(t, name)
        self.net.mark_output(t)

    # -- names ---------------------------------------------------------------------------------
    def _claim_node(self, node: INode, name: str) -> None:
        taken = self.net.find_node_by_name(name)
        if taken is not None and taken is not node:
            if taken in self.claimed_nodes:
                name = _free(name + "_", lambda n: self.net.find_node_by_name(n) is not None)
            else:
                taken.set_node_name(
                    _free(name + "~", lambda n: self.net.find_node_by_name(n) is not None)
                )
        node.set_node_name(name)
        self.claimed_nodes.add(node)

    def _claim_tensor(self, tensor: ITensor, name: str) -> None:
        self._rename_tensor(tensor, name)

    def _rename_tensor(self, tensor: ITensor, name: str) -> None:
        taken = self.net.find_tensor_by_name(name)
        if taken is not None and taken is not tensor:
            free = _free(name + "~", lambda n: self.net.find_tensor_by_name(n) is not None)
            taken.set_tensor_name(free)
        tensor.set_tensor_name(name)

    def _unknown(self, op: str, name: str, domain: str) -> MMError:
        known = ", ".join(sorted(o for o, e in IMPORTS.items() if e.handler is not None))
        return MMError(
            f"ONNX node {name!r}: op {op}{domain} (opset {self.opset}) cannot be imported; "
            f"mmbuild imports: {known}",
            Code.UNAVAILABLE,
        )

    # -- constants -----------------------------------------------------------------------------
    def materialize(self, v: Value) -> ITensor:
        """The tensor of a value: a const node (named after the value) for a known array."""
        if v.tensor is not None:
            return v.tensor
        if v.quant is not None:
            raise MMError(
                f"value {v.name!r} is the output of a QuantizeLinear; mmbuild imports it only "
                "when a DequantizeLinear reads it (the pair becomes the range of its input)",
                Code.UNAVAILABLE,
            )
        if v.array is None or v.is_folding:
            raise MMError(
                f"value {v.name!r} is a shape computed from run-time dimensions; it cannot be "
                "read as a tensor (give the network input fixed dimensions)",
                Code.UNAVAILABLE,
            )
        arr = v.array
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        dtype = DataType.from_numpy(arr.dtype)
        node = self.net.add_i_const_node(dtype, Dims(list(arr.shape)), arr)
        self._claim_node(node, v.name)
        self._claim_tensor(node.get_output(0), v.name)
        v.tensor = node.get_output(0)
        return v.tensor


class NodeContext:
    """What a handler sees of one ONNX node: its attributes, inputs and the network."""

    def __init__(
        self,
        importer: Importer,
        node: Any,
        name: str,
        inputs: list[Value | None],
        entry: OpEntry | None,
    ) -> None:
        from onnx import helper

        self.importer = importer
        self.node = node
        self.name = name
        self.inputs = inputs
        self.entry = entry
        self.op_type: str = node.op_type
        self.opset = importer.opset
        self.net = importer.net
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def attr(self, name: str, default: Any = None) -> Any:
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def value(self, i: int) -> Value:
        v = self.inputs[i] if i < len(self.inputs) else None
        if v is None:
            raise MMError(f"input {i} is missing; {self.op_type} needs it")
        return v

    def tensor(self, i: int) -> ITensor:
        return self.importer.materialize(self.value(i))

    def array(self, i: int, what: str) -> np.ndarray:
        """The value of input ``i``, which must be known at parse time."""
        v = self.value(i)
        if not v.is_known:
            const = _const_of(v.tensor)
            if const is None:
                self.refuse(
                    "runtime_" + what,
                    f"input {i} ({what}, {v.name!r}) is computed at run time; mmbuild needs it "
                    "known at parse time (a constant, or a shape of known dimensions)",
                )
            return const  # type: ignore[return-value]
        return v.array  # type: ignore[return-value]

    def ints(self, i: int, what: str) -> list[int]:
        return [int(x) for x in np.asarray(self.array(i, what)).ravel()]

    def dims(self, i: int) -> list[int]:
        return self.tensor(i).get_dimension().get_dims()

    def refuse(self, key: str, detail: str = "") -> None:
        """Refuse the node for the reason the import table lists under ``key``."""
        reason = (self.entry.limits.get(key) if self.entry else None) or detail or key
        extra = f" ({detail})" if detail and detail != reason else ""
        raise UnsupportedFeatureError(
            f"ONNX node {self.name!r} ({self.op_type}, opset {self.opset}): {reason}{extra}",
            self.op_type,
            key,
        )


def _const_of(t: ITensor | None) -> np.ndarray | None:
    p = t.get_producer() if t is not None else None
    return p.value if p is not None and p.op == "const" else None  # type: ignore[attr-defined]


def _checked(a: np.ndarray) -> np.ndarray:
    return np.array(a, order="C")  # ascontiguousarray would make a scalar 1-D


def _free(stem: str, taken: Any) -> str:
    k = 1
    while taken(f"{stem}{k}"):
        k += 1
    return f"{stem}{k}"
