"""Layout passes: NCHW nodes run NHWC between permutes (convert_layout), and back-to-back
permutes compose or vanish (cancel_permutes). Data movement only, so results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from ortcheck import const
from test_passes import (
    F32,
    NCHW,
    NHWC,
    Q8,
    batch_norm,
    check_graph,
    config,
    ops,
    rewrite_keeps_numbers,
    weights,
)

import mmbuild as mm
from mmbuild.graph import Graph
from mmbuild.passes import cancel_permutes, convert_layout, run_passes
from mmbuild.precision import plan_precision


def layout_then_cancel(graph: Graph) -> int:
    return convert_layout(graph) + cancel_permutes(graph)


def permutes(graph: Graph) -> list[tuple[int, ...]]:
    return [tuple(n.attrs["perm"]) for n in graph.nodes if n.op == "permute"]


# -- convert_layout ----------------------------------------------------------------------------
def _pool(kind: str) -> Callable[[mm.Network, mm.ITensor], mm.INode]:
    def build(net: mm.Network, x: mm.ITensor) -> mm.INode:
        node = getattr(net, f"add_i_{kind}_node")(x, ceil_mode=True)
        node.set_layout(NCHW, NCHW)
        node.set_kernel(3, 2)
        node.set_stride(2, 2)
        node.set_pad(1, 0, 0, 1)
        return node

    return build


def _resize(net: mm.Network, x: mm.ITensor) -> mm.INode:
    node = net.add_i_resize_node(x, scale=[1.5, 2.0])
    node.set_layout(NCHW)
    node.set_mode(mm.IResizeMode.BILINEAR)
    return node


def _conv_nchw(net: mm.Network, x: mm.ITensor) -> mm.INode:
    node = net.add_i_conv_node(x, const(net, weights([6, 4, 3, 3])), const(net, weights([6])))
    node.set_layout(NCHW, NCHW, NCHW)
    node.set_stride(2, 1)
    node.set_pad(1, 1, 0, 2)
    return node


def _deconv_nchw(net: mm.Network, x: mm.ITensor) -> mm.INode:
    node = net.add_i_deconv_node(x, const(net, weights([4, 3, 3, 3])), const(net, weights([6])))
    node.set_layout(NCHW, NCHW, NCHW)
    node.set_group(2)
    node.set_stride(2, 2)
    return node


LAYOUT_NODES = {
    "conv": _conv_nchw,
    "deconv": _deconv_nchw,
    "maxpool2d": _pool("maxpool2d"),
    "avgpool2d": _pool("avgpool2d"),
    "resize": _resize,
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", sorted(LAYOUT_NODES))
def test_convert_layout(kind: str, batch: int) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([batch, 4, 7, 5]))
    node = LAYOUT_NODES[kind](net, x)
    y = node.get_output(0)
    net.mark_output(y)
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, convert_layout) == 1
    name = node.get_node_name()
    assert [n.name for n in g.nodes] == [f"{name}/to_nhwc", name, f"{name}/to_nchw"]
    assert permutes(g) == [(0, 2, 3, 1), (0, 3, 1, 2)]
    before, main, after = g.nodes
    assert before.inputs == ["input_0"] and main.inputs[0] == before.outputs[0]
    assert main.outputs == after.inputs and after.outputs == [y.get_tensor_name()] == g.outputs
    layout = main.attrs["layout"]
    if kind in ("conv", "deconv"):
        assert layout == (NHWC, NCHW, NHWC)  # the filter keeps its layout
    else:
        assert layout in ((NHWC, NHWC), NHWC)
    n, c, h, w = y.get_dimension().get_dims()
    assert g.tensors[main.outputs[0]].dims == (n, h, w, c)
    assert g.tensors[before.outputs[0]].dims == (batch, 7, 5, 4)
    assert convert_layout(g) == 0  # nothing NCHW is left


def test_convert_layout_only_where_nchw() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3, 6, 6]))
    conv = net.add_i_conv_node(x, const(net, weights([3, 3, 3, 3])))  # fits NCHW when added
    conv.set_layout(NCHW, NCHW, NHWC)  # reads NCHW, writes NHWC
    pool = net.add_i_maxpool2d_node(conv.get_output(0))  # NHWC: untouched
    pool.set_kernel(2, 2)
    net.mark_output(pool.get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, convert_layout) == 1
    assert ops(g) == ["permute", "conv", "maxpool2d"] and permutes(g) == [(0, 2, 3, 1)]


def test_convert_layout_leaves_nhwc_graphs_alone() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([-1, 6, 6, 3]))
    conv = net.add_i_conv_node(x, const(net, weights([4, 3, 3, 3])))
    net.mark_output(conv.get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, convert_layout) == 0
    assert ops(g) == ["conv"]


def test_convert_layout_runtime_batch() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([-1, 4, 7, 5]))
    net.mark_output(_conv_nchw(net, x).get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, convert_layout) == 1
    assert g.tensors["conv_0/to_nhwc:0"].dims == (-1, 7, 5, 4)
    assert g.tensors["conv_0/nhwc:0"].dims == (-1, 4, 5, 6)


def test_convert_layout_permutes_move_data_in_its_type_and_keep_ranges() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 4, 7, 5]))
    x.set_dynamic_range(mm.Range(-2.0, 2.0))
    net.mark_output(_conv_nchw(net, x).get_output(0))
    g = Graph.from_network(net, plan_precision(net, config("qint8_mixed_float32")))
    assert convert_layout(g) == 1
    check_graph(g)
    before, conv, after = g.nodes
    assert before.precisions == before.output_types == [F32]  # the float data it moves
    assert conv.precisions == [Q8, Q8, F32]  # the conv still quantizes its input on reading
    assert g.tensors[conv.inputs[0]].range == mm.Range(-2.0, 2.0)  # so it needs the range
    assert after.precisions == after.output_types == conv.output_types == [F32]


# -- cancel_permutes ---------------------------------------------------------------------------
def _nchw_chain(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
    """conv -> maxpool -> conv, all NCHW."""
    t = _conv_nchw(net, x).get_output(0)
    t = _pool("maxpool2d")(net, t).get_output(0)
    conv = net.add_i_conv_node(t, const(net, weights([5, 6, 1, 1])))
    conv.set_layout(NCHW, NCHW, NCHW)
    return conv.get_output(0)


def test_cancel_permutes_between_nchw_nodes() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 4, 9, 8]))
    net.mark_output(_nchw_chain(net, x))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, layout_then_cancel) == 3 + 2 * 2  # 3 nodes; 2 merges, 2 drops
    assert ops(g) == ["permute", "conv", "maxpool2d", "conv", "permute"]
    assert permutes(g) == [(0, 2, 3, 1), (0, 3, 1, 2)]
    assert g.nodes[0].inputs == ["input_0"] and g.nodes[-1].outputs == g.outputs


def test_cancel_permutes_composes_and_drops_user_permutes() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3, 4, 5]))
    t = net.add_i_permute_node(x, [0, 3, 1, 2]).get_output(0)
    t = net.add_i_permute_node(t, [2, 0, 3, 1]).get_output(0)  # composed: (1, 0, 2, 3)
    t = net.add_i_permute_node(t, [1, 0, 2, 3]).get_output(0)  # composed: identity
    y = net.add_i_activation_node(t, mm.IActivation.TANH).get_output(0)
    net.mark_output(y)
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, cancel_permutes) == 3
    assert ops(g) == ["activation"] and g.nodes[0].inputs == ["input_0"]


def test_cancel_permutes_composition_order() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3, 4, 5]))
    t = net.add_i_permute_node(x, [0, 3, 1, 2]).get_output(0)
    t = net.add_i_permute_node(t, [2, 0, 3, 1]).get_output(0)
    net.mark_output(t)
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, cancel_permutes) == 1
    assert permutes(g) == [(1, 0, 2, 3)] and g.nodes[0].name == "permute_1"
    assert g.nodes[0].fused == ["permute_0"]


def test_cancel_permutes_undoes_a_permute_read_by_several_inverses() -> None:
    """x -> to_nchw -> t; t -> to_nhwc -> relu, t -> to_nhwc -> tanh: both inverses take x (and
    go), and to_nchw with them. With a third reader t -> (0, 1, 3, 2), that reader, left alone
    on t, composes with to_nchw into one permute of x."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3, 4, 5]))
    t = net.add_i_permute_node(x, [0, 3, 1, 2]).get_output(0)
    for act in (mm.IActivation.RELU, mm.IActivation.TANH):
        back = net.add_i_permute_node(t, [0, 2, 3, 1]).get_output(0)
        net.mark_output(net.add_i_activation_node(back, act).get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, cancel_permutes) == 4  # 2 merges, 2 identities dropped
    assert ops(g) == ["activation", "activation"]
    assert all(n.inputs == ["input_0"] for n in g.nodes)
    other = net.add_i_permute_node(t, [0, 1, 3, 2]).get_output(0)
    net.mark_output(net.add_i_activation_node(other, mm.IActivation.EXP).get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, cancel_permutes) == 5
    assert sorted(ops(g)) == ["activation"] * 3 + ["permute"]
    assert permutes(g) == [(0, 3, 2, 1)] and len(g.consumers("input_0")) == 3


def test_identity_permute_on_a_network_output_hands_the_output_to_its_producer() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3]))
    relu = net.add_i_activation_node(x, mm.IActivation.RELU)
    y = net.add_i_permute_node(relu.get_output(0), [0, 1]).get_output(0)
    y.set_tensor_name("result")
    net.mark_output(y)
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, cancel_permutes) == 1
    assert ops(g) == ["activation"] and g.nodes[0].outputs == ["result"] == g.outputs


def test_cancel_permutes_does_not_fire() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3, 4]))
    copy = net.add_i_permute_node(x, [0, 1, 2]).get_output(0)  # input to output: a copy
    t = net.add_i_permute_node(x, [0, 2, 1]).get_output(0)
    back = net.add_i_permute_node(t, [0, 2, 1]).get_output(0)  # t is read twice: no merge
    other = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
    for out in (copy, back, other):
        net.mark_output(out)
    g = Graph.from_network(net)
    n_nodes = len(g.nodes)
    assert rewrite_keeps_numbers(g, cancel_permutes) == 0
    assert len(g.nodes) == n_nodes


def test_cancel_permutes_keeps_a_permute_that_converts() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3, 4]))
    p = net.add_i_permute_node(x, [0, 1, 2])
    p.set_output_type(0, mm.DataType.FLOAT16)
    y = net.add_i_activation_node(p.get_output(0), mm.IActivation.RELU).get_output(0)
    net.mark_output(y)
    g = Graph.from_network(net, plan_precision(net, config("force_float32")))
    assert g.nodes[0].output_types == [mm.DataType.FLOAT16]
    assert cancel_permutes(g) == 0


# -- the whole pipeline on an NCHW CNN ---------------------------------------------------------
def nchw_cnn(batch: int) -> mm.Network:
    """conv -> bn -> relu -> maxpool -> conv -> relu6 -> avgpool, all NCHW, then a classifier."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([batch, 3, 12, 10]))
    conv1 = net.add_i_conv_node(x, const(net, weights([8, 3, 3, 3])))
    conv1.set_layout(NCHW, NCHW, NCHW)
    conv1.set_pad(1, 1, 1, 1)
    t = batch_norm(net, conv1.get_output(0), 8, 1).get_output(0)
    t = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
    t = _pool("maxpool2d")(net, t).get_output(0)  # [N, 8, 6, 5]
    conv2 = net.add_i_conv_node(t, const(net, weights([6, 8, 3, 3])), const(net, weights([6])))
    conv2.set_layout(NCHW, NCHW, NCHW)
    t = net.add_i_activation_node(conv2.get_output(0), mm.IActivation.RELU6).get_output(0)
    gap = net.add_i_avgpool2d_node(t)
    gap.set_layout(NCHW, NCHW)
    gap.set_kernel(4, 3)  # global: conv2 gives [N, 6, 4, 3]
    t = net.add_i_reshape_node(gap.get_output(0), [0, 6]).get_output(0)
    fc = net.add_i_inner_product_node(t, const(net, weights([4, 6])), const(net, weights([4])))
    net.mark_output(net.add_i_softmax_node(fc.get_output(0), 1).get_output(0))
    return net


@pytest.mark.parametrize("batch", [1, 2])
def test_pipeline_on_an_nchw_cnn_leaves_two_permutes(batch: int) -> None:
    g = Graph.from_network(nchw_cnn(batch))
    counts: dict[str, int] = {}

    def pipeline(graph: Graph) -> int:
        counts.update(run_passes(graph))
        return sum(counts.values())

    # "fp32": the folded batch norm rounds its weights once
    rewrite_keeps_numbers(g, pipeline, "fp32")
    assert counts == {
        "fold_constants": 0,
        "fold_batch_norm": 1,
        "clamp_as_clip": 0,
        "fuse_hard_sigmoid": 0,
        "fuse_hard_swish": 0,
        "fuse_silu": 0,
        "fold_channel_affine": 0,
        "fold_affine_into_readers": 0,
        "fold_hard_sigmoid": 0,
        "fuse_activations": 2,
        "fuse_affine_after_activation": 0,
        "convert_layout": 4,
        "cancel_permutes": 6,
        "sink_permutes": 0,
        "fold_input_normalization": 0,
        "remove_dead_nodes": 0,
    }
    assert ops(g) == [
        "permute",
        "conv",
        "maxpool2d",
        "conv",
        "avgpool2d",
        "permute",
        "reshape",
        "inner_product",
        "softmax",
    ]
    assert permutes(g) == [(0, 2, 3, 1), (0, 3, 1, 2)]
    assert g.nodes[0].inputs == ["input_0"]
    conv1, conv2 = g.node("conv_0"), g.node("conv_1")
    assert conv1.fused == ["fused_batch_norm_0", "activation_0"]
    assert conv2.attrs["activation"] == {"function": "clip", "lo": 0.0, "hi": 6.0}
    assert all(n.attrs["layout"][0] is NHWC for n in g.nodes if "layout" in n.attrs)
    assert np.all([len(n.precisions) == len(n.inputs) for n in g.nodes])
