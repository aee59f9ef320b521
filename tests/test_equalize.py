"""Cross-layer equalisation (``precision_config.cross_layer_equalization``): the scale formula
on hand-computed values, which pairs it finds and which it must not, the float result before
and after, calibration and build applying the same weights, and int8 accuracy on a network
whose channels are badly balanced. Bias correction (``precision_config.bias_correction``): a
golden case, zero padding in the input means, the mean output error it removes, and the
refusals without means."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from ortcheck import const
from sample_cnn import ImageBatches

import mmbuild as mm
from mmbuild.precision import plan_precision
from mmbuild.quant.equalize import CONFIG_KEY, equalization_scales, equalize_network
from mmbuild.reference import run_reference

ACT = mm.IActivation
KEY = "cross_layer_equalization"


def config(mode: str = "qint8_mixed_float32", cle: bool = True, **more: object) -> mm.BuilderConfig:
    c = mm.BuilderConfig()
    precision = {"precision_mode": mode, KEY: cle, **more}
    assert c.parse_from_string(json.dumps({"precision_config": precision})).ok()
    return c


def unbalanced(rng: np.random.Generator, cout: int, cin: int, k: int) -> np.ndarray:
    """A [cout, k, k, cin] filter whose output channels' ranges span 100x."""
    w = rng.standard_normal((cout, k, k, cin)).astype(np.float32)
    return (w * np.geomspace(0.05, 5.0, cout)[:, None, None, None]).astype(np.float32)


def conv(net: mm.Network, x: mm.ITensor, w: np.ndarray, b: np.ndarray | None, group: int = 1,
         pad: int = 0) -> mm.ITensor:  # fmt: skip
    node = net.add_i_conv_node(x, const(net, w), None if b is None else const(net, b))
    node.set_group(group)
    node.set_pad(pad, pad, pad, pad)
    return node.get_output(0)


def act(net: mm.Network, x: mm.ITensor, mode: ACT) -> mm.ITensor:
    return net.add_i_activation_node(x, mode).get_output(0)


def pair_net(
    between: Callable[[mm.Network, mm.ITensor], mm.ITensor] = lambda n, t: act(n, t, ACT.RELU),
    depthwise: bool = False,
    seed: int = 0,
) -> mm.Network:
    """x [-1, 8, 8, 4] -> conv 3x3 (8 channels, ranges 100x apart) -> between -> conv (1x1 to
    6, or a 3x3 depthwise, whose input channels' ranges are 100x apart the other way) -> y."""
    rng = np.random.default_rng(seed)
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 8, 8, 4]))
    t = conv(net, x, unbalanced(rng, 8, 4, 3), rng.standard_normal(8).astype(np.float32), pad=1)
    t = between(net, t)
    # conv2 weighs the small channels up, so each of them matters as much to the output
    inverse = 1.0 / np.geomspace(0.05, 5.0, 8)
    if depthwise:
        w2 = rng.standard_normal((8, 3, 3, 1)) * inverse[:, None, None, None]
        y = conv(net, t, w2.astype(np.float32), rng.standard_normal(8).astype(np.float32), 8, 1)
    else:
        w2 = rng.standard_normal((6, 1, 1, 8)) * inverse
        y = conv(net, t, w2.astype(np.float32), None)
    assert net.mark_output(y).ok()
    return net


def data(seed: int, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 8, 8, 4)).astype(np.float32) for _ in range(n)]


def same_float_result(
    net: mm.Network, eq_values: dict[str, np.ndarray], x: np.ndarray | None = None
) -> None:
    x = data(99, 1)[0] if x is None else x
    want = run_reference(net, [x])
    got = run_reference(net, [x], constants=eq_values)
    for name in want:
        scale = float(np.abs(want[name]).max())
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-6 * scale)


def run(model: mm.Model, x: np.ndarray) -> np.ndarray:
    ctx = model.create_i_engine().create_i_context()
    inputs = ctx.create_inputs()
    inputs[0].from_numpy(x)
    outs: list[mm.IRTTensor] = []
    assert ctx.enqueue(inputs, outs).ok()
    return outs[0].asnumpy().astype(np.float64)


def calibrate(net: mm.Network, cfg: mm.BuilderConfig) -> mm.Calibrator:
    calib = mm.Calibrator([ImageBatches(data(1))])
    calib.set_progress(False)
    assert calib.calibrate(net, cfg).ok()
    return calib


# -- the formula --------------------------------------------------------------------------------
def test_scales_golden_values() -> None:
    # s = (1 / r2) * sqrt(r1 * r2): r1 = 8, r2 = 2 -> sqrt(16) / 2 = 2; r1 = 0.5, r2 = 2 ->
    # sqrt(1) / 2 = 0.5; a zero range keeps 1
    s = equalization_scales(np.array([8.0, 0.5, 3.0, 0.0]), np.array([2.0, 2.0, 0.0, 4.0]))
    np.testing.assert_array_equal(s, [2.0, 0.5, 1.0, 1.0])


def test_one_by_one_pair_by_hand() -> None:
    # conv1 1x1, 2 output channels with ranges [8, 0.5], bias [4, 1]; conv2 1x1 reads them with
    # ranges [2, 2]: s = [2, 0.5], so W1 -> [[4], [1]], b1 -> [2, 2], W2 -> [[4, 1]]
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 1, 1, 1]))
    w1, b1 = np.array([8.0, 0.5], np.float32).reshape(2, 1, 1, 1), np.array([4, 1], np.float32)
    t = act(net, conv(net, x, w1, b1), ACT.RELU)
    y = conv(net, t, np.array([2.0, -2.0], np.float32).reshape(1, 1, 1, 2), None)
    assert net.mark_output(y).ok()
    eq = equalize_network(net)
    assert len(eq.pairs) == 1 and eq.pairs[0].between == ("activation_0",)
    np.testing.assert_allclose(eq.pairs[0].scales, [2.0, 0.5])
    w1_name, b1_name = (t.get_tensor_name() for t in net.nodes[2].inputs[1:])
    np.testing.assert_allclose(eq.values[w1_name].ravel(), [4.0, 1.0])
    np.testing.assert_allclose(eq.values[b1_name], [2.0, 2.0])
    w2_name = net.nodes[-1].inputs[1].get_tensor_name()
    np.testing.assert_allclose(eq.values[w2_name].ravel(), [4.0, -1.0])
    assert eq.sweeps == 2  # the second sweep finds every scale at 1
    same_float_result(net, eq.values, np.array([-1.5, 0.25, 3.0], np.float32).reshape(3, 1, 1, 1))


# -- which pairs, and the float result ----------------------------------------------------------
def with_bn(n: mm.Network, t: mm.ITensor) -> mm.ITensor:
    rng = np.random.default_rng(5)
    mean, off = rng.standard_normal(8), rng.standard_normal(8)
    var, scale = rng.uniform(0.5, 2.0, 8), rng.uniform(-2.0, 2.0, 8)
    args = [const(n, v.astype(np.float32)) for v in (mean, var, scale, off)]
    bn = n.add_i_fused_batch_norm_node(t, *args, 3, 1e-5).get_output(0)
    return act(n, bn, ACT.RELU)


def leaky(n: mm.Network, t: mm.ITensor) -> mm.ITensor:
    node = n.add_i_activation_node(t, ACT.LEAKY_RELU)
    node.set_alpha(0.1)
    return node.get_output(0)


def with_bias_add(n: mm.Network, t: mm.ITensor) -> mm.ITensor:
    b = const(n, np.linspace(-1.0, 1.0, 8, dtype=np.float32))  # [C]: channels last (NHWC)
    return act(n, n.add_i_elementwise_node(t, b, mm.IElementwise.ADD).get_output(0), ACT.RELU)


@pytest.mark.parametrize(
    "between",
    [lambda n, t: act(n, t, ACT.RELU), lambda n, t: t, leaky, with_bn, with_bias_add],
    ids=["relu", "nothing", "leaky_relu", "batch_norm_relu", "bias_add_relu"],
)
@pytest.mark.parametrize("depthwise", [False, True], ids=["pointwise", "depthwise"])
def test_pair_found_and_float_result_unchanged(between: Callable, depthwise: bool) -> None:
    net = pair_net(between, depthwise)
    eq = equalize_network(net)
    assert len(eq.pairs) == 1
    same_float_result(net, eq.values)
    # converged: each channel's range is now the same in both weights
    first, second = (n for n in net.nodes if n.op == "conv")
    w1 = eq.values[first.inputs[1].get_tensor_name()]
    w2 = eq.values[second.inputs[1].get_tensor_name()]
    r1 = np.abs(w1).max(axis=(1, 2, 3))
    if between is with_bn:
        var, gamma = [np.asarray(n.attrs["value"]) for n in net.nodes if n.op == "const"][3:5]
        r1 = r1 * np.abs(gamma) / np.sqrt(var + 1e-5)
    r2 = np.abs(w2).max(axis=(0, 1, 2)) if not depthwise else np.abs(w2).max(axis=(1, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


def test_built_float_model_unchanged() -> None:
    net = pair_net()
    x = data(7, 1)[0]
    plain = run(mm.Builder().build_model("a", net, config("force_float32", False)), x)
    equalized = run(mm.Builder().build_model("b", net, config("force_float32", True)), x)
    np.testing.assert_allclose(equalized, plain, rtol=0, atol=1e-5 * np.abs(plain).max())


def test_nchw_chain_and_inner_products() -> None:
    rng = np.random.default_rng(3)
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, 4, 8, 8]))
    t = x
    for cout, cin in ((8, 4), (8, 8), (5, 8)):  # conv -> relu -> conv -> relu -> conv: 2 pairs
        w = unbalanced(rng, cout, cin, 3).transpose(0, 3, 1, 2).copy()
        node = net.add_i_conv_node(t, const(net, w), const(net, np.ones(cout, np.float32)))
        node.set_layout(mm.Layout.NCHW, mm.Layout.NCHW, mm.Layout.NCHW)
        node.set_pad(1, 1, 1, 1)
        t = act(net, node.get_output(0), ACT.RELU) if cout != 5 else node.get_output(0)
    assert net.mark_output(t).ok()
    eq = equalize_network(net)
    assert [(p.first, p.second) for p in eq.pairs] == [("conv_0", "conv_1"), ("conv_1", "conv_2")]
    assert 2 < eq.sweeps < 100
    xs = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    want, got = run_reference(net, [xs]), run_reference(net, [xs], constants=eq.values)
    np.testing.assert_allclose(got[t.name], want[t.name], atol=2e-6 * np.abs(want[t.name]).max())

    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([3, 6]))
    h = net.add_i_inner_product_node(x, const(net, unbalanced(rng, 5, 6, 1)[:, 0, 0, :]))
    y = net.add_i_inner_product_node(
        act(net, h.get_output(0), ACT.RELU), const(net, rng.standard_normal((2, 5), np.float32))
    )
    assert net.mark_output(y.get_output(0)).ok()
    eq = equalize_network(net)
    assert len(eq.pairs) == 1
    xs = rng.standard_normal((3, 6)).astype(np.float32)
    want = run_reference(net, [xs])[y.get_output(0).name]
    got = run_reference(net, [xs], constants=eq.values)[y.get_output(0).name]
    np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max())


def two_readers(n: mm.Network, t: mm.ITensor) -> mm.ITensor:
    r = act(n, t, ACT.RELU)
    assert n.mark_output(act(n, t, ACT.SIGMOID)).ok()
    return r


@pytest.mark.parametrize(
    "between",
    [
        lambda n, t: act(n, t, ACT.RELU6),  # relu6(x / s) != relu6(x) / s
        lambda n, t: act(n, t, ACT.HARD_SWISH),
        lambda n, t: act(n, t, ACT.SIGMOID),
        lambda n, t: n.add_i_clip_node(t, 0.0, 3.0).get_output(0),
        two_readers,
        # max(x, c) with a fixed c (openWakeWord's clipped leaky relu): max(x / s, c) differs
        lambda n, t: n.add_i_elementwise_node(
            t, const(n, np.full((1, 1, 1, 1), -0.4, np.float32)), mm.IElementwise.MAX
        ).get_output(0),
        # + one value for every channel: c / s would need one value per channel
        lambda n, t: n.add_i_elementwise_node(
            t, const(n, np.ones(1, np.float32)), mm.IElementwise.ADD
        ).get_output(0),
    ],
    ids=["relu6", "hard_swish", "sigmoid", "clip", "two_readers", "max_const", "scalar_add"],
)
def test_pairs_that_must_not_be_equalized(between: Callable) -> None:
    eq = equalize_network(pair_net(between))
    assert eq.pairs == [] and eq.values == {} and eq.digest == ""


def test_a_range_the_user_fixed_between_the_pair_is_kept() -> None:
    net = pair_net()
    relu_out = next(n for n in net.nodes if n.op == "activation").get_output(0)
    assert len(equalize_network(net).pairs) == 1
    by_name = {"custom_ranges": {relu_out.name: {"min": [0.0], "max": [4.0]}}}
    cfg = config()
    assert cfg.parse_from_string(json.dumps(by_name)).ok()
    assert equalize_network(net, cfg).pairs == []
    relu_out.set_dynamic_range(mm.Range(0.0, 4.0))
    assert equalize_network(net).pairs == []


# -- calibration and build agree ----------------------------------------------------------------
def test_ranges_at_build_are_those_of_the_equalized_tensors() -> None:
    net = pair_net()
    cfg = config()
    calib = calibrate(net, cfg)
    eq = equalize_network(net, cfg)
    relu_out = next(n for n in net.nodes if n.op == "activation").get_output(0).name
    observed = max(
        float(run_reference(net, [x], keep_all=True, constants=eq.values)[relu_out].max())
        for x in data(1)
    )
    plain = max(float(run_reference(net, [x], keep_all=True)[relu_out].max()) for x in data(1))
    assert abs(observed - plain) > 0.1 * plain  # equalisation moved this range
    assert calib.get_ranges()[relu_out].max == pytest.approx(observed)
    used = plan_precision(net, cfg).tensor_ranges[relu_out]
    assert used.max == pytest.approx(observed)
    mm.Builder().build_model("ok", net, cfg)  # same config: accepted


def test_build_with_other_setting_than_calibration_is_refused() -> None:
    net = pair_net()
    calibrate(net, config(cle=False))
    with pytest.raises(mm.MMError, match=f"without {CONFIG_KEY}.*Calibrate again"):
        mm.Builder().build_model("m", net, config(cle=True))
    calibrate(net, config(cle=True))
    with pytest.raises(mm.MMError, match=f"with {CONFIG_KEY} true, but this build does not"):
        mm.Builder().build_model("m", net, config(cle=False))
    mm.Builder().build_model("f", net, config("force_float32", cle=False))  # ranges unused


def test_cache_records_the_equalization(tmp_path) -> None:
    net = pair_net()
    calib = calibrate(net, config(cle=True))
    path = tmp_path / "cache.json"
    assert calib.write_cache(path).ok()
    assert json.loads(path.read_text())["equalization"] == equalize_network(net).digest
    again = mm.Calibrator([ImageBatches(data(1))])
    assert again.read_cache(path).ok()
    assert again.calibrate(pair_net(), config(cle=True)).ok()
    assert again.get_ranges() == calib.get_ranges()
    with pytest.raises(mm.MMError, match=f"with {CONFIG_KEY} true, but the config does not"):
        again.calibrate(pair_net(), config(cle=False))
    plain = calibrate(pair_net(), config(cle=False))
    assert plain.write_cache(path).ok()
    assert "equalization" not in json.loads(path.read_text())  # as before the key existed


# -- int8 accuracy ------------------------------------------------------------------------------
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("depthwise", [False, True], ids=["pointwise", "depthwise"])
def test_int8_per_tensor_accuracy_improves_on_unbalanced_channels(depthwise: bool) -> None:
    x = data(42, 1)[0]
    scores = {}
    for cle in (False, True):
        net = pair_net(depthwise=depthwise)
        want = run_reference(net, [x])[net.outputs[0].name].astype(np.float64)
        cfg = config("qint8_mixed_float32", cle, weight_quant_granularity="per_tensor")
        calibrate(net, cfg)
        scores[cle] = cosine(run(mm.Builder().build_model("m", net, cfg), x), want)
    # measured: 0.967 -> 0.99988 (pointwise), 0.822 -> 0.99980 (depthwise)
    assert scores[True] > 0.999 > scores[False]
    assert 1 - scores[True] < 0.05 * (1 - scores[False])


# -- config -------------------------------------------------------------------------------------
def test_config_round_trip_and_bad_value() -> None:
    cfg = config(cle=True)
    assert cfg.cross_layer_equalization is True
    again = mm.BuilderConfig()
    assert again.parse_from_string(cfg.to_json()).ok()
    assert again.cross_layer_equalization is True and again == cfg
    assert mm.BuilderConfig().cross_layer_equalization is False
    with pytest.raises(mm.MMError, match=f"precision_config.{KEY}"):
        mm.BuilderConfig().parse_from_string(json.dumps({"precision_config": {KEY: "yes"}}))
    with pytest.raises(mm.MMError, match=f"precision_config.{KEY}"):
        mm.BuilderConfig().parse_from_string(json.dumps({"precision_config": {KEY: 1}}))


# -- bias correction ----------------------------------------------------------------------------
def test_bias_correction_golden_1x1() -> None:
    # W = [[0.3], [1.0]] per-tensor int8: scale 1/127, W_q = [38/127, 1.0], dW = [-0.00079, 0];
    # with the input's mean 2 the biases move by -dW * 2 = [+0.00157, 0]
    from mmbuild.graph import Graph
    from mmbuild.quant.bias_correction import correct_biases, quantized_weight

    w = np.array([0.3, 1.0], np.float32).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(quantized_weight(w, mm.DataType.QINT8, False, 0).ravel(),
                               [38 / 127, 1.0], rtol=1e-6)  # fmt: skip
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 1, 1, 1]))
    x.set_dynamic_range(mm.Range(-1.0, 1.0))
    assert net.mark_output(conv(net, x, w, np.zeros(2, np.float32))).ok()
    cfg = config(cle=False)
    graph = Graph.from_network(net, plan_precision(net, cfg))
    assert correct_biases(graph, {"conv_0": np.full((1, 1, 1), 2.0)}) == 1
    bias = graph.value(graph.nodes[0].inputs[2])
    np.testing.assert_allclose(bias, [-(38 / 127 - 0.3) * 2, 0.0], atol=1e-7)


def test_input_means_count_zero_padding() -> None:
    from mmbuild.quant.bias_correction import input_means

    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 2, 2, 1]))
    node = net.add_i_conv_node(x, const(net, np.ones((1, 3, 3, 1), np.float32)), None)
    node.set_pad(1, 1, 1, 1)
    m, count = input_means(node, np.ones((1, 2, 2, 1), np.float32))
    # 2x2 outputs; the centre tap always sees the input, a corner tap once in four positions
    assert count == 4 and m[1, 1, 0] == 1.0 and m[0, 0, 0] == 0.25 and m[0, 1, 0] == 0.5


def offset_net(seed: int = 0) -> mm.Network:
    """x (mean 3, not 0) -> conv 3x3 padded, per-tensor weights 100x apart -> y: the weights'
    rounding errors add up through the input's mean to a bias in the output."""
    rng = np.random.default_rng(seed)
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 8, 8, 4]))
    y = conv(net, x, unbalanced(rng, 8, 4, 3), np.zeros(8, np.float32), pad=1)
    assert net.mark_output(y).ok()
    return net


def offset_data(seed: int, n: int = 4) -> list[np.ndarray]:
    return [(x + 3.0).astype(np.float32) for x in data(seed, n)]


def test_bias_correction_reduces_the_mean_output_error() -> None:
    x = offset_data(42, 1)[0]
    errors = {}
    for bc in (False, True):
        net = offset_net()
        want = run_reference(net, [x])[net.outputs[0].name].astype(np.float64)
        cfg = config(cle=False, bias_correction=bc)
        calib = mm.Calibrator([ImageBatches(offset_data(1))])
        calib.set_progress(False)
        assert calib.calibrate(net, cfg).ok()
        assert bool(calib.get_input_means()) == bc
        err = run(mm.Builder().build_model("m", net, cfg), x) - want
        errors[bc] = np.abs(err.mean(axis=(0, 1, 2))).mean()  # the mean error per channel
    assert errors[True] < 0.2 * errors[False]


def test_bias_correction_without_means_is_refused(tmp_path) -> None:
    net = offset_net()
    calib = mm.Calibrator([ImageBatches(offset_data(1))])
    calib.set_progress(False)
    assert calib.calibrate(net, config(cle=False)).ok()  # no means recorded
    with pytest.raises(mm.MMError, match="precision_config.bias_correction needs the mean"):
        mm.Builder().build_model("m", net, config(cle=False, bias_correction=True))
    assert calib.write_cache(tmp_path / "c.json").ok()
    again = mm.Calibrator([ImageBatches(offset_data(1))])
    assert again.read_cache(tmp_path / "c.json").ok()
    assert again.calibrate(net, config(cle=False, bias_correction=True)).ok()
    with pytest.raises(mm.MMError, match="a calibration cache holds ranges only"):
        mm.Builder().build_model("m", net, config(cle=False, bias_correction=True))


@pytest.mark.parametrize("per_axis", [False, True], ids=["per_tensor", "per_axis"])
def test_bias_correction_quantizes_weights_as_the_kernels_do(per_axis: bool) -> None:
    from mmbuild.kernels.cpu.qcommon import quantize_weights
    from mmbuild.quant.bias_correction import quantized_weight

    w = unbalanced(np.random.default_rng(8), 8, 4, 3)
    q, scales = quantize_weights(w, mm.DataType.QINT8, per_axis, 0)
    kernels = q.astype(np.float32) * scales[:, None, None, None]
    np.testing.assert_array_equal(quantized_weight(w, mm.DataType.QINT8, per_axis, 0), kernels)


def test_tuner_trial_builds_keep_the_calibration_of_both_options() -> None:
    # the tuner calibrates once and moves nodes to float with set_precision: equalisation does
    # not depend on node settings, so every trial build matches that calibration
    cfg = config("qint8_mixed_float32", True, bias_correction=True)
    tuner = mm.AccuracyTuner(
        pair_net(), cfg, [ImageBatches(data(1))], data(5, 2), min_cosine=0.9999
    )
    model, report = tuner.tune()
    assert isinstance(model, mm.Model) and "met" in str(report)
