"""custom_ranges in built and run models (not only in the plan): on a network input, on an inner
tensor and with the "" key, each checked against a numpy fake-quantized computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sample_cnn import build_cnn, sample_images

import mmbuild as mm
from mmbuild.quant.params import choose_qparams, fake_quantize


def two_layer_net(seed: int = 0) -> tuple[mm.Network, dict[str, np.ndarray]]:
    """x [4, 8] -> inner product (6) -> relu -> inner product (3) -> y."""
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.uniform(-1, 1, (6, 8)).astype(np.float32),
        "b1": rng.uniform(-0.5, 0.5, 6).astype(np.float32),
        "w2": rng.uniform(-1, 1, (3, 6)).astype(np.float32),
        "b2": rng.uniform(-0.5, 0.5, 3).astype(np.float32),
    }
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([4, 8]))

    def const(a: np.ndarray) -> mm.ITensor:
        return net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(a.shape), a).get_output(0)

    fc1 = net.add_i_inner_product_node(x, const(w["w1"]), const(w["b1"]))
    relu = net.add_i_activation_node(fc1.get_output(0), mm.IActivation.RELU)
    fc2 = net.add_i_inner_product_node(relu.get_output(0), const(w["w2"]), const(w["b2"]))
    net.mark_output(fc2.get_output(0))
    return net, w


def relu_output(net: mm.Network) -> mm.ITensor:
    (relu,) = [n for n in net.get_all_nodes_in_network() if n.get_node_type() == "IActivationNode"]
    return relu.get_output(0)


def fake_quant_run(
    x: np.ndarray, w: dict[str, np.ndarray], x_range: tuple[float, float], h_range: tuple
) -> np.ndarray:
    """The qint8 arithmetic of API.md in numpy: symmetric activations, per-tensor weights."""

    def fq(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return fake_quantize(a, choose_qparams(lo, hi, bits=8)).astype(np.float64)

    def fq_w(a: np.ndarray) -> np.ndarray:
        return fq(a, float(a.min()), float(a.max()))

    h = np.maximum(fq(x, *x_range) @ fq_w(w["w1"]).T + w["b1"], 0.0)
    return fq(h, *h_range) @ fq_w(w["w2"]).T + w["b2"]


def build_and_run(net: mm.Network, ranges: dict, x: np.ndarray) -> np.ndarray:
    config = mm.BuilderConfig()
    config.parse_from_string('{"precision_config": {"precision_mode": "qint8_mixed_float32"}}')
    config.parse_from_string(json.dumps({"custom_ranges": ranges}))
    model = mm.Builder().build_model("net", net, config)
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(x)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    return outputs[0].asnumpy()


X = np.random.default_rng(3).uniform(-1, 1, (4, 8)).astype(np.float32)
# narrow ranges that saturate part of the data, so that the wrong range gives other numbers
INPUT, INNER, ALL = (-0.5, 0.5), (0.0, 0.75), (-1.5, 1.5)


@pytest.mark.parametrize(
    ("form", "x_range", "h_range"),
    [("input", INPUT, ALL), ("inner", ALL, INNER), ("empty key only", ALL, ALL)],
)
def test_custom_ranges_build_and_run_with_the_resolved_range(
    form: str, x_range: tuple, h_range: tuple
) -> None:
    net, w = two_layer_net()
    x_name = net.get_input(0).get_tensor_name()
    h_name = relu_output(net).get_tensor_name()
    ranges = {"": {"min": [ALL[0]], "max": [ALL[1]]}}
    if form == "input":
        ranges[x_name] = {"min": [INPUT[0]], "max": [INPUT[1]]}
    if form == "inner":
        ranges[h_name] = {"min": [INNER[0]], "max": [INNER[1]]}
    y = build_and_run(net, ranges, X)
    expected = fake_quant_run(X, w, x_range, h_range)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # the ranges really matter here: the fallback range everywhere gives other numbers
    if form != "empty key only":
        assert not np.allclose(y, fake_quant_run(X, w, ALL, ALL), atol=1e-3)


def test_set_dynamic_range_outranks_custom_ranges_and_calibration_outranks_the_empty_key() -> None:
    net, w = two_layer_net()
    x, relu_out = net.get_input(0), relu_output(net)
    x.set_dynamic_range(mm.Range(*INPUT))
    relu_out._set_calibrated_range(mm.Range(*INNER))  # as a calibration writes it
    ranges = {x.get_tensor_name(): {"min": [-2.0], "max": [2.0]}, "": {"min": [-9], "max": [9]}}
    y = build_and_run(net, ranges, X)
    np.testing.assert_allclose(y, fake_quant_run(X, w, INPUT, INNER), rtol=1e-5, atol=1e-5)


def test_sample_cnn_builds_and_runs_in_qint8_from_the_empty_key_alone() -> None:
    """The path of MagicMind's gen_model scripts without calibration data."""
    net = build_cnn()
    config = mm.BuilderConfig()
    config.parse_from_string(
        '{"precision_config": {"precision_mode": "qint8_mixed_float16"},'
        ' "custom_ranges": {"": {"min": [-1], "max": [1]}}}'
    )
    model = mm.Builder().build_model("cnn", net, config)
    x = sample_images(2, seed=0)
    assert model.validate(x).ok()
    report = model.get_layer_report()
    assert any(mm.DataType.QINT8 in row.input_precisions for row in report)
