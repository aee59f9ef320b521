"""sink_permutes: NHWC carried through the layout-agnostic ops of an NCHW network, so that the
permutes stay at its inputs and outputs. Numbers before and after, structure, cases where it
must not fire, and a MobileNetV3-style block built and run end to end."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from ortcheck import assert_close, const
from test_passes import F32, NCHW, check_graph, ops, rewrite_keeps_numbers, weights
from test_passes_layout import permutes

import mmbuild as mm
from mmbuild.graph import Graph
from mmbuild.passes import cancel_permutes, convert_layout, run_passes, sink_permutes

E = mm.IElementwise
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def conv_nchw(net: mm.Network, x: mm.ITensor, cin: int, cout: int, k: int = 1,
              group: int = 1) -> mm.ITensor:  # fmt: skip
    node = net.add_i_conv_node(x, const(net, weights([cout, cin // group, k, k])),
                               const(net, weights([cout], 0.1)))  # fmt: skip
    node.set_layout(NCHW, NCHW, NCHW)
    if group > 1:
        node.set_group(group)
    node.set_pad(k // 2, k // 2, k // 2, k // 2)
    return node.get_output(0)


def layout_and_sink(graph: Graph) -> int:
    return convert_layout(graph) + cancel_permutes(graph) + sink_permutes(graph)


# name -> the op between two NCHW convs (x: [2, 8, 5, 6]), its output must be [2, 8, h, w]
BETWEEN: dict[str, Callable[[mm.Network, mm.ITensor], mm.ITensor]] = {
    "activation": lambda net, x: net.add_i_activation_node(x, mm.IActivation.TANH).get_output(0),
    "clip": lambda net, x: net.add_i_clip_node(x, -0.5, 0.5).get_output(0),
    "channel_constant": lambda net, x: net.add_i_elementwise_node(
        x, const(net, weights([8, 1, 1])), E.MUL).get_output(0),
    "rank4_constant": lambda net, x: net.add_i_elementwise_node(
        const(net, weights([1, 8, 1, 6])), x, E.SUB).get_output(0),
    "scalar_constant": lambda net, x: net.add_i_elementwise_node(
        x, const(net, np.array([2.0], np.float32)), E.ADD).get_output(0),
    "concat_channels": lambda net, x: net.add_i_concat_node(1, [x, x]).get_output(0),
    "split_channels": lambda net, x: net.add_i_elementwise_node(
        *(o for o in _split(net, x)), E.MAX).get_output(0),
    "softmax_channels": lambda net, x: net.add_i_softmax_node(x, 1).get_output(0),
    "batch_norm": lambda net, x: net.add_i_fused_batch_norm_node(
        x, *(const(net, v) for v in (weights([8]), np.full(8, 2.0, np.float32),
                                     weights([8]), weights([8]))), 1, 1e-5).get_output(0),
    "slice": lambda net, x: net.add_i_slice_node(x, [0, 2, 1, 0], [-1, 4, 3, -1],
                                                 [1, 1, 1, 2]).get_output(0),
    "pad": lambda net, x: net.add_i_pad_node(x, [(0, 0), (1, 2), (0, 1), (2, 0)]).get_output(0),
    "reduce_keep": lambda net, x: net.add_i_elementwise_node(
        x, net.add_i_reduce_node(x, [2, 3], mm.IReduce.MEAN, True).get_output(0),
        E.MUL).get_output(0),
}  # fmt: skip


def _split(net: mm.Network, x: mm.ITensor) -> list[mm.ITensor]:
    node = net.add_i_split_node(x, 1, 2)
    return [node.get_output(0), node.get_output(1)]


@pytest.mark.parametrize("case", sorted(BETWEEN))
def test_ops_between_nchw_convs_run_nhwc(case: str) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 4, 5, 6]))
    t = BETWEEN[case](net, conv_nchw(net, x, 4, 8, 3))
    cin = t.get_dimension()[1]
    net.mark_output(conv_nchw(net, t, cin, 3))
    g = Graph.from_network(net)
    tolerance = "fp32" if case in ("softmax_channels", "batch_norm") else "exact"
    assert rewrite_keeps_numbers(g, layout_and_sink, tolerance) > 0
    assert permutes(g) == [TO_NHWC, TO_NCHW]
    assert g.nodes[0].op == "permute" and g.nodes[-1].op == "permute"
    check_graph(g)


def test_reduce_without_kept_dims_needs_no_permute_after_it() -> None:
    """Global average over H, W of NCHW gives [N, C]: on NHWC the same axes (1, 2) give [N, C]."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 4, 5, 6]))
    t = net.add_i_activation_node(conv_nchw(net, x, 4, 8, 3), mm.IActivation.RELU6)
    mean = net.add_i_reduce_node(t.get_output(0), [2, 3], mm.IReduce.MEAN, False)
    fc = net.add_i_inner_product_node(mean.get_output(0), const(net, weights([3, 8])))
    net.mark_output(fc.get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, layout_and_sink, "fp32") > 0
    assert permutes(g) == [TO_NHWC]
    reduce = next(n for n in g.nodes if n.op == "reduce")
    assert reduce.attrs["axes"] == (1, 2)


def test_residual_add_of_the_network_input_reads_its_nhwc_copy() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([1, 4, 5, 6]))
    y = net.add_i_elementwise_node(conv_nchw(net, x, 4, 4, 3), x, E.ADD).get_output(0)
    net.mark_output(y)
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, layout_and_sink) == 2  # the conv's layout; the add sunk
    assert ops(g) == ["permute", "conv", "elementwise", "permute"]
    first, add = g.nodes[0], g.nodes[2]
    assert add.inputs[1] == first.outputs[0]


NOT_SUNK: dict[str, Callable[[mm.Network, mm.ITensor, mm.ITensor], mm.ITensor]] = {
    # reshape depends on the order of the elements
    "reshape": lambda net, t, x: net.add_i_reshape_node(t, [0, -1]).get_output(0),
    # layer norm normalises the trailing axes: NCHW's (C, H, W) are no trailing set of NHWC
    "layer_norm": lambda net, t, x: net.add_i_layer_norm_node(
        t, const(net, np.ones([5, 6], np.float32)), const(net, np.zeros([5, 6], np.float32)), 2,
        1e-5).get_output(0),
    # a lower-rank runtime operand: the add of another network input [6]
    "lower_rank_operand": lambda net, t, x: net.add_i_elementwise_node(
        t, net.add_input(F32, mm.Dims([6])), E.ADD).get_output(0),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NOT_SUNK))
def test_sink_permutes_does_not_fire(case: str) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 4, 5, 6]))
    net.mark_output(NOT_SUNK[case](net, conv_nchw(net, x, 4, 4, 3), x))
    g = Graph.from_network(net)
    convert_layout(g)
    cancel_permutes(g)
    before = ops(g)
    assert rewrite_keeps_numbers(g, sink_permutes) == 0
    assert ops(g) == before


def test_sink_permutes_keeps_the_graph_when_it_would_add_permutes() -> None:
    """split into two outputs that are network outputs: sinking would put a permute on each."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 4, 5, 6]))
    for out in _split(net, conv_nchw(net, x, 4, 4, 3)):
        net.mark_output(out)
    g = Graph.from_network(net)
    convert_layout(g)
    before = ops(g)
    assert sink_permutes(g) == 0 and ops(g) == before


# -- a MobileNetV3-style block -----------------------------------------------------------------
def hard_swish_chain(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
    """x * clip(x + 3, 0, 6) / 6, as exported networks spell it."""
    three = const(net, np.array(3.0, np.float32).reshape(()))
    six = const(net, np.array([6.0], np.float32))
    r = net.add_i_clip_node(net.add_i_elementwise_node(x, three, E.ADD).get_output(0), 0, 6)
    t = net.add_i_elementwise_node(x, r.get_output(0), E.MUL).get_output(0)
    return net.add_i_elementwise_node(t, six, E.DIV).get_output(0)


def mobilenet_v3_block(batch: int = 2) -> mm.Network:
    """expand 1x1 + hard swish, depthwise 3x3 + hard swish, squeeze-excitation (global pool,
    1x1 + relu, 1x1 + hard sigmoid, channel-wise mul), project 1x1, residual add; all NCHW."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([batch, 8, 9, 7]))
    t = hard_swish_chain(net, conv_nchw(net, x, 8, 16))
    dw = net.add_i_activation_node(conv_nchw(net, t, 16, 16, 3, group=16),
                                   mm.IActivation.HARD_SWISH).get_output(0)  # fmt: skip
    pool = net.add_i_avgpool2d_node(dw)
    pool.set_layout(NCHW, NCHW)
    pool.set_kernel(9, 7)
    s = net.add_i_activation_node(conv_nchw(net, pool.get_output(0), 16, 4),
                                  mm.IActivation.RELU).get_output(0)  # fmt: skip
    gate = net.add_i_activation_node(conv_nchw(net, s, 4, 16), mm.IActivation.HARD_SIGMOID)
    gate.set_alpha(1 / 6)
    se = net.add_i_elementwise_node(dw, gate.get_output(0), E.MUL).get_output(0)
    y = net.add_i_elementwise_node(conv_nchw(net, se, 16, 8), x, E.ADD).get_output(0)
    net.mark_output(y)
    return net


def test_mobilenet_v3_block_keeps_permutes_at_its_edges_only() -> None:
    g = Graph.from_network(mobilenet_v3_block())
    counts: dict[str, int] = {}

    def pipeline(graph: Graph) -> int:
        counts.update(run_passes(graph))
        return sum(counts.values())

    rewrite_keeps_numbers(g, pipeline, "fp32")
    assert permutes(g) == [TO_NHWC, TO_NCHW]
    assert g.nodes[0].inputs == g.inputs and g.nodes[-1].outputs == g.outputs
    assert counts["fuse_hard_swish"] == 1 and counts["sink_permutes"] > 0
    # both hard swishes are epilogues of their convs
    assert ops(g) == ["permute", "conv", "conv", "avgpool2d", "conv", "conv", "elementwise",
                      "conv", "elementwise", "permute"]  # fmt: skip
    assert [n.attrs["activation"] for n in g.nodes[1:3]] == [{"function": "hard_swish"}] * 2


@pytest.mark.parametrize("batch", [1, 3])
def test_mobilenet_v3_block_builds_and_matches_the_reference(batch: int) -> None:
    net = mobilenet_v3_block(batch)
    model = mm.Builder().build_model("mbv3", net)
    steps = [s.op for s in model.data.steps]
    assert steps.count("permute") == 2 and steps[0] == steps[-1] == "permute"
    x = np.random.default_rng(7).standard_normal((batch, 8, 9, 7)).astype(np.float32) * 2
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(x)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    (expected,) = mm.run_reference(net, [x]).values()  # the build leaves the network as it was
    assert_close(outputs[0].asnumpy(), expected, "fp32_accumulate")


@pytest.mark.parametrize("mode", ["force_float16", "qint8_mixed_float16"])
def test_mobilenet_v3_block_in_other_modes_keeps_two_permutes_and_validates(mode: str) -> None:
    """float16 reads the float32 network input of the residual add through a cast; the layout
    passes infer it in the add's precision."""
    import json

    from sample_cnn import ImageBatches

    net = mobilenet_v3_block(2)
    x = np.random.default_rng(8).standard_normal((2, 8, 9, 7)).astype(np.float32)
    config = mm.BuilderConfig()
    config.parse_from_string(json.dumps({"precision_config": {"precision_mode": mode}}))
    calib = mm.Calibrator([ImageBatches([x])])
    calib.set_progress(False)
    assert calib.calibrate(net, config).ok()
    model = mm.Builder().build_model("mbv3", net, config)
    assert [s.op for s in model.data.steps].count("permute") == 2
    report = model.validate([x])
    assert report.ok(), str(report)
