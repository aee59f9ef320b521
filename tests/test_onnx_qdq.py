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


def quantize(tmp_path: Path, activation: str, symmetric: bool, reduce_range: bool = False) -> str:
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
        reduce_range=reduce_range,
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


def build(net: mm.Network, precision: dict[str, str]) -> mm.Model:
    config = mm.BuilderConfig()
    config.parse_from_string(json.dumps({"precision_config": precision}))
    return mm.Builder().build_model("qdq", net, config)


def run(model: mm.Model, x: np.ndarray) -> np.ndarray:
    ctx = model.create_i_engine().create_i_context()
    inputs = ctx.create_inputs()
    inputs[0].from_numpy(x)
    outs: list[Any] = []
    assert ctx.enqueue(inputs, outs).ok()
    return outs[0].asnumpy()


def ort_reference(path: str, x: np.ndarray) -> np.ndarray:
    """The QDQ model as ONNX defines it: onnxruntime with its graph rewrites off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("granularity", ["per_axis", "per_tensor"])
def test_qdq_weights_are_lowered_with_the_files_codes_and_scales(
    tmp_path: Path, granularity: str
) -> None:
    # reduce_range: onnxruntime's weight codes stay within [-64, 64], so scales derived from
    # the float values (largest code 127) would differ from the file's in every channel
    path = quantize(tmp_path, "QUInt8", symmetric=False, reduce_range=True)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    for w in ("w1", "w2"):
        assert np.abs(inits[f"{w}_quantized"]).max() < 127
    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, path).ok()
    # the configured granularity does not matter: the file's per-channel scales are taken
    model = build(net, {"precision_mode": "qint8_mixed_float32",
                        "weight_quant_granularity": granularity,
                        "activation_quant_algo": "asymmetric"})  # fmt: skip
    steps = {s.name: s for s in model.data.steps}
    for node, w in (("conv1", "w1"), ("conv2", "w2")):
        arrays = steps[node].lowered.arrays
        want_q = inits[f"{w}_quantized"].transpose(0, 2, 3, 1)  # OIHW -> the kernels' OHWI
        assert arrays["weight"].dtype == np.int8
        assert np.array_equal(arrays["weight"].reshape(want_q.shape), want_q)
        assert np.array_equal(np.asarray(arrays["scale_w"]), inits[f"{w}_scale"])
    x = np.clip(calibration(7), -2, 2)
    got, want = run(model, x), ort_reference(path, x)
    y_step = float(inits["y_scale"])  # onnxruntime quantizes y: one step of its grid
    assert np.abs(got - want).max() <= y_step, (np.abs(got - want).max(), y_step)


def dq_weight_model(
    tmp_path: Path, op: str, codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
    axis: int,
) -> str:  # fmt: skip
    """x -> Q/DQ -> ``op`` (Conv, or MatMul) with the weight DQ(codes, scale, zero_point, axis)."""
    x_shape = [1, codes.shape[1], 4, 4] if op == "Conv" else [3, codes.shape[0]]
    inits = [
        numpy_helper.from_array(codes, "wq"),
        numpy_helper.from_array(scale.astype(np.float32), "ws"),
        numpy_helper.from_array(zero_point, "wz"),
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.int8), "xz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], "x_q"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], "x_dq"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], "w_dq", axis=axis),
        helper.make_node(op, ["xd", "w"], ["y"], "the_" + op.lower()),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / f"{op}.onnx")
    onnx.save(model, path)
    return path


def test_matmul_weight_takes_the_files_per_column_scales(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(-90, 91, (8, 5)).astype(np.int8)  # [K, N], no column reaches 127
    scale = np.array([0.01, 0.02, 0.005, 0.03, 0.015])
    path = dq_weight_model(tmp_path, "MatMul", codes, scale, np.zeros(5, np.int8), axis=1)
    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, path).ok()
    model = build(net, {"precision_mode": "qint8_mixed_float32"})
    (step,) = [s for s in model.data.steps if s.name == "the_matmul"]
    assert np.array_equal(step.lowered.arrays["weight"], codes)
    assert np.array_equal(step.lowered.arrays["scale_w"], scale.astype(np.float32))
    x = np.random.default_rng(4).uniform(-2, 2, (3, 8)).astype(np.float32)
    got, want = run(model, x), ort_reference(path, x)
    # the same arithmetic: integer products of the same codes, scaled in float32
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6), np.abs(got - want).max()


@pytest.mark.parametrize(
    "zero_point,axis,message",
    [
        (np.array([0, 1, 0, 0], np.int8), 0, "zero point(s) [0, 1]"),
        (np.zeros(3, np.int8), 1, "quantized per axis along axis 1"),
    ],
)
def test_weights_that_cannot_be_taken_as_given_are_refused(
    tmp_path: Path, zero_point: np.ndarray, axis: int, message: str
) -> None:
    codes = np.ones((4, 3, 3, 3), np.int8)
    scale = np.full(zero_point.shape, 0.01)
    path = dq_weight_model(tmp_path, "Conv", codes, scale, zero_point, axis)
    net = mm.Network()
    with pytest.raises(mm.MMError) as info:
        mm.Parser(mm.ModelKind.kOnnx).parse(net, path)
    text = str(info.value)
    assert "'the_conv'" in text and "weight 'w'" in text and message in text, text
    assert not list(net.get_all_nodes_in_network())  # nothing half-parsed
