"""The precision plan: which type every input and output of every node runs in.

``plan_precision(network, config)`` resolves the config's ``precision_mode`` and each node's
``set_precision`` / ``set_output_type`` into ``{node name: NodePrecision}`` without editing the
graph. The rules (API.md, "Precision semantics"):

* ``force_floatN``: every float input and output in floatN.
* ``qintB_mixed_floatN``: the quantizable inputs of ALWAYS ops (conv, deconv: input and filter;
  inner product, matmul: both operands) in QINTB; every other float slot in floatN.
* FOLLOW ops (data movement) take the type their input arrives in; NEVER ops compute in floatN.
* Network inputs keep their declared type; integer tensors keep theirs.
* A node-level setting wins, and is honoured or refused with the node and slot named. The
  quantizable inputs of one node share one domain, so quantizing one of them quantizes its
  partners too (noted in the plan).
* Every QINT activation needs a range. :func:`resolve_range` is the one place that picks it; the
  order of sources is: ``set_dynamic_range``, then the config's ``custom_ranges`` entry for the
  tensor, then calibration, then ``custom_ranges[""]``. The plan keeps the resolved range of every
  tensor (``tensor_ranges``), and the builder's graph copy, and so the kernels, read it from there.
  Constant weights are ranged from their values when the model is built.
* fp16 guard: a float16 chosen by the mode (not by the user) for a node that touches a tensor
  whose range exceeds 65504 (a constant: whose largest finite value does) falls back to float32,
  with a warning and a note in the plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from mmbuild.config import BuilderConfig
from mmbuild.errors import MMError
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import DataType, Range

log = logging.getLogger(__name__)

FLOAT16_MAX = 65504.0

_MODES: dict[str, tuple[DataType | None, DataType]] = {
    "force_float32": (None, DataType.FLOAT32),
    "force_float16": (None, DataType.FLOAT16),
    "qint8_mixed_float16": (DataType.QINT8, DataType.FLOAT16),
    "qint8_mixed_float32": (DataType.QINT8, DataType.FLOAT32),
    "qint16_mixed_float16": (DataType.QINT16, DataType.FLOAT16),
    "qint16_mixed_float32": (DataType.QINT16, DataType.FLOAT32),
}


def split_mode(mode: str) -> tuple[DataType | None, DataType]:
    """The (QINT type or None, float type) of a mode: ``"qint8_mixed_float16"`` -> (QINT8,
    FLOAT16); ``"force_float32"`` -> (None, FLOAT32)."""
    try:
        return _MODES[mode]
    except KeyError:
        raise MMError(f"precision_mode {mode!r} is not one of {', '.join(_MODES)}") from None


@dataclass(frozen=True)
class NodePrecision:
    """The types one node runs in: one per input slot and one per output, plus why."""

    inputs: tuple[DataType, ...]
    outputs: tuple[DataType, ...]
    notes: tuple[str, ...] = ()


@dataclass
class PrecisionPlan:
    mode: str
    nodes: dict[str, NodePrecision]
    ranges: dict[str, Range] = field(default_factory=dict)  # QINT activation tensor -> range
    # every non-constant tensor that has a range (from any source) -> its resolved range
    tensor_ranges: dict[str, Range] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, node: INode | str) -> NodePrecision:
        return self.nodes[node if isinstance(node, str) else node.get_node_name()]


def plan_precision(network: Network, config: BuilderConfig | None = None) -> PrecisionPlan:
    """Resolve mode, overrides and ranges into a PrecisionPlan; refuse with every problem named."""
    config = config or BuilderConfig()
    qtype, ftype = split_mode(config.precision_mode)
    plan = PrecisionPlan(config.precision_mode, {})
    arrives: dict[ITensor, DataType] = {t: t.get_data_type() for t in network.inputs}
    problems: list[str] = []
    for t in network.tensors():
        # a constant keeps only a range set on it: a weight's given scales (a QDQ model's)
        given = t.get_dynamic_range() if t.has_user_range else None
        rng = given if _is_constant(t) else resolve_range(t, config)
        if rng is not None:
            plan.tensor_ranges[t.get_tensor_name()] = rng
    for node in network.nodes:
        try:
            decided = _plan_node(node, qtype, ftype, arrives, config, plan)
        except MMError as exc:
            problems.append(str(exc))
            decided = _fallback(node, arrives)
        plan.nodes[node.get_node_name()] = decided
        for t, dtype in zip(node.outputs, decided.outputs):
            arrives[t] = dtype
    if problems:
        raise MMError("the precision plan cannot be made:\n  - " + "\n  - ".join(problems))
    for w in plan.warnings:
        log.warning(w)
    return plan


def _plan_node(
    node: INode,
    qtype: DataType | None,
    ftype: DataType,
    arrives: dict[ITensor, DataType],
    config: BuilderConfig,
    plan: PrecisionPlan,
) -> NodePrecision:
    notes: list[str] = []
    node_ftype, out_ftype = _guard_float16(node, ftype, config, notes, plan)
    inputs = [
        _default_input(node, i, t, qtype, node_ftype, arrives) for i, t in enumerate(node.inputs)
    ]
    floats = {d for d in inputs if d.is_float}
    if node.policy is Policy.FOLLOW and len(floats) > 1:  # e.g. a concat of fp32 and fp16 data
        inputs = [node_ftype if d.is_float else d for d in inputs]
        arriving = sorted(d.name for d in floats)
        notes.append(f"inputs arrive in {arriving}: runs in {node_ftype.name}")
    overrides = node.precision_overrides
    for i, dtype in overrides.items():
        t = node.inputs[i]
        if dtype.is_quantized and i not in node.quantizable_inputs:
            allowed = ", ".join(node.input_label(q) for q in node.quantizable_inputs) or "none"
            raise node.error(
                f"set_precision({i}, {dtype.name}): {node.input_label(i)} cannot run quantized; "
                f"the quantizable inputs of {node.node_type} are: {allowed}. Use FLOAT16 or "
                "FLOAT32 for this slot"
            )
        if not _is_float_like(t.get_data_type()):
            raise node.error(
                f"set_precision({i}, {dtype.name}): {node.input_label(i)} is an "
                f"{t.get_data_type().name} tensor; precisions apply to float tensors only"
            )
        inputs[i] = dtype
    _align_quantizable(node, inputs, overrides, notes)
    outputs = [_default_output(node, o, inputs, out_ftype) for o in range(len(node.outputs))]
    for o, dtype in node.output_type_overrides.items():
        if dtype.is_quantized:
            raise node.error(
                f"set_output_type({o}, {dtype.name}): outputs are float; quantized nodes compute "
                "in integers and return FLOAT16 or FLOAT32. Choose one of those"
            )
        outputs[o] = dtype
    for i, dtype in enumerate(inputs):
        t = node.inputs[i]
        if (
            dtype.is_quantized
            and not _is_constant(t)
            and not quantized_at_run_time(node, i, config)
        ):
            plan.ranges[t.get_tensor_name()] = _resolve_range(node, i, t, dtype, config)
    return NodePrecision(tuple(inputs), tuple(outputs), tuple(notes))


def _default_input(
    node: INode,
    i: int,
    t: ITensor,
    qtype: DataType | None,
    ftype: DataType,
    arrives: dict[ITensor, DataType],
) -> DataType:
    declared = t.get_data_type()
    if not _is_float_like(declared):
        return declared
    if node.policy is Policy.FOLLOW:
        return arrives.get(t, declared)
    if node.policy is Policy.ALWAYS and qtype is not None and i in node.quantizable_inputs:
        return qtype
    return ftype


def _default_output(node: INode, o: int, inputs: list[DataType], ftype: DataType) -> DataType:
    declared = node.outputs[o].get_data_type()
    if not _is_float_like(declared) or node.fixed_output_type:
        return declared
    if node.policy is Policy.FOLLOW:
        floats = [d for d in inputs if d.is_float]
        return floats[0] if floats else ftype
    return ftype


def _align_quantizable(
    node: INode, inputs: list[DataType], overrides: dict[int, DataType], notes: list[str]
) -> None:
    """The quantizable inputs of one node run in one domain: QINTB together, or float together."""
    slots = [q for q in node.quantizable_inputs if q < len(inputs)]
    if len(slots) < 2:
        return
    chosen = [overrides[q] for q in slots if q in overrides]
    domains = {d.is_quantized for d in chosen}
    qbits = {d for d in chosen if d.is_quantized}
    if len(domains) > 1 or len(qbits) > 1:
        pairs = ", ".join(
            f"{node.input_label(q)} {overrides[q].name}" for q in slots if q in overrides
        )
        raise node.error(
            f"set_precision asks {pairs}; the quantizable inputs of a {node.node_type} run "
            "together, all in one QINT type or all in float. Set them alike"
        )
    if not chosen:
        return
    target = chosen[0]
    for q in slots:
        if q not in overrides and inputs[q] != target:
            notes.append(
                f"{node.input_label(q)} runs in {target.name} (the mode gave {inputs[q].name}) "
                "to match the set_precision of its partner input"
            )
            inputs[q] = target


def _guard_float16(
    node: INode, ftype: DataType, config: BuilderConfig, notes: list[str], plan: PrecisionPlan
) -> tuple[DataType, DataType]:
    """``(compute type, output type)`` of a node that the mode puts in ``ftype``: FLOAT32 in
    place of FLOAT16 where a tensor it reads or writes goes beyond float16's range
    (:func:`float16_overflow`). Its outputs stay FLOAT16 when the overflow is in what it reads
    alone and every output has a range that float16 holds: a batch norm whose variance is 9.8e7
    computes in FLOAT32 and stores its calibrated output in FLOAT16, the rounding its FLOAT16
    readers did anyway, with no cast step between."""
    if ftype is not DataType.FLOAT16:
        return ftype, ftype
    beyond = float16_overflow([*node.inputs, *node.outputs], config)
    if beyond is None:
        return ftype, ftype
    name, reach = beyond
    outputs_fit = all(_fits_float16(t, config) for t in node.outputs)
    kept = "keeps FLOAT32"
    if outputs_fit:
        kept = "computes in FLOAT32 and stores its output in FLOAT16, which holds its range"
    plan.warnings.append(
        f"{node.node_type} {node.get_node_name()!r}: tensor {name!r} reaches {reach:.6g}, "
        f"beyond float16's {FLOAT16_MAX:g}; the node {kept} (set_precision / set_output_type "
        "to override)"
    )
    note = "computes in FLOAT32, output FLOAT16" if outputs_fit else "kept FLOAT32"
    notes.append(f"fp16 overflow guard: {name} reaches {reach:.6g} > {FLOAT16_MAX:g}, {note}")
    return DataType.FLOAT32, DataType.FLOAT16 if outputs_fit else DataType.FLOAT32


def _fits_float16(t: ITensor, config: BuilderConfig | None) -> bool:
    """Whether ``t`` is an activation with a range (calibrated or set) that float16 holds."""
    reach = None if _is_constant(t) else _reach(t, config)
    return reach is not None and reach <= FLOAT16_MAX


def float16_overflow(
    tensors: list[ITensor], config: BuilderConfig | None
) -> tuple[str, float] | None:
    """The first of ``tensors`` that float16 cannot hold, as ``(tensor name, magnitude)``, or
    None: an activation by the range the build resolves for it (:func:`resolve_range`), a
    constant by its largest finite value. Example: a tensor calibrated to ``Range(-3.0, 1.2e5)``
    reaches 120000 > 65504."""
    for t in tensors:
        reach = _reach(t, config)
        if reach is not None and reach > FLOAT16_MAX:
            return t.get_tensor_name(), reach
    return None


def _reach(t: ITensor, config: BuilderConfig | None) -> float | None:
    """The largest magnitude ``t`` takes, or None when nothing tells: an activation's by the
    range the build resolves for it (:func:`resolve_range`), a constant's by its values."""
    rng = None if _is_constant(t) else resolve_range(t, config)
    return _magnitude(rng) if rng is not None else _constant_reach(t)


#: The ops whose input 0 ``activation_quant_mode: "dynamic"`` quantizes at each run (a matmul
#: only when its right operand is a constant without batch dimensions and ``a`` is not
#: transposed: the kernels' packed path).
DYNAMIC_OPS = ("conv", "deconv", "inner_product", "matmul")


def quantized_at_run_time(node: INode, i: int, config: BuilderConfig | None) -> bool:
    """Whether ``node``'s input ``i`` takes its scale from each run's values (no range needed).

    Example: under ``{"precision_config": {"activation_quant_mode": "dynamic"}}`` a conv's input
    0 is; its filter (a constant) and an add's inputs are not."""
    if config is None or config.activation_quant_mode != "dynamic" or i != 0:
        return False
    if node.op != "matmul":
        return node.op in DYNAMIC_OPS
    a, b = node.inputs[0], node.inputs[1]
    if not _is_constant(b):
        return False
    b_dims = np.shape(b.get_producer().attrs["value"])  # type: ignore[union-attr]
    batch = int(np.prod(b_dims[:-2], dtype=np.int64))
    return batch == 1 and not (node.attrs["transpose_a"] and len(a.get_dimension().get_dims()) >= 2)


def resolve_range(t: ITensor, config: BuilderConfig | None) -> Range | None:
    """The range ``t`` is quantized with, or None: the one place that orders the sources.

    ``t.set_dynamic_range`` > ``custom_ranges[name]`` > calibration > ``custom_ranges[""]``.
    Example: with ``{"custom_ranges": {"": {"min": [-1], "max": [1]}}}`` and no other source,
    every tensor resolves to ``Range(-1.0, 1.0)``; a calibrated tensor keeps its calibrated range.
    """
    if t.has_user_range:
        return t.get_dynamic_range()
    ranges = config.custom_ranges if config is not None else {}
    exact = ranges.get(t.get_tensor_name())
    if exact is not None:
        return _as_range(exact)
    if t.get_dynamic_range() is not None:
        return t.get_dynamic_range()
    fallback = ranges.get("")
    return _as_range(fallback) if fallback is not None else None


def _resolve_range(
    node: INode, i: int, t: ITensor, dtype: DataType, config: BuilderConfig
) -> Range:
    found = resolve_range(t, config)
    if found is not None:
        return found
    name = t.get_tensor_name()
    raise node.error(
        f"{node.input_label(i)} runs in {dtype.name} and tensor {name!r} has no range. Give it "
        "one: (1) calibrate the network (mm.Calibrator(...).calibrate(network, config)), "
        f"(2) tensor.set_dynamic_range(mm.Range(lo, hi)), or (3) add "
        f'"custom_ranges": {{"{name}": {{"min": [lo], "max": [hi]}}}} to the builder config'
    )


def _as_range(bounds: tuple[list[float], list[float]]) -> Range:
    lo, hi = bounds
    return Range(lo[0], hi[0]) if len(lo) == 1 else Range(lo, hi)


def _constant_reach(t: ITensor) -> float | None:
    """The largest finite magnitude of a float constant (an infinity stays one in fp16), else
    None: the guard's range for a constant, which has no calibrated range."""
    if not _is_constant(t):
        return None
    value = np.asarray(t.get_producer().attrs["value"])  # type: ignore[union-attr]
    if value.dtype.kind != "f" or value.size == 0:
        return None
    finite = np.abs(value[np.isfinite(value)])
    return float(finite.max()) if finite.size else None


def _magnitude(rng: Range) -> float:
    lo = rng.min if isinstance(rng.min, list) else [rng.min]
    hi = rng.max if isinstance(rng.max, list) else [rng.max]
    return max(max(abs(v) for v in lo), max(abs(v) for v in hi))


def _is_float_like(dtype: DataType) -> bool:
    return dtype.is_float or dtype.is_quantized


def _is_constant(t: ITensor) -> bool:
    producer = t.get_producer()
    return producer is not None and producer.op == "const"


def _fallback(node: INode, arrives: dict[ITensor, DataType]) -> NodePrecision:
    """A stand-in so planning goes on and reports every problem, not only the first."""
    return NodePrecision(
        tuple(arrives.get(t, t.get_data_type()) for t in node.inputs),
        tuple(t.get_data_type() for t in node.outputs),
    )
