"""Builder + runtime end to end: the six modes on the samples, overrides in the layer report, the
API.md build-and-run example, model files, bad input to enqueue, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sample_cnn import ImageBatches, build_cnn, sample_images
from sample_transformer import build_transformer_block

import mmbuild as mm
from mmbuild.config.schema import PRECISION_MODES

MODES = PRECISION_MODES
# cosine of the network output against float32 that each mode must reach on the samples' data
MIN_COSINE = {
    "force_float32": 0.99999,
    "force_float16": 0.9999,
    "qint8_mixed_float16": 0.99,
    "qint8_mixed_float32": 0.99,
    "qint16_mixed_float16": 0.9999,
    "qint16_mixed_float32": 0.9999,
}


def config_for(mode: str, **extra: str) -> mm.BuilderConfig:
    config = mm.BuilderConfig()
    options = {"precision_mode": mode, "weight_quant_granularity": "per_axis", **extra}
    body = ", ".join(f'"{k}": "{v}"' for k, v in options.items())
    config.parse_from_string(f'{{"precision_config": {{{body}}}}}')
    return config


def run(model: mm.Model, *arrays: np.ndarray) -> list[np.ndarray]:
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    for t, a in zip(inputs, arrays):
        t.from_numpy(a)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    return [o.asnumpy() for o in outputs]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def calibrated_cnn(config: mm.BuilderConfig) -> mm.Network:
    net = build_cnn()
    batches = list(sample_images(32, seed=1).reshape(4, 8, 16, 16, 3))
    calib = mm.Calibrator([ImageBatches(batches)])
    calib.set_progress(False)
    assert calib.calibrate(net, config).ok()
    return net


@pytest.mark.parametrize("mode", MODES)
def test_sample_cnn_in_every_mode_is_close_to_float32(mode: str) -> None:
    config = config_for(mode)
    net = calibrated_cnn(config)
    model = mm.Builder().build_model("cnn", net, config)
    x = sample_images(5, seed=7)
    (y,) = run(model, x)
    expected = mm.run_reference(net, [x])["probabilities"]
    assert y.shape == expected.shape == (5, 10)
    assert cosine(y, expected) >= MIN_COSINE[mode]
    report = model.get_layer_report()
    qtype = {"qint8": mm.DataType.QINT8, "qint16": mm.DataType.QINT16}.get(mode[:5].rstrip("_"))
    for row in report:
        if row.type in ("IConvNode", "IInnerProductNode") and qtype is not None:
            assert row.input_precisions[0] is qtype, str(report)
    assert model.validate(x).ok(), str(model.validate(x))


@pytest.mark.parametrize("mode", MODES)
def test_sample_transformer_in_every_mode_is_close_to_float32(mode: str) -> None:
    config = config_for(mode)
    net = build_transformer_block()
    rng = np.random.default_rng(0)
    shape = [d if d > 0 else 2 for d in net.get_input(0).get_dimension()]
    batches = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    calib = mm.Calibrator([ImageBatches(batches)])
    calib.set_progress(False)
    assert calib.calibrate(net, config).ok()
    model = mm.Builder().build_model("block", net, config)
    x = rng.standard_normal(shape).astype(np.float32)
    (y,) = run(model, x)
    expected = next(iter(mm.run_reference(net, [x]).values()))
    assert cosine(y, expected) >= min(MIN_COSINE[mode], 0.995)
    assert model.validate(x).ok(), str(model.validate(x))


def test_every_step_runs_numba_kernels() -> None:
    config = config_for("qint8_mixed_float16")
    model = mm.Builder().build_model("cnn", calibrated_cnn(config), config)
    engine = model.create_i_engine()
    assert len(engine.runners) == len(model.data.steps) > 0
    for step, runner in zip(model.data.steps, engine.runners):
        assert runner.fns, step.name
        for fn in runner.fns:
            assert isinstance(fn, numba.core.registry.CPUDispatcher), (step.name, fn)


def test_api_md_build_and_run_example(tmp_path: Path) -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 8, 8, 3]))
    rng = np.random.default_rng(0)
    w = net.add_i_const_node(
        mm.DataType.FLOAT32, mm.Dims([4, 3, 3, 3]), rng.standard_normal((4, 3, 3, 3))
    ).get_output(0)
    b = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([4]), rng.standard_normal(4))
    conv = net.add_i_conv_node(x, w, b.get_output(0))
    conv.set_stride(1, 1)
    conv.set_pad(1, 1, 1, 1)
    conv.set_dilation(1, 1)
    conv.set_group(1)
    relu = net.add_i_activation_node(conv.get_output(0), mm.IActivation.RELU)
    assert net.mark_output(relu.get_output(0)).ok()

    model = mm.Builder().build_model("net", net)
    path = str(tmp_path / "net.mm")
    assert model.serialize_to_file(path).ok()
    model = mm.Model()
    assert model.deserialize_from_file(path).ok()
    engine = model.create_i_engine()
    context = engine.create_i_context()
    inputs = context.create_inputs()
    x_np = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    inputs[0].from_numpy(x_np)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    y = outputs[0].asnumpy()
    np.testing.assert_allclose(y, mm.run_reference(net, [x_np])[relu.get_output(0).name],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert model.get_input_num() == 1 and model.get_output_num() == 1
    assert model.get_input_names() == [x.get_tensor_name()]
    assert model.get_input_dimensions() == [mm.Dims([-1, 8, 8, 3])]
    assert model.get_output_dimensions() == [mm.Dims([-1, 8, 8, 4])]
    assert model.get_input_data_types() == [mm.DataType.FLOAT32]
    assert model.get_output_data_types() == [mm.DataType.FLOAT32]


@pytest.mark.parametrize("mode", ["force_float16", "qint8_mixed_float16"])
def test_model_file_round_trip_is_bit_exact(tmp_path: Path, mode: str) -> None:
    config = config_for(mode)
    net = calibrated_cnn(config)
    model = mm.Builder().build_model("cnn", net, config)
    path = str(tmp_path / "cnn.mm")
    model.serialize_to_file(path)
    loaded = mm.Model()
    loaded.deserialize_from_file(path)
    x = sample_images(3, seed=4)
    (a,), (b,) = run(model, x), run(loaded, x)
    assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))
    assert str(loaded.get_layer_report()) == str(model.get_layer_report())


def test_overrides_are_honoured_in_the_layer_report() -> None:
    config = config_for("qint8_mixed_float16")
    net = build_cnn()
    conv2 = net.find_node_by_name("conv2")
    conv2.set_precision(0, mm.DataType.FLOAT32)  # its filter follows: one domain
    softmax = next(n for n in net.get_all_nodes_in_network() if n.get_node_type() == "ISoftmaxNode")
    softmax.set_output_type(0, mm.DataType.FLOAT32)
    calib = mm.Calibrator([ImageBatches(list(sample_images(16, 1).reshape(2, 8, 16, 16, 3)))])
    calib.set_progress(False)
    calib.calibrate(net, config)
    model = mm.Builder().build_model("cnn", net, config)
    report = model.get_layer_report()
    row = report.find("conv2")
    assert row.input_precisions[:2] == [mm.DataType.FLOAT32, mm.DataType.FLOAT32]
    assert report.find("conv1").input_precisions[0] is mm.DataType.QINT8
    assert report.find(softmax.get_node_name()).output_types == [mm.DataType.FLOAT32]
    assert model.get_output_data_types() == [mm.DataType.FLOAT32]
    (y,) = run(model, sample_images(2, 3))
    assert y.dtype == np.float32


def test_invalid_override_is_refused_naming_the_node() -> None:
    net = build_cnn()
    softmax = next(n for n in net.get_all_nodes_in_network() if n.get_node_type() == "ISoftmaxNode")
    softmax.set_precision(0, mm.DataType.QINT8)
    with pytest.raises(mm.MMError, match=softmax.get_node_name()):
        mm.Builder().build_model("cnn", net, config_for("qint8_mixed_float16"))


def test_missing_range_names_the_tensor_and_the_remedies() -> None:
    net = build_cnn()  # not calibrated
    with pytest.raises(mm.MMError, match="input_0") as info:
        mm.Builder().build_model("cnn", net, config_for("qint8_mixed_float16"))
    assert "set_dynamic_range" in str(info.value) and "custom_ranges" in str(info.value)


def test_network_without_outputs_is_refused() -> None:
    net = mm.Network()
    net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 2]))
    with pytest.raises(mm.MMError, match="mark_output"):
        mm.Builder().build_model("empty", net)


@pytest.fixture(scope="module")
def cnn_model() -> tuple[mm.Network, mm.Model]:
    net = build_cnn()
    return net, mm.Builder().build_model("cnn", net)


def test_enqueue_refuses_wrong_count_dtype_and_shape(cnn_model: tuple) -> None:
    _, model = cnn_model
    context = model.create_i_engine().create_i_context()
    outputs: list[mm.IRTTensor] = []
    with pytest.raises(mm.MMError, match="got 0 inputs; the model takes 1"):
        context.enqueue([], outputs)
    inputs = context.create_inputs()
    with pytest.raises(mm.MMError, match="float64.*takes float32"):
        inputs[0].from_numpy(np.zeros((1, 16, 16, 3)))
    with pytest.raises(mm.MMError, match=r"\[1, 16, 16, 4\].*\[-1, 16, 16, 3\]"):
        inputs[0].from_numpy(np.zeros((1, 16, 16, 4), np.float32))
    with pytest.raises(mm.MMError, match="no data"):
        context.enqueue(inputs, outputs)


def test_nan_inputs_are_computed_not_refused(cnn_model: tuple) -> None:
    _, model = cnn_model
    x = sample_images(2, 0)
    x[0, 3, 3, 1] = np.nan
    (y,) = run(model, x)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


def test_dynamic_batch_is_resolved_at_enqueue_and_buffers_are_reused(cnn_model: tuple) -> None:
    net, model = cnn_model
    context = model.create_i_engine().create_i_context()
    for batch in (1, 4, 2):
        x = sample_images(batch, batch)
        inputs = context.create_inputs()
        inputs[0].from_numpy(x)
        outputs: list[mm.IRTTensor] = []
        context.enqueue(inputs, outputs)
        expected = mm.run_reference(net, [x])["probabilities"]
        np.testing.assert_allclose(outputs[0].asnumpy(), expected, rtol=1e-4, atol=1e-6)
    report = model.get_layer_report([sample_images(4, 0)])
    peak = report.peak_activation_bytes
    every = sum(
        4 * int(np.prod(shape)) for row in report for shape in row.shape
    )  # every intermediate in its own float32 buffer
    assert 0 < peak < every


def test_four_contexts_in_threads_match_a_single_thread(cnn_model: tuple) -> None:
    _, model = cnn_model
    engine = model.create_i_engine()
    images = [sample_images(3, seed) for seed in range(4)]
    single = [run(model, x)[0] for x in images]
    results: dict[int, list[np.ndarray]] = {}

    def worker(k: int) -> None:
        context = engine.create_i_context()
        inputs = context.create_inputs()
        inputs[0].from_numpy(images[k])
        outs: list[np.ndarray] = []
        for _ in range(100):
            outputs: list[mm.IRTTensor] = []
            context.enqueue(inputs, outputs)
            outs.append(outputs[0].asnumpy().copy())
        results[k] = outs

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert len(results[k]) == 100
        for y in results[k]:
            assert np.array_equal(y, single[k])


def test_concat_of_float32_and_float16_paths_runs_in_the_mode_float() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 4, 4, 2]))
    pool = net.add_i_maxpool2d_node(x)  # FOLLOW: stays in the input's float32
    pool.set_kernel(2, 2)
    act = net.add_i_activation_node(x, mm.IActivation.SIGMOID)  # NEVER: float16
    pool2 = net.add_i_maxpool2d_node(act.get_output(0))
    pool2.set_kernel(2, 2)
    cat = net.add_i_concat_node(3, [pool.get_output(0), pool2.get_output(0)])
    net.mark_output(cat.get_output(0))
    model = mm.Builder().build_model("cat", net, config_for("force_float16"))
    row = model.get_layer_report().find(cat.get_node_name())
    assert row.input_precisions == [mm.DataType.FLOAT16] * 2 and "runs in FLOAT16" in row.notes[0]
    x_np = np.random.default_rng(0).random((1, 4, 4, 2), np.float32)
    (y,) = run(model, x_np)
    assert y.dtype == np.float16
    expected = mm.run_reference(net, [x_np])[cat.get_output(0).name]
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=1e-3)
    assert model.validate(x_np).ok()


@pytest.fixture(scope="module")
def real_model_bytes() -> bytes:
    from mmbuild.runtime.model_file import model_bytes

    config = config_for("qint8_mixed_float16")
    return model_bytes(mm.Builder().build_model("cnn", calibrated_cnn(config), config).data)


@given(data=st.data())
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_fuzzed_real_model_file_gives_only_mmerror(
    real_model_bytes: bytes, data: st.DataObject
) -> None:
    from mmbuild.runtime.model_file import read_model_bytes

    blob = bytearray(real_model_bytes)
    if data.draw(st.booleans(), "truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), "length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), "flips")):
            i = data.draw(st.integers(0, len(blob) - 1), "at")
            blob[i] ^= 1 << data.draw(st.integers(0, 7), "bit")
    try:
        loaded = read_model_bytes(bytes(blob))
    except mm.MMError:
        return
    # a flip the format cannot see (zip metadata nobody reads) must leave the model intact
    assert read_model_bytes(real_model_bytes).steps[0].name == loaded.steps[0].name


def test_kernel_table_covers_every_op_in_every_precision_its_policy_allows() -> None:
    from mmbuild.kernels.table import KERNELS, load_kernels
    from mmbuild.ops.registry import OPS

    load_kernels()
    floats = {mm.DataType.FLOAT32, mm.DataType.FLOAT16}
    for op, cls in OPS.items():
        if op == "const":
            continue  # constants are data, not steps
        wanted = set(floats)
        if cls.policy is mm.Policy.ALWAYS:
            wanted |= {mm.DataType.QINT8, mm.DataType.QINT16}
        missing = {p.name for p in wanted if (op, p) not in KERNELS}
        assert not missing, f"{op}: no kernel for {sorted(missing)}"


def test_validate_names_the_first_step_whose_kernel_is_wrong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mmbuild.kernels.table import Runner, kernel_named

    net, model = build_cnn(), None
    model = mm.Builder().build_model("cnn", net)
    x = sample_images(2, 0)
    assert model.validate(x).ok()
    pool = kernel_named("maxpool2d")

    def broken_bind(step: object) -> Runner:
        good = type(pool).bind(pool, step)  # type: ignore[arg-type]

        def run(inputs: list, outputs: list) -> None:
            good(inputs, outputs)
            outputs[0].reshape(-1)[0] += 1  # one element off

        return Runner(run, good.fns)

    monkeypatch.setattr(pool, "bind", broken_bind)
    result = model.validate(x)
    assert not result.ok() and result.first_mismatch.name == "maxpool2d_0"
    assert "maxpool2d_0" in str(result)


def test_float16_overflow_guard_is_in_the_layer_report() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 4]))
    big = net.add_i_elementwise_node(x, x, mm.IElementwise.MUL)  # squares: 300**2 = 90000 > 65504
    out = net.add_i_activation_node(big.get_output(0), mm.IActivation.RELU)
    net.mark_output(out.get_output(0))
    big.get_output(0).set_dynamic_range(mm.Range(0.0, 90000.0))
    model = mm.Builder().build_model("big", net, config_for("force_float16"))
    row = model.get_layer_report().find(big.get_node_name())
    assert row.output_types == [mm.DataType.FLOAT32]
    assert any("reaches 90000 > 65504" in n for n in row.notes), row.notes
    assert "reaches 90000 > 65504, kept FLOAT32" in str(model.get_layer_report())
    (y,) = run(model, np.array([[300.0, -2.0, 0.5, 1e3]], np.float32))
    assert y.dtype == np.float32 and y[0, 0] == 90000.0


def test_a_model_file_naming_an_unknown_kernel_is_refused(tmp_path: Path) -> None:
    from mmbuild.runtime.model_file import read_model_file, write_model_file

    model = mm.Builder().build_model("cnn", build_cnn())
    data = model.data
    data.steps[0].kernel = "conv.from_the_future"
    path = tmp_path / "odd.mm"
    write_model_file(path, data)
    assert read_model_file(path).steps[0].kernel == "conv.from_the_future"
    with pytest.raises(mm.MMError, match="needs kernel 'conv.from_the_future'") as info:
        mm.Model().deserialize_from_file(str(path))
    assert info.value.status.code() is mm.Code.NOT_FOUND
