"""MagicMind's runtime objects and config keys on the CPU: System, Device, Queue, EngineConfig,
IRTTensor.to, the extra data types, convert_input_layout / convert_output_layout,
insert_bn_before_firstnode, graph_shape_mutable and dim_range, each checked on numbers against
the same computation done by hand in numpy, and every refusal named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mmbuild as mm
from mmbuild.errors import Code


# -- helpers -------------------------------------------------------------------------------------
def config_of(**keys: object) -> mm.BuilderConfig:
    config = mm.BuilderConfig()
    assert config.parse_from_string(json.dumps(keys)).ok()
    return config


def run(model: mm.Model, *arrays: np.ndarray, queue: mm.Queue | None = None) -> list[np.ndarray]:
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    for t, a in zip(inputs, arrays):
        t.from_numpy(a)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs, queue).ok()
    return [o.asnumpy() for o in outputs]


def relu_net(dims: list[int], dtype: mm.DataType = mm.DataType.FLOAT32) -> mm.Network:
    net = mm.Network()
    x = net.add_input(dtype, mm.Dims(dims))
    net.mark_output(net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0))
    return net


# -- runtime objects -----------------------------------------------------------------------------
def test_magicmind_runtime_calls_run_a_model_like_the_plain_api() -> None:
    net = relu_net([-1, 4])
    model = mm.Builder().build_model("relu", net)
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    sys_ = mm.System()
    assert sys_.initialize().ok() and sys_.initialized
    dev = mm.Device()
    dev.id = 0
    assert dev.active().ok() and dev.is_active
    queue = dev.create_queue()
    econfig = mm.Model.EngineConfig()
    assert econfig.device_type == "MLU"
    econfig.device_type = "cpu"
    assert econfig.device_type == "CPU"
    context = model.create_i_engine(econfig).create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(x)
    same = inputs[0].to(dev)
    assert same is inputs[0]  # the CPU's memory is the device's: no copy
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs, queue).ok()
    assert queue.sync().ok()
    assert outputs[0].to(0).asnumpy().tolist() == [[0.0, 2.0, 0.0, 4.0]]
    assert np.array_equal(run(model, x)[0], outputs[0].asnumpy())  # the same as without them
    assert sys_.destroy().ok() and not sys_.initialized
    # CamelCase spellings of the C++ API
    assert mm.Device().Active().ok() and dev.CreateQueue().Sync().ok()


def test_a_queue_is_a_context_manager_that_syncs() -> None:
    model = mm.Builder().build_model("relu", relu_net([2]))
    with mm.Device().create_queue() as queue:
        (y,) = run(model, np.array([-1.0, 1.0], np.float32), queue=queue)
    assert y.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("bad", [1, -1, True, "0"])
def test_a_device_id_other_than_0_is_refused(bad: object) -> None:
    dev = mm.Device()
    with pytest.raises(mm.MMError, match="Device.id") as info:
        dev.id = bad  # type: ignore[assignment]
    assert "0" in str(info.value) and dev.id == 0
    with pytest.raises(mm.MMError, match="device"):
        mm.IRTTensor("x", mm.DataType.FLOAT32, [1]).to(bad)  # type: ignore[arg-type]


def test_a_queue_of_another_context_is_refused() -> None:
    model = mm.Builder().build_model("relu", relu_net([2]))
    engine = model.create_i_engine()
    first, second = engine.create_i_context(), engine.create_i_context()
    queue = mm.Device().create_queue()
    x = np.ones(2, np.float32)
    for context in (first, first):
        inputs = context.create_inputs()
        inputs[0].from_numpy(x)
        assert context.enqueue(inputs, [], queue).ok()
    inputs = second.create_inputs()
    inputs[0].from_numpy(x)
    with pytest.raises(mm.MMError, match="queue of another context") as info:
        second.enqueue(inputs, [], queue)
    assert "dev.create_queue()" in str(info.value)
    with pytest.raises(mm.MMError, match="queue must be"):
        second.enqueue(inputs, [], "queue")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["GPU", "", 3, None])
def test_an_engine_config_device_type_other_than_mlu_or_cpu_is_refused(bad: object) -> None:
    econfig = mm.Model.EngineConfig()
    with pytest.raises(mm.MMError, match="device_type") as info:
        econfig.device_type = bad  # type: ignore[assignment]
    assert "'MLU', 'CPU'" in str(info.value) and econfig.device_type == "MLU"
    model = mm.Builder().build_model("relu", relu_net([2]))
    with pytest.raises(mm.MMError, match="EngineConfig"):
        model.create_i_engine("MLU")  # type: ignore[arg-type]


# -- data types ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.float32, mm.DataType.FLOAT32),
        (np.float16, mm.DataType.FLOAT16),
        (np.float64, mm.DataType.FLOAT64),
        (np.int8, mm.DataType.INT8),
        (np.uint16, mm.DataType.UINT16),
        (np.uint32, mm.DataType.UINT32),
        (np.int64, mm.DataType.INT64),
        (np.bool_, mm.DataType.BOOL),
    ],
)
def test_get_datatype_by_numpy(dtype: type, expected: mm.DataType) -> None:
    assert mm.get_datatype_by_numpy(np.zeros(1, dtype).dtype) is expected
    assert expected.numpy_dtype == np.dtype(dtype)


def test_get_datatype_by_numpy_refuses_what_has_no_type() -> None:
    with pytest.raises(mm.MMError, match="complex128"):
        mm.get_datatype_by_numpy(np.complex128)
    with pytest.raises(mm.MMError, match="not a numpy dtype"):
        mm.get_datatype_by_numpy(object())


@pytest.mark.parametrize("dtype", [mm.DataType.UINT16, mm.DataType.UINT32, mm.DataType.FLOAT64])
def test_new_types_move_through_a_model_file(dtype: mm.DataType, tmp_path: Path) -> None:
    net = mm.Network()
    x = net.add_input(dtype, mm.Dims([2, 3]))
    net.mark_output(net.add_i_permute_node(x, [1, 0]).get_output(0))
    path = str(tmp_path / "net.mm")
    assert mm.Builder().build_model("t", net).serialize_to_file(path).ok()
    model = mm.Model()
    assert model.deserialize_from_file(path).ok()
    a = (np.arange(6).reshape(2, 3) * 7919).astype(dtype.numpy_dtype)
    (y,) = run(model, a)
    assert y.dtype == dtype.numpy_dtype and np.array_equal(y, a.T)
    assert model.get_output_data_types() == [dtype]


def test_new_types_cast_where_exact_and_are_refused_naming_the_node_elsewhere() -> None:
    def cast_net(src: mm.DataType, dst: mm.DataType) -> mm.Network:
        net = mm.Network()
        x = net.add_input(src, mm.Dims([3]))
        net.mark_output(net.add_i_cast_node(x, dst).get_output(0))
        return net

    a = np.array([0.5, 70000.25, -2.0])
    (y,) = run(mm.Builder().build_model("c", cast_net(mm.DataType.FLOAT64, mm.DataType.FLOAT32)), a)
    assert y.dtype == np.float32 and np.array_equal(y, a.astype(np.float32))
    u = np.array([0, 7, 4_000_000_000], np.uint32)
    (y,) = run(mm.Builder().build_model("c", cast_net(mm.DataType.UINT32, mm.DataType.INT64)), u)
    assert y.tolist() == [0, 7, 4_000_000_000]
    for src, dst in [
        (mm.DataType.UINT16, mm.DataType.FLOAT32),
        (mm.DataType.FLOAT32, mm.DataType.FLOAT64),
        (mm.DataType.INT32, mm.DataType.UINT16),
    ]:
        with pytest.raises(mm.MMError, match="ICastNode 'cast_0'") as info:
            mm.Builder().build_model("c", cast_net(src, dst))
        assert info.value.code is Code.UNAVAILABLE
    with pytest.raises(mm.MMError, match="activation_0"):
        mm.Builder().build_model("r", relu_net([2], mm.DataType.FLOAT64))
