"""Automatic mixed precision to an accuracy target: ``mm.AccuracyTuner``.

The tuner builds the network in the config's qint mode, measures it on evaluation inputs against
a float reference, and, while the target is missed, moves the quantized nodes that hurt most to
float (FLOAT16 first, FLOAT32 if FLOAT16 is not enough), using as few nodes as it can find within
a bounded number of trial builds. As with TensorRT's per-layer precision and INC's / NNCF's
accuracy-aware tuning (``max_drop``), the target is a metric of the whole model's outputs.

Steps (each trial costs one build and one run of the evaluation inputs, never a calibration):

1. Calibrate once (when calibration data is given): the ranges are written onto the network's
   tensors and every trial build reuses them. Without data, the ranges already set
   (``set_dynamic_range``, ``custom_ranges``, a calibration cache applied) are used.
2. Build the full int8 model; if it meets the target, it is returned unchanged.
3. Rank the quantized nodes by the noise each adds where it stands: one run of that build on
   the first evaluation batch keeps every tensor, and each quantized step's output ``a`` is
   compared with its float32 result ``e`` on the very inputs it received (as the error report
   does, but per step instead of from the network input): ``noise = sum (a - e)^2 / sum e^2``.
   Example: e = [1, 2], a = [1.1, 2]: noise = 0.01 / 5 = 0.002 (27 dB).
4. Order the ranked nodes by noise per square root of their MACs, ``noise / sqrt(macs)``, so
   that a cheap node that adds much noise goes before a large one that adds a little more:
   moving by noise alone moved the classifier's largest convs first (PP-OCR classifier, cosine
   0.999: 78.9% of the MACs kept in int8; by noise per MAC 96.7%, but 13 nodes moved instead of
   9; by noise per sqrt(MAC) 96.4% with 7). Example: noise 0.004 on 1M MACs (0.004 / 1000)
   goes after noise 0.001 on 10K MACs (0.001 / 100).
5. Try the whole list in FLOAT16, then in FLOAT32; the first that meets the target gives the
   float type. Then bisect the length k of the prefix moved (the fewest nodes in that order),
   and with the trials left give the moved nodes back to int8 one at a time, the ones with most
   MACs first, keeping each return after which the target still holds.
   If even the whole list in FLOAT32 misses the target, the best model tried is returned and
   the report says the target is not met. A node whose quantizable inputs (the ones a move
   puts in float) reach beyond fp16's 65504, by their calibrated range or a constant's values,
   is moved to FLOAT32 even in the FLOAT16 trials, and its report row says why.

Nodes with a ``set_precision`` or ``set_output_type`` of the user are never changed. The user's
network is left as it was (the tuner's node settings are undone), except for the ranges the
calibration writes, as ``mm.Calibrator.calibrate`` does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from mmbuild._aliases import CamelCaseAliases
from mmbuild.config import BuilderConfig
from mmbuild.errors import MMError
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode
from mmbuild.ir.types import DataType
from mmbuild.precision import FLOAT16_MAX, float16_overflow
from mmbuild.quant.tuner_report import TunerReport, TunerRow

if TYPE_CHECKING:
    from mmbuild.calib.calibrator import QuantizationAlgorithm
    from mmbuild.calib.data import CalibDataInterface
    from mmbuild.kernels.table import Step
    from mmbuild.runtime.engine import Model

log = logging.getLogger(__name__)

Metric = Callable[[list[np.ndarray], list[np.ndarray]], float]
_MAC_OPS = {"IConvNode", "IDeconvNode", "IInnerProductNode", "IMatMulNode"}


class AccuracyTuner(CamelCaseAliases):
    """Moves the fewest quantized nodes to float until an accuracy target holds.

    Give exactly one target: ``min_cosine`` (the least cosine of each output against the
    reference, all evaluation inputs together), ``max_abs_error``, or ``metric`` with
    ``threshold`` (``metric(outputs, reference) -> float``, both lists of arrays in output
    order, batches concatenated; higher is better unless ``higher_is_better=False``) or with
    ``max_drop`` (threshold = ``metric(reference, reference) - max_drop``).
    ``eval_inputs`` is a list of batches (an array each for a one-input network, else a list of
    arrays in input order); ``reference`` (optional) gives the expected outputs per batch, for
    example onnxruntime's, instead of mmbuild's float reference evaluator. Usage::

        tuner = mm.AccuracyTuner(net, config, [ImageBatches(batches)], [x], min_cosine=0.999)
        model, report = tuner.tune()
        print(report)
    """

    def __init__(
        self,
        network: Network,
        config: BuilderConfig,
        calib_data: Sequence[CalibDataInterface] | None,
        eval_inputs: Sequence[np.ndarray | Sequence[np.ndarray]],
        *,
        min_cosine: float | None = None,
        max_abs_error: float | None = None,
        metric: Metric | None = None,
        threshold: float | None = None,
        max_drop: float | None = None,
        higher_is_better: bool = True,
        reference: Sequence[Sequence[np.ndarray]] | None = None,
        max_trials: int = 16,
        algorithm: QuantizationAlgorithm | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(network, Network):
            raise MMError(f"AccuracyTuner: network must be an mm.Network, not {type(network)!r}")
        if not isinstance(config, BuilderConfig):
            raise MMError(
                f"AccuracyTuner: config must be an mm.BuilderConfig, not {type(config)!r}"
            )
        if not config.precision_mode.startswith("qint"):
            raise MMError(
                f"AccuracyTuner: precision_config.precision_mode is {config.precision_mode!r}; "
                "the tuner starts from a quantized build. Use qint8_mixed_float16, "
                "qint8_mixed_float32 or a qint16 mode"
            )
        if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
            raise MMError(f"AccuracyTuner: max_trials must be an int >= 1, not {max_trials!r}")
        self.network, self.config = network, config
        self.calib_data = list(calib_data) if calib_data is not None else None
        self.batches = _batches(network, eval_inputs)
        self.max_trials = max_trials
        self.algorithm = algorithm
        self.progress = progress
        self._reference = _reference_lists(network, self.batches, reference)
        self._score, self._meets, self.target, self._higher = _target(
            min_cosine, max_abs_error, metric, threshold, max_drop, higher_is_better,
            self._reference,
        )  # fmt: skip
        self.trials = 0

    # -- the search -----------------------------------------------------------------------------
    def tune(self) -> tuple[Model, TunerReport]:
        """Calibrate once, then search; returns the model and the report of what changed."""
        self._calibrate()
        net = self.network
        saved = {n.get_node_name(): n.precision_overrides for n in net.nodes}
        user_set = [n for n in net.nodes if n.precision_overrides or n.output_type_overrides]
        self.trials = 0
        bar = self._progress_bar()
        try:
            return self._search(user_set, bar)
        finally:
            bar.close()
            for n in net.nodes:
                n._precisions = dict(saved[n.get_node_name()])

    def _search(self, user_set: list[INode], bar: tqdm) -> tuple[Model, TunerReport]:
        model, score = self._trial({}, bar)
        int8_score = score
        quantized = _quantized_nodes(model, self.network)
        kept = sorted(n.get_node_name() for n in user_set if n.get_node_name() in quantized)
        candidates = [n for n in quantized if n not in kept]
        macs = _macs(self.network)
        ranking = _rank(model, self.batches[0], candidates) if candidates else []
        report = TunerReport(self.target, int8_score, score, self._meets(score), self.trials,
                             len(quantized), [], _mac_share(macs, quantized, set()), ranking,
                             kept)  # fmt: skip
        if report.met or not ranking:
            report.trials = self.trials
            return model, report
        order = _move_order(ranking, macs)
        fp32_only = _float16_overflows(self.network, self.config, order)

        def moves(names: list[str], ftype: DataType) -> dict[str, DataType]:
            return {n: DataType.FLOAT32 if n in fp32_only else ftype for n in names}

        best = (score, model, 0, DataType.QINT8)
        found: tuple[Model, float, int, DataType] | None = None
        for ftype in (DataType.FLOAT16, DataType.FLOAT32):
            if self.trials >= self.max_trials:
                break
            if ftype is DataType.FLOAT32 and len(fp32_only) == len(order):
                break  # the FLOAT16 trial was this one: every node had to be FLOAT32
            m, s = self._trial(moves(order, ftype), bar)
            if self._better(s, best[0]):
                best = (s, m, len(order), ftype)
            if self._meets(s):
                found = (m, s, len(order), ftype)
                break
        moved = order[: best[2]]
        if found is not None:
            m, s, hi, ftype = found
            lo = 0  # the prefix of length lo misses the target, hi meets it
            while hi - lo > 1 and self.trials < self.max_trials:
                mid = (lo + hi) // 2
                mm_, ms = self._trial(moves(order[:mid], ftype), bar)
                if self._meets(ms):
                    hi, m, s = mid, mm_, ms
                else:
                    lo = mid
            moved = order[:hi]
            # with the trials left, give the moved nodes back to int8, most MACs first, where
            # the target still holds without them
            for name in sorted(moved, key=lambda n: -macs.get(n, 0)):
                if self.trials >= self.max_trials or len(moved) == 1:
                    break
                rest = [n for n in moved if n != name]
                mm_, ms = self._trial(moves(rest, ftype), bar)
                if self._meets(ms):
                    moved, m, s = rest, mm_, ms
            best = (s, m, len(moved), ftype)
        score, model, _, ftype = best
        report.rows = self._rows(moves(moved, ftype), int8_score, score, ranking, fp32_only)
        report.final_metric, report.met, report.trials = score, self._meets(score), self.trials
        report.int8_mac_share = _mac_share(macs, quantized, set(moved))
        if not report.met:
            log.warning("AccuracyTuner: %s not met within %d trial builds; best %.6g",
                        self.target, self.trials, score)  # fmt: skip
        return model, report

    def _trial(self, moves: dict[str, DataType], bar: tqdm) -> tuple[Model, float]:
        """Build with ``moves`` (node -> float type of its quantizable inputs) and score it."""
        from mmbuild.builder import Builder

        for node in self.network.nodes:
            if node.get_node_name() in moves:
                ftype = moves[node.get_node_name()]
                node._precisions = {q: ftype for q in node.quantizable_inputs}
            elif node.get_node_name() not in self._user_names():
                node._precisions = {}
        self.trials += 1
        model = Builder().build_model(f"tuner_trial_{self.trials}", self.network, self.config)
        score = self._score(_run(model, self.batches))
        bar.update(1)
        bar.set_postfix_str(f"{len(moves)} in float, metric {score:.5g}")
        log.info("trial %d: %d nodes in float, metric %.6g", self.trials, len(moves), score)
        return model, score

    def _user_names(self) -> set[str]:
        if not hasattr(self, "_user"):
            self._user = {
                n.get_node_name()
                for n in self.network.nodes
                if n.precision_overrides or n.output_type_overrides
            }
        return self._user

    def _better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats ``b``: meeting the target first, then the metric (NaN
        loses)."""
        if self._meets(a) != self._meets(b):
            return self._meets(a)
        a, b = (_finite(a), _finite(b)) if self._higher else (-_finite(-a), -_finite(-b))
        return a > b if self._higher else a < b

    def _rows(
        self,
        moved: dict[str, DataType],
        before: float,
        after: float,
        ranking: list[tuple[str, float]],
        fp32_only: dict[str, str],
    ) -> list[TunerRow]:
        total = sum(v for _, v in ranking) or 1.0
        share = dict(ranking)
        macs = _macs(self.network)
        qtype = DataType.QINT16 if self.config.precision_mode.startswith("qint16") else None
        rank_of = {name: i for i, (name, _) in enumerate(ranking, 1)}
        rows = []
        for name, ftype in moved.items():
            node = self.network.find_node_by_name(name)
            why = f"rank {rank_of[name]} of {len(ranking)}: {share[name] / total:.0%} of the "
            why += "int8 noise"
            if name in fp32_only:
                why += f"; {fp32_only[name]}"
            rows.append(
                TunerRow(
                    name,
                    node.get_node_type(),
                    qtype or DataType.QINT8,
                    ftype,
                    why,
                    before,
                    after,
                    macs.get(name, 0),
                )
            )
        return rows

    def _calibrate(self) -> None:
        if self.calib_data is None:
            return
        from mmbuild.calib.calibrator import Calibrator, QuantizationAlgorithm

        calib = Calibrator(self.calib_data)
        calib.set_progress(self.progress)
        calib.set_quantization_algorithm(self.algorithm or QuantizationAlgorithm.AUTO)
        calib.calibrate(self.network, self.config)

    def _progress_bar(self) -> tqdm:
        from mmbuild.calib.calibrator import PROGRESS_ENV

        shown = (
            self.progress
            and os.environ.get(PROGRESS_ENV, "1") != "0"
            and bool(getattr(sys.stderr, "isatty", lambda: False)())
        )
        return tqdm(desc="tuning", unit="build", total=self.max_trials, disable=not shown,
                    file=sys.stderr)  # fmt: skip


# -- targets ----------------------------------------------------------------------------------
def _target(
    min_cosine: float | None,
    max_abs_error: float | None,
    metric: Metric | None,
    threshold: float | None,
    max_drop: float | None,
    higher_is_better: bool,
    reference: list[np.ndarray],
) -> tuple[Callable[[list[np.ndarray]], float], Callable[[float], bool], str, bool]:
    given = [k for k, v in (("min_cosine", min_cosine), ("max_abs_error", max_abs_error),
                            ("metric", metric)) if v is not None]  # fmt: skip
    if len(given) != 1:
        raise MMError(
            "AccuracyTuner: give exactly one target: min_cosine=, max_abs_error= or metric= "
            f"(with threshold= or max_drop=); got {given or 'none'}"
        )
    if min_cosine is not None:
        bound = _number("min_cosine", min_cosine, -1.0, 1.0)
        return (lambda out: _least_cosine(out, reference), lambda s: s >= bound,
                f"output cosine >= {bound:g}", True)  # fmt: skip
    if max_abs_error is not None:
        bound = _number("max_abs_error", max_abs_error, 0.0, math.inf)
        return (lambda out: _max_abs(out, reference), lambda s: s <= bound,
                f"max abs error <= {bound:g}", False)  # fmt: skip
    if not callable(metric):
        raise MMError(f"AccuracyTuner: metric must be callable(outputs, reference), not {metric!r}")
    if (threshold is None) == (max_drop is None):
        raise MMError("AccuracyTuner: a metric needs exactly one of threshold= or max_drop=")
    user: Metric = metric

    def score(out: list[np.ndarray]) -> float:
        value = user(out, reference)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise MMError(f"AccuracyTuner: metric returned {value!r}, not a number") from None

    if max_drop is not None:
        drop = _number("max_drop", max_drop, 0.0, math.inf)
        threshold = score(reference) - drop if higher_is_better else score(reference) + drop
    bound = _number("threshold", threshold, -math.inf, math.inf)
    name = getattr(user, "__name__", "metric")
    if higher_is_better:
        return score, lambda s: s >= bound, f"{name} >= {bound:g}", True
    return score, lambda s: s <= bound, f"{name} <= {bound:g}", False


def _number(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise MMError(f"AccuracyTuner: {key} must be a number in [{lo:g}, {hi:g}], not {value!r}")
    return float(value)


def _least_cosine(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
    from mmbuild.report import error_stats

    return min(error_stats(a, e).cosine for a, e in zip(out, ref))


def _max_abs(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a.astype(np.float64) - e), initial=0.0))
               for a, e in zip(out, ref))  # fmt: skip


def _finite(x: float) -> float:
    return -math.inf if math.isnan(x) else x


# -- data -------------------------------------------------------------------------------------
def _batches(
    network: Network, eval_inputs: Sequence[np.ndarray | Sequence[np.ndarray]]
) -> list[list[np.ndarray]]:
    """The evaluation inputs as a list of batches, each a list of arrays in input order."""
    if isinstance(eval_inputs, np.ndarray) or not isinstance(eval_inputs, Sequence):
        raise MMError(
            "AccuracyTuner: eval_inputs must be a list of batches (one array per batch for a "
            "one-input network, else one list of arrays per batch)"
        )
    if not eval_inputs:
        raise MMError("AccuracyTuner: eval_inputs is empty; give at least one batch")
    n = len(network.inputs)
    batches = []
    for b, batch in enumerate(eval_inputs):
        arrays = [batch] if isinstance(batch, np.ndarray) else list(batch)
        if len(arrays) != n or not all(isinstance(a, np.ndarray) for a in arrays):
            raise MMError(
                f"AccuracyTuner: eval_inputs[{b}] must be {n} numpy array(s), one per network "
                f"input, not {type(batch).__name__}"
            )
        batches.append(arrays)
    return batches


def _reference_lists(
    network: Network,
    batches: list[list[np.ndarray]],
    reference: Sequence[Sequence[np.ndarray]] | None,
) -> list[np.ndarray]:
    """Per network output, the reference over all batches (concatenated on axis 0)."""
    from mmbuild.reference import run_reference

    names = [t.get_tensor_name() for t in network.outputs]
    if reference is None:
        per_batch = [[run_reference(network, b)[k] for k in names] for b in batches]
    else:
        if len(reference) != len(batches):
            raise MMError(
                f"AccuracyTuner: reference has {len(reference)} batches, eval_inputs "
                f"{len(batches)}; give one list of output arrays per evaluation batch"
            )
        per_batch = [[np.asarray(a) for a in r] for r in reference]
        for b, r in enumerate(per_batch):
            if len(r) != len(names):
                raise MMError(
                    f"AccuracyTuner: reference[{b}] has {len(r)} arrays; the network has "
                    f"{len(names)} outputs ({', '.join(names)})"
                )
    return [np.concatenate([np.asarray(r[i], np.float64) for r in per_batch]) for i in
            range(len(names))]  # fmt: skip


def _run(model: Model, batches: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The model's outputs over all batches, float64, concatenated on axis 0."""
    context = model.create_i_engine().create_i_context()
    per_batch = []
    for batch in batches:
        inputs = context.create_inputs()
        for t, a in zip(inputs, batch):
            t.from_numpy(a)
        outputs: list[Any] = []
        context.enqueue(inputs, outputs)
        per_batch.append([np.asarray(o.asnumpy(), np.float64) for o in outputs])
    return [np.concatenate([r[i] for r in per_batch]) for i in range(len(per_batch[0]))]


# -- sensitivity and MACs ---------------------------------------------------------------------
def _quantized_nodes(model: Model, network: Network) -> list[str]:
    """The network nodes whose step reads a quantized input, in run order (not a max pool on
    carried codes: the plan quantized it, not the precision mode, and it adds no noise)."""
    from mmbuild.passes.carry import CODE_OPS

    names = {n.get_node_name() for n in network.nodes}
    return [s.name for s in model.data.steps
            if s.name in names and s.op not in CODE_OPS
            and any(p.is_quantized for p in s.precisions)]  # fmt: skip


def _rank(model: Model, batch: list[np.ndarray], names: list[str]) -> list[tuple[str, float]]:
    """``names`` by the relative noise each step adds where it stands (largest first).

    The model runs once on ``batch``; each candidate step's float32 reference is computed from
    the very inputs the step received in that run, so that what is measured is the step's own
    error, not what arrived with its inputs: ``noise = sum (a - e)^2 / sum e^2``, with ``a``
    the step's output and ``e`` its float32 result on the same inputs. A tensor carried as
    integers (``mmbuild.passes.carry``) counts as the float values its producer quantized: the
    rounding to its readers' scale is theirs (each would quantize its input itself), so it
    counts in the readers' noise, not the producer's, as it does in a plan without carrying.
    """
    from mmbuild.graph import reference_outputs
    from mmbuild.passes.carry import CODE_OPS
    from mmbuild.runtime.inspect import _context, _input_buffers, float_values

    data = model.data
    buffers = _input_buffers(model, batch)
    actual = dict(zip((t.name for t in data.inputs), buffers))
    actual.update(_context(model).run(buffers, keep_all=True))
    unquantized: dict[str, np.ndarray] = {}

    def raw(t: str) -> np.ndarray:
        return actual[t] if t in actual else data.constants[t]

    def value(t: str) -> np.ndarray:
        return unquantized[t] if t in unquantized else float_values(data, t, raw(t))

    added = {}
    for step in data.steps:
        if data.tensors[step.outputs[0]].dtype.is_quantized:
            if step.op in CODE_OPS:  # a max pool on codes: the max of its unquantized input
                before = reference_outputs(step.node(), [value(t) for t in step.inputs])[0]
            else:
                before = _before_quantization(step, [raw(t) for t in step.inputs])
            unquantized[step.outputs[0]] = np.asarray(before, np.float32)
        if step.name not in names:
            continue
        expected = reference_outputs(step.node(), [value(t) for t in step.inputs])[0]
        got, want = value(step.outputs[0]).astype(np.float64), np.asarray(expected, np.float64)
        signal = float(np.sum(want * want))
        noise = float(np.sum((got - want) ** 2))
        added[step.name] = noise / signal if signal > 0 else (math.inf if noise > 0 else 0.0)
    return sorted(added.items(), key=lambda kv: (-kv[1], names.index(kv[0])))


def _before_quantization(step: Step, inputs: list[np.ndarray]) -> np.ndarray:
    """The float32 output of a step whose output is carried quantized, as its epilogue computed
    it before quantizing (its kernel's reference with a FLOAT32 output)."""
    from mmbuild.kernels.table import Lowered, kernel_named

    attrs = {k: v for k, v in step.lowered.attrs.items() if k not in ("scale_out", "za_out")}
    plain = dataclasses.replace(step, output_types=[DataType.FLOAT32],
                                lowered=Lowered(attrs, step.lowered.arrays))  # fmt: skip
    return np.asarray(kernel_named(step.kernel).reference(plain, inputs)[0], np.float32)


def _float16_overflows(network: Network, config: BuilderConfig, names: list[str]) -> dict[str, str]:
    """The nodes of ``names`` that cannot move to FLOAT16, each with the reason the report
    gives: those with a quantizable input (the slots a move sets to float) beyond fp16's
    largest finite value, by the range the build resolves for an activation or a constant's
    values (``mmbuild.precision.float16_overflow``). Their outputs are left out: a move leaves
    them in the mode's float type, which the builder keeps FLOAT32 for a range beyond fp16.
    Example: an inner product reading a tensor calibrated to Range(-3.0, 1.2e5) gives
    ``"FLOAT32: tensor 'fc1:0' reaches 120000, beyond fp16's 65504"``.

    With a clipping range algorithm (AUTO, percentile, entropy) the calibrated range can be
    narrower than the values seen, so a tensor whose rare outliers pass 65504 is not caught.
    """
    found = {}
    for name in names:
        node = network.find_node_by_name(name)
        beyond = float16_overflow([node.inputs[q] for q in node.quantizable_inputs], config)
        if beyond is not None:
            tensor, reach = beyond
            found[name] = (
                f"FLOAT32: tensor {tensor!r} reaches {reach:.6g}, beyond fp16's {FLOAT16_MAX:g}"
            )
    return found


def _macs(network: Network) -> dict[str, int]:
    """Multiply-accumulates of each conv / deconv / inner-product / matmul node (a dynamic
    dimension counts as 1): output elements times the length of the reduction."""
    macs = {}
    for node in network.nodes:
        kind = node.get_node_type()
        if kind not in _MAC_OPS:
            continue
        out = math.prod(max(d, 1) for d in node.get_output(0).get_dimension().get_dims())
        dims = [list(t.get_dimension().get_dims()) for t in node.inputs]
        if kind in ("IConvNode", "IDeconvNode"):
            # the filter's axes in [Cout, Kh, Kw, Cin/g] order (conv) or [Cin, Kh, Kw, Cout/g]
            # (deconv), whatever its layout: an output (conv) or input (deconv) element meets
            # every filter tap but those of the first axis
            w = dims[1]
            first = node.filter_ohwi((0, 1, 2, 3))[0]  # type: ignore[attr-defined]
            reduction = math.prod(max(d, 1) for d in w) // max(w[first], 1)
            if kind == "IDeconvNode":
                out = math.prod(max(d, 1) for d in dims[0])
        elif kind == "IInnerProductNode":
            reduction = max(dims[1][-1], 1)
        else:
            a = dims[0]
            transposed = bool(node.attrs.get("transpose_a", False))
            reduction = max(a[-2] if transposed else a[-1], 1)
        macs[node.get_node_name()] = int(out * reduction)
    return macs


def _per_mac(ranked: tuple[str, float], macs: dict[str, int]) -> float:
    """A node's noise per square root of its MACs (step 4 of the module docstring)."""
    name, noise = ranked
    return noise / math.sqrt(max(macs.get(name, 1), 1))


def _move_order(ranking: list[tuple[str, float]], macs: dict[str, int]) -> list[str]:
    """The ranked nodes in the order the tuner moves them: most noise per sqrt(MAC) first."""
    return [name for name, _ in sorted(ranking, key=lambda r: -_per_mac(r, macs))]


def _mac_share(macs: dict[str, int], quantized: list[str], moved: set[str]) -> float:
    total = sum(macs.values())
    kept = sum(v for k, v in macs.items() if k in quantized and k not in moved)
    return kept / total if total else 1.0
