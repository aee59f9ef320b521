"""Small models for the command-line tests: an MLP built node by node, and the same MLP as an
ONNX file (same tensor names), so that ``compare --onnx`` can be tested without the parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import mmbuild as mm

FEATURES, HIDDEN, CLASSES = 8, 16, 4


def _weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.4, (HIDDEN, FEATURES)).astype(np.float32)
    b1 = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    w2 = rng.normal(0, 0.4, (CLASSES, HIDDEN)).astype(np.float32)
    b2 = rng.normal(0, 0.1, CLASSES).astype(np.float32)
    return w1, b1, w2, b2


def mlp() -> mm.Network:
    """x [-1, 8] -> fc1 -> relu -> fc2 -> softmax, tensors named as in :func:`write_mlp_onnx`."""
    w1, b1, w2, b2 = _weights()
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, FEATURES]))
    x.set_tensor_name("x")

    def const(a: np.ndarray) -> mm.ITensor:
        return net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(a.shape), a).get_output(0)

    fc1 = net.add_i_inner_product_node(x, const(w1), const(b1))
    fc1.set_node_name("fc1")
    fc1.get_output(0).set_tensor_name("h")
    relu = net.add_i_activation_node(fc1.get_output(0), mm.IActivation.RELU)
    relu.set_node_name("relu")
    relu.get_output(0).set_tensor_name("hr")
    fc2 = net.add_i_inner_product_node(relu.get_output(0), const(w2), const(b2))
    fc2.set_node_name("fc2")
    fc2.get_output(0).set_tensor_name("logits")
    probs = net.add_i_softmax_node(fc2.get_output(0), 1)
    probs.set_node_name("softmax")
    probs.get_output(0).set_tensor_name("probs")
    net.mark_output(probs.get_output(0))
    return net


def not_a_network() -> str:
    return "a string"


def write_mlp_onnx(path: Path) -> Path:
    """The same MLP as an ONNX file (Gemm with transB, Relu, Gemm, Softmax)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], transB=1, name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(a, n) for a, n in zip(_weights(), ["w1", "b1", "w2", "b2"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
