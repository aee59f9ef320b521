"""Q/DQ models: onnxruntime's quantize_static output imports as ranges, builds in qint8 without
calibration, and matches onnxruntime running the same QDQ model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mmbuild as mm


def float_model(tmp_path: Path) -> str:
    """x [N, 4, 8, 8] -> Conv 3x3 (8) -> Relu -> Conv 1x1 (6) -> y."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32),
        "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((6, 8, 1, 1)) * 0.3).astype(np.float32),
        "b2": (rng.standard_normal(6) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], "conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "float.onnx"
    onnx.save(model, str(path))
    return str(path)


def calibration(k: int) -> np.ndarray:
    return np.random.default_rng(10 + k).standard_normal((2, 4, 8, 8)).astype(np.float32)


def quantize(tmp_path: Path, activation: str, symmetric: bool) -> str:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calibration(k)} for k in range(4)])

        def get_next(self) -> Any:
            return next(self.batches, None)

    out = str(tmp_path / "qdq.onnx")
    quantize_static(
        float_model(tmp_path), out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": symmetric},
    )  # fmt: skip
    return out


@pytest.mark.parametrize(
    "activation,algo",
    # onnxruntime's activations are asymmetric unless ActivationSymmetric; the builder takes
    # the matching activation_quant_algo
    [("QInt8", "asymmetric"), ("QUInt8", "asymmetric"), ("QInt8", "symmetric")],
)
def test_quantize_static_qdq_model_builds_without_calibration(
    tmp_path: Path, activation: str, algo: str
) -> None:
    import onnxruntime as ort

    path = quantize(tmp_path, activation, symmetric=algo == "symmetric")
    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, path).ok()
    types = [n.get_node_type() for n in net.get_all_nodes_in_network() if n.op != "const"]
    assert types.count("IConvNode") == 2 and "IQuantizeNode" not in types
    x_range = net.get_input(0).get_dynamic_range()
    assert x_range is not None  # the pair on x became its range
    config = mm.BuilderConfig()
    precision = {
        "precision_mode": "qint8_mixed_float32",
        "weight_quant_granularity": "per_axis",
        "activation_quant_algo": algo,
    }
    config.parse_from_string(json.dumps({"precision_config": precision}))
    model = mm.Builder().build_model("qdq", net, config)  # no calibration
    x = np.clip(calibration(7), -2, 2)
    ctx = model.create_i_engine().create_i_context()
    inputs = ctx.create_inputs()
    inputs[0].from_numpy(x)
    outs: list[Any] = []
    assert ctx.enqueue(inputs, outs).ok()
    got = outs[0].asnumpy()
    # The QDQ model as ONNX defines it (each pair a fake quantization, the ops in float):
    # onnxruntime without graph rewrites. Its optimized run fuses the pairs into QLinearConv,
    # whose own rounding moves it by a few steps of y from that definition.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    # onnxruntime quantizes y too, so they may differ by one step of its output grid
    qdq = onnx.load(path)
    scales = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    y_step = max(float(v) for k, v in scales.items() if k.startswith("y") and "scale" in k)
    assert np.abs(got - want).max() <= y_step, (np.abs(got - want).max(), y_step)
