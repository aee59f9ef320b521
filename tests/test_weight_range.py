"""``precision_config.weight_quant_range``: reduced int8 weight codes (-64..64) for the
vpmaddubsw GEMM of CPUs without VNNI: the scales, the codes the built model holds, the numbers
against the model's own reference and against float, and bias correction using the same codes."""

from __future__ import annotations

import numpy as np
import pytest
from sample_cnn import ImageBatches, build_cnn, sample_images
from test_build_run import config_for, cosine, run
from test_equalize import calibrate, config, pair_net

import mmbuild as mm
from mmbuild.kernels.cpu.qcommon import quantize_weights
from mmbuild.quant.bias_correction import quantized_weight
from mmbuild.quant.params import REDUCED_INT8_QMAX, choose_qparams, quantize, weight_qmax


def test_reduced_scale_maps_the_range_onto_64_codes() -> None:
    qp = choose_qparams(-0.5, 2.0, qmax=REDUCED_INT8_QMAX)
    assert qp.scale == np.float32(2.0 / 64)
    codes = quantize(np.array([-0.5, 2.0, 1.0, 0.01], np.float32), qp)
    assert codes.tolist() == [-16, 64, 32, 0]
    per_axis = choose_qparams([-1.0, -3.0], [0.5, 1.0], axis=0, qmax=64)
    assert per_axis.scale.tolist() == [np.float32(1 / 64), np.float32(3 / 64)]
    with pytest.raises(mm.MMError, match="qmax 64 needs symmetric"):
        choose_qparams(0.0, 1.0, symmetric=False, qmax=64)
    assert weight_qmax({"weight_quant_range": "reduced"}, 16) is None
    assert weight_qmax({"weight_quant_range": "reduced"}, 8, gemm=False) is None


def _quantized_weights(model: mm.Model) -> dict[str, np.ndarray]:
    return {
        s.name: s.lowered.arrays["weight"]
        for s in model.data.steps
        if s.op in ("conv", "inner_product")
        and s.lowered.arrays.get("weight", np.empty(0)).dtype == np.int8
    }


@pytest.mark.parametrize("granularity", ["per_tensor", "per_axis"])
def test_reduced_range_build_keeps_64_codes_and_its_accuracy(granularity: str) -> None:
    x = sample_images(5, seed=7)
    batches = list(sample_images(32, seed=1).reshape(4, 8, 16, 16, 3))
    results = {}
    for weight_range in ("full", "reduced"):
        config = config_for("qint8_mixed_float16", weight_quant_range=weight_range,
                            weight_quant_granularity=granularity)  # fmt: skip
        net = build_cnn()
        calib = mm.Calibrator([ImageBatches(batches)])
        calib.set_progress(False)
        assert calib.calibrate(net, config).ok()
        model = mm.Builder().build_model("cnn", net, config)
        weights = _quantized_weights(model)
        assert weights, "the sample CNN has int8 convs and inner products"
        top = max(int(np.abs(w.astype(np.int16)).max()) for w in weights.values())
        assert top == (64 if weight_range == "reduced" else 127)
        assert model.validate(x).ok(), str(model.validate(x))  # bit-exact with its reference
        (results[weight_range],) = run(model, x)
        expected = mm.run_reference(net, [x])["probabilities"]
    assert cosine(results["reduced"], expected) >= 0.99
    assert not np.array_equal(results["reduced"], results["full"])


@pytest.mark.parametrize("per_axis", [False, True])
def test_bias_correction_uses_the_kernels_reduced_codes(per_axis: bool) -> None:
    w = np.random.default_rng(3).standard_normal((5, 7)).astype(np.float32)
    reduced = quantized_weight(w, mm.DataType.QINT8, per_axis, 0, REDUCED_INT8_QMAX)
    codes, scales = quantize_weights(w, mm.DataType.QINT8, per_axis, 0, REDUCED_INT8_QMAX)
    assert int(np.abs(codes).max()) == 64
    np.testing.assert_array_equal(reduced, codes.astype(np.float32) * scales[:, None])


def test_depthwise_filters_keep_the_full_range_and_bias_correction_follows() -> None:
    """The depthwise loop is exact and as fast for -127..127, so only GEMM weights are reduced
    (bias correction computes each node's W_q the same way)."""
    net = pair_net(depthwise=True)
    cfg = config(cle=False, weight_quant_range="reduced", bias_correction=True)
    calibrate(net, cfg)
    model = mm.Builder().build_model("dw", net, cfg)
    weights = _quantized_weights(model)
    steps = {s.name: s for s in model.data.steps}
    tops = {}
    for name, w in weights.items():
        tops[steps[name].lowered.attrs.get("path", "gemm")] = int(np.abs(w.astype(np.int16)).max())
    assert tops == {"gemm": 64, "depthwise": 127}, tops
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 4)).astype(np.float32)
    assert model.validate(x).ok(), str(model.validate(x))
