"""Accuracy of every range algorithm, AUTO included, on hand-built networks, against float32.

    python benchmarks/bench_accuracy_hand.py [--mode qint8_mixed_float32] [--eval 64]

For each network, each ``activation_quant_algo`` (symmetric, asymmetric) and each range
algorithm: calibrate on one set of inputs, build in ``--mode`` with per-axis weights, run on inputs
the calibration did not see, and print the cosine of the output against the float32 reference
evaluator (for the classifiers, of the logits, and the share of inputs whose top-1 class is
unchanged). The last
columns say whether AUTO is at least as good as the best fixed algorithm (within 0.001 cosine).

Networks: the sample CNN and transformer block (samples/), and a small MobileNetV3-style
classifier built here (hard-swish, depthwise conv, a squeeze-excite gate, ReLU, softmax), whose
tensors have the one-sided and near-zero distributions that separate the algorithms.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_cnn import ImageBatches, build_cnn, sample_images
from sample_transformer import build_transformer_block

import mmbuild as mm

QA = mm.QuantizationAlgorithm
ALGORITHMS = [
    QA.LINEAR_ALGORITHM,
    QA.EQNM_ALGORITHM,
    QA.ENTROPY_ALGORITHM,
    QA.PERCENTILE_ALGORITHM,
    QA.MSE_ALGORITHM,
    QA.AUTO,
]
SHORT = {a: a.name.removesuffix("_ALGORITHM") for a in ALGORITHMS}


def const(net: mm.Network, value: np.ndarray) -> mm.ITensor:
    value = np.asarray(value, dtype=np.float32)
    return net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(value.shape), value).get_output(0)


def build_mobile(seed: int = 0, classes: int = 10) -> mm.Network:
    """conv 3x3 s2 -> BN -> hard-swish -> depthwise 3x3 -> BN -> ReLU -> squeeze-excite (avg pool,
    1x1 conv, ReLU, 1x1 conv, hard-sigmoid, multiply) -> 1x1 conv -> hard-swish -> global average
    pool -> inner product -> softmax, on NHWC [-1, 16, 16, 3]."""
    rng = np.random.default_rng(seed)
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 16, 16, 3]))

    def conv(t: mm.ITensor, cin: int, cout: int, k: int, group: int = 1, stride: int = 1):
        fan_in = k * k * cin // group
        w = rng.normal(0, np.sqrt(2 / fan_in), (cout, k, k, cin // group))
        node = net.add_i_conv_node(t, const(net, w), const(net, rng.normal(0, 0.1, cout)))
        node.set_pad(k // 2, k // 2, k // 2, k // 2)
        node.set_stride(stride, stride)
        node.set_group(group)
        return node.get_output(0)

    def bn(t: mm.ITensor, c: int) -> mm.ITensor:
        node = net.add_i_fused_batch_norm_node(
            t,
            const(net, rng.normal(0, 0.2, c)),
            const(net, rng.uniform(0.5, 2.0, c)),
            const(net, rng.uniform(0.5, 1.5, c)),
            const(net, rng.normal(0, 0.3, c)),
            3,
            1e-5,
        )
        return node.get_output(0)

    def act(t: mm.ITensor, kind: mm.IActivation) -> mm.ITensor:
        return net.add_i_activation_node(t, kind).get_output(0)

    t = act(bn(conv(x, 3, 16, 3, stride=2), 16), mm.IActivation.HARD_SWISH)
    for _ in range(3):  # inverted-residual-like blocks
        t = act(bn(conv(t, 16, 16, 3, group=16), 16), mm.IActivation.RELU)
        pool = net.add_i_avgpool2d_node(t)
        pool.set_kernel(8, 8)
        pool.set_stride(8, 8)
        gate = act(conv(pool.get_output(0), 16, 8, 1), mm.IActivation.RELU)
        gate = act(conv(gate, 8, 16, 1), mm.IActivation.HARD_SIGMOID)
        t = net.add_i_elementwise_node(t, gate, mm.IElementwise.MUL).get_output(0)
        t = act(bn(conv(t, 16, 16, 1), 16), mm.IActivation.HARD_SWISH)
    t = act(conv(t, 16, 32, 1), mm.IActivation.HARD_SWISH)
    gap = net.add_i_avgpool2d_node(t)
    gap.set_kernel(8, 8)
    gap.set_stride(8, 8)
    t = net.add_i_reshape_node(gap.get_output(0), [0, 32]).get_output(0)
    fc = net.add_i_inner_product_node(
        t, const(net, rng.normal(0, 0.3, (classes, 32))), const(net, np.zeros(classes))
    )
    fc.set_node_name("classifier")
    probs = net.add_i_softmax_node(fc.get_output(0), 1).get_output(0)
    probs.set_tensor_name("probabilities")
    net.mark_output(probs)
    return net


def tokens(count: int, seed: int) -> np.ndarray:
    """Transformer inputs [count, 16, 32]: unit-variance features with a few large channels, as
    the residual stream of trained transformers has."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 16, 32)).astype(np.float32)
    x[..., :2] *= 6.0
    return x


def images_with_hot_pixels(count: int, seed: int) -> np.ndarray:
    """The sample images with 0.2% of their values replaced by spikes of 4 to 12 (hot pixels,
    specular highlights): rare outliers, which a min/max range pays for on every other value."""
    x = sample_images(count, seed)
    rng = np.random.default_rng(seed + 100)
    hot = rng.random(x.shape) < 0.002
    x[hot] = rng.uniform(4.0, 12.0, int(hot.sum())).astype(np.float32)
    return x


def logits(build: Callable[[], mm.Network]) -> Callable[[], mm.Network]:
    """The classifier with its logits (the input of the softmax) as the output: the softmax of
    ten nearly equal logits is nearly uniform whatever the error, so its cosine says little."""

    def build_logits() -> mm.Network:
        net = build()
        assert net.unmark_output(net.get_output(0)).ok()
        assert net.mark_output(net.find_node_by_name("classifier").get_output(0)).ok()
        return net

    return build_logits


#: name -> (network builder, inputs (count, seed) -> array, classifier?)
NETWORKS: dict[str, tuple[Callable[[], mm.Network], Callable[[int, int], np.ndarray], bool]] = {
    "sample CNN (logits)": (logits(build_cnn), sample_images, True),
    "mobile classifier (logits)": (logits(build_mobile), sample_images, True),
    "mobile classifier, hot pixels": (logits(build_mobile), images_with_hot_pixels, True),
    "sample CNN, hot pixels": (logits(build_cnn), images_with_hot_pixels, True),
    "transformer block": (build_transformer_block, tokens, False),
}


def evaluate(
    build: Callable[[], mm.Network],
    calib_x: np.ndarray,
    eval_x: np.ndarray,
    config: mm.BuilderConfig,
    algorithm: mm.QuantizationAlgorithm,
) -> tuple[float, float]:
    """(cosine of the output against float32, share of unchanged argmax along the last axis)."""
    net = build()
    calib = mm.Calibrator([ImageBatches(list(calib_x.reshape(8, -1, *calib_x.shape[1:])))])
    calib.set_progress(False)
    calib.set_quantization_algorithm(algorithm)
    assert calib.calibrate(net, config).ok()
    model = mm.Builder().build_model("bench", net, config)
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(eval_x)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    got = outputs[0].asnumpy().astype(np.float64)
    want = mm.run_reference(build(), [eval_x])
    expected = np.asarray(next(iter(want.values())), np.float64)
    cosine = float(np.sum(got * expected) / np.linalg.norm(got) / np.linalg.norm(expected))
    agree = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    return cosine, agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="qint8_mixed_float32")
    parser.add_argument("--calib", type=int, default=64, help="calibration inputs (8 batches)")
    parser.add_argument("--eval", type=int, default=64, help="evaluation inputs")
    parser.add_argument("--only", default="", help="run the networks whose name contains this")
    args = parser.parse_args()
    head = " | ".join(SHORT[a] for a in ALGORITHMS)
    print(f"mode {args.mode}, per-axis weights; cosine against float32 (top-1 agreement)\n")
    print(f"| network | activations | {head} | AUTO - best fixed |")
    print("|---|---|" + "---|" * len(ALGORITHMS) + "---|")
    for name, (build, inputs, classifier) in NETWORKS.items():
        if args.only not in name:
            continue
        calib_x, eval_x = inputs(args.calib, 1), inputs(args.eval, 2)
        for algo in ("symmetric", "asymmetric"):
            config = mm.BuilderConfig()
            config.parse_from_string(
                f'{{"precision_config": {{"precision_mode": "{args.mode}", '
                f'"weight_quant_granularity": "per_axis", "activation_quant_algo": "{algo}"}}}}'
            )
            scores = {a: evaluate(build, calib_x, eval_x, config, a) for a in ALGORITHMS}
            cells = [f"{c:.5f}" + (f" ({t:.0%})" if classifier else "") for c, t in scores.values()]
            best_fixed = max(c for a, (c, _) in scores.items() if a is not QA.AUTO)
            margin = scores[QA.AUTO][0] - best_fixed
            print(f"| {name} | {algo} | " + " | ".join(cells) + f" | {margin:+.5f} |")


if __name__ == "__main__":
    main()
