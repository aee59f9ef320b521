"""mm.AccuracyTuner: on the sample CNN, whose int8 build misses a cosine target, the tuner meets
it by moving the fewest nodes to float, names them, leaves user-set nodes alone, keeps within its
trial bound, never gives FLOAT16 to a node whose inputs overflow it, and refuses bad arguments
with MMError."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sample_cnn import ImageBatches, build_cnn, const, sample_images

import mmbuild as mm
from mmbuild.report import error_stats

TARGET = 0.9999  # the int8 build of the sample CNN gives about 0.9994 on these images


def _config(mode: str = "qint8_mixed_float32") -> mm.BuilderConfig:
    config = mm.BuilderConfig()
    assert config.parse_from_string(json.dumps({"precision_config": {"precision_mode": mode}})).ok()
    return config


def _calib() -> list[mm.CalibDataInterface]:
    return [ImageBatches(list(sample_images(32, seed=1).reshape(4, 8, 16, 16, 3)))]


EVAL = sample_images(32, seed=2)


def _cosine(model: mm.Model, net: mm.Network) -> float:
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(EVAL)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    expected = mm.run_reference(net, [EVAL])["probabilities"]
    return error_stats(outputs[0].asnumpy().astype(np.float64), expected).cosine


def _step(model: mm.Model, name: str):
    return next(s for s in model.data.steps if s.name == name)


def test_tuner_meets_a_target_the_int8_build_misses_with_the_fewest_nodes():
    net = build_cnn()
    config = _config()
    model, report = mm.AccuracyTuner(net, config, _calib(), [EVAL], min_cosine=TARGET).tune()
    int8 = mm.Builder().build_model("int8", net, config)  # the calibrated ranges are on net
    assert _cosine(int8, net) < TARGET  # the target is one the int8 build misses
    assert report.int8_metric == pytest.approx(_cosine(int8, net), abs=1e-9)
    assert report.met and _cosine(model, net) >= TARGET
    assert report.final_metric == pytest.approx(_cosine(model, net), abs=1e-9)
    # the classifier adds most of the noise; moving it alone to FLOAT16 is enough
    assert report.ranking[0][0] == "classifier"
    assert report.moved == ["classifier"]
    row = report.rows[0]
    assert (row.from_precision, row.to_precision) == (mm.DataType.QINT8, mm.DataType.FLOAT16)
    assert row.type == "IInnerProductNode" and row.macs == 32 * 10
    assert _step(model, "classifier").precisions[:2] == [mm.DataType.FLOAT16] * 2
    for name in ("conv1", "conv2"):
        assert _step(model, name).precisions[:2] == [mm.DataType.QINT8] * 2
    # MACs: conv1 16*16*16 outputs x 27, conv2 8*8*32 x 144, classifier 10 x 32
    assert report.int8_mac_share == pytest.approx((110592 + 294912) / (110592 + 294912 + 320))
    assert report.quantized_nodes == 3
    text = str(report)
    assert "classifier" in text and "FLOAT16" in text and "met" in text
    doc = json.loads(report.to_json())
    assert doc["report"] == "tuner" and doc["met"] is True
    assert [r["node"] for r in doc["rows"]] == ["classifier"]
    # the user's network keeps no setting of the tuner
    assert all(not n.precision_overrides for n in net.nodes)


def test_a_target_the_int8_build_meets_moves_nothing():
    net = build_cnn()
    model, report = mm.AccuracyTuner(net, _config(), _calib(), [EVAL], min_cosine=0.99).tune()
    assert report.met and report.moved == [] and report.trials == 1
    assert report.int8_mac_share == 1.0
    assert _step(model, "classifier").precisions[0] is mm.DataType.QINT8


def test_user_set_nodes_are_never_changed():
    net = build_cnn()
    fc = net.find_node_by_name("classifier")
    assert fc.set_precision(0, mm.DataType.QINT8).ok()
    assert fc.set_precision(1, mm.DataType.QINT8).ok()
    model, report = mm.AccuracyTuner(net, _config(), _calib(), [EVAL], min_cosine=TARGET).tune()
    assert "classifier" not in report.moved and report.kept_by_user == ["classifier"]
    assert _step(model, "classifier").precisions[:2] == [mm.DataType.QINT8] * 2
    assert report.moved  # something else had to move instead
    assert fc.precision_overrides == {0: mm.DataType.QINT8, 1: mm.DataType.QINT8}
    assert "left as the user set them: classifier" in str(report)


def test_the_trial_bound_is_honoured():
    net = build_cnn()
    tuner = mm.AccuracyTuner(net, _config(), _calib(), [EVAL], min_cosine=0.99999999, max_trials=2)
    _, report = tuner.tune()
    assert report.trials == 2 == tuner.trials
    assert not report.met and "NOT met" in str(report)
    # the better of the two builds is returned: all three nodes in FLOAT16
    assert report.final_metric > report.int8_metric
    assert sorted(report.moved) == ["classifier", "conv1", "conv2"]


def test_max_abs_error_target_and_a_user_metric_with_max_drop():
    net = build_cnn()
    _, report = mm.AccuracyTuner(net, _config(), _calib(), [EVAL], max_abs_error=1e-4).tune()
    assert report.met and report.final_metric <= 1e-4 < report.int8_metric
    assert report.target == "max abs error <= 0.0001"

    def top1(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
        return float(np.mean(outputs[0].argmax(1) == reference[0].argmax(1)))

    _, report = mm.AccuracyTuner(
        net, _config(), None, [EVAL[:16], EVAL[16:]], metric=top1, max_drop=0.0
    ).tune()  # no calibration data: the ranges the first tuner wrote are reused
    assert report.target == "top1 >= 1" and report.met and report.final_metric == 1.0


def _two_layers(scale: float) -> mm.Network:
    """x [N, 64] -> fc1 (weights N(0, scale)) -> "hidden" [N, 32] -> fc2 -> [N, 8]: "hidden"
    grows with ``scale`` (max |hidden| about 35 * scale on the data below)."""
    rng = np.random.default_rng(0)
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 64]))
    fc1 = net.add_i_inner_product_node(
        x, const(net, rng.normal(0, scale, (32, 64))), const(net, np.zeros(32))
    )
    fc1.set_node_name("fc1")
    fc1.get_output(0).set_tensor_name("hidden")
    fc2 = net.add_i_inner_product_node(
        fc1.get_output(0), const(net, rng.normal(0, 0.1, (8, 32))), const(net, np.zeros(8))
    )
    fc2.set_node_name("fc2")
    net.mark_output(fc2.get_output(0))
    return net


def _tune_two_layers(
    net: mm.Network, monkeypatch: pytest.MonkeyPatch
) -> tuple[mm.Model, mm.TunerReport, list[dict[str, mm.DataType]]]:
    """Tune to a cosine both nodes must leave int8 for (int8 gives 0.99987, fc1 alone in float
    0.99994); returns the model, the report and the moves of every trial build."""
    from mmbuild.quant.tuner import AccuracyTuner

    tried: list[dict[str, mm.DataType]] = []
    trial = AccuracyTuner._trial

    def spy(self, moves, bar):  # type: ignore[no-untyped-def]
        tried.append(dict(moves))
        return trial(self, moves, bar)

    monkeypatch.setattr(AccuracyTuner, "_trial", spy)
    rng = np.random.default_rng(1)
    calib = [ImageBatches(list(rng.normal(0, 1, (4, 16, 64)).astype(np.float32)))]
    evals = [np.random.default_rng(2).normal(0, 1, (32, 64)).astype(np.float32)]
    tuner = mm.AccuracyTuner(
        net, _config(), calib, evals, min_cosine=0.99999,
        algorithm=mm.QuantizationAlgorithm.LINEAR_ALGORITHM,  # ranges = the observed min / max
    )  # fmt: skip
    model, report = tuner.tune()
    return model, report, tried


def test_a_node_reading_a_tensor_beyond_fp16_moves_to_float32_never_float16(monkeypatch):
    net = _two_layers(3000.0)
    model, report, tried = _tune_two_layers(net, monkeypatch)
    reach = net.find_tensor_by_name("hidden").get_dynamic_range().max
    assert 65504 < reach < 2e5  # calibrated: fc1's output, fc2's input, overflows fp16
    assert report.met and sorted(report.moved) == ["fc1", "fc2"]
    rows = {r.node: r for r in report.rows}
    # fc2 would read "hidden" in fp16 (inf): FLOAT32 in every trial, and the report says why
    assert rows["fc2"].to_precision is mm.DataType.FLOAT32
    assert f"FLOAT32: tensor 'hidden' reaches {reach:.6g}, beyond fp16's 65504" in rows["fc2"].why
    assert all(t["fc2"] is mm.DataType.FLOAT32 for t in tried if "fc2" in t)
    assert any("fc2" in t for t in tried)
    assert _step(model, "fc2").precisions[:2] == [mm.DataType.FLOAT32] * 2
    # fc1 reads x and weights fp16 holds; its large output stays FLOAT32 in the build
    assert rows["fc1"].to_precision is mm.DataType.FLOAT16 and "fp16" not in rows["fc1"].why
    assert _step(model, "fc1").precisions[:2] == [mm.DataType.FLOAT16] * 2
    assert _step(model, "fc1").output_types[0] is mm.DataType.FLOAT32
    assert "beyond fp16's 65504" in str(report)
    # what the tuner avoided: fc2 in FLOAT16 gives no finite output
    fc2 = net.find_node_by_name("fc2")
    assert fc2.set_precision(0, mm.DataType.FLOAT16).ok()
    assert fc2.set_precision(1, mm.DataType.FLOAT16).ok()
    context = (
        mm.Builder().build_model("fc2_fp16", net, _config()).create_i_engine().create_i_context()
    )
    inputs = context.create_inputs()
    inputs[0].from_numpy(np.random.default_rng(2).normal(0, 1, (32, 64)).astype(np.float32))
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    assert not np.isfinite(outputs[0].asnumpy()).all()


def test_the_same_node_gets_float16_when_its_tensors_fit(monkeypatch):
    net = _two_layers(600.0)
    model, report, tried = _tune_two_layers(net, monkeypatch)
    assert net.find_tensor_by_name("hidden").get_dynamic_range().max < 65504
    assert report.met and sorted(report.moved) == ["fc1", "fc2"]
    assert all(r.to_precision is mm.DataType.FLOAT16 for r in report.rows)
    assert not any("fp16" in r.why for r in report.rows)
    assert _step(model, "fc2").precisions[:2] == [mm.DataType.FLOAT16] * 2
    assert tried[1] == {"fc1": mm.DataType.FLOAT16, "fc2": mm.DataType.FLOAT16}


def test_bad_arguments_raise_mmerror():
    net, config, calib = build_cnn(), _config(), _calib()
    cases = [
        dict(),  # no target
        dict(min_cosine=0.9, max_abs_error=1.0),  # two targets
        dict(min_cosine=1.5),
        dict(min_cosine="0.9"),
        dict(max_abs_error=-1.0),
        dict(metric=lambda o, r: 1.0),  # neither threshold nor max_drop
        dict(metric=lambda o, r: 1.0, threshold=0.5, max_drop=0.1),
        dict(metric="top1", threshold=0.5),
        dict(min_cosine=0.9, max_trials=0),
        dict(min_cosine=0.9, max_trials=2.5),
        dict(min_cosine=0.9, reference=[]),
    ]
    for kwargs in cases:
        with pytest.raises(mm.MMError):
            mm.AccuracyTuner(net, config, calib, [EVAL], **kwargs)
    with pytest.raises(mm.MMError, match="precision_mode"):
        mm.AccuracyTuner(net, mm.BuilderConfig(), calib, [EVAL], min_cosine=0.9)
    with pytest.raises(mm.MMError, match="eval_inputs"):
        mm.AccuracyTuner(net, config, calib, [], min_cosine=0.9)
    with pytest.raises(mm.MMError, match="eval_inputs"):
        mm.AccuracyTuner(net, config, calib, EVAL, min_cosine=0.9)
    with pytest.raises(mm.MMError, match=r"eval_inputs\[0\]"):
        mm.AccuracyTuner(net, config, calib, [[EVAL, EVAL]], min_cosine=0.9)
    with pytest.raises(mm.MMError, match="network"):
        mm.AccuracyTuner("net", config, calib, [EVAL], min_cosine=0.9)  # type: ignore[arg-type]
    with pytest.raises(mm.MMError, match="not a number"):
        mm.AccuracyTuner(net, config, calib, [EVAL], metric=lambda o, r: "x", max_drop=0.1)


@pytest.mark.slow
def test_tuner_on_the_ppocr_classifier():
    from onnx_models import model_input, model_path

    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, str(model_path("ocr_cls"))).ok()
    assert net.get_input(0).set_dimension(mm.Dims([-1, 3, 48, 192])).ok()
    config = _config("qint8_mixed_float16")
    per_axis = {"precision_config": {"weight_quant_granularity": "per_axis"}}
    assert config.parse_from_string(json.dumps(per_axis)).ok()
    calib = [ImageBatches([model_input("ocr_cls", 4, offset=k) for k in range(3)])]
    evals = [model_input("ocr_cls", 4, offset=3)]
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path("ocr_cls")), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: evals[0]})[0]
    tuner = mm.AccuracyTuner(net, config, calib, evals, min_cosine=0.999, reference=[[expected]])
    model, report = tuner.tune()
    assert report.int8_metric < 0.999 <= report.final_metric and report.met, str(report)
    assert report.int8_mac_share >= 0.8 and report.trials <= 16  # the goal
    # checked independently: the returned model against onnxruntime's float32 run
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(evals[0])
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    got = outputs[0].asnumpy().astype(np.float64)
    assert error_stats(got, expected).cosine >= 0.999
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_mac_counts_read_the_filter_layout() -> None:
    """An NCHW conv [16, 3, 3, 3] over a padded 8x8 map: 16 * 64 outputs of 27 taps each; a
    deconv [Cin 16, Kh 2, Kw 2, Cout 4] (NHWC filter) of a 4x4x16 input: each of its 256
    elements meets 2 * 2 * 4 filter taps."""
    from mmbuild.quant.tuner import _macs

    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 3, 8, 8]))
    w = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([16, 3, 3, 3]),
                             np.ones((16, 3, 3, 3))).get_output(0)  # fmt: skip
    conv = net.add_i_conv_node(x, w, None)
    conv.set_layout(mm.Layout.NCHW, mm.Layout.NCHW, mm.Layout.NCHW)
    conv.set_pad(1, 1, 1, 1)
    assert _macs(net) == {conv.get_node_name(): 16 * 64 * 27}
    y = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 4, 4, 16]))
    wd = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([16, 2, 2, 4]),
                              np.ones((16, 2, 2, 4))).get_output(0)  # fmt: skip
    deconv = net.add_i_deconv_node(y, wd, None)
    deconv.set_stride(2, 2)
    assert _macs(net)[deconv.get_node_name()] == 4 * 4 * 16 * (2 * 2 * 4)


def test_moves_are_tried_by_noise_per_square_root_of_macs() -> None:
    """The docstring's example: noise 0.004 on 1M MACs goes after noise 0.001 on 10K MACs."""
    from mmbuild.quant.tuner import _move_order, _per_mac

    macs = {"big": 10**6, "small": 10**4}
    assert _per_mac(("big", 0.004), macs) == pytest.approx(4e-6)
    assert _per_mac(("small", 0.001), macs) == pytest.approx(1e-5)
    ranking = [("big", 0.004), ("small", 0.001)]
    assert _move_order(ranking, macs) == ["small", "big"]
