"""Quantized tensors carried between quantized convs (``mmbuild.passes.carry``): which tensors
travel as integers, the bit-exactness of every conv path that writes or reads them against its
reference, the codes against the same network built without carrying, and the reports and model
files that show them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ortcheck import const
from sample_cnn import ImageBatches

import mmbuild as mm
from mmbuild.kernels.cpu.qcommon import carried_values
from mmbuild.passes import carry
from mmbuild.runtime.inspect import error_report, layer_report, validate

F16, Q8, Q16 = mm.DataType.FLOAT16, mm.DataType.QINT8, mm.DataType.QINT16
SHAPE = (2, 9, 9, 8)
Body = Callable[[mm.Network, mm.ITensor], mm.ITensor]
# the two quantized types a tensor is carried in, with a mode that quantizes in each
BOTH_TYPES = pytest.mark.parametrize(
    "mode, qtype", [("qint8_mixed_float16", Q8), ("qint16_mixed_float32", Q16)]
)


def conv(
    net: mm.Network, x: mm.ITensor, cout: int, k: int, cin_g: int, **set_: tuple
) -> mm.ITensor:
    rng = np.random.default_rng(len(net.nodes))  # the same weights in every build of a body
    w = rng.normal(0, 0.4, (cout, k, k, cin_g)).astype(np.float32)
    b = rng.normal(0, 0.1, cout).astype(np.float32)
    node = net.add_i_conv_node(x, const(net, w), const(net, b))
    for name, args in set_.items():
        getattr(node, f"set_{name}")(*args)
    return node.get_output(0)


def relu(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
    return net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0)


def chain(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
    """One conv of each path, each feeding the next: a plain 1x1 GEMM, the depthwise vector
    loop, a padded strided implicit GEMM, a grouped conv, a depthwise conv with channel
    multiplier 2 (the general loop), a dilated conv, and a last 1x1 conv (the output)."""
    t = relu(net, conv(net, x, 16, 1, 8))
    t = conv(net, t, 16, 3, 1, group=(16,), pad=(1, 1, 1, 1))
    t = relu(net, conv(net, t, 12, 3, 16, pad=(1, 1, 1, 1), stride=(2, 2)))
    t = conv(net, t, 12, 3, 6, group=(2,), pad=(1, 1, 1, 1))
    t = conv(net, t, 24, 3, 1, group=(12,), pad=(1, 1, 1, 1))
    t = conv(net, t, 8, 3, 24, pad=(2, 2, 2, 2), dilation=(2, 2))
    return conv(net, t, 4, 1, 8)


def built(
    body: Callable[[mm.Network, mm.ITensor], mm.ITensor | list[mm.ITensor]],
    mode: str = "qint8_mixed_float16",
    **precision: str,
) -> tuple[mm.Model, mm.Network]:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims(list(SHAPE)))
    outs = body(net, x)
    for t in outs if isinstance(outs, list) else [outs]:
        net.mark_output(t)
    config = mm.BuilderConfig()
    options = {"precision_mode": mode, "weight_quant_granularity": "per_axis", **precision}
    config.parse_from_string(mm_json(options))
    calib = mm.Calibrator([ImageBatches([sample(s) for s in range(3)])])
    calib.set_progress(False)
    assert calib.calibrate(net, config).ok()
    return mm.Builder().build_model("carry", net, config), net


def mm_json(options: dict[str, str]) -> str:
    body = ", ".join(f'"{k}": "{v}"' for k, v in options.items())
    return f'{{"precision_config": {{{body}}}}}'


def sample(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, SHAPE).astype(np.float32)


def deconv(
    net: mm.Network, x: mm.ITensor, cin: int, cout: int, k: int, **set_: tuple
) -> mm.ITensor:
    """A deconv of filter ``[cin, k, k, cout]`` (the NHWC default layout), stride 2."""
    rng = np.random.default_rng(len(net.nodes))
    w = rng.normal(0, 0.3, (cin, k, k, cout)).astype(np.float32)
    b = rng.normal(0, 0.1, cout).astype(np.float32)
    node = net.add_i_deconv_node(x, const(net, w), const(net, b))
    node.set_stride(2, 2)
    for name, args in set_.items():
        getattr(node, f"set_{name}")(*args)
    return node.get_output(0)


def upsampled(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
    """conv -> deconv 2x2 stride 2 (the patch GEMM) -> deconv 3x3 stride 2, padded (the gather
    loop) -> conv, as in the DBNet head."""
    t = relu(net, conv(net, x, 12, 1, 8))
    t = deconv(net, t, 12, 8, 2)
    t = deconv(net, t, 8, 6, 3, pad=(1, 1, 1, 1))
    return conv(net, t, 4, 1, 6)


def carried(model: mm.Model) -> list[str]:
    return [t.name for t in model.data.tensors.values() if t.dtype.is_quantized]


def run(model: mm.Model, x: np.ndarray, keep_all: bool = False) -> dict[str, np.ndarray]:
    return model.create_i_engine().create_i_context().run([x], keep_all=keep_all)


@BOTH_TYPES
@pytest.mark.parametrize(
    "body, ops", [(chain, ["conv"] * 7), (upsampled, ["conv", "deconv", "deconv", "conv"])]
)
def test_every_conv_path_writes_and_reads_carried_tensors_bit_exactly(
    isa: str, mode: str, qtype: mm.DataType, body: Body, ops: list[str]
) -> None:
    model, _ = built(body, mode)
    steps = model.data.steps
    # every tensor between two steps travels as integers; the network output does not
    assert [s.op for s in steps] == ops and len(carried(model)) == len(ops) - 1
    for s in steps[:-1]:
        assert s.output_types == [qtype] and any("travels as" in n for n in s.notes)
        assert "scale_out" in s.lowered.attrs
    assert steps[-1].output_types[0].is_float
    assert model.data.tensors[steps[0].outputs[0]].dtype is qtype
    report = validate(model, sample(5))
    assert report.ok(), str(report)
    assert all(c.exact for c in report.checks)


def uncarried(monkeypatch: pytest.MonkeyPatch, body: Callable) -> mm.Model:  # type: ignore[type-arg]
    """The same network and calibration built with the carrying pass turned off."""
    with monkeypatch.context() as m:
        m.setattr(carry, "carry_quantized", lambda graph, kept=frozenset(): 0)
        model, _ = built(body)
    assert not carried(model)
    return model


def test_carried_codes_are_the_readers_quantization_of_the_unrounded_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, _ = built(chain)
    before = uncarried(monkeypatch, chain)
    x = sample(5)
    got, old = run(model, x, keep_all=True), run(before, x, keep_all=True)
    for i, step in enumerate(model.data.steps[:6]):
        t = step.outputs[0]
        scale, za = step.lowered.attrs["scale_out"], step.lowered.attrs["za_out"]
        values = old[t].view(np.float16).astype(np.float32)
        assert got[t].dtype == np.uint8
        if i == 0:  # the same input: the codes differ by the fp16 rounding the carry skips
            # the uncarried plan rounds the output to fp16, then its reader quantizes that;
            # the carried one quantizes the float32 value: at most one step apart, rarely
            codes = np.clip(np.rint(values / np.float32(scale)) + za, 0, 255).astype(np.int64)
            diff = np.abs(got[t].astype(np.int64) - codes)
            assert diff.max() <= 1 and (diff == 0).mean() > 0.95
        # later ones read inputs a code apart here and there: the same tensor all the same
        dequantized = carried_values(got[t], scale, za)
        assert np.corrcoef(dequantized.ravel(), values.ravel())[0, 1] > 0.999, step.name
    out = model.data.outputs[0].name
    a, b = got[out].view(np.float16), old[out].view(np.float16)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


NOT_CARRIED: dict[str, Callable[[mm.Network, mm.ITensor], list[mm.ITensor]]] = {
    # a max pool reads it in float
    "float_reader": lambda net, x: [
        conv(net, t := conv(net, x, 8, 1, 8), 8, 1, 8),
        net.add_i_maxpool2d_node(t).get_output(0),
    ],
    # it is a network output too
    "network_output": lambda net, x: [t := conv(net, x, 8, 1, 8), conv(net, t, 8, 1, 8)],
    # an elementwise add between the convs
    "add_between": lambda net, x: [
        conv(net, net.add_i_elementwise_node(t := conv(net, x, 8, 1, 8), t,
                                             mm.IElementwise.ADD).get_output(0), 8, 1, 8)
    ],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NOT_CARRIED))
def test_tensors_with_a_float_reader_or_a_network_output_are_not_carried(case: str) -> None:
    model, _ = built(NOT_CARRIED[case])
    assert not carried(model)
    assert validate(model, sample(5)).ok()


def test_an_output_type_the_user_set_is_kept() -> None:
    def body(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
        first = net.add_i_conv_node(x, const(net, np.ones((8, 1, 1, 8), np.float32)))
        first.set_output_type(0, F16)
        return conv(net, conv(net, first.get_output(0), 8, 1, 8), 8, 1, 8)

    model, _ = built(body)
    first, second, _ = model.data.steps
    assert first.output_types == [F16] and second.output_types == [Q8]
    assert carried(model) == [second.outputs[0]]


def test_a_reader_in_another_quantized_type_or_dynamic_ranges_stop_carrying() -> None:
    def mixed(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
        t = conv(net, x, 8, 1, 8)
        last = net.add_i_conv_node(t, const(net, np.ones((4, 1, 1, 8), np.float32)))
        last.set_precision(0, Q16)
        last.set_precision(1, Q16)
        return last.get_output(0)

    assert not carried(built(mixed)[0])
    two = lambda net, x: conv(net, conv(net, x, 8, 1, 8), 8, 1, 8)  # noqa: E731
    assert len(carried(built(two)[0])) == 1
    assert not carried(built(two, activation_quant_mode="dynamic")[0])


def test_reports_and_model_files_show_and_keep_carried_tensors(tmp_path: Path) -> None:
    model, _ = built(chain)
    rows = layer_report(model)
    first = rows.find(model.data.steps[0].name)
    assert first.output_types == [Q8] and "QINT8" in str(rows)
    x = sample(6)
    errors = error_report(model, x)
    carried_rows = [errors.find(s.name) for s in model.data.steps[:6]]
    assert all(r.cosine > 0.99 and r.sqnr_db > 20 for r in carried_rows)
    path = str(tmp_path / "carry.mm")
    assert model.serialize_to_file(path).ok()
    loaded = mm.Model()
    assert loaded.deserialize_from_file(path).ok()
    assert carried(loaded) == carried(model)
    out = model.data.outputs[0].name
    np.testing.assert_array_equal(run(loaded, x)[out], run(model, x)[out])
    assert validate(loaded, x).ok()


def test_a_model_file_with_a_carried_tensor_but_no_scale_is_refused(tmp_path: Path) -> None:
    from mmbuild.runtime.model_file import write_model_file

    model, _ = built(chain)
    data = model.data
    del data.steps[0].lowered.attrs["scale_out"]
    path = tmp_path / "bad.mm"
    write_model_file(path, data)
    with pytest.raises(mm.MMError, match="'conv_0'.*QINT8 but the step has no scale_out"):
        mm.Model().deserialize_from_file(str(path))


def test_the_tuner_ranks_carried_producers_by_their_own_noise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rounding of a carried tensor to its readers' scale counts as the readers' noise, as
    in the same plan without carrying: the tuner's per-step noise agrees between the two (the
    carried one, measured after that rounding, would be several times larger)."""
    from mmbuild.quant.tuner import _rank

    model, _ = built(chain)
    before = uncarried(monkeypatch, chain)
    names = [s.name for s in model.data.steps]
    x = [sample(8)]
    carried_noise, plain_noise = dict(_rank(model, x, names)), dict(_rank(before, x, names))
    for name in names:
        assert carried_noise[name] == pytest.approx(plain_noise[name], rel=0.5), name


def pooled(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
    """conv -> max pool -> conv -> max pool (padded, 3x3 stride 2) -> conv, as in openWakeWord."""
    t = conv(net, x, 16, 3, 8, pad=(1, 1, 1, 1))
    t = net.add_i_maxpool2d_node(t).get_output(0)
    t = relu(net, conv(net, t, 12, 1, 16))
    pool = net.add_i_maxpool2d_node(t)
    pool.set_kernel(3, 3)
    pool.set_stride(2, 2)
    pool.set_pad(1, 1, 1, 1)
    return conv(net, pool.get_output(0), 4, 1, 12)


@BOTH_TYPES
def test_max_pools_between_quantized_convs_run_on_the_codes(
    isa: str, mode: str, qtype: mm.DataType
) -> None:
    model, _ = built(pooled, mode)
    steps = model.data.steps
    assert [s.op for s in steps] == ["conv", "maxpool2d", "conv", "maxpool2d", "conv"]
    assert [s.kernel for s in steps if s.op == "maxpool2d"] == ["maxpool2d.qint"] * 2
    assert len(carried(model)) == 4
    for producer, pool in ((steps[0], steps[1]), (steps[2], steps[3])):
        # the conv quantizes with the scale its pool's readers use
        assert producer.lowered.attrs == {**producer.lowered.attrs, **pool.lowered.attrs}
    report = validate(model, sample(5))
    assert report.ok(), str(report)


def test_max_pooled_codes_against_the_uncarried_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = built(pooled)
    before = uncarried(monkeypatch, pooled)
    x = sample(5)
    got, old = run(model, x, keep_all=True), run(before, x, keep_all=True)
    pool = model.data.steps[1]
    t = pool.outputs[0]
    scale, za = pool.lowered.attrs["scale_out"], pool.lowered.attrs["za_out"]
    values = old[t].view(np.float16).astype(np.float32)
    codes = np.clip(np.rint(values / np.float32(scale)) + za, 0, 255).astype(np.int64)
    diff = np.abs(got[t].astype(np.int64) - codes)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.95
    errors = error_report(model, x)
    assert errors.find(pool.name).sqnr_db > 20


def test_a_max_pool_read_in_float_too_keeps_the_float_path() -> None:
    def body(net: mm.Network, x: mm.ITensor) -> list[mm.ITensor]:
        t = net.add_i_maxpool2d_node(conv(net, x, 8, 1, 8)).get_output(0)
        return [conv(net, t, 4, 1, 8), net.add_i_maxpool2d_node(t).get_output(0)]

    model, _ = built(body)
    assert not carried(model)
    assert [s.kernel for s in model.data.steps if s.op == "maxpool2d"] == ["maxpool2d"] * 2
