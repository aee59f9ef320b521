"""``Calibrator``: ranges for every float activation of a network, from data or from a cache.

``calibrate(network, config)`` runs in four stages; nothing is written onto the network before the
last one, so a calibration that fails leaves every range as it was:

1. check the data sources against the network (one per input, in order);
2. step all sources together, check each batch, run the network in fp32 with the reference
   evaluator and feed every float activation to its observers (memory fixed, whatever the number
   of batches);
3. choose one range per tensor with the algorithm (``mmbuild.quant.algorithms.choose_range``);
4. write the ranges onto the tensors, except where the user set one with ``set_dynamic_range``.

After ``read_cache`` stages 1 and 2 are skipped: the cached ranges are checked against the network
and written in stage 4, as TensorRT does with its calibration cache.

Which range the builder uses, first match wins (the order of ``mmbuild.precision``):
``set_dynamic_range`` > ``custom_ranges[name]`` > calibration > ``custom_ranges[""]``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from mmbuild._aliases import CamelCaseAliases
from mmbuild.calib import cache as cache_file
from mmbuild.calib.cache import CACHE_FORMAT, CACHE_VERSION, CalibrationCacheModel
from mmbuild.calib.data import CalibDataInterface
from mmbuild.config import BuilderConfig, CustomRange
from mmbuild.config.model_io import ModelEdges, model_edges
from mmbuild.errors import Code, MMError, Status, did_you_mean
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import DataType, Dims, Range
from mmbuild.precision import split_mode
from mmbuild.quant.algorithms import (
    QuantizationAlgorithm,
    RangeCandidate,
    choose_range,
    rank_ranges,
)
from mmbuild.quant.bias_correction import MeanObserver, corrected_nodes, input_means
from mmbuild.quant.equalize import CONFIG_KEY as CLE_KEY
from mmbuild.quant.equalize import Equalization, equalize_network
from mmbuild.quant.observers import HistogramObserver, MinMaxObserver
from mmbuild.reference import run_reference

log = logging.getLogger(__name__)

#: ``MMBUILD_PROGRESS=0`` in the environment switches the progress bar off for every calibrator.
PROGRESS_ENV = "MMBUILD_PROGRESS"
DEFAULT_PERCENTILE = 99.99
# How many mismatching tensor names a refused cache lists before "and N more".
_SHOWN = 5


def activation_tensors(network: Network) -> list[ITensor]:
    """The tensors calibration observes, in network order: the network inputs and node outputs
    that hold floats (FLOAT32, FLOAT16 or a QINT type computed as float), except constants."""
    found = []
    for t in network.tensors():
        producer = t.get_producer()
        if producer is not None and producer.op == "const":
            continue  # weights are ranged from their values when the model is built
        dtype = t.get_data_type()
        if dtype.is_float or dtype.is_quantized:
            found.append(t)
    return found


class Calibrator(CamelCaseAliases):
    """Chooses and writes the range of every float activation tensor of a network.

    ``data`` holds one ``CalibDataInterface`` per network input, in input order.

    With ``LINEAR_ALGORITHM`` (the default) the range is the observed ``[min, max]`` over all
    batches. For example, if input batch 0 holds ``[-0.5, 2.0]`` and batch 1 ``[-1.25, 0.75]``, the
    input's range is ``Range(-1.25, 2.0)`` and a ReLU after it gets ``Range(0.0, 2.0)``: not
    widened to be symmetric; the builder derives scale and zero point from the range (symmetric
    int8: ``scale = 2.0 / 127``).
    """

    def __init__(self, data: Sequence[CalibDataInterface]) -> None:
        if isinstance(data, CalibDataInterface) or not isinstance(data, (list, tuple)):
            raise MMError(
                f"Calibrator takes a list of data sources, one per network input, in order "
                f"(mm.Calibrator([MyData(...)])), not {type(data).__name__}"
            )
        for i, source in enumerate(data):
            if not isinstance(source, CalibDataInterface):
                raise MMError(
                    f"Calibrator: data source {i} is a {type(source).__name__}; each data source "
                    "is an instance of a subclass of mm.CalibDataInterface"
                )
        self._data = list(data)
        self._algorithm = QuantizationAlgorithm.LINEAR_ALGORITHM
        self._percentile = DEFAULT_PERCENTILE
        self._progress = True
        self._cache: CalibrationCacheModel | None = None
        self._cache_path = ""
        self._result: CalibrationCacheModel | None = None  # what the last calibration chose
        self._auto_choices: dict[str, RangeCandidate] = {}
        self._means: dict[str, np.ndarray] = {}  # per node: its input's mean per filter tap

    # -- settings ------------------------------------------------------------------------------
    def set_quantization_algorithm(self, algorithm: QuantizationAlgorithm) -> Status:
        """The range algorithm: ``mm.QuantizationAlgorithm.LINEAR_ALGORITHM`` (the default),
        ``EQNM_ALGORITHM``, ``ENTROPY_ALGORITHM``, ``PERCENTILE_ALGORITHM``, ``MSE_ALGORITHM``,
        or ``AUTO`` (alias ``AUTO_ALGORITHM``): per tensor, the range of the algorithm whose
        quantization error on the calibration data is least (see ``get_auto_choices``)."""
        if not isinstance(algorithm, QuantizationAlgorithm):
            names = [a.name for a in QuantizationAlgorithm]
            by_key = {a.key: a.name for a in QuantizationAlgorithm}
            guess = by_key.get(str(algorithm).lower())
            hint = f" (did you mean {guess!r}?)" if guess else did_you_mean(str(algorithm), names)
            raise MMError(
                f"Calibrator.set_quantization_algorithm: {algorithm!r} is not an "
                f"mm.QuantizationAlgorithm{hint}; use one of "
                + ", ".join(f"mm.QuantizationAlgorithm.{n}" for n in names)
            )
        self._algorithm = algorithm
        return Status.OK()

    def get_quantization_algorithm(self) -> QuantizationAlgorithm:
        return self._algorithm

    def set_percentile(self, percentile: float) -> Status:
        """The percent of values the range keeps under ``PERCENTILE_ALGORITHM``, in (0, 100]
        (default 99.99); the other algorithms do not read it."""
        ok = isinstance(percentile, (int, float, np.integer, np.floating)) and not isinstance(
            percentile, (bool, np.bool_)
        )
        if not ok or not 0.0 < float(percentile) <= 100.0:  # NaN fails the comparison too
            raise MMError(
                f"Calibrator.set_percentile: {percentile!r} is not in (0, 100]; pass the percent "
                "of values the range keeps, such as 99.99"
            )
        self._percentile = float(percentile)
        return Status.OK()

    def get_percentile(self) -> float:
        return self._percentile

    def set_progress(self, enabled: bool) -> Status:
        """Show a progress bar (on stderr) while calibrating: on by default, shown only when
        stderr is a terminal and ``MMBUILD_PROGRESS`` is not ``0``."""
        if not isinstance(enabled, (bool, np.bool_)):
            raise MMError(f"Calibrator.set_progress takes True or False, not {enabled!r}")
        self._progress = bool(enabled)
        return Status.OK()

    # -- calibration ---------------------------------------------------------------------------
    def calibrate(self, network: Network, config: BuilderConfig | None = None) -> Status:
        """Choose a range for every float activation tensor of ``network`` and write it onto the
        tensor (see the module docstring for the stages and the order of range sources).

        ``config`` (default: ``mm.BuilderConfig()``) gives the QINT width the ranges are chosen
        for (from ``precision_mode``; 8 for a float mode) and ``activation_quant_algo``.
        """
        if not isinstance(network, Network):
            raise MMError(f"Calibrator.calibrate: expected an mm.Network, not {network!r}")
        if config is None:
            config = BuilderConfig()
        elif not isinstance(config, BuilderConfig):
            raise MMError(
                f"Calibrator.calibrate: config must be an mm.BuilderConfig, not {config!r}"
            )
        qtype, _ = split_mode(config.precision_mode)
        bits = 8 if qtype is None else qtype.bits
        symmetric = config.activation_quant_algo == "symmetric"
        tensors = activation_tensors(network)
        eq = equalize_network(network, config) if config.cross_layer_equalization else None
        if self._cache is not None:
            result = self._check_cache(self._cache, network, tensors, config, bits)
            _check_cache_equalization(self._cache_path, result, eq)
            self._auto_choices = {}
            how = f"from the cache {self._cache_path!r}"
        else:
            edges = model_edges(network, config)  # samples come as the model takes them
            constants = eq.values if eq is not None else {}
            mean_nodes = corrected_nodes(network.nodes) if config.bias_correction else []
            ranges, batches = self._from_data(
                network, tensors, bits, symmetric, edges, constants, mean_nodes
            )
            result = CalibrationCacheModel(
                format=CACHE_FORMAT,
                version=CACHE_VERSION,
                algorithm=self._algorithm.key,  # type: ignore[arg-type]
                activation_quant_algo=config.activation_quant_algo,  # type: ignore[arg-type]
                bits=bits,  # type: ignore[arg-type]
                fingerprint=cache_file.network_fingerprint(network),
                equalization=eq.digest if eq is not None else "",
                tensors={
                    name: CustomRange(min=[lo], max=[hi]) for name, (lo, hi) in ranges.items()
                },
            )
            how = f"over {batches} batch(es) with {self._algorithm.name}"
        # stage 4: the only stage that changes the network
        chosen = _ranges_of(result)
        kept = []
        for t in tensors:
            if t.has_user_range:
                kept.append(t.get_tensor_name())
            else:
                t._set_calibrated_range(chosen[t.get_tensor_name()])
        network._calibration_equalization = result.equalization
        network._calibration_means = dict(self._means) if self._cache is None else None
        self._result = result
        log.info(
            "calibrated %d tensor(s) %s; %d kept the range set by set_dynamic_range%s",
            len(tensors),
            how,
            len(kept),
            f" ({_names(kept)})" if kept else "",
        )
        return Status.OK()

    def get_auto_choices(self) -> dict[str, RangeCandidate]:
        """What ``AUTO`` chose for each tensor in the last calibration from data, by name: the
        algorithm, the form (``'symmetric'`` or ``'asymmetric'``), the range and its mean squared
        quantization error. Empty for the other algorithms and after a cache was applied."""
        return dict(self._auto_choices)

    def get_input_means(self) -> dict[str, np.ndarray]:
        """The mean of each conv's and inner product's input per filter tap (``[Kh, Kw, Cin]``;
        ``[K]`` for an inner product), by node name, from the last calibration from data with
        ``precision_config.bias_correction``; empty otherwise. The builder reads them from the
        network, where they are written with the ranges."""
        return dict(self._means)

    def get_ranges(self) -> dict[str, Range]:
        """The range the last calibration chose for each observed tensor, by name (empty before
        any). A tensor ranged with ``set_dynamic_range`` keeps its own on the network; here it
        still has the calibrated one."""
        return _ranges_of(self._result) if self._result is not None else {}

    # -- cache ---------------------------------------------------------------------------------
    def write_cache(self, path: str | os.PathLike[str]) -> Status:
        """Write the last calibration's ranges to ``path`` as a versioned JSON cache."""
        if self._result is None:
            raise MMError(
                "Calibrator.write_cache: there is nothing to write yet; call "
                "calibrate(network, config) first, then write_cache",
                Code.UNAVAILABLE,
            )
        cache_file.write_cache(path, self._result)
        return Status.OK()

    def read_cache(self, path: str | os.PathLike[str]) -> Status:
        """Read a cache written by ``write_cache``; the next ``calibrate`` applies its ranges
        without reading any data, and refuses a network the cache does not match."""
        self._cache = cache_file.read_cache(path)
        self._cache_path = os.fspath(path)
        return Status.OK()

    # -- stages --------------------------------------------------------------------------------
    def _from_data(
        self,
        network: Network,
        tensors: list[ITensor],
        bits: int,
        symmetric: bool,
        edges: ModelEdges | None = None,
        constants: dict[str, np.ndarray] | None = None,
        mean_nodes: Sequence[INode] = (),
    ) -> tuple[dict[str, tuple[float, float]], int]:
        """Stages 1 to 3: the chosen range of each tensor, and the number of batches read
        (``constants``: the equalised weights the network runs with, by tensor name). The input
        means of ``mean_nodes`` (for bias correction) go to ``self._means``."""
        means = {n.get_node_name(): MeanObserver() for n in mean_nodes}
        sources = self._data
        if len(sources) != network.get_input_count():
            raise MMError(
                f"Calibrator: {len(sources)} data source(s) for a network with "
                f"{network.get_input_count()} input(s); give one data source per network input, "
                "in input order"
            )
        if edges is not None:
            sources = [edges.inputs[i].calibration_source(s) for i, s in enumerate(sources)]
        minmax = {t.get_tensor_name(): MinMaxObserver() for t in tensors}
        hists: dict[str, HistogramObserver] = {}
        if self._algorithm is not QuantizationAlgorithm.LINEAR_ALGORITHM:
            hists = {t.get_tensor_name(): HistogramObserver() for t in tensors}
        for i, source in enumerate(sources):
            status = _call(source, i, None, "reset")
            if not (isinstance(status, Status) and status.ok()):
                raise _source_error(
                    source, i, None, f"reset() returned {status!r}; return mm.Status.OK()"
                )
        batch = 0
        with self._progress_bar(sources) as bar:
            while self._next_batch(sources, batch):
                samples = [
                    _read_sample(source, i, batch, network.get_input(i))
                    for i, source in enumerate(sources)
                ]
                try:
                    values = run_reference(network, samples, keep_all=True, constants=constants)
                except MMError as e:
                    raise MMError(f"Calibrator: batch {batch}: the network cannot run: {e}") from e
                for t in tensors:
                    name = t.get_tensor_name()
                    try:
                        minmax[name].observe(values[name])
                        if hists:
                            hists[name].observe(values[name])
                    except MMError as e:
                        raise MMError(
                            f"Calibrator: batch {batch}: tensor {name!r} ({_origin(t)}): {e}"
                        ) from e
                for node in mean_nodes:
                    means[node.get_node_name()].observe(
                        *input_means(node, values[node.inputs[0].name])
                    )
                batch += 1
                bar.update(1)
        chosen = {}
        auto: dict[str, RangeCandidate] = {}
        for t in tensors:
            name = t.get_tensor_name()
            if minmax[name].empty:
                raise MMError(
                    f"Calibrator: tensor {name!r} ({_origin(t)}) held no element in any of the "
                    f"{batch} batch(es), so it has no range; give batches with at least one element"
                )
            try:
                if self._algorithm is QuantizationAlgorithm.AUTO:
                    best = rank_ranges(
                        hists[name], minmax[name], bits, symmetric, self._percentile
                    )[0]
                    auto[name] = best
                    chosen[name] = (best.lo, best.hi)
                    continue
                chosen[name] = choose_range(
                    self._algorithm,
                    hists.get(name),
                    minmax[name],
                    bits=bits,
                    symmetric=symmetric,
                    percentile=self._percentile,
                )
            except MMError as e:
                raise MMError(f"Calibrator: tensor {name!r}: {e}") from e
        if auto:
            tally: dict[str, int] = {}
            for c in auto.values():
                tally[f"{c.algorithm} {c.form}"] = tally.get(f"{c.algorithm} {c.form}", 0) + 1
            log.info(
                "AUTO chose, per tensor: %s",
                ", ".join(f"{k} x{n}" for k, n in sorted(tally.items(), key=lambda kv: -kv[1])),
            )
        self._auto_choices = auto
        self._means = {name: obs.mean for name, obs in means.items()}
        return chosen, batch

    def _next_batch(self, sources: list[CalibDataInterface], batch: int) -> bool:
        """``next()`` on every source: True when all gave batch ``batch``, False when all ended."""
        ended = [_step(source, i, batch) for i, source in enumerate(sources)]
        if any(ended) and not all(ended):
            stopped = ended.index(True)
            going = ended.index(False)
            raise _source_error(
                sources[stopped],
                stopped,
                batch,
                f"next() returned OUT_OF_RANGE after {batch} batch(es), but data source {going} "
                f"({type(sources[going]).__name__}) gave batch {batch}; every data source must "
                "give the same number of batches",
            )
        if all(ended) and batch == 0:
            raise MMError(
                "Calibrator: the data sources gave no batch (next() returned OUT_OF_RANGE right "
                "after reset()); give at least one batch"
            )
        return not all(ended)

    def _check_cache(
        self,
        cache: CalibrationCacheModel,
        network: Network,
        tensors: list[ITensor],
        config: BuilderConfig,
        bits: int,
    ) -> CalibrationCacheModel:
        names = [t.get_tensor_name() for t in tensors]
        missing = [n for n in names if n not in cache.tensors]
        extra = [n for n in cache.tensors if n not in set(names)]
        problems = []
        if missing:
            problems.append(f"tensors of the network missing from the cache: {_names(missing)}")
        if extra:
            problems.append(f"tensors in the cache that the network lacks: {_names(extra)}")
        fingerprint = cache_file.network_fingerprint(network)
        if fingerprint != cache.fingerprint:
            problems.append(
                f"the network's fingerprint {fingerprint[:12]}... differs from the cache's "
                f"{cache.fingerprint[:12]}... (input shapes or types, node types or wiring "
                "changed)"
            )
        if problems:
            raise MMError(
                f"Calibrator: the calibration cache {self._cache_path!r} does not match this "
                "network: " + "; ".join(problems) + ". Read the cache written for this network, "
                "or calibrate it from data with a Calibrator that has not read a cache"
            )
        settings = (bits, config.activation_quant_algo)
        if cache.algorithm != "linear" and settings != (cache.bits, cache.activation_quant_algo):
            log.warning(
                "calibration cache %r: its %s ranges were chosen for %d bits, %s, but the config "
                "asks %d bits, %s; the cached ranges are applied as they are",
                self._cache_path,
                cache.algorithm,
                cache.bits,
                cache.activation_quant_algo,
                *settings,
            )
        return cache

    def _progress_bar(self, sources: Sequence[CalibDataInterface] = ()) -> tqdm:
        """The bar of one pass over the data; its total is the fewest batches of a source when
        every source has ``__len__`` (a count of batches)."""
        sized = bool(sources) and all(hasattr(s, "__len__") for s in sources)
        total = min(len(s) for s in sources) if sized else None  # type: ignore[arg-type]
        shown = (
            self._progress
            and os.environ.get(PROGRESS_ENV, "1") != "0"
            and bool(getattr(sys.stderr, "isatty", lambda: False)())
        )
        return tqdm(desc="calibrating", unit="batch", total=total, disable=not shown,
                    file=sys.stderr)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Calibrator({len(self._data)} data source(s), {self._algorithm.name}"
            + (f", cache {self._cache_path!r}" if self._cache is not None else "")
            + ")"
        )


# -- helpers -----------------------------------------------------------------------------------
def _check_cache_equalization(
    path: str, cache: CalibrationCacheModel, eq: Equalization | None
) -> None:
    """Refuse a cache whose ranges were taken on other weights than the config's equalisation."""
    want = eq.digest if eq is not None else ""
    if cache.equalization == want:
        return
    if not cache.equalization:
        what = f"without {CLE_KEY}, but the config sets it true"
    elif not want:
        what = f"with {CLE_KEY} true, but the config does not set it"
    else:
        what = f"with {CLE_KEY} on other weights than this network's"
    raise MMError(
        f"Calibrator: the calibration cache {path!r} was written {what}; calibrate from data "
        f"with this config, or give {CLE_KEY} the value the cache was written with"
    )


def _source_error(source: CalibDataInterface, i: int, batch: int | None, what: str) -> MMError:
    when = "before batch 0" if batch is None else f"batch {batch}"
    return MMError(f"Calibrator: data source {i} ({type(source).__name__}), {when}: {what}")


def _call(source: CalibDataInterface, i: int, batch: int | None, method: str) -> Any:
    """``source.method()``; an exception from user code becomes an MMError naming source and
    batch."""
    try:
        return getattr(source, method)()
    except Exception as e:
        raise _source_error(source, i, batch, f"{method}() raised {type(e).__name__}: {e}") from e


def _step(source: CalibDataInterface, i: int, batch: int) -> bool:
    """``source.next()``: False for OK, True for OUT_OF_RANGE (the end); anything else raises."""
    status = _call(source, i, batch, "next")
    if isinstance(status, Status):
        if status.ok():
            return False
        if status.code() == Code.OUT_OF_RANGE:
            return True
    raise _source_error(
        source,
        i,
        batch,
        f"next() returned {status!r}; return mm.Status.OK() for a batch, or a Status with code "
        "mm.Code.OUT_OF_RANGE after the last one",
    )


def _read_sample(source: CalibDataInterface, i: int, batch: int, tensor: ITensor) -> np.ndarray:
    """The current sample of ``source``, checked against what it says and what input ``i`` takes."""

    def fail(what: str) -> MMError:
        return _source_error(source, i, batch, what)

    shape = _call(source, i, batch, "get_shape")
    if not isinstance(shape, Dims):
        try:
            shape = Dims(shape)
        except (MMError, TypeError):
            raise fail(f"get_shape() returned {shape!r}; return mm.Dims([...])") from None
    dtype = _call(source, i, batch, "get_data_type")
    if not isinstance(dtype, DataType):
        raise fail(
            f"get_data_type() returned {dtype!r}; return an mm.DataType such as mm.DataType.FLOAT32"
        )
    sample = _call(source, i, batch, "get_sample")
    if not isinstance(sample, np.ndarray):
        raise fail(
            f"get_sample() returned a {type(sample).__name__}; return a numpy array "
            f"of shape {shape} and type {dtype.name}"
        )
    got = list(sample.shape)
    if got != shape.get_dims():
        raise fail(f"the sample has shape {got} but get_shape() says {shape}; make them agree")
    declared = tensor.get_dimension().get_dims()
    input_name = f"network input {i} ({tensor.get_tensor_name()!r})"
    if len(got) != len(declared) or any(d not in (-1, s) for d, s in zip(declared, got)):
        raise fail(
            f"the sample's shape {got} does not fit {input_name}, whose dimensions are "
            f"{declared} (-1 = any size)"
        )
    expected = tensor.get_data_type()
    if dtype is not expected:
        raise fail(
            f"get_data_type() says {dtype.name} but {input_name} is {expected.name}; give data "
            f"of type {expected.name}"
        )
    if sample.dtype != dtype.numpy_dtype:
        raise fail(
            f"the sample's numpy dtype is {sample.dtype} but get_data_type() says {dtype.name} "
            f"(numpy {dtype.numpy_dtype}); convert it with .astype(np.{dtype.numpy_dtype})"
        )
    if sample.dtype.kind == "f":
        bad = ~np.isfinite(sample)
        if bad.any():
            n_nan = int(np.count_nonzero(np.isnan(sample)))
            first = tuple(int(k) for k in np.argwhere(bad)[0])
            raise fail(
                f"the sample holds {n_nan} NaN and {int(bad.sum()) - n_nan} Inf value(s), the "
                f"first at index {list(first)}; calibration data must be finite"
            )
    return sample


def _ranges_of(cache: CalibrationCacheModel) -> dict[str, Range]:
    out = {}
    for name, r in cache.tensors.items():
        out[name] = Range(r.min[0], r.max[0]) if len(r.min) == 1 else Range(r.min, r.max)
    return out


def _origin(t: ITensor) -> str:
    producer = t.get_producer()
    if producer is None:
        return "a network input"
    return f"output {t.index} of {producer.get_node_type()} {producer.get_node_name()!r}"


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    more = len(names) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")
