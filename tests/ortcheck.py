"""Compare an mmbuild network with onnxruntime on a one-node ONNX model.

Tolerances live in one table, ``TOLERANCES``, each with its reason; a test names its entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import mmbuild as mm

# name -> (rtol, atol, reason)
TOLERANCES: dict[str, tuple[float, float, str]] = {
    "exact": (0.0, 0.0, "data movement: no arithmetic, results are bit-identical"),
    "fp32": (1e-5, 1e-5, "float32 elementwise: one or two roundings apart"),
    "fp32_accumulate": (1e-4, 1e-4, "float32 sums over K terms: accumulation order differs"),
    "transcendental": (1e-5, 2e-6, "exp/tanh/erf: libm and onnxruntime's approximations differ"),
}


def run_onnx(
    op_type: str,
    inputs: Sequence[np.ndarray],
    attrs: dict[str, Any] | None = None,
    n_outputs: int = 1,
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> list[np.ndarray]:
    """Run one ONNX node with onnxruntime; ``inputs`` feed the node's first inputs in order and
    ``initializers`` (name -> array) follow them as constant inputs."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    names = [f"in{i}" for i in range(len(inputs))]
    inits = initializers or {}
    node = helper.make_node(
        op_type, [*names, *inits], [f"out{i}" for i in range(n_outputs)], **(attrs or {})
    )

    def vinfo(name: str, a: np.ndarray) -> Any:
        return helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)
        )

    graph = helper.make_graph(
        [node],
        "g",
        [vinfo(n, a) for n, a in zip(names, inputs)],
        [helper.make_empty_tensor_value_info(f"out{i}") for i in range(n_outputs)],
        [numpy_helper.from_array(a, name=n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs)))


def run_mm(
    build: Callable[[mm.Network, list[mm.ITensor]], list[mm.ITensor] | mm.ITensor],
    inputs: Sequence[np.ndarray],
) -> list[np.ndarray]:
    """Build a network with ``build(net, input_tensors)`` and run the reference evaluator."""
    net = mm.Network()
    xs = [net.add_input(mm.DataType.from_numpy(a.dtype), mm.Dims(a.shape)) for a in inputs]
    outs = build(net, xs)
    outs = [outs] if isinstance(outs, mm.ITensor) else outs
    for t in outs:
        net.mark_output(t)
    result = mm.run_reference(net, list(inputs))
    return [result[t.get_tensor_name()] for t in outs]


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: str) -> None:
    rtol, atol, _ = TOLERANCES[tolerance]
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def const(net: mm.Network, value: np.ndarray) -> mm.ITensor:
    """A constant tensor of ``value`` in ``net``."""
    value = np.asarray(value)
    node = net.add_i_const_node(mm.DataType.from_numpy(value.dtype), mm.Dims(value.shape), value)
    return node.get_output(0)
