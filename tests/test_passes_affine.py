"""``fuse_affine_after_activation``: a scalar affine after a fused activation becomes the
activation's ``"mul"`` and ``"add"`` (PPLCNetV3's hard swish and learnable affine before a
padded depthwise conv), on structure and numbers, as a pass and through a quantized build that
then carries int8 from the conv to its depthwise reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ortcheck import const
from test_carry import built, carried, run, sample
from test_passes import _conv, check_graph, ops, random_inputs, weights
from test_passes_fusion import _affine_then, _conv_then, ew, scalar

import mmbuild as mm
from mmbuild.graph import Graph
from mmbuild.passes import fuse_activations, fuse_affine_after_activation, run_passes
from mmbuild.passes.fuse import compose_activations
from mmbuild.runtime.inspect import validate

F32 = mm.DataType.FLOAT32
E = mm.IElementwise
PAD = (1, 1, 1, 1)


def _padded_reader(net: mm.Network, t: mm.ITensor) -> mm.ITensor:
    """A 3x3 padded conv: the affine cannot fold forward into it (``fold_forward``)."""
    return _conv(net, t, weights([3, 3, 3, 6]), 3, pad=PAD).get_output(0)


def _fused(form: str) -> tuple[Graph, list[np.ndarray]]:
    """conv -> hard swish -> affine ``form`` -> padded conv, with the activation fused, and the
    outputs of the graph before the affine is."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    net.mark_output(_padded_reader(net, _affine_then(net, _conv_then(net, x, False, True), form)))
    g = Graph.from_network(net)
    assert fuse_activations(g) == 1
    return g, random_inputs(g)


@pytest.mark.parametrize("form", ["mul_add", "const_first_mul_add", "mul", "add"])
def test_a_scalar_affine_after_a_fused_activation_joins_it(form: str) -> None:
    g, inputs = _fused(form)
    before = g.run_reference(inputs)
    assert fuse_affine_after_activation(g) == 1
    check_graph(g)
    assert ops(g) == ["conv", "conv"]
    act = g.nodes[0].attrs["activation"]
    want = {"function": "hard_swish", "mul": 1.5 if "mul" in form else 1.0,
            "add": 0.25 if "add" in form else -0.0}  # fmt: skip
    assert act == want and np.signbit(act["add"]) == ("add" not in form)
    assert len(g.nodes[0].fused) == 1 + ("mul" in form) + ("add" in form)
    after = g.run_reference(inputs)
    # the chain's float32 operations in the chain's order: the same bits
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


def test_the_affine_changes_the_numbers_as_the_chain_does() -> None:
    """Not a no-op: the fused conv differs from the bare hard swish conv by the affine."""
    g, inputs = _fused("mul_add")
    conv = g.nodes[0]
    bare = dict(conv.attrs["activation"])
    fuse_affine_after_activation(g)
    y = g.run_reference(inputs, keep_all=True)[conv.outputs[0]]
    conv.attrs["activation"] = bare
    z = g.run_reference(inputs, keep_all=True)[conv.outputs[0]]
    np.testing.assert_array_equal(y, z * np.float32(1.5) + np.float32(0.25))


@pytest.mark.parametrize("case", ["no_activation", "shared", "output", "vector", "twice"])
def test_the_affine_does_not_fuse(case: str) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    t = _conv_then(net, x, False, True)
    if case != "no_activation":
        t = net.add_i_activation_node(t, mm.IActivation.HARD_SWISH).get_output(0)
    scale = const(net, np.full(6, 1.5, np.float32)) if case == "vector" else scalar(net, 1.5)
    y = ew(net, t, scale, E.MUL)
    if case == "twice":  # the second affine finds the first one fused
        y = ew(net, ew(net, y, scalar(net, 0.5), E.ADD), scalar(net, 2.0), E.MUL)
    net.mark_output(_padded_reader(net, y))
    if case == "shared":  # the activation's output is read beside the affine
        net.mark_output(_padded_reader(net, t))
    if case == "output":
        net.mark_output(t)
    g = Graph.from_network(net)
    fuse_activations(g)
    before = ops(g)
    count = fuse_affine_after_activation(g)
    assert count == (1 if case == "twice" else 0)
    if case == "twice":
        assert ops(g) == ["conv", "elementwise", "conv"]
    else:
        assert ops(g) == before


def test_no_clamp_composes_after_an_affine() -> None:
    """A clip after ``relu * 2`` would clamp the affine's output, which the epilogue's one clamp,
    before the affine, cannot: the two stay apart."""
    clip = {"function": "clip", "lo": 0.0, "hi": 6.0}
    assert compose_activations({"function": "relu"}, clip) == clip
    assert compose_activations({"function": "relu", "mul": 2.0, "add": -0.0}, clip) is None
    assert compose_activations({"function": "clip", "lo": 0.0, "hi": 6.0, "add": 1.0}, clip) is None


def test_the_pipeline_fuses_only_what_cannot_fold_forward() -> None:
    """The unpadded 1x1 reader takes the affine into its weights first (``fold_forward``);
    only the affine before a padded conv reaches the epilogue."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    t = _affine_then(net, _conv_then(net, x, False, True), "mul_add")
    one = _conv(net, t, weights([6, 1, 1, 6]), 6).get_output(0)
    net.mark_output(_padded_reader(net, _affine_then(net, one, "mul_add")))
    g = Graph.from_network(net)
    counts = run_passes(g)
    assert counts["fold_affine_into_readers"] == 1 and counts["fuse_affine_after_activation"] == 1
    assert ops(g) == ["conv", "conv", "conv"]
    assert g.nodes[0].attrs["activation"] == {"function": "hard_swish"}  # its affine folded on
    assert g.nodes[1].attrs["activation"]["mul"] == 1.5


def _block(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
    """PPLCNetV3's block end: 1x1 conv, hard swish, affine, a padded depthwise conv, a 1x1."""
    rng = np.random.default_rng(7)
    w = const(net, rng.normal(0, 0.4, (16, 1, 1, 8)).astype(np.float32))
    t = net.add_i_conv_node(x, w, const(net, np.zeros(16, np.float32))).get_output(0)
    t = _affine_then(net, t, "mul_add")
    dw = net.add_i_conv_node(t, const(net, rng.normal(0, 0.4, (16, 3, 3, 1)).astype(np.float32)),
                             const(net, np.zeros(16, np.float32)))  # fmt: skip
    dw.set_group(16)
    dw.set_pad(*PAD)
    w2 = const(net, rng.normal(0, 0.4, (4, 1, 1, 16)).astype(np.float32))
    b2 = const(net, np.zeros(4, np.float32))
    return net.add_i_conv_node(dw.get_output(0), w2, b2).get_output(0)


def test_a_quantized_build_carries_int8_through_the_fused_affine(isa: str, tmp_path: Path) -> None:
    model, _ = built(_block)
    steps = model.data.steps
    assert [s.op for s in steps] == ["conv", "conv", "conv"]
    first = steps[0]
    assert first.op_attrs["activation"] == {"function": "hard_swish", "mul": 1.5, "add": 0.25}
    assert first.output_types == [mm.DataType.QINT8] and len(carried(model)) == 2
    x = sample(4)
    report = validate(model, x)
    assert report.ok() and all(c.exact for c in report.checks), str(report)
    path = str(tmp_path / "affine.mm")
    assert model.serialize_to_file(path).ok()
    loaded = mm.Model()
    assert loaded.deserialize_from_file(path).ok()
    out = model.data.outputs[0].name
    np.testing.assert_array_equal(run(loaded, x)[out], run(model, x)[out])
