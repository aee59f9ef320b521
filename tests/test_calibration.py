"""Calibration: data sources, the ranges each algorithm writes, the failure rules, the cache."""

from __future__ import annotations

import doctest
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import jsonschema
import numpy as np
import pytest

import mmbuild as mm
import mmbuild.calib.calibrator as calibrator_module
import mmbuild.calib.data as data_module
from mmbuild.calib import CalibDataInterface, Calibrator, QuantizationAlgorithm
from mmbuild.calib.cache import AlgorithmKey, CalibrationCacheModel, network_fingerprint
from mmbuild.ops.activation import IActivation
from mmbuild.ops.elementwise import IElementwise
from mmbuild.precision import plan_precision
from mmbuild.quant.algorithms import choose_range, rank_ranges
from mmbuild.quant.observers import HistogramObserver, MinMaxObserver
from mmbuild.reference import run_reference
from mmbuild.tools.write_schemas import DEFAULT_OUT_DIR, render_schemas, stale_schemas

F32 = mm.DataType.FLOAT32
QA = QuantizationAlgorithm
SCHEMA_NAME = "calibration_cache.schema.json"


# The data source of API.md, "Calibration" (its statements, one per line).
class MyData(CalibDataInterface):
    def __init__(self, batches):
        super().__init__()
        self.batches, self.i = batches, -1

    def get_shape(self):
        return mm.Dims(self.batches[self.i].shape)

    def get_data_type(self):
        return mm.DataType.FLOAT32

    def get_sample(self):
        return self.batches[self.i]

    def next(self):
        self.i += 1
        if self.i >= len(self.batches):
            return mm.Status(mm.Code.OUT_OF_RANGE, "end of data")
        return mm.Status.OK()

    def reset(self):
        self.i = -1
        return mm.Status.OK()


def config(mode: str = "force_float32", algo: str = "symmetric", **extra: Any) -> mm.BuilderConfig:
    c = mm.BuilderConfig()
    body = {"precision_config": {"precision_mode": mode, "activation_quant_algo": algo}, **extra}
    assert c.parse_from_string(json.dumps(body)).ok()
    return c


def const(net: mm.Network, value: np.ndarray) -> mm.ITensor:
    return net.add_i_const_node(F32, mm.Dims(list(value.shape)), value).get_output(0)


def conv_net(channels: int = 2) -> mm.Network:
    """input [-1, 6, 6, C] -> conv(+bias) -> relu -> add const -> clip; the same every call."""
    rng = np.random.default_rng(7)
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([-1, 6, 6, channels]))
    w = const(net, rng.standard_normal((3, 3, 3, channels)).astype(np.float32))
    b = const(net, rng.standard_normal(3).astype(np.float32))
    conv = net.add_i_conv_node(x, w, b)
    relu = net.add_i_activation_node(conv.get_output(0), IActivation.RELU)
    shift = const(net, np.full((1, 1, 1, 3), -0.5, np.float32))
    add = net.add_i_elementwise_node(relu.get_output(0), shift, IElementwise.ADD)
    clip = net.add_i_clip_node(add.get_output(0), -0.25, 3.0)
    assert net.mark_output(clip.get_output(0)).ok()
    return net


def two_input_net() -> mm.Network:
    """a [-1, 4] + b [-1, 4] -> tanh."""
    net = mm.Network()
    a = net.add_input(F32, mm.Dims([-1, 4]))
    b = net.add_input(F32, mm.Dims([-1, 4]))
    add = net.add_i_elementwise_node(a, b, IElementwise.ADD)
    assert net.mark_output(
        net.add_i_activation_node(add.get_output(0), IActivation.TANH).get_output(0)
    ).ok()
    return net


def image_batches(sizes: tuple[int, ...] = (1, 3, 2), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 6, 6, 2)) * 1.5 + 0.25).astype(np.float32) for n in sizes]


def pair_batches(count: int = 3, seed: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    a = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(count)]
    b = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(count)]
    return a, b


def ranges_on(net: mm.Network) -> dict[str, tuple[mm.Range | None, bool]]:
    return {t.name: (t.get_dynamic_range(), t.has_user_range) for t in net.tensors()}


def is_const(t: mm.ITensor) -> bool:
    producer = t.get_producer()
    return producer is not None and producer.get_node_type() == "IConstNode"


def calibrated(
    net: mm.Network,
    batches: list[np.ndarray],
    algorithm: QuantizationAlgorithm,
    cfg: mm.BuilderConfig | None = None,
) -> Calibrator:
    calib = Calibrator([MyData(batches)])
    assert calib.set_quantization_algorithm(algorithm).ok()
    assert calib.calibrate(net, cfg).ok()
    return calib


# -- the API.md example and LINEAR ---------------------------------------------------------------


def test_api_example_runs_and_linear_gives_observed_extremes_over_all_batches() -> None:
    net, batches = conv_net(), image_batches((1, 3, 2))  # batches differ in shape
    calib = Calibrator([MyData(batches)])
    calib.set_quantization_algorithm(QA.LINEAR_ALGORITHM)
    assert calib.calibrate(net, config()).ok()

    outs = [run_reference(net, [b], keep_all=True) for b in batches]
    for t in net.tensors():
        if is_const(t):
            continue
        lo = min(float(o[t.name].min()) for o in outs)
        hi = max(float(o[t.name].max()) for o in outs)
        assert t.get_dynamic_range() == mm.Range(lo, hi), t.name
        assert calib.get_ranges()[t.name] == mm.Range(lo, hi)
        assert not t.has_user_range
    x = net.get_input(0).get_dynamic_range()
    assert x is not None and x.min != -x.max  # type: ignore[operator]  # not widened to be symmetric
    relu = net.find_tensor_by_name("activation_0:0")
    assert relu is not None and relu.get_dynamic_range().min == 0.0  # type: ignore[union-attr]


def test_ranges_go_on_float_activations_only() -> None:
    net = conv_net()
    to_int = net.add_i_cast_node(net.get_output(0), mm.DataType.INT32).get_output(0)
    half = net.add_i_cast_node(net.get_output(0), mm.DataType.FLOAT16).get_output(0)
    calib = calibrated(net, image_batches(), QA.LINEAR_ALGORITHM)
    ranged = {t.name for t in net.tensors() if t.get_dynamic_range() is not None}
    expected = {t.name for t in net.tensors() if not is_const(t)} - {to_int.name}
    assert ranged == expected == set(calib.get_ranges())
    assert half.name in ranged and to_int.get_dynamic_range() is None
    consts = [t for t in net.tensors() if is_const(t)]
    assert len(consts) == 3 and all(t.get_dynamic_range() is None for t in consts)


def test_calibrating_twice_gives_identical_ranges() -> None:
    net, batches = conv_net(), image_batches()
    first = calibrated(net, batches, QA.ENTROPY_ALGORITHM).get_ranges()
    on_net = ranges_on(net)
    calib = Calibrator([MyData(batches)])
    calib.set_quantization_algorithm(QA.ENTROPY_ALGORITHM)
    for _ in range(2):
        assert calib.calibrate(net).ok()
        assert calib.get_ranges() == first and ranges_on(net) == on_net
    other = conv_net()
    calibrated(other, batches, QA.ENTROPY_ALGORITHM)
    assert ranges_on(other) == on_net


# -- the other algorithms ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [a for a in QA if a is not QA.LINEAR_ALGORITHM])
@pytest.mark.parametrize(
    ("mode", "bits"), [("qint8_mixed_float32", 8), ("qint16_mixed_float16", 16)]
)
def test_saturating_algorithms_use_choose_range_on_all_batches(
    algorithm: QuantizationAlgorithm, mode: str, bits: int
) -> None:
    net, batches = conv_net(), image_batches((2, 1, 3, 2))
    calib = Calibrator([MyData(batches)])
    calib.set_quantization_algorithm(algorithm)
    calib.set_percentile(99.5)
    assert calib.calibrate(net, config(mode)).ok()
    outs = [run_reference(net, [b], keep_all=True) for b in batches]
    for t in net.tensors():
        if is_const(t):
            continue
        minmax, hist = MinMaxObserver(), HistogramObserver()
        for o in outs:
            minmax.observe(o[t.name])
            hist.observe(o[t.name])
        lo, hi = choose_range(algorithm, hist, minmax, bits=bits, symmetric=True, percentile=99.5)
        assert t.get_dynamic_range() == mm.Range(lo, hi) and lo == -hi, t.name


def test_asymmetric_config_keeps_relu_ranges_at_zero_and_percentile_100_is_linear() -> None:
    batches = image_batches()
    linear = calibrated(conv_net(), batches, QA.LINEAR_ALGORITHM).get_ranges()
    asymmetric = config("qint8_mixed_float32", "asymmetric")
    net = conv_net()
    calib = calibrated(net, batches, QA.ENTROPY_ALGORITHM, asymmetric)
    relu = calib.get_ranges()["activation_0:0"]
    assert relu.min == 0.0 and 0.0 < relu.max <= linear["activation_0:0"].max  # type: ignore[operator]
    symmetric = calibrated(conv_net(), batches, QA.ENTROPY_ALGORITHM).get_ranges()
    assert symmetric["activation_0:0"].min == -symmetric["activation_0:0"].max  # type: ignore[operator]
    calib.set_quantization_algorithm(QA.PERCENTILE_ALGORITHM)
    calib.set_percentile(100)
    assert calib.calibrate(net, asymmetric).ok()
    assert calib.get_ranges() == linear


@pytest.mark.parametrize("algo", ["symmetric", "asymmetric"])
def test_auto_chooses_per_tensor_and_says_what_it_chose(algo: str, tmp_path: Path) -> None:
    net, batches = conv_net(), image_batches((2, 1, 3, 2))
    cfg = config("qint8_mixed_float32", algo)
    calib = calibrated(net, batches, QA.AUTO, cfg)
    choices = calib.get_auto_choices()
    outs = [run_reference(net, [b], keep_all=True) for b in batches]
    observed = [t for t in net.tensors() if not is_const(t)]
    assert set(choices) == {t.name for t in observed}
    for t in observed:
        minmax, hist = MinMaxObserver(), HistogramObserver()
        for o in outs:
            minmax.observe(o[t.name])
            hist.observe(o[t.name])
        ranked = rank_ranges(hist, minmax, symmetric=algo == "symmetric")
        assert choices[t.name] == ranked[0], t.name
        assert t.get_dynamic_range() == mm.Range(ranked[0].lo, ranked[0].hi), t.name
        if algo == "symmetric":
            assert choices[t.name].form == "symmetric"
    # the post-ReLU tensor keeps a range that starts at 0 when a zero point is allowed
    if algo == "asymmetric":
        assert choices["activation_0:0"].lo == 0.0
    calib.write_cache(tmp_path / "auto.json")
    assert json.loads((tmp_path / "auto.json").read_text())["algorithm"] == "auto"
    again = Calibrator([MyData(batches)])
    again.read_cache(tmp_path / "auto.json")
    other = conv_net()
    assert again.calibrate(other, cfg).ok()
    assert again.get_ranges() == calib.get_ranges() and again.get_auto_choices() == {}


# -- ranges set by the user ----------------------------------------------------------------------


def test_user_ranges_are_kept_and_the_documented_order_holds() -> None:
    net = conv_net()
    x, conv_out = net.get_input(0), net.find_tensor_by_name("conv_0:0")
    assert conv_out is not None
    x.set_dynamic_range(mm.Range(-8.0, 8.0))
    calib = calibrated(net, image_batches(), QA.LINEAR_ALGORITHM)
    assert x.get_dynamic_range() == mm.Range(-8.0, 8.0) and x.has_user_range
    assert calib.get_ranges()["input_0"] != mm.Range(-8.0, 8.0)  # what calibration chose
    calibrated_conv = conv_out.get_dynamic_range()
    assert calibrated_conv == calib.get_ranges()["conv_0:0"] and not conv_out.has_user_range

    # set_dynamic_range > custom_ranges[name] > calibration > custom_ranges[""]: a second conv
    # reads conv_0:0, so the plan ranges both QINT inputs
    w2 = const(net, np.ones((2, 1, 1, 3), np.float32))
    net.add_i_conv_node(conv_out, w2, None)
    cfg = config("qint8_mixed_float32", custom_ranges={"": {"min": -1, "max": 1}})
    plan = plan_precision(net, cfg)
    assert plan.ranges == {"input_0": mm.Range(-8.0, 8.0), "conv_0:0": calibrated_conv}
    named = {"input_0": {"min": -2, "max": 2}, "conv_0:0": {"min": -3, "max": 3}}
    plan = plan_precision(net, config("qint8_mixed_float32", custom_ranges=named))
    assert plan.ranges == {"input_0": mm.Range(-8.0, 8.0), "conv_0:0": mm.Range(-3.0, 3.0)}


# -- data source errors --------------------------------------------------------------------------


class Faulty(MyData):
    """MyData whose ``method`` misbehaves (``fault`` replaces it) from batch ``at`` on."""

    def __init__(
        self,
        batches: list[np.ndarray],
        method: str = "",
        at: int = 0,
        fault: Callable[[Faulty], Any] | None = None,
    ) -> None:
        super().__init__(batches)
        self.method, self.at, self.fault = method, at, fault

    def __getattribute__(self, name: str) -> Any:
        faulty = name in data_module.DATA_METHODS and name == object.__getattribute__(
            self, "method"
        )
        # reset() fails at once; next() for batch k is called while i is still k - 1
        if faulty and (name == "reset" or self.i >= self.at - (name == "next")):
            fault = object.__getattribute__(self, "fault")
            return lambda: fault(self)
        return object.__getattribute__(self, name)


def _raise(_: Faulty) -> Any:
    raise KeyError("no such image")


FAULTS: list[tuple[str, Callable[[Faulty], Any], str]] = [
    ("next", lambda d: mm.Status(mm.Code.NOT_FOUND, "disk gone"), "NOT_FOUND"),
    ("next", lambda d: True, "next() returned True"),
    ("next", _raise, "next() raised KeyError"),
    ("get_sample", lambda d: d.batches[d.i].tolist(), "returned a list"),
    ("get_sample", lambda d: d.batches[d.i][:1], "get_shape() says [2, 4]"),
    ("get_sample", lambda d: d.batches[d.i].astype(np.float64), "numpy dtype is float64"),
    (
        "get_sample",
        lambda d: np.where(np.eye(2, 4) > 0, np.nan, d.batches[d.i]),
        "holds 2 NaN and 0 Inf",
    ),
    ("get_sample", lambda d: np.full((2, 4), -np.inf, np.float32), "holds 0 NaN and 8 Inf"),
    ("get_sample", _raise, "get_sample() raised KeyError"),
    ("get_shape", lambda d: "2x4", "get_shape() returned '2x4'"),
    ("get_data_type", lambda d: "float32", "get_data_type() returned 'float32'"),
    ("get_data_type", lambda d: mm.DataType.FLOAT16, "says FLOAT16 but network input 1"),
]


@pytest.mark.parametrize(("method", "fault", "says"), FAULTS)
@pytest.mark.parametrize("at", [0, 2])
def test_bad_batches_name_source_batch_and_problem(
    method: str, fault: Callable[[Faulty], Any], says: str, at: int
) -> None:
    a, b = pair_batches()
    calib = Calibrator([MyData(a), Faulty(b, method, at, fault)])
    with pytest.raises(mm.MMError) as info:
        calib.calibrate(two_input_net())
    msg = str(info.value)
    assert f"data source 1 (Faulty), batch {at}:" in msg and says in msg, msg


def test_shape_that_does_not_fit_the_input_names_the_expected_dimensions() -> None:
    a, b = pair_batches()
    b = [b[0], np.zeros((2, 5), np.float32)]  # consistent with get_shape, wrong for the input
    with pytest.raises(mm.MMError) as info:
        Calibrator([MyData(a[:2]), MyData(b)]).calibrate(two_input_net())
    msg = str(info.value)
    assert "data source 1 (MyData), batch 1" in msg and "[2, 5]" in msg and "[-1, 4]" in msg
    with pytest.raises(mm.MMError, match=r"data source 0 \(MyData\), batch 0: .*\[-1, 4\]"):
        Calibrator([MyData([np.zeros((4,), np.float32)]), MyData(b)]).calibrate(two_input_net())


def test_reset_that_fails_and_methods_not_overridden() -> None:
    a, b = pair_batches()
    bad_reset = Faulty(b, "reset", 0, lambda d: mm.Status(mm.Code.INTERNAL, "closed"))
    with pytest.raises(mm.MMError, match=r"data source 1 \(Faulty\), before batch 0: reset\(\)"):
        Calibrator([MyData(a), bad_reset]).calibrate(two_input_net())

    class OnlyCamel(CalibDataInterface):
        def Reset(self) -> mm.Status:
            return mm.Status.OK()

    with pytest.raises(mm.MMError) as info:
        Calibrator([MyData(a), OnlyCamel()]).calibrate(two_input_net())
    msg = str(info.value)
    assert "data source 1 (OnlyCamel)" in msg and "reset() is not implemented" in msg
    assert "override it" in msg and "defines Reset" in msg


def test_sources_of_different_lengths_no_batches_and_wrong_source_count() -> None:
    a, b = pair_batches(3)
    with pytest.raises(mm.MMError) as info:
        Calibrator([MyData(a), MyData(b[:2])]).calibrate(two_input_net())
    msg = str(info.value)
    assert "data source 1 (MyData), batch 2" in msg and "data source 0" in msg
    assert "same number of batches" in msg
    with pytest.raises(mm.MMError, match="gave no batch"):
        Calibrator([MyData([]), MyData([])]).calibrate(two_input_net())
    with pytest.raises(mm.MMError, match=r"1 data source\(s\) for a network with 2 input\(s\)"):
        Calibrator([MyData(a)]).calibrate(two_input_net())


def test_non_finite_activation_names_batch_and_tensor() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([-1, 2]))
    div = net.add_i_elementwise_node(x, const(net, np.zeros(2, np.float32)), IElementwise.DIV)
    net.mark_output(div.get_output(0))
    batches = [np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32)]
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(mm.MMError) as info:
        Calibrator([MyData(batches)]).calibrate(net)
    assert "batch 0: tensor 'elementwise_0:0'" in str(info.value)
    assert net.get_input(0).get_dynamic_range() is None


def test_float16_inputs_take_float16_data() -> None:
    class Half(MyData):
        def get_data_type(self) -> mm.DataType:
            return mm.DataType.FLOAT16

    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT16, mm.Dims([-1, 3]))
    net.mark_output(net.add_i_activation_node(x, IActivation.RELU).get_output(0))
    data = [np.array([[-1.5, 0.5, 2.25]], np.float16), np.array([[3.0, -4.0, 0.0]], np.float16)]
    assert Calibrator([Half(data)]).calibrate(net).ok()
    assert x.get_dynamic_range() == mm.Range(-4.0, 3.0)
    with pytest.raises(mm.MMError, match="says FLOAT32 but network input 0"):
        Calibrator([MyData([d.astype(np.float32) for d in data])]).calibrate(net)


# -- a failed calibration changes nothing --------------------------------------------------------


@pytest.mark.parametrize("from_cache", [False, True])
def test_failed_calibration_leaves_every_range_as_it_was(tmp_path: Path, from_cache: bool) -> None:
    net = conv_net()
    calib = calibrated(net, image_batches(), QA.LINEAR_ALGORITHM)
    relu = net.find_tensor_by_name("activation_0:0")
    assert relu is not None
    relu.set_dynamic_range(mm.Range(0.0, 5.0))
    before, chosen = ranges_on(net), calib.get_ranges()
    if from_cache:  # a cache made for another network
        other = conv_net(channels=3)
        maker = calibrated(other, [np.ones((1, 6, 6, 3), np.float32)], QA.LINEAR_ALGORITHM)
        maker.write_cache(tmp_path / "other.json")
        calib.read_cache(tmp_path / "other.json")
    else:  # the last batch holds a NaN
        bad = image_batches((2, 2, 2), seed=5)
        bad[-1][1, 2, 3, 0] = np.nan
        calib = Calibrator([MyData(bad)])
        calib.set_quantization_algorithm(QA.MSE_ALGORITHM)
    with pytest.raises(mm.MMError):
        calib.calibrate(net)
    assert ranges_on(net) == before
    if from_cache:
        assert calib.get_ranges() == chosen
    fresh = conv_net()
    with pytest.raises(mm.MMError):
        calib.calibrate(fresh)
    assert all(r == (None, False) for r in ranges_on(fresh).values())


# -- the cache -----------------------------------------------------------------------------------


def test_cache_round_trips_exactly_without_reading_data(tmp_path: Path) -> None:
    path = tmp_path / "calib.json"
    net = conv_net()
    calib = calibrated(net, image_batches(), QA.ENTROPY_ALGORITHM, config("qint16_mixed_float32"))
    assert calib.write_cache(path).ok()
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["format"] == "mmbuild-calibration-cache" and data["version"] == 1
    assert (data["algorithm"], data["activation_quant_algo"], data["bits"]) == (
        "entropy",
        "symmetric",
        16,
    )
    assert data["fingerprint"] == network_fingerprint(net)
    assert list(data["tensors"]) == list(calib.get_ranges())

    class NoData(CalibDataInterface):  # any call would fail the calibration
        pass

    fresh = conv_net()
    reader = Calibrator([NoData()])
    assert reader.read_cache(path).ok()
    assert reader.calibrate(fresh, config("qint16_mixed_float32")).ok()
    assert ranges_on(fresh) == ranges_on(net)
    assert reader.get_ranges() == calib.get_ranges()
    assert Calibrator([]).ReadCache(str(path)).ok()
    again = tmp_path / "again.json"
    reader.write_cache(again)
    assert again.read_text(encoding="utf-8") == text


def test_cache_refuses_a_network_it_does_not_match(tmp_path: Path) -> None:
    path = tmp_path / "calib.json"
    calibrated(conv_net(), image_batches(), QA.LINEAR_ALGORITHM).write_cache(path)
    reader = Calibrator([])
    reader.read_cache(path)

    longer = conv_net()
    longer.add_i_activation_node(longer.get_output(0), IActivation.SIGMOID)
    with pytest.raises(mm.MMError) as info:
        reader.calibrate(longer)
    msg = str(info.value)
    assert "does not match" in msg and "missing from the cache: 'activation_1:0'" in msg
    assert "fingerprint" in msg and all(r[0] is None for r in ranges_on(longer).values())

    renamed = conv_net()
    renamed.get_input(0).set_tensor_name("image")
    with pytest.raises(mm.MMError, match="missing from the cache: 'image'.*lacks: 'input_0'"):
        reader.calibrate(renamed)

    wider = conv_net()
    wider.get_input(0).set_dimension(mm.Dims([1, 8, 8, 2]))  # same names, other shapes
    with pytest.raises(mm.MMError) as info:
        reader.calibrate(wider)
    assert "missing" not in str(info.value) and "fingerprint" in str(info.value)


def _cache_text(**changes: Any) -> str:
    data = {
        "format": "mmbuild-calibration-cache",
        "version": 1,
        "algorithm": "linear",
        "activation_quant_algo": "symmetric",
        "bits": 8,
        "fingerprint": "0" * 64,
        "tensors": {"input_0": {"min": [-1.0], "max": [1.0]}},
    }
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (_cache_text(format="tensorrt"), "its 'format' is 'tensorrt'"),
        (_cache_text(version=2), "format version 2 is newer"),
        (_cache_text(version="1"), "version"),
        (_cache_text(bits=4), "bits"),
        (_cache_text(algorithm="kl"), "algorithm"),
        (_cache_text(fingerprint="xyz"), "fingerprint"),
        (_cache_text(tensors={"t": {"min": [2.0], "max": [1.0]}}), "tensors.t"),
        (_cache_text(tensors={"t": {"min": [math.nan], "max": [1.0]}}), "tensors.t.min"),
        (_cache_text(extra=1), "extra"),
    ],
)
def test_read_cache_refuses_bad_files_with_the_reason(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(mm.MMError) as info:
        Calibrator([]).read_cache(path)
    assert info.value.code is mm.Code.INVALID_ARGUMENT
    assert "bad.json" in str(info.value) and says in str(info.value)


def test_cache_file_errors(tmp_path: Path) -> None:
    with pytest.raises(mm.MMError) as info:
        Calibrator([]).read_cache(tmp_path / "missing.json")
    assert info.value.code is mm.Code.NOT_FOUND
    with pytest.raises(mm.MMError, match="calibrate"):
        Calibrator([MyData(image_batches())]).write_cache(tmp_path / "c.json")
    calib = calibrated(conv_net(), image_batches(), QA.LINEAR_ALGORITHM)
    with pytest.raises(mm.MMError) as info:
        calib.write_cache(tmp_path / "no" / "such" / "c.json")
    assert info.value.code is mm.Code.NOT_FOUND and not (tmp_path / "no").exists()


def test_schema_is_current_and_describes_written_caches(tmp_path: Path) -> None:
    assert SCHEMA_NAME not in stale_schemas()
    published = (DEFAULT_OUT_DIR / SCHEMA_NAME).read_text(encoding="utf-8")
    assert published == render_schemas()[SCHEMA_NAME]
    schema = json.loads(published)
    calibrated(conv_net(), image_batches(), QA.MSE_ALGORITHM).write_cache(tmp_path / "c.json")
    jsonschema.validate(json.loads((tmp_path / "c.json").read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(_cache_text(version=2)), schema)
    assert set(get_args(AlgorithmKey)) == {a.key for a in QA}
    assert CalibrationCacheModel.model_json_schema()["title"] == "mmbuild calibration cache"


# -- settings, progress, spelling ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1.0, 100.01, math.nan, math.inf, True, "99"])
def test_set_percentile_refuses_values_outside_0_100(bad: Any) -> None:
    calib = Calibrator([])
    with pytest.raises(mm.MMError) as info:
        calib.set_percentile(bad)
    assert repr(bad) in str(info.value) and "(0, 100]" in str(info.value)
    assert calib.set_percentile(100).ok() and calib.get_percentile() == 100.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(mm.MMError, match="did you mean 'LINEAR_ALGORITHM'"):
        Calibrator([]).set_quantization_algorithm("linear")  # type: ignore[arg-type]
    with pytest.raises(mm.MMError, match="takes a list of data sources"):
        Calibrator(MyData([]))  # type: ignore[arg-type]
    with pytest.raises(mm.MMError, match="data source 1 is a ndarray"):
        Calibrator([MyData([]), np.zeros(3)])  # type: ignore[list-item]
    with pytest.raises(mm.MMError, match="mm.BuilderConfig"):
        Calibrator([MyData(image_batches())]).calibrate(conv_net(), {"precision_config": {}})  # type: ignore[arg-type]
    with pytest.raises(mm.MMError, match="True or False"):
        Calibrator([]).set_progress("no")  # type: ignore[arg-type]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("enabled", "env", "shown"), [(True, None, True), (False, None, False), (True, "0", False)]
)
def test_progress_bar_can_be_switched_off(
    monkeypatch: pytest.MonkeyPatch, enabled: bool, env: str | None, shown: bool
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(calibrator_module.sys, "stderr", terminal)
    if env is None:
        monkeypatch.delenv(calibrator_module.PROGRESS_ENV, raising=False)
    else:
        monkeypatch.setenv(calibrator_module.PROGRESS_ENV, env)
    calib = Calibrator([MyData(image_batches())])
    assert calib.set_progress(enabled).ok()
    assert calib.calibrate(conv_net()).ok()
    assert ("calibrating" in terminal.getvalue()) is shown
    assert ("3batch" in terminal.getvalue().replace(" ", "")) is shown


def test_camel_case_spellings_and_exports() -> None:
    import mmbuild.calib as calib_package

    assert set(calib_package.__all__) == {
        "CalibDataInterface",
        "Calibrator",
        "QuantizationAlgorithm",
    }
    assert calib_package.QuantizationAlgorithm is QA
    calib = Calibrator([MyData(image_batches())])
    assert calib.SetQuantizationAlgorithm(QA.EQNM_ALGORITHM).ok()
    assert calib.GetQuantizationAlgorithm() is QA.EQNM_ALGORITHM
    assert calib.SetPercentile(99.9).ok() and calib.Calibrate(conv_net()).ok()
    data = MyData(image_batches())
    assert data.Reset().ok() and data.Next().ok() and data.GetShape() == [1, 6, 6, 2]


def test_doctests() -> None:
    for module in (data_module, calibrator_module):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0
    assert doctest.testmod(data_module).attempted > 0
