"""AUTO on whole networks: built and run in int8, it is at least as accurate as the best fixed
range algorithm (output cosine against float32, within 0.001), and ENTROPY is no longer the outlier
it was on networks with ReLU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sample_cnn import ImageBatches, build_cnn, sample_images
from sample_transformer import build_transformer_block

import mmbuild as mm

QA = mm.QuantizationAlgorithm
FIXED = [a for a in QA if a is not QA.AUTO]


def _cnn_logits() -> mm.Network:
    net = build_cnn()
    assert net.unmark_output(net.get_output(0)).ok()
    assert net.mark_output(net.find_node_by_name("classifier").get_output(0)).ok()
    return net


def _config(algo: str) -> mm.BuilderConfig:
    config = mm.BuilderConfig()
    body = {
        "precision_config": {
            "precision_mode": "qint8_mixed_float32",
            "weight_quant_granularity": "per_axis",
            "activation_quant_algo": algo,
        }
    }
    assert config.parse_from_string(json.dumps(body)).ok()
    return config


def _cosine(build, calib_x, eval_x, algorithm, algo: str) -> float:
    net = build()
    calib = mm.Calibrator([ImageBatches(list(calib_x))])
    calib.set_progress(False)
    calib.set_quantization_algorithm(algorithm)
    config = _config(algo)
    assert calib.calibrate(net, config).ok()
    model = mm.Builder().build_model("net", net, config)
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(eval_x)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    got = outputs[0].asnumpy().astype(np.float64).ravel()
    want = np.asarray(next(iter(mm.run_reference(build(), [eval_x]).values())), np.float64).ravel()
    return float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))


def _cnn_data() -> tuple[np.ndarray, np.ndarray]:
    return sample_images(32, seed=1).reshape(4, 8, 16, 16, 3), sample_images(16, seed=2)


def test_auto_matches_the_best_fixed_algorithm_on_the_sample_cnn() -> None:
    calib_x, eval_x = _cnn_data()
    algo = "asymmetric"
    scores = {a: _cosine(_cnn_logits, calib_x, eval_x, a, algo) for a in (*FIXED, QA.AUTO)}
    best_fixed = max(scores[a] for a in FIXED)
    assert scores[QA.AUTO] >= best_fixed - 0.001, scores
    # ENTROPY clipped every post-ReLU tensor to max / 16 before its fix: 0.99876 here against
    # 0.99995 for PERCENTILE; now 0.99993
    assert scores[QA.ENTROPY_ALGORITHM] >= best_fixed - 0.0003, scores


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("network", ["cnn", "transformer"])
def test_auto_matches_the_best_fixed_algorithm_everywhere(network: str, algo: str) -> None:
    if network == "cnn":
        build, (calib_x, eval_x) = _cnn_logits, _cnn_data()
    else:
        rng = np.random.default_rng(5)
        build = build_transformer_block
        calib_x = rng.standard_normal((4, 4, 16, 32)).astype(np.float32)
        eval_x = rng.standard_normal((8, 16, 32)).astype(np.float32)
    scores = {a: _cosine(build, calib_x, eval_x, a, algo) for a in QA}
    assert scores[QA.AUTO] >= max(scores[a] for a in FIXED) - 0.001, scores
