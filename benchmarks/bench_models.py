"""Whole-model latency of the samples in every precision mode, against the numpy reference.

    python benchmarks/bench_models.py [--batch 16] [--runs 200]

For each mode: build time (with engine creation), time per inference (median of ``--runs``
enqueues after warm-up), speed-up over the float32 numpy reference evaluator, and the cosine of
the output against it. The sample CNN is also exported to ONNX and timed in onnxruntime (fp32,
its default 2-thread session), which gives the ``x ORT`` column.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_cnn import ImageBatches, build_cnn, sample_images
from sample_transformer import build_transformer_block

import mmbuild as mm
from mmbuild.config.schema import PRECISION_MODES

MODES = PRECISION_MODES


def median_time(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


POOLS = {"IMaxPool2DNode": "MaxPool", "IAvgPool2DNode": "AveragePool"}


def cnn_onnx_seconds(net: mm.Network, x: np.ndarray, runs: int) -> float | None:
    """Time of the sample CNN in onnxruntime, or None without onnx/onnxruntime."""
    session = cnn_onnx_session(net, x)
    if session is None:
        return None
    return median_time(lambda: session.run(None, {"x": x}), runs)


def cnn_onnx_session(net: mm.Network, x: np.ndarray) -> Any:
    """The sample CNN as an onnxruntime fp32 session (NCHW inside, one transpose in), checked
    against the network on ``x``; None without onnx/onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import helper
    except ImportError:
        return None
    nodes, inits = [helper.make_node("Transpose", ["x"], ["t0"], perm=[0, 3, 1, 2])], []
    names = {net.get_input(0).get_tensor_name(): "t0"}

    def init(value: np.ndarray) -> str:
        inits.append(onnx.numpy_helper.from_array(np.asarray(value, np.float32), f"w{len(inits)}"))
        return inits[-1].name

    for node in net.get_all_nodes_in_network():
        kind, attrs = node.get_node_type(), node.attrs
        if kind == "IConstNode":
            continue
        ins = [names.get(t.get_tensor_name(), "") for t in node.inputs]
        consts = [p.attrs.get("value") if (p := t.get_producer()) else None for t in node.inputs]
        out = node.get_output(0).get_tensor_name()
        names[out] = out
        if kind == "IConvNode":
            w = init(np.transpose(consts[1], (0, 3, 1, 2)))
            pads = attrs["pad"]
            op = helper.make_node("Conv", [ins[0], w, init(consts[2])], [out],
                                  pads=[pads[0], pads[2], pads[1], pads[3]])  # fmt: skip
        elif kind == "IFusedBatchNormNode":
            mean, var, scale, offset = (init(c) for c in consts[1:5])
            op = helper.make_node("BatchNormalization", [ins[0], scale, offset, mean, var],
                                  [out], epsilon=attrs["eps"])  # fmt: skip
        elif kind == "IActivationNode":
            op = helper.make_node("Relu", ins, [out])
        elif kind in ("IMaxPool2DNode", "IAvgPool2DNode"):
            kernel = list(attrs["kernel"])
            op = helper.make_node(POOLS[kind], ins, [out], kernel_shape=kernel,
                                  strides=list(attrs["stride"] or kernel))  # fmt: skip
        elif kind == "IReshapeNode":
            shape = onnx.numpy_helper.from_array(np.array([0, -1], np.int64), f"s{len(inits)}")
            inits.append(shape)
            op = helper.make_node("Reshape", [ins[0], shape.name], [out])
        elif kind == "IInnerProductNode":
            op = helper.make_node("Gemm", [ins[0], init(consts[1]), init(consts[2])], [out],
                                  transB=1)  # fmt: skip
        elif kind == "ISoftmaxNode":
            op = helper.make_node("Softmax", ins, [out], axis=1)
        else:
            return None
        nodes.append(op)
    out_name = net.get_output(0).get_tensor_name()
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = mm.run_reference(net, [x])[out_name]
    got = session.run(None, {"x": x})[0]
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise SystemExit("the ONNX export of the sample CNN does not match the network")
    return session


def bench(name: str, make: Callable[[], mm.Network], x: np.ndarray, runs: int) -> None:
    reference_net = make()
    ort_s = cnn_onnx_seconds(reference_net, x, runs) if name == "sample_cnn" else None
    print(
        f"\n{name}: input {list(x.shape)}"
        + (f"; onnxruntime fp32 {ort_s * 1e3:.3f} ms" if ort_s else "")
    )
    print(
        f"{'mode':<22}{'build ms':>9}{'ms/inference':>14}{'x numpy':>9}{'x ORT':>7}{'cosine':>10}"
    )
    out_name = reference_net.get_output(0).get_tensor_name()
    numpy_s = median_time(lambda: mm.run_reference(reference_net, [x]), max(5, runs // 10))
    expected = mm.run_reference(reference_net, [x])[out_name].astype(np.float64).ravel()
    for mode in MODES:
        net = make()
        config = mm.BuilderConfig()
        config.parse_from_string(
            f'{{"precision_config": {{"precision_mode": "{mode}", '
            '"weight_quant_granularity": "per_axis"}}'
        )
        batches = [x[i : i + 4] for i in range(0, len(x), 4)]
        calib = mm.Calibrator([ImageBatches(batches)])
        calib.set_progress(False)
        calib.calibrate(net, config)
        start = time.perf_counter()
        model = mm.Builder().build_model(name, net, config)
        context = model.create_i_engine().create_i_context()
        build_s = time.perf_counter() - start
        inputs = context.create_inputs()
        inputs[0].from_numpy(x)
        outputs: list[mm.IRTTensor] = []
        seconds = median_time(lambda: context.enqueue(inputs, outputs), runs)  # noqa: B023
        y = outputs[0].asnumpy().astype(np.float64).ravel()
        cosine = float(y @ expected / np.linalg.norm(y) / np.linalg.norm(expected))
        print(
            f"{mode:<22}{build_s * 1e3:>9.1f}{seconds * 1e3:>14.3f}{numpy_s / seconds:>9.1f}"
            f"{(ort_s / seconds if ort_s else float('nan')):>7.2f}{cosine:>10.5f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    bench("sample_cnn", build_cnn, sample_images(args.batch, seed=3), args.runs)
    net = build_transformer_block()
    shape = [d if d > 0 else args.batch for d in net.get_input(0).get_dimension()]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    bench("sample_transformer", build_transformer_block, x, args.runs)


if __name__ == "__main__":
    main()
