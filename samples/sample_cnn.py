"""Build a small CNN node by node, calibrate it, build it in qint8_mixed_float16 and run it.

conv -> batch norm -> relu -> max pool -> conv -> relu -> global average pool -> reshape
-> inner product -> softmax, on NHWC input [-1, 16, 16, 3] (the batch size is set at run time).

    python samples/sample_cnn.py
"""

from __future__ import annotations

import time

import numpy as np

import mmbuild as mm


def const(net: mm.Network, value: np.ndarray) -> mm.ITensor:
    value = np.asarray(value, dtype=np.float32)
    return net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(value.shape), value).get_output(0)


def build_cnn(seed: int = 0, classes: int = 10) -> mm.Network:
    """The sample CNN with deterministic (seeded) weights."""
    rng = np.random.default_rng(seed)
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 16, 16, 3]))

    def conv(t: mm.ITensor, cin: int, cout: int, name: str) -> mm.ITensor:
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, 3, 3, cin))  # [Cout, Kh, Kw, Cin]
        node = net.add_i_conv_node(t, const(net, w), const(net, rng.normal(0, 0.1, cout)))
        node.set_pad(1, 1, 1, 1)
        node.set_node_name(name)
        return node.get_output(0)

    t = conv(x, 3, 16, "conv1")
    bn = net.add_i_fused_batch_norm_node(
        t,
        const(net, rng.normal(0, 0.1, 16)),  # mean
        const(net, rng.uniform(0.5, 1.5, 16)),  # variance
        const(net, rng.uniform(0.8, 1.2, 16)),  # scale
        const(net, rng.normal(0, 0.1, 16)),  # offset
        3,
        1e-5,
    )
    t = net.add_i_activation_node(bn.get_output(0), mm.IActivation.RELU).get_output(0)
    pool = net.add_i_maxpool2d_node(t)
    pool.set_kernel(2, 2)
    pool.set_stride(2, 2)
    t = conv(pool.get_output(0), 16, 32, "conv2")
    t = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
    gap = net.add_i_avgpool2d_node(t)
    gap.set_kernel(8, 8)
    gap.set_stride(8, 8)
    t = net.add_i_reshape_node(gap.get_output(0), [0, 32]).get_output(0)  # 0: keep the batch
    fc = net.add_i_inner_product_node(
        t, const(net, rng.normal(0, 0.2, (classes, 32))), const(net, np.zeros(classes))
    )
    fc.set_node_name("classifier")
    probs = net.add_i_softmax_node(fc.get_output(0), 1)
    probs.get_output(0).set_tensor_name("probabilities")
    net.mark_output(probs.get_output(0))
    return net


def describe(net: mm.Network) -> str:
    """One line per node: name, type, input and output shapes."""
    lines = [f"{'node':<20}{'type':<22}{'inputs':<34}outputs"]
    for node in net.get_all_nodes_in_network():
        if node.get_node_type() == "IConstNode":
            continue
        ins = " ".join(
            str(t.get_dimension())
            for t in node.inputs
            if t.get_producer() is None or t.get_producer().get_node_type() != "IConstNode"
        )
        outs = " ".join(str(t.get_dimension()) for t in node.outputs)
        lines.append(f"{node.get_node_name():<20}{node.get_node_type():<22}{ins:<34}{outs}")
    return "\n".join(lines)


def sample_images(count: int, seed: int = 0) -> np.ndarray:
    """``count`` smooth NHWC test images [count, 16, 16, 3]: colour gradients with a bright
    disc, plus a little noise, so that every layer sees the structured values of real images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    images = np.empty((count, 16, 16, 3), np.float32)
    for i in range(count):
        gx, gy, base = rng.uniform(-1, 1, (3, 3))
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.35)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float64)
        for c in range(3):
            images[i, :, :, c] = base[c] + gx[c] * xx + gy[c] * yy + disc * rng.uniform(0.5, 1.5)
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    return images


class ImageBatches(mm.CalibDataInterface):
    """Calibration data: the batches of an array, one after the other."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        super().__init__()
        self.batches, self.i = batches, -1

    def get_shape(self) -> mm.Dims:
        return mm.Dims(self.batches[self.i].shape)

    def get_data_type(self) -> mm.DataType:
        return mm.DataType.FLOAT32

    def get_sample(self) -> np.ndarray:
        return self.batches[self.i]

    def next(self) -> mm.Status:
        self.i += 1
        if self.i >= len(self.batches):
            return mm.Status(mm.Code.OUT_OF_RANGE, "end of data")
        return mm.Status.OK()

    def reset(self) -> mm.Status:
        self.i = -1
        return mm.Status.OK()


def main(mode: str = "qint8_mixed_float16", runs: int = 200) -> None:
    """Build, calibrate and run the sample CNN in ``mode``; print the layer report, the error
    against float32 and the time per inference."""
    net = build_cnn()
    print(describe(net))
    config = mm.BuilderConfig()
    config.parse_from_string(
        f'{{"precision_config": {{"precision_mode": "{mode}", '
        '"weight_quant_granularity": "per_axis"}}'
    )
    calib_data = sample_images(64, seed=1)
    calib = mm.Calibrator([ImageBatches(list(calib_data.reshape(8, 8, 16, 16, 3)))])
    calib.set_progress(False)
    assert calib.calibrate(net, config).ok()
    model = mm.Builder().build_model("sample_cnn", net, config)
    x = sample_images(16, seed=2)  # images the calibration did not see
    print(f"\nbuilt in {mode}; at batch {len(x)}:\n{model.get_layer_report(x)}")
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(x)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    probs = outputs[0].asnumpy().astype(np.float32)
    expected = mm.run_reference(net, [x])["probabilities"]
    cosine = float(np.sum(probs * expected) / np.linalg.norm(probs) / np.linalg.norm(expected))
    agree = float(np.mean(probs.argmax(1) == expected.argmax(1)))
    print(
        f"\nerror against float32 on {len(x)} images: cosine {cosine:.5f}, max abs "
        f"{np.abs(probs - expected).max():.2e}, same top-1 class on {agree:.0%}"
    )
    print(model.get_error_report(x))

    start = time.perf_counter()
    for _ in range(runs):
        context.enqueue(inputs, outputs)
    per_run = (time.perf_counter() - start) / runs
    print(f"\ntime per inference (batch {len(x)}): {per_run * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
