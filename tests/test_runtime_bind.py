"""The bound run loop: steps bound once per set of input shapes, views instead of copies, fresh
outputs on every run, the per-step hook, and contexts in threads."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest

import mmbuild as mm
from mmbuild.kernels.table import Runner


def _chain(width: int = 6) -> mm.Network:
    """relu -> reshape -> unsqueeze -> squeeze -> mul by a constant (an intermediate view chain)."""
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, width]))
    t = net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0)
    t = net.add_i_reshape_node(t, [0, 2, width // 2]).get_output(0)
    t = net.add_i_unsqueeze_node(t, [1]).get_output(0)
    t = net.add_i_squeeze_node(t, [1]).get_output(0)
    three = np.full((1, 1, 1), 3.0, np.float32)
    c = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(three.shape), three).get_output(0)
    y = net.add_i_elementwise_node(t, c, mm.IElementwise.MUL).get_output(0)
    net.mark_output(y)
    return net


def _enqueue(context: mm.Context, x: np.ndarray) -> np.ndarray:
    inputs = context.create_inputs()
    inputs[0].from_numpy(x)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    return outputs[0].asnumpy()


def test_view_steps_run_nothing_and_share_their_source_bytes() -> None:
    model = mm.Builder().build_model("views", _chain())
    engine = model.create_i_engine()
    plan = engine.buffer_plan(((2, 6),))
    relu_out = model.data.steps[0].outputs[0]
    view_steps = [s for s in model.data.steps if s.op in ("reshape", "unsqueeze", "squeeze")]
    assert len(view_steps) == 3
    assert {plan.views[s.outputs[0]] for s in view_steps} == {relu_out}
    assert all(s.outputs[0] not in plan.offsets for s in view_steps)
    context = engine.create_i_context()
    names: list[str] = []
    context.set_step_hook(lambda step, seconds: names.append(step.name))
    x = np.array([[-1, 2, -3, 4, 5, -6], [7, -8, 9, 0, -1, 2]], np.float32)
    y = _enqueue(context, x)
    np.testing.assert_array_equal(y, (np.maximum(x, 0) * 3).reshape(2, 2, 3))
    assert names == [model.data.steps[0].name, model.data.steps[-1].name]
    bound = context._bound_plan(((2, 6),))
    view = bound.buffers[view_steps[-1].outputs[0]]
    assert np.shares_memory(view, bound.buffers[relu_out])


def test_a_network_output_is_never_a_view() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([4]))
    t = net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0)
    y = net.add_i_reshape_node(t, [2, 2]).get_output(0)
    net.mark_output(y)
    model = mm.Builder().build_model("out_view", net)
    context = model.create_i_engine().create_i_context()
    assert context._engine.buffer_plan(((4,),)).views == {}
    first = _enqueue(context, np.array([-1, 2, -3, 4], np.float32))
    second = _enqueue(context, np.array([5, -6, 7, -8], np.float32))
    np.testing.assert_array_equal(first, [[0, 2], [0, 4]])  # not overwritten by the 2nd run
    np.testing.assert_array_equal(second, [[5, 0], [7, 0]])


def test_outputs_are_fresh_arrays_and_shapes_rebind() -> None:
    context = mm.Builder().build_model("views", _chain()).create_i_engine().create_i_context()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 6)).astype(np.float32) for n in (1, 3, 1, 5, 2, 7, 1)]
    ys = [_enqueue(context, x) for x in xs]
    for x, y in zip(xs, ys):  # every result survives the later runs
        np.testing.assert_array_equal(y, (np.maximum(x, 0) * 3).reshape(-1, 2, 3))
    assert len(context._bound) == 4  # the least recently used shapes were dropped


def test_validate_sees_view_tensors() -> None:
    model = mm.Builder().build_model("views", _chain())
    x = np.arange(-6, 6, dtype=np.float32).reshape(2, 6)
    values = model.create_i_engine().create_i_context().run([x], keep_all=True)
    squeezed = next(s for s in model.data.steps if s.op == "squeeze").outputs[0]
    np.testing.assert_array_equal(values[squeezed], np.maximum(x, 0).reshape(2, 2, 3))
    report = model.validate([x])
    assert report.ok() and len(report.checks) == len(model.data.steps)


def test_a_failing_kernel_names_its_step() -> None:
    model = mm.Builder().build_model("views", _chain())
    engine = model.create_i_engine()

    def broken(inputs: object, outputs: object) -> None:
        raise ValueError("boom")

    engine.runners[-1] = Runner(broken, ())
    with pytest.raises(mm.MMError, match=rf"step {model.data.steps[-1].name!r}.*boom"):
        _enqueue(engine.create_i_context(), np.ones((1, 6), np.float32))


def test_a_step_reading_the_network_input_is_bound_again_each_run() -> None:
    model = mm.Builder().build_model("views", _chain())
    engine = model.create_i_engine()
    relu = engine.runners[0]
    prepared: list[int] = []
    runs: list[int] = []

    def prepare(inputs: object, outputs: object) -> object:
        prepared.append(1)
        call = relu.bound(inputs, outputs)  # type: ignore[arg-type]

        def run() -> None:
            runs.append(1)
            call()

        return run

    engine.runners[0] = Runner(relu.run, relu.fns, prepare)
    context = engine.create_i_context()
    xs = [np.full((2, 6), v, np.float32) for v in (1.0, -2.0, 3.0)]
    ys = [_enqueue(context, x) for x in xs]
    assert (len(prepared), len(runs)) == (3, 3)
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(y, (np.maximum(x, 0) * 3).reshape(2, 2, 3))


def test_a_middle_step_is_bound_once() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([4]))
    t = x
    for _ in range(3):
        t = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
    net.mark_output(t)
    model = mm.Builder().build_model("chain", net)
    engine = model.create_i_engine()
    middle = engine.runners[1]
    prepared: list[int] = []

    def prepare(inputs: object, outputs: object) -> object:
        prepared.append(1)
        return middle.bound(inputs, outputs)  # type: ignore[arg-type]

    engine.runners[1] = Runner(middle.run, middle.fns, prepare)
    context = engine.create_i_context()
    for _ in range(4):
        y = _enqueue(context, np.array([-1, 0.5, 2, -3], np.float32))
    np.testing.assert_array_equal(y, [0, 0.5, 2, 0])
    assert len(prepared) == 1


def test_step_hook_reports_each_step_and_can_be_removed() -> None:
    context = mm.Builder().build_model("views", _chain()).create_i_engine().create_i_context()
    seen: list[tuple[str, float]] = []
    context.set_step_hook(lambda step, seconds: seen.append((step.kernel, seconds)))
    _enqueue(context, np.ones((1, 6), np.float32))
    assert [k for k, _ in seen] == ["activation", "elementwise"]
    assert all(s >= 0 for _, s in seen)
    context.set_step_hook(None)
    _enqueue(context, np.ones((1, 6), np.float32))
    assert len(seen) == 2
    with pytest.raises(mm.MMError, match="not callable"):
        context.set_step_hook(3)  # type: ignore[arg-type]


def test_contexts_in_threads_with_views_match_one_thread() -> None:
    engine = mm.Builder().build_model("views", _chain()).create_i_engine()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1 + k % 3, 6)).astype(np.float32) for k in range(40)]
    expected = [(np.maximum(x, 0) * 3).reshape(-1, 2, 3) for x in xs]
    errors: list[str] = []

    def worker(k: int) -> None:
        context = engine.create_i_context()
        for i in range(k, len(xs), 4):
            if not np.array_equal(_enqueue(context, xs[i]), expected[i]):
                errors.append(f"context {k}, input {i}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _every_kernel_onnx(path: str) -> None:
    """An ONNX model whose middle steps reach every kernel family that binds its buffers:
    conv (implicit GEMM, 1x1 GEMM, depthwise, grouped), deconv, pooling, resize, pad, concat,
    split, slice, transpose, elementwise with broadcast, activations, softmax, reduce, layer
    norm, matmul, gemm, cast."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def w(name: str, *shape: int) -> Any:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    def ints(name: str, *values: int) -> Any:
        return numpy_helper.from_array(np.array(values, np.int64), name)

    mk = helper.make_node
    nodes = [
        mk("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        mk("Relu", ["c1"], ["r1"]),
        mk("Conv", ["r1", "w2"], ["c2"], group=8, pads=[1, 1, 1, 1]),  # depthwise
        mk("Conv", ["c2", "w3"], ["c3"], group=2),  # grouped 1x1
        mk("Conv", ["c3", "w4"], ["c4"]),  # 1x1 GEMM
        mk("HardSwish", ["c4"], ["h4"]),
        mk("ConvTranspose", ["h4", "w5"], ["d5"], strides=[2, 2]),
        mk("MaxPool", ["d5"], ["p5"], kernel_shape=[2, 2], strides=[2, 2]),
        mk("AveragePool", ["p5"], ["a5"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        mk("Resize", ["a5", "", "scales"], ["z5"], mode="nearest"),
        mk("Pad", ["z5", "pads"], ["q5"], mode="reflect"),
        mk("Slice", ["q5", "starts", "ends"], ["s5"]),
        mk("Split", ["s5", "halves"], ["s5a", "s5b"], axis=1),
        mk("Sigmoid", ["s5a"], ["g5"]),
        mk("Mul", ["g5", "s5b"], ["m5"]),
        mk("Concat", ["m5", "s5a"], ["k5"], axis=1),
        mk("Transpose", ["k5"], ["t5"], perm=[0, 2, 3, 1]),
        mk("Softmax", ["t5"], ["f5"], axis=-1),
        mk("LayerNormalization", ["f5", "gamma", "beta"], ["l5"], axis=-1),
        mk("ReduceMean", ["l5"], ["e5"], axes=[1, 2], keepdims=0),
        mk("Gemm", ["e5", "wg", "bg"], ["y1"]),
        mk("Tanh", ["y1"], ["y2"]),
        mk("MatMul", ["y2", "wm"], ["y3"]),
        mk("Cast", ["y3"], ["y4"], to=TensorProto.FLOAT16),
        mk("Cast", ["y4"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = [
        w("w1", 8, 3, 3, 3), w("w2", 8, 1, 3, 3), w("w3", 8, 4, 1, 1), w("w4", 8, 8, 1, 1),
        w("w5", 8, 4, 2, 2), w("gamma", 4), w("beta", 4), w("wg", 4, 6), w("bg", 6),
        w("wm", 6, 5),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        ints("pads", 0, 0, 1, 1, 0, 0, 1, 1), ints("starts", 0, 0, 1, 1),
        ints("ends", 1, 4, 9, 9), ints("halves", 2, 2),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "every_kernel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


class _Batches(mm.CalibDataInterface):
    def __init__(self, xs: list[np.ndarray]) -> None:
        super().__init__()
        self.xs, self.i = xs, -1

    def get_shape(self) -> mm.Dims:
        return mm.Dims(list(self.xs[0].shape))

    def get_data_type(self) -> mm.DataType:
        return mm.DataType.FLOAT32

    def get_sample(self) -> np.ndarray:
        return self.xs[self.i]

    def next(self) -> mm.Status:
        self.i += 1
        if self.i < len(self.xs):
            return mm.Status.OK()
        return mm.Status(mm.Code.OUT_OF_RANGE, "end")

    def reset(self) -> mm.Status:
        self.i = -1
        return mm.Status.OK()


@pytest.mark.parametrize("mode", ["force_float32", "force_float16", "qint8_mixed_float16"])
def test_bound_steps_read_each_run_s_values(tmp_path: Any, mode: str) -> None:
    """A context runs inputs a, b, a: each result equals a fresh context's. A kernel whose bound
    call had captured a copy of a buffer, or the first run's values, would repeat a's result."""
    pytest.importorskip("onnx")
    path = str(tmp_path / "every_kernel.onnx")
    _every_kernel_onnx(path)
    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, path).ok()
    config = mm.BuilderConfig()
    config.parse_from_string(json.dumps({"precision_config": {"precision_mode": mode}}))
    rng = np.random.default_rng(0)
    a, b = (rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(2))
    if mode.startswith("qint"):
        assert mm.Calibrator([_Batches([a, b])]).calibrate(net, config).ok()
    model = mm.Builder().build_model("every_kernel", net, config)
    kernels = {s.kernel for s in model.data.steps}
    assert {"conv.float", "conv.qint"} & kernels and {"deconv.float", "deconv.qint"} & kernels
    engine = model.create_i_engine()
    context = engine.create_i_context()
    got = [_enqueue(context, x) for x in (a, b, a)]
    fresh = [_enqueue(engine.create_i_context(), x) for x in (a, b)]
    np.testing.assert_array_equal(got[0], fresh[0])
    np.testing.assert_array_equal(got[1], fresh[1])
    np.testing.assert_array_equal(got[2], fresh[0])
    assert not np.array_equal(got[0], got[1])


def test_steps_bound_again_keep_the_level_the_plan_was_bound_at() -> None:
    """A one-matmul network binds its only step again on every run (it reads the network input
    and writes the output): bound inside ``using_level("portable")``, later runs outside the
    block bind it at that level too, not at the process's."""
    from mmbuild.kernels.cpu import features

    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([4, 8]))
    w = np.arange(24, dtype=np.float32).reshape(8, 3) / 10
    wt = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(w.shape), w).get_output(0)
    net.mark_output(net.add_i_matmul_node(x, wt).get_output(0))
    context = mm.Builder().build_model("mm", net).create_i_engine().create_i_context()
    xs = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with features.using_level("portable"):
        context.run([xs])
    y = next(iter(context.run([xs]).values()))
    np.testing.assert_allclose(y, xs @ w, rtol=1e-5, atol=1e-6)
    (bound,) = context._bound.values()
    assert bound.level == "portable" and bound.rebind
    assert "/portable" in repr(bound.calls[bound.rebind[0]])
