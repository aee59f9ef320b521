"""MagicMind's runtime objects and config keys on the CPU: System, Device, Queue, EngineConfig,
IRTTensor.to, the extra data types, convert_input_layout / convert_output_layout,
insert_bn_before_firstnode, graph_shape_mutable and dim_range, each checked on numbers against
the same computation done by hand in numpy, and every refusal named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sample_cnn import ImageBatches

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


# -- the model-edge config keys ------------------------------------------------------------------
MEAN, VAR = [0.5, 1.0, 2.0], [4.0, 0.25, 9.0]
RNG = np.random.default_rng(12)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)  # [Cout, Cin, Kh, Kw] for NCHW
B = RNG.standard_normal(4).astype(np.float32)


def nchw_conv_net(pad: int = 0, dims: list[int] | None = None) -> mm.Network:
    """An NCHW network, as the ONNX parser makes them: x -> conv 3x3 (4) -> relu."""
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims(dims or [-1, 3, 6, 6]))
    w = net.add_i_const_node(dtype=mm.DataType.FLOAT32, dimensions=mm.Dims(W.shape), value=W)
    b = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([4]), B)
    conv = net.add_i_conv_node(x, w.get_output(0), b.get_output(0))
    conv.set_layout(mm.Layout.NCHW, mm.Layout.NCHW, mm.Layout.NCHW)
    conv.set_pad(pad, pad, pad, pad)
    net.mark_output(
        net.add_i_activation_node(conv.get_output(0), mm.IActivation.RELU).get_output(0)
    )
    return net


TO_NHWC = {"0": {"src": "NCHW", "dst": "NHWC"}}
NORMALISE = {"0": {"mean": MEAN, "var": VAR}}


def normalise(x: np.ndarray, axis: int) -> np.ndarray:
    shape = [1, 1, 1, 1]
    shape[axis] = 3
    mean, var = np.reshape(MEAN, shape), np.reshape(VAR, shape)
    return ((x - mean) / np.sqrt(var)).astype(np.float32)


def kernels(model: mm.Model) -> list[str]:
    return [row.kernel for row in model.get_layer_report()]


@pytest.mark.parametrize("mode", ["force_float32", "qint8_mixed_float32"])
def test_convert_input_layout_takes_nhwc_and_costs_no_permute(mode: str) -> None:
    net = nchw_conv_net(pad=1)
    net.get_input(0).set_dynamic_range(mm.Range(-1.0, 1.0))  # the quantized conv reads it
    keys: dict = {"precision_config": {"precision_mode": mode}}
    keys["custom_ranges"] = {"": {"min": -8, "max": 8}}
    plain = mm.Builder().build_model("plain", net, config_of(**keys))
    model = mm.Builder().build_model("nhwc", net, config_of(convert_input_layout=TO_NHWC, **keys))
    assert model.get_input_dimensions() == [mm.Dims([-1, 6, 6, 3])]
    x = RNG.uniform(-1, 1, (2, 6, 6, 3)).astype(np.float32)
    (y,) = run(model, x)
    (expected,) = run(plain, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert np.array_equal(y, expected)  # the same kernels on the same data
    # the plain NCHW model permutes in and out; the converted one only out
    assert kernels(plain).count("permute") == 2 and kernels(model).count("permute") == 1


def test_convert_output_layout_gives_nhwc() -> None:
    net = nchw_conv_net()
    both = config_of(convert_input_layout=TO_NHWC, convert_output_layout=TO_NHWC)
    model = mm.Builder().build_model("nhwc", net, both)
    assert model.get_output_dimensions() == [mm.Dims([-1, 4, 4, 4])]
    x = RNG.uniform(-1, 1, (3, 6, 6, 3)).astype(np.float32)
    (y,) = run(model, x)
    expected = mm.run_reference(net, [np.ascontiguousarray(x.transpose(0, 3, 1, 2))])
    np.testing.assert_allclose(y, expected[net.get_output(0).name].transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert kernels(model) == ["conv.float"]  # NHWC in, NHWC out: no permute at all


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_insert_bn_is_folded_into_the_first_conv_and_matches_numpy(layout: str) -> None:
    net = nchw_conv_net(pad=0)
    keys: dict = {"insert_bn_before_firstnode": NORMALISE}
    if layout == "NHWC":
        keys["convert_input_layout"] = TO_NHWC
    model = mm.Builder().build_model("bn", net, config_of(**keys))
    x = RNG.uniform(0, 4, (2, 3, 6, 6) if layout == "NCHW" else (2, 6, 6, 3)).astype(np.float32)
    (y,) = run(model, x)
    by_hand = normalise(x, 1 if layout == "NCHW" else 3)
    if layout == "NHWC":
        by_hand = np.ascontiguousarray(by_hand.transpose(0, 3, 1, 2))
    expected = mm.run_reference(net, [by_hand])[net.get_output(0).name]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert "batch_norm" not in kernels(model)  # folded
    (conv,) = [row for row in model.get_layer_report() if row.kernel == "conv.float"]
    assert "input_0/insert_bn" in conv.fused


def test_insert_bn_stays_a_node_where_folding_is_not_exact() -> None:
    """A padded conv pads the normalised input with 0, which no raw value stands for unless
    mean is 0; a quantized conv would quantize other values."""
    net = nchw_conv_net(pad=1)
    model = mm.Builder().build_model("bn", net, config_of(insert_bn_before_firstnode=NORMALISE))
    x = RNG.uniform(0, 4, (2, 3, 6, 6)).astype(np.float32)
    (y,) = run(model, x)
    expected = mm.run_reference(net, [normalise(x, 1)])[net.get_output(0).name]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert "batch_norm" in kernels(model)
    q = config_of(
        insert_bn_before_firstnode=NORMALISE,
        precision_config={"precision_mode": "qint8_mixed_float32"},
        custom_ranges={"": {"min": -4, "max": 4}},
    )
    report = mm.Builder().build_model("q", nchw_conv_net(pad=0), q).get_layer_report()
    assert [row.kernel for row in report][:1] == ["batch_norm"]
    (conv,) = [row for row in report if row.type == "IConvNode"]
    assert conv.input_precisions[0] is mm.DataType.QINT8 and conv.fused == ["activation_0"]


def test_insert_bn_on_an_nhwc_network_uses_its_last_axis() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 5, 5, 3]))
    wt = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([3, 1, 1, 1]), np.ones((3, 1, 1, 1)))
    conv = net.add_i_conv_node(x, wt.get_output(0), None)
    conv.set_group(3)  # depthwise: the channel mapping of the fold is checked per group
    net.mark_output(conv.get_output(0))
    model = mm.Builder().build_model("bn", net, config_of(insert_bn_before_firstnode=NORMALISE))
    a = RNG.uniform(0, 4, (2, 5, 5, 3)).astype(np.float32)
    (y,) = run(model, a)
    np.testing.assert_allclose(y, normalise(a, 3), rtol=1e-5, atol=1e-6)
    assert kernels(model) == ["conv.float"]


def test_calibration_reads_samples_as_the_model_takes_them() -> None:
    raw = [RNG.uniform(0, 4, (2, 6, 6, 3)).astype(np.float32) for _ in range(3)]
    config = config_of(insert_bn_before_firstnode=NORMALISE, convert_input_layout=TO_NHWC)
    net, plain = nchw_conv_net(), nchw_conv_net()
    mm.Calibrator([ImageBatches(raw)]).calibrate(net, config)
    by_hand = [np.ascontiguousarray(normalise(b, 3).transpose(0, 3, 1, 2)) for b in raw]
    mm.Calibrator([ImageBatches(by_hand)]).calibrate(plain, mm.BuilderConfig())
    ranges = [t.get_dynamic_range() for t in net.tensors()]
    assert ranges == [t.get_dynamic_range() for t in plain.tensors()] and ranges[0] is not None
    with pytest.raises(mm.MMError, match=r"data source 0 \(ImageBatches\).*\[-1, 6, 6, 3\]"):
        mm.Calibrator([ImageBatches([np.zeros((2, 6, 6), np.float32)])]).calibrate(net, config)


def test_graph_shape_mutable_false_needs_fixed_shapes_and_refuses_others() -> None:
    fixed = config_of(graph_shape_mutable=False)
    with pytest.raises(mm.MMError, match="graph_shape_mutable.*input 0.*-1"):
        mm.Builder().build_model("n", nchw_conv_net(), fixed)
    model = mm.Builder().build_model("n", nchw_conv_net(dims=[2, 3, 6, 6]), fixed)
    assert run(model, np.zeros((2, 3, 6, 6), np.float32))[0].shape == (2, 4, 4, 4)
    with pytest.raises(mm.MMError, match=r"\[1, 3, 6, 6\]"):
        run(model, np.zeros((1, 3, 6, 6), np.float32))


def test_dim_range_bounds_the_shapes_enqueue_takes(tmp_path: Path) -> None:
    ranged = config_of(dim_range={"0": {"min": [1, 3, 6, 6], "max": [4, 3, 9, 9]}})
    path = str(tmp_path / "ranged.mm")
    assert mm.Builder().build_model("n", nchw_conv_net(dims=[-1, 3, -1, -1]), ranged)\
        .serialize_to_file(path).ok()  # fmt: skip
    model = mm.Model()
    assert model.deserialize_from_file(path).ok()  # the range is kept in the model file
    for batch, size in [(1, 6), (4, 9), (2, 7)]:
        (y,) = run(model, np.ones((batch, 3, size, size), np.float32))
        assert y.shape == (batch, 4, size - 2, size - 2)
    for shape in [(5, 3, 6, 6), (1, 3, 10, 6), (1, 3, 5, 6)]:
        with pytest.raises(mm.MMError, match="input 0 .*'input_0'.*dim_range") as info:
            run(model, np.ones(shape, np.float32))
        assert str(list(shape)) in str(info.value) and "[1, 3, 6, 6] .. max [4, 3, 9, 9]" in str(
            info.value
        )
        assert info.value.code is Code.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        (
            {"convert_input_layout": {"0": {"src": "NCT", "dst": "NTC"}}},
            ['convert_input_layout["0"]', "3 axes", "rank 4"],
        ),
        (
            {"convert_output_layout": {"0": {"src": "NCDHW", "dst": "NDHWC"}}},
            ['convert_output_layout["0"]', "5 axes", "rank 4"],
        ),
        (
            {"insert_bn_before_firstnode": {"0": {"mean": [0, 0], "var": [1, 1]}}},
            ['insert_bn_before_firstnode["0"]', "2 values", "3 channels"],
        ),
        (
            {"dim_range": {"0": {"min": [1, 3, 6], "max": [4, 3, 6]}}},
            ['dim_range["0"]', "3 dimensions", "rank 4"],
        ),
        (
            {"dim_range": {"0": {"min": [1, 2, 6, 6], "max": [4, 2, 6, 6]}}},
            ['dim_range["0"]', "dimension 1", "fixed at 3"],
        ),
        (
            {"insert_bn_before_firstnode": {"1": {"mean": [0], "var": [1]}}},
            ['insert_bn_before_firstnode["1"]', "1 input(s)", "'0'"],
        ),
    ],
)
def test_edge_keys_that_do_not_fit_the_network_are_refused_naming_the_key(
    keys: dict, words: list[str]
) -> None:
    with pytest.raises(mm.MMError) as info:
        mm.Builder().build_model("n", nchw_conv_net(), config_of(**keys))
    for word in words:
        assert word in str(info.value), str(info.value)


def test_dim_range_min_above_max_is_refused_when_parsed() -> None:
    with pytest.raises(mm.MMError, match=r'dim_range\["0"\]: min\[0\] = 5 exceeds max\[0\] = 4'):
        config_of(dim_range={"0": {"min": [5, 3], "max": [4, 3]}})


# -- network building spellings ------------------------------------------------------------------
def test_add_input_without_dims_takes_them_from_set_dimension() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32)
    with pytest.raises(mm.MMError, match="without dimensions.*set_dimension"):
        net.add_i_activation_node(x, mm.IActivation.RELU)
    with pytest.raises(mm.MMError, match="without dimensions"):
        mm.Builder().build_model("n", net)
    assert x.set_dimension(mm.Dims([-1, 2])).ok()
    net.mark_output(net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0))
    (y,) = run(mm.Builder().build_model("n", net), np.array([[-1.0, 3.0]], np.float32))
    assert y.tolist() == [[0.0, 3.0]]


# -- the sample ----------------------------------------------------------------------------------
def test_magicmind_style_sample_gives_the_numbers_of_mmbuilds_own_api(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import runpy

    module = runpy.run_path(str(Path(__file__).parents[1] / "samples" / "magicmind_style.py"))
    result = module["main"]()
    out = capsys.readouterr().out
    # the inserted normalisation computes in float32 as numpy does, so the runs agree exactly
    assert result["max_abs_diff"] == 0.0 and result["top1_agreement"] == 1.0
    assert "input_0/insert_bn" in out and "conv.qint" in out
    assert "[-1, 16, 16, 3] NHWC" in out


def test_python_blocks_of_docs_magicmind_run() -> None:
    import re

    text = (Path(__file__).parents[1] / "docs" / "magicmind.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/magicmind.md", "exec"), namespace)


# -- the fold, as a pass -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layout", "pad", "folds"),
    [("NHWC", 0, True), ("NCHW", 0, True), ("NHWC", 1, False), ("NCHW", 1, False)],
)
def test_fold_input_normalization_keeps_numbers_with_groups_bias_and_permutes(
    layout: str, pad: int, folds: bool
) -> None:
    """bn -> grouped conv: folded (the NCHW conv reads it through a permute) where the conv pads
    nothing; with padding and a nonzero shift it stays."""
    from test_passes import batch_norm, const, ops, rewrite_keeps_numbers, weights

    from mmbuild.graph import Graph
    from mmbuild.passes import run_passes

    nchw = layout == "NCHW"
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, 4, 5, 5] if nchw else [2, 5, 5, 4]))
    bn = batch_norm(net, x, 4, 1 if nchw else 3, eps=1e-3)
    w = weights([6, 2, 3, 3] if nchw else [6, 3, 3, 2])  # group 2: Cin / group = 2
    conv = net.add_i_conv_node(bn.get_output(0), const(net, w), const(net, weights([6])))
    conv.set_group(2)
    conv.set_pad(pad, pad, pad, pad)
    if nchw:
        conv.set_layout(mm.Layout.NCHW, mm.Layout.NCHW, mm.Layout.NCHW)
    net.mark_output(conv.get_output(0))
    graph = Graph.from_network(net)
    counts: dict[str, int] = {}

    def pipeline(g: Graph) -> int:
        counts.update(run_passes(g))
        return sum(counts.values())

    rewrite_keeps_numbers(graph, pipeline, "fp32")
    assert counts["fold_input_normalization"] == int(folds)
    assert ("fused_batch_norm" in ops(graph)) is not folds
    if folds:
        assert graph.node("conv_0").fused == ["fused_batch_norm_0"]


def test_docstring_examples_of_the_runtime_objects_and_types() -> None:
    import doctest

    import mmbuild.ir.types
    import mmbuild.runtime.device

    for module in (mmbuild.runtime.device, mmbuild.ir.types):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
