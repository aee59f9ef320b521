"""mm.AccuracyTuner: on the sample CNN, whose int8 build misses a cosine target, the tuner meets
it by moving the fewest nodes to float, names them, leaves user-set nodes alone, keeps within its
trial bound, and refuses bad arguments with MMError."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sample_cnn import ImageBatches, build_cnn, sample_images

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
