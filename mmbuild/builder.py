"""Builder: a Network and a BuilderConfig in, a Model whose every step is a numba kernel out.

``build_model(name, network, config)`` runs, in order:

1. ``INode.validate`` on every node (values the shapes implied but no setter confirmed);
2. the model's edges (:func:`mmbuild.config.model_io.model_edges`): the config's
   ``convert_input_layout``, ``insert_bn_before_firstnode``, ``convert_output_layout``,
   ``graph_shape_mutable`` and ``dim_range``, checked against the network;
3. with ``precision_config.cross_layer_equalization``, the equalised weights
   (:mod:`mmbuild.quant.equalize`), checked against those the calibration ran with;
   the precision plan (:func:`mmbuild.precision.plan_precision`): mode + node overrides + ranges;
4. a :class:`~mmbuild.graph.Graph` copy of the network carrying that plan (the user's network is
   never edited), with the edges' nodes inserted (:mod:`mmbuild.passes.io_rewrites`), rewritten
   by the pass pipeline (:mod:`mmbuild.passes`);
   with ``precision_config.bias_correction``, each quantized conv's and inner product's bias
   then loses the mean error of its quantized weights (:mod:`mmbuild.quant.bias_correction`);
5. conversions: where a node's input precision differs from the float type its input arrives
   in, a ``cast`` node is inserted (shared by all readers that need the same conversion), and a
   constant read at run time is stored in the precision of its reader; then a quantized conv's
   output read only by quantized convs travels as integers (:mod:`mmbuild.passes.carry`);
6. lowering: each node is looked up in the kernel table by (op, precision) and its kernel
   prepares what it needs once (weights quantized and packed, epilogues).

Example: in ``qint8_mixed_float16`` the sample CNN's first conv reads the float32 network input
and quantizes it itself (its input precision is QINT8); the batch norm is folded into it and the
relu fused into its epilogue; the max pool after it computes in float16 on its fp16 output.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from mmbuild._aliases import CamelCaseAliases
from mmbuild.config import BuilderConfig
from mmbuild.config.model_io import ModelEdges, model_edges
from mmbuild.errors import Code, MMError
from mmbuild.graph import Graph, Node, Tensor
from mmbuild.ir.network import Network
from mmbuild.ir.node import Policy
from mmbuild.ir.types import DataType
from mmbuild.kernels.table import Step, buffer_dtype, find_kernel, from_float
from mmbuild.ops.registry import get_op
from mmbuild.precision import PrecisionPlan, plan_precision, split_mode
from mmbuild.quant.bias_correction import CONFIG_KEY as BIAS_KEY
from mmbuild.quant.bias_correction import correct_biases
from mmbuild.quant.equalize import Equalization, check_calibration, equalize_network

if TYPE_CHECKING:
    from mmbuild.runtime.engine import Model

log = logging.getLogger(__name__)


class Builder(CamelCaseAliases):
    """Builds models (``mm.Builder().build_model(name, network, config)``)."""

    def build_model(
        self, name: str, network: Network, config: BuilderConfig | None = None
    ) -> Model:
        """Build ``network`` in the precision ``config`` asks for (force_float32 without one)."""
        from mmbuild.calib.cache import network_fingerprint
        from mmbuild.runtime.engine import Model
        from mmbuild.runtime.model_file import ModelData, TensorInfo

        if not isinstance(network, Network):
            raise MMError(f"build_model: network must be an mm.Network, not {type(network)!r}")
        if config is not None and not isinstance(config, BuilderConfig):
            raise MMError(
                f"build_model: config must be an mm.BuilderConfig or omitted, not {type(config)!r}"
            )
        config = config or BuilderConfig()
        network.check_input_shapes_known(f"build_model({name!r})")
        if not network.outputs:
            raise MMError(
                f"build_model({name!r}): the network has no outputs; mark them with "
                "net.mark_output(tensor)"
            )
        for inode in network.nodes:
            inode.validate()
        edges = model_edges(network, config)
        equalized = _equalization(network, config)
        if split_mode(config.precision_mode)[0] is not None:  # ranges matter: check their weights
            check_calibration(network, config, equalized)
        plan = plan_precision(network, config)
        graph = lower_graph(network, config, plan, edges, equalized)
        steps = lower_steps(graph)
        ranges = {e.name: (e.min_dims, e.max_dims) for e in edges.inputs}

        def info(t: str) -> TensorInfo:
            return TensorInfo(t, graph.tensors[t].dims, graph.tensors[t].dtype)

        def input_info(t: str) -> TensorInfo:
            lo, hi = ranges.get(t, (None, None))
            return TensorInfo(t, graph.tensors[t].dims, graph.tensors[t].dtype, lo, hi)

        read = {t for s in steps for t in s.inputs}
        constants = {
            t: constant_buffer(graph.tensors[t]) for t in sorted(read) if graph.tensors[t].is_const
        }
        used = read | {t for s in steps for t in s.outputs} | set(graph.inputs)
        data = ModelData(
            name=name,
            mode=config.precision_mode,
            inputs=[input_info(t) for t in graph.inputs],
            outputs=[info(t) for t in graph.outputs],
            tensors={t: info(t) for t in sorted(used)},
            constants=constants,
            steps=steps,
            warnings=list(plan.warnings),
            fingerprint=network_fingerprint(network),
        )
        log.info("built %r: %d steps in %s", name, len(steps), config.precision_mode)
        return Model._from_data(data)


def lower_graph(
    network: Network,
    config: BuilderConfig,
    plan: PrecisionPlan,
    edges: ModelEdges | None = None,
    equalized: Equalization | None = None,
) -> Graph:
    """The network as a graph with the plan's precisions and the model edges the config asks
    for (layout conversions, input normalisation), passes run and casts inserted;
    ``equalized``: the config's cross-layer equalisation, computed once by the caller."""
    from mmbuild.passes import run_passes
    from mmbuild.passes.carry import carry_quantized
    from mmbuild.passes.io_rewrites import apply_model_edges

    graph = Graph.from_network(network, plan)
    for name, value in (equalized.values if equalized is not None else {}).items():
        graph.tensors[name].value = value  # the calibrator ran the reference with these
    graph.options = {
        "weight_quant_granularity": config.weight_quant_granularity,
        "weight_quant_range": config.weight_quant_range,
        "activation_quant_algo": config.activation_quant_algo,
        "activation_quant_mode": config.activation_quant_mode,
    }
    edges = edges if edges is not None else model_edges(network, config)
    apply_model_edges(graph, edges)
    run_passes(graph)
    if config.bias_correction and split_mode(config.precision_mode)[0] is not None:
        # after the passes: the weights are final (batch norm folded) as the kernels take them
        correct_biases(graph, _input_means(network))
    insert_conversions(graph)
    # last: the precisions are final; an output type the user set stays what they set
    kept = frozenset(n.get_node_name() for n in network.nodes if n.output_type_overrides)
    carry_quantized(graph, kept)
    _check_outputs_produced(graph)
    return graph


def _equalization(network: Network, config: BuilderConfig) -> Equalization | None:
    """The cross-layer equalisation the config asks for (None without), as the calibrator
    computes it (:mod:`mmbuild.quant.equalize`)."""
    return equalize_network(network, config) if config.cross_layer_equalization else None


def _input_means(network: Network) -> dict[str, np.ndarray]:
    """The input means the calibration recorded for bias correction, or an MMError."""
    means = network._calibration_means
    if not means:
        raise MMError(
            f"build_model: {BIAS_KEY} needs the mean of each conv's and inner product's input, "
            "which only a calibration from data records (a calibration cache holds ranges only). "
            f"Calibrate with this config (mm.Calibrator(...).calibrate(network, config), "
            f"{BIAS_KEY} true), or set {BIAS_KEY} false"
        )
    return means


#: The layer report's note on a step whose input 0 is quantized at each run.
DYNAMIC_NOTE = "input 0 quantized dynamically (scale from each run's max |x|)"


def lower_steps(graph: Graph) -> list[Step]:
    """One step per node: its kernel from the table and what the kernel prepared."""
    steps = []
    for node in graph.nodes:
        if node.op == "cast":
            _check_cast_types(graph, node)
        kernel = find_kernel(node)
        lowered = kernel.lower(node, graph)
        notes = list(node.notes)
        if lowered.attrs.get("dynamic"):
            notes.append(DYNAMIC_NOTE)
        steps.append(
            Step(
                name=node.name,
                op=node.op,
                kernel=kernel.name,
                op_attrs=dict(node.attrs),
                inputs=list(node.inputs),
                outputs=list(node.outputs),
                precisions=list(node.precisions),
                output_types=list(node.output_types),
                lowered=lowered,
                notes=notes,
                fused=list(node.fused),
            )
        )
    return steps


def insert_conversions(graph: Graph) -> None:
    """Make every node read its inputs in the precision the plan gave each slot.

    A run-time tensor arriving as float32 in a float16 slot (or the reverse) gets a ``cast``
    node ``<tensor>/to_float16``; a constant gets a converted copy. QINT slots read the float
    tensor as it is: their kernels quantize it. Constant inputs of quantizable ops stay as they
    are, since their kernels prepare them at build time from the float values.
    """
    casts: dict[tuple[str, DataType], str] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        always = get_op(node.op).policy is Policy.ALWAYS
        for i, (t, want) in enumerate(zip(node.inputs, node.precisions)):
            tensor = graph.tensors[t]
            if not (want.is_float and tensor.dtype.is_float) or want is tensor.dtype:
                continue
            if tensor.is_const:
                if always:
                    continue
                value = tensor.value.astype(want.numpy_dtype)  # type: ignore[union-attr]
                node.inputs[i] = graph.add_const(f"{t}/{want.name.lower()}", value, want)
                continue
            key = (t, want)
            if key not in casts:
                cast = Node(
                    name=graph.unique_node_name(f"{t}/to_{want.name.lower()}"),
                    op="cast",
                    attrs={"dtype": want},
                    inputs=[t],
                    outputs=[f"{t}/{want.name.lower()}"],
                    precisions=[tensor.dtype],
                    output_types=[want],
                    notes=[f"inserted: {node.name} reads {t} in {want.name}"],
                )
                graph.tensors[cast.outputs[0]] = Tensor(cast.outputs[0], tensor.dims, want)
                casts[key] = cast.outputs[0]
                nodes.append(cast)
            node.inputs[i] = casts[key]
        nodes.append(node)
    graph.nodes = nodes


# The cast kernel reads every uint16 buffer as float16 bits and converts float64 only down to
# float32 / float16, so these types cast exactly only as listed here.
_CASTS_FROM = {DataType.FLOAT64: (DataType.FLOAT32, DataType.FLOAT16)}
_NO_CAST = (DataType.UINT16, DataType.FLOAT64)


def _check_cast_types(graph: Graph, node: Node) -> None:
    """Refuse, naming the node, a cast the cast kernel cannot do exactly (see ``_NO_CAST``)."""
    src, dst = graph.tensors[node.inputs[0]].dtype, node.output_types[0]
    if src is dst or dst in _CASTS_FROM.get(src, ()):
        return
    if src in _NO_CAST or dst in _NO_CAST:
        allowed = ", ".join(f"{a.name} -> {b.name}" for a, bs in _CASTS_FROM.items() for b in bs)
        raise MMError(
            f"{node.node_type} {node.name!r}: no kernel casts {src.name} to {dst.name}; "
            f"UINT16 and FLOAT64 tensors are moved (copy, permute, reshape, ...) but the only "
            f"casts from or to them are {allowed}. Give the network input as FLOAT32 or INT32",
            Code.UNAVAILABLE,
        )


def constant_buffer(tensor: Tensor) -> np.ndarray:
    """A constant as the runtime holds it: fp16 as uint16 bits, others in their own dtype."""
    value = np.asarray(tensor.value)
    dtype = tensor.dtype
    if dtype.is_float or dtype.is_quantized:
        ftype = dtype if dtype.is_float else DataType.FLOAT32
        return np.ascontiguousarray(from_float(value.astype(np.float32), ftype))
    return np.ascontiguousarray(value.astype(buffer_dtype(dtype)))


def _check_outputs_produced(graph: Graph) -> None:
    produced = {t for n in graph.nodes for t in n.outputs} | set(graph.inputs)
    for t in graph.outputs:
        if t not in produced:
            raise MMError(
                f"network output {t!r} is a constant; mmbuild runs computed outputs only. "
                "Unmark it (net.unmark_output) and read the constant from the network instead"
            )
