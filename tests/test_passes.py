"""Graph passes: constant folding, batch-norm folding, activation fusion, dead-node removal and
the pipeline driver. Each pass is checked for numbers (``graph.run_reference`` before vs after
on random inputs) and structure (what is gone, what was fused, node counts), and for the cases
where it must not fire. Layout passes are in test_passes_layout.py.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from ortcheck import assert_close, const

import mmbuild as mm
from mmbuild.graph import Graph
from mmbuild.passes import (
    PIPELINE,
    fold_batch_norm,
    fold_constants,
    fuse_activations,
    remove_dead_nodes,
    run_passes,
)
from mmbuild.precision import plan_precision

F32, F16, Q8 = mm.DataType.FLOAT32, mm.DataType.FLOAT16, mm.DataType.QINT8
NHWC, NCHW, HWCN = mm.Layout.NHWC, mm.Layout.NCHW, mm.Layout.HWCN
RNG = np.random.default_rng(20240611)


# -- helpers (test_passes_layout.py uses them too) -------------------------------------------
def config(mode: str, **extra: object) -> mm.BuilderConfig:
    c = mm.BuilderConfig()
    c.parse_from_string(json.dumps({"precision_config": {"precision_mode": mode}, **extra}))
    return c


def weights(shape: Sequence[int], scale: float = 0.5) -> np.ndarray:
    return RNG.normal(0, scale, shape).astype(np.float32)


def random_inputs(graph: Graph) -> list[np.ndarray]:
    """One random float32 array per graph input; run-time dimensions (-1) become 3."""
    return [
        RNG.standard_normal([3 if d < 0 else d for d in graph.tensors[t].dims]).astype(np.float32)
        for t in graph.inputs
    ]


def check_graph(graph: Graph) -> None:
    """Invariants every pass keeps: nodes in topological order, each tensor produced once, one
    precision per input and one type per output (the tensor's own), dims that re-infer."""
    known = set(graph.inputs) | {k for k, t in graph.tensors.items() if t.is_const}
    for node in graph.nodes:
        assert all(t in known for t in node.inputs), f"{node.name} reads an unknown tensor"
        assert len(node.precisions) == len(node.inputs), node.name
        assert len(node.output_types) == len(node.outputs), node.name
        for t, dtype in zip(node.outputs, node.output_types):
            assert t not in known, f"{t} is produced twice"
            assert graph.tensors[t].dtype == dtype, (node.name, t)
            known.add(t)
    assert all(t in known for t in graph.outputs)
    dims = {k: t.dims for k, t in graph.tensors.items()}
    graph.infer_dims()
    assert {k: t.dims for k, t in graph.tensors.items()} == dims


def rewrite_keeps_numbers(
    graph: Graph, rewrite: Callable[[Graph], int], tolerance: str = "exact"
) -> int:
    """Run ``rewrite`` and compare every network output before and after on random inputs."""
    inputs = random_inputs(graph)
    before = graph.run_reference(inputs)
    count = rewrite(graph)
    check_graph(graph)
    after = graph.run_reference(inputs)
    assert list(after) == list(before)
    for name in before:
        if tolerance == "exact":
            np.testing.assert_array_equal(after[name], before[name])
        else:
            assert_close(after[name], before[name], tolerance)
    return count


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def batch_norm(net: mm.Network, t: mm.ITensor, c: int, axis: int, eps: float = 1e-5) -> mm.INode:
    return net.add_i_fused_batch_norm_node(
        t,
        const(net, weights([c])),  # mean
        const(net, RNG.uniform(0.3, 2.0, c).astype(np.float32)),  # var
        const(net, RNG.uniform(0.5, 1.5, c).astype(np.float32)),  # scale
        const(net, weights([c])),  # offset
        axis,
        eps,
    )


# -- fold_constants ----------------------------------------------------------------------------
def test_fold_constants_folds_a_chain_into_one_filter() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 5, 5, 4]))
    prod = net.add_i_elementwise_node(
        const(net, weights([6, 36])), const(net, weights([1, 36])), mm.IElementwise.MUL
    )
    w = net.add_i_reshape_node(prod.get_output(0), [6, 3, 3, 4]).get_output(0)
    conv = net.add_i_conv_node(x, w, const(net, weights([6])))
    net.mark_output(conv.get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, fold_constants) == 2
    assert ops(g) == ["conv"]
    folded = g.tensors[g.nodes[0].inputs[1]]
    assert folded.is_const and folded.dims == (6, 3, 3, 4) and folded.value.dtype == np.float32


def test_fold_constants_keeps_a_node_that_makes_a_network_output() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([3]))
    c = net.add_i_elementwise_node(
        const(net, weights([3])), const(net, weights([3])), mm.IElementwise.ADD
    )
    y = net.add_i_elementwise_node(x, c.get_output(0), mm.IElementwise.MUL)
    net.mark_output(c.get_output(0))
    net.mark_output(y.get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, fold_constants) == 0
    assert ops(g) == ["elementwise", "elementwise"]


def test_fold_constants_rounds_float16_and_keeps_integer_dtypes() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([4]))
    a = np.array([1.0001, -2.5, 3.3, 7.9], np.float32)
    half = net.add_i_elementwise_node(const(net, a), const(net, a), mm.IElementwise.ADD)
    as_int = net.add_i_cast_node(half.get_output(0), mm.DataType.INT32)
    back = net.add_i_cast_node(as_int.get_output(0), F32)
    y = net.add_i_elementwise_node(x, back.get_output(0), mm.IElementwise.ADD)
    net.mark_output(y.get_output(0))
    g = Graph.from_network(net, plan_precision(net, config("force_float16")))
    assert fold_constants(g) == 3
    check_graph(g)
    half_value = g.tensors[half.get_output(0).get_tensor_name()].value
    assert half_value.dtype == np.float32
    np.testing.assert_array_equal(half_value, (a + a).astype(np.float16).astype(np.float32))
    int_value = g.tensors[as_int.get_output(0).get_tensor_name()].value
    assert int_value.dtype == np.int32
    np.testing.assert_array_equal(int_value, [2, -5, 6, 15])


def test_fold_constants_leaves_nodes_with_a_runtime_input() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([-1, 4]))
    y = net.add_i_elementwise_node(x, const(net, weights([4])), mm.IElementwise.ADD)
    net.mark_output(y.get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, fold_constants) == 0


# -- fold_batch_norm ---------------------------------------------------------------------------
def _conv(
    net: mm.Network, x: mm.ITensor, w: np.ndarray, bias: int | None, **set_: Sequence[object]
) -> mm.INode:
    node = net.add_i_conv_node(x, const(net, w), const(net, weights([bias])) if bias else None)
    for name, args in set_.items():
        getattr(node, f"set_{name}")(*args)
    return node


def _deconv(
    net: mm.Network, x: mm.ITensor, w: np.ndarray, bias: int | None, **set_: Sequence[object]
) -> mm.INode:
    node = net.add_i_deconv_node(x, const(net, w), const(net, weights([bias])) if bias else None)
    for name, args in set_.items():
        getattr(node, f"set_{name}")(*args)
    return node


# name -> (input shape without batch, build(net, x, with_bias) -> node, output channels, bn axis)
FOLD_CASES: dict[str, tuple[tuple[int, ...], Callable[..., mm.INode], int, int]] = {
    "conv_nhwc": (
        (7, 5, 4),
        lambda net, x, b: _conv(net, x, weights([6, 3, 3, 4]), b and 6, pad=(1, 1, 1, 1)),
        6,
        3,
    ),
    "conv_nhwc_axis_minus_1_stride_2": (
        (7, 5, 4),
        lambda net, x, b: _conv(net, x, weights([6, 3, 3, 4]), b and 6, stride=(2, 2)),
        6,
        -1,
    ),
    "conv_nchw": (
        (4, 7, 5),
        lambda net, x, b: _conv(
            net, x, weights([6, 4, 3, 3]), b and 6, layout=(NCHW, NCHW, NCHW), pad=(1, 0, 0, 1)
        ),
        6,
        1,
    ),
    # a [3, 3, 3, 3] filter fits as NCHW when added; set_layout reads it as HWCN
    "conv_nchw_in_hwcn_filter_nhwc_out": (
        (3, 7, 5),
        lambda net, x, b: _conv(net, x, weights([3, 3, 3, 3]), b and 3, layout=(NCHW, HWCN, NHWC)),
        3,
        3,
    ),
    "conv_grouped": (
        (5, 5, 4),
        lambda net, x, b: _conv(net, x, weights([6, 3, 3, 2]), b and 6, group=(2,)),
        6,
        3,
    ),
    "conv_depthwise": (
        (5, 5, 4),
        lambda net, x, b: _conv(net, x, weights([8, 3, 3, 1]), b and 8, group=(4,)),
        8,
        3,
    ),
    "deconv_nhwc": (
        (4, 3, 4),
        lambda net, x, b: _deconv(
            net, x, weights([4, 3, 3, 6]), b and 6, stride=(2, 2), output_padding=(1, 1)
        ),
        6,
        3,
    ),
    "deconv_nchw_grouped": (
        (4, 3, 5),
        lambda net, x, b: _deconv(
            net, x, weights([4, 3, 3, 3]), b and 6, layout=(NCHW, NCHW, NCHW), group=(2,)
        ),
        6,
        1,
    ),
    "inner_product": (
        (3, 5),
        lambda net, x, b: net.add_i_inner_product_node(
            x, const(net, weights([7, 15])), const(net, weights([7])) if b else None
        ),
        7,
        1,
    ),
}


def _fold_net(case: str, batch: int, bias: bool) -> tuple[mm.Network, mm.INode, mm.INode]:
    dims, build, c, axis = FOLD_CASES[case]
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([batch, *dims]))
    main = build(net, x, bias)
    bn = batch_norm(net, main.get_output(0), c, axis)
    net.mark_output(bn.get_output(0))
    return net, main, bn


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_fold_batch_norm(case: str, bias: bool, batch: int) -> None:
    net, main, bn = _fold_net(case, batch, bias)
    if case == "deconv_nchw_grouped" and not bias:
        main.set_group(2)  # without a bias the shapes do not imply the group
    g = Graph.from_network(net)
    # "fp32": the folded weights are rounded to float32 once; products move by an ulp or two
    assert rewrite_keeps_numbers(g, fold_batch_norm, "fp32") == 1
    (node,) = g.nodes
    assert node.name == main.get_node_name() and node.fused == [bn.get_node_name()]
    assert node.outputs == [bn.get_output(0).get_tensor_name()] == g.outputs
    assert len(node.inputs) == 3 and all(g.tensors[t].is_const for t in node.inputs[1:])
    assert g.tensors[node.inputs[2]].value.dtype == np.float32
    assert node.precisions == [F32, F32, F32]
    # the old weights and the batch norm's parameters are gone
    assert not any(t.startswith("const_") for t in g.tensors)


def test_fold_batch_norm_by_hand() -> None:
    """The module docstring's example: W 2, b 1, mean 3, var 3, eps 1, gamma 4, beta 0.5."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([1, 1]))
    w, b = np.full((1, 1), 2.0, np.float32), np.ones(1, np.float32)
    ip = net.add_i_inner_product_node(x, const(net, w), const(net, b))
    ip.set_node_name("fc")
    one = [const(net, np.array([v], np.float32)) for v in (3.0, 3.0, 4.0, 0.5)]
    bn = net.add_i_fused_batch_norm_node(ip.get_output(0), *one, 1, 1.0)
    net.mark_output(bn.get_output(0))
    g = Graph.from_network(net)
    assert fold_batch_norm(g) == 1
    fc = g.node("fc")
    assert g.value(fc.inputs[1]).tolist() == [[4.0]] and g.value(fc.inputs[2]).tolist() == [-3.5]
    y = g.run_reference([np.array([[5.0]], np.float32)])[g.outputs[0]]
    assert y.tolist() == [[16.5]]


def test_fold_batch_norm_keeps_precisions_coherent_when_quantized() -> None:
    net, _, _ = _fold_net("conv_nhwc", 2, bias=False)
    net.get_input(0).set_dynamic_range(mm.Range(-3.0, 3.0))
    g = Graph.from_network(net, plan_precision(net, config("qint8_mixed_float16")))
    assert fold_batch_norm(g) == 1
    check_graph(g)
    (node,) = g.nodes
    # input and filter stay QINT8; the new bias runs in the batch norm's float type
    assert node.precisions == [Q8, Q8, F16] and node.output_types == [F16]


def _not_foldable(kind: str) -> mm.Network:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 4, 4, 4]))  # H = W = C: a wrong axis still infers
    conv = _conv(net, x, weights([4, 3, 3, 4]), 4, pad=(1, 1, 1, 1))
    t = conv.get_output(0)
    if kind == "read_elsewhere":
        bn = batch_norm(net, t, 4, 3)
        y = net.add_i_elementwise_node(bn.get_output(0), t, mm.IElementwise.ADD).get_output(0)
    elif kind == "conv_is_network_output":
        net.mark_output(t)
        y = batch_norm(net, t, 4, 3).get_output(0)
    elif kind == "wrong_axis":
        y = batch_norm(net, t, 4, 1).get_output(0)
    elif kind == "runtime_mean":
        mean = net.add_input(F32, mm.Dims([4]))
        params = [const(net, np.ones(4, np.float32)) for _ in range(3)]
        y = net.add_i_fused_batch_norm_node(t, mean, *params, 3, 1e-5).get_output(0)
    elif kind == "runtime_filter":
        w = net.add_input(F32, mm.Dims([4, 3, 3, 4]))
        t = net.add_i_conv_node(x, w).get_output(0)
        y = batch_norm(net, t, 4, 3).get_output(0)
    elif kind == "zero_variance_no_eps":
        p = [const(net, np.array(v, np.float32)) for v in ([0] * 4, [0, 1, 1, 1], [1] * 4, [0] * 4)]
        y = net.add_i_fused_batch_norm_node(t, *p, 3, 0.0).get_output(0)
    elif kind == "after_fused_activation":
        relu = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
        y = batch_norm(net, relu, 4, 3).get_output(0)
    net.mark_output(y)
    return net


@pytest.mark.parametrize(
    "kind",
    [
        "read_elsewhere",
        "conv_is_network_output",
        "wrong_axis",
        "runtime_mean",
        "runtime_filter",
        "zero_variance_no_eps",
        "after_fused_activation",
    ],
)
def test_fold_batch_norm_does_not_fire(kind: str) -> None:
    g = Graph.from_network(_not_foldable(kind))
    if kind == "after_fused_activation":
        assert fuse_activations(g) == 1
    n_nodes = len(g.nodes)
    assert rewrite_keeps_numbers(g, fold_batch_norm) == 0
    assert len(g.nodes) == n_nodes and "fused_batch_norm" in ops(g)


# -- fuse_activations --------------------------------------------------------------------------
ACTIVATIONS: dict[str, tuple[Callable[[mm.Network, mm.ITensor], mm.INode], dict]] = {
    "relu": (
        lambda net, t: net.add_i_activation_node(t, mm.IActivation.RELU),
        {"function": "relu"},
    ),
    "relu6": (
        lambda net, t: net.add_i_activation_node(t, mm.IActivation.RELU6),
        {"function": "clip", "lo": 0.0, "hi": 6.0},
    ),
    "leaky_relu": (
        lambda net, t: _leaky(net, t, 0.2),
        {"function": "leaky_relu", "alpha": 0.2},
    ),
    "clip": (
        lambda net, t: net.add_i_clip_node(t, -0.5, 0.75),
        {"function": "clip", "lo": -0.5, "hi": 0.75},
    ),
    "hard_sigmoid": (
        lambda net, t: _hard_sigmoid(net, t, 0.25, 0.375),
        {"function": "hard_sigmoid", "alpha": 0.25, "beta": 0.375},
    ),
    "hard_swish": (
        lambda net, t: net.add_i_activation_node(t, mm.IActivation.HARD_SWISH),
        {"function": "hard_swish"},
    ),
}


def _hard_sigmoid(net: mm.Network, t: mm.ITensor, alpha: float, beta: float) -> mm.INode:
    node = net.add_i_activation_node(t, mm.IActivation.HARD_SIGMOID)
    node.set_alpha(alpha)
    node.set_beta(beta)
    return node


def _leaky(net: mm.Network, t: mm.ITensor, alpha: float) -> mm.INode:
    node = net.add_i_activation_node(t, mm.IActivation.LEAKY_RELU)
    node.set_alpha(alpha)
    return node


# name -> (input shape, build(net, x) -> node)
PRODUCERS: dict[str, tuple[tuple[int, ...], Callable[[mm.Network, mm.ITensor], mm.INode]]] = {
    "conv": ((2, 5, 6, 3), lambda net, x: _conv(net, x, weights([5, 3, 3, 3], 2.0), 5)),
    "deconv": ((1, 3, 3, 4), lambda net, x: _deconv(net, x, weights([4, 2, 2, 3], 2.0), 3)),
    "inner_product": (
        (3, 7),
        lambda net, x: net.add_i_inner_product_node(x, const(net, weights([5, 7], 2.0))),
    ),
    "matmul": (
        (2, 3, 5),
        lambda net, x: net.add_i_matmul_node(x, const(net, weights([5, 4], 2.0))),
    ),
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_fuse_activation(producer: str, activation: str) -> None:
    dims, build = PRODUCERS[producer]
    make_act, expected = ACTIVATIONS[activation]
    net = mm.Network()
    main = build(net, net.add_input(F32, mm.Dims(dims)))
    act = make_act(net, main.get_output(0))
    net.mark_output(act.get_output(0))
    g = Graph.from_network(net)
    # leaky relu: the node multiplies by alpha in float64, the epilogue in float32 (one ulp)
    tolerance = "fp32" if activation == "leaky_relu" else "exact"
    assert rewrite_keeps_numbers(g, fuse_activations, tolerance) == 1
    (node,) = g.nodes
    assert node.attrs["activation"] == expected
    assert all(type(v) is (str if k == "function" else float) for k, v in expected.items())
    assert node.fused == [act.get_node_name()] and node.outputs == g.outputs


def test_fuse_activation_takes_over_output_types() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7]))
    fc = net.add_i_inner_product_node(x, const(net, weights([5, 7])))
    relu = net.add_i_activation_node(fc.get_output(0), mm.IActivation.RELU)
    relu.set_output_type(0, F16)
    net.mark_output(relu.get_output(0))
    g = Graph.from_network(net, plan_precision(net, config("force_float32")))
    assert fuse_activations(g) == 1
    check_graph(g)
    assert g.nodes[0].output_types == [F16]


def _fusion_net(kind: str) -> mm.Network:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 5, 5, 3]))
    t = _conv(net, x, weights([4, 3, 3, 3]), 4).get_output(0)
    if kind == "conv_is_network_output":
        net.mark_output(t)
        y = net.add_i_activation_node(t, mm.IActivation.RELU)
    elif kind == "precision_mismatch":
        y = net.add_i_activation_node(t, mm.IActivation.RELU)
        y.set_precision(0, F16)
    elif kind == "not_an_epilogue_function":
        y = net.add_i_activation_node(t, mm.IActivation.SIGMOID)
    elif kind == "producer_without_epilogue":
        add = net.add_i_elementwise_node(t, t, mm.IElementwise.ADD).get_output(0)
        y = net.add_i_activation_node(add, mm.IActivation.RELU)
    elif kind == "read_twice":
        relu = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
        y = net.add_i_elementwise_node(relu, t, mm.IElementwise.MUL)
    net.mark_output(y.get_output(0))
    return net


@pytest.mark.parametrize(
    "kind",
    [
        "conv_is_network_output",
        "precision_mismatch",
        "not_an_epilogue_function",
        "producer_without_epilogue",
        "read_twice",
    ],
)
def test_fuse_activation_does_not_fire(kind: str) -> None:
    net = _fusion_net(kind)
    g = Graph.from_network(net, plan_precision(net, config("force_float32")))
    n_nodes = len(g.nodes)
    assert rewrite_keeps_numbers(g, fuse_activations) == 0
    assert len(g.nodes) == n_nodes and not any("activation" in n.attrs for n in g.nodes)


def test_fuse_activation_once_per_node_unless_the_clamp_can_do_both() -> None:
    def fused(first: mm.IActivation) -> Graph:
        net = mm.Network()
        x = net.add_input(F32, mm.Dims([2, 5, 5, 3]))
        t = _conv(net, x, weights([4, 3, 3, 3], 3.0), 4).get_output(0)
        t = net.add_i_activation_node(t, first).get_output(0)
        net.mark_output(net.add_i_clip_node(t, -1.0, 1.0).get_output(0))
        g = Graph.from_network(net)
        rewrite_keeps_numbers(g, fuse_activations)
        return g

    # a hard swish has no clamp of its own left: the clip stays a node
    g = fused(mm.IActivation.HARD_SWISH)
    assert ops(g) == ["conv", "clip"]
    assert g.nodes[0].attrs["activation"] == {"function": "hard_swish"}
    # relu then clip(-1, 1) is clip(0, 1): one epilogue
    g = fused(mm.IActivation.RELU)
    assert ops(g) == ["conv"] and len(g.nodes[0].fused) == 2
    assert g.nodes[0].attrs["activation"] == {"function": "clip", "lo": 0.0, "hi": 1.0}


def test_fuse_activation_in_float16_when_both_sides_agree() -> None:
    net = _fusion_net("precision_mismatch")
    g = Graph.from_network(net, plan_precision(net, config("force_float16")))
    assert fuse_activations(g) == 1


# -- remove_dead_nodes -------------------------------------------------------------------------
def test_remove_dead_nodes() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 6]))
    halves = net.add_i_split_node(x, 1, 2)  # one output used, one dead: the split stays
    used = net.add_i_activation_node(halves.get_output(0), mm.IActivation.TANH)
    dead = net.add_i_elementwise_node(
        halves.get_output(1), const(net, weights([3])), mm.IElementwise.ADD
    )
    net.add_i_activation_node(dead.get_output(0), mm.IActivation.SIGMOID)
    net.mark_output(used.get_output(0))
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, remove_dead_nodes) == 2
    assert ops(g) == ["split", "activation"]
    assert not any(t.is_const for t in g.tensors.values())  # the dead branch's constant too
    assert rewrite_keeps_numbers(g, remove_dead_nodes) == 0


# -- the pipeline ------------------------------------------------------------------------------
def _sample_cnn() -> mm.Network:
    sys.path.insert(0, str(Path(__file__).parents[1] / "samples"))
    from sample_cnn import build_cnn

    return build_cnn()


def test_pipeline_on_the_sample_cnn(caplog: pytest.LogCaptureFixture) -> None:
    g = Graph.from_network(_sample_cnn())
    with caplog.at_level(logging.INFO, logger="mmbuild.passes"):
        counts = rewrite_keeps_numbers(g, run_passes_counts, "fp32")
    assert counts == 3  # one batch norm folded, two relus fused
    assert ops(g) == [
        "conv",
        "maxpool2d",
        "conv",
        "avgpool2d",
        "reshape",
        "inner_product",
        "softmax",
    ]
    conv1, conv2 = g.node("conv1"), g.node("conv2")
    assert conv1.fused == ["fused_batch_norm_0", "activation_0"]
    assert conv1.attrs["activation"] == conv2.attrs["activation"] == {"function": "relu"}
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"pass {p.__name__}" for p in PIPELINE
    ]


def run_passes_counts(graph: Graph) -> int:
    counts = run_passes(graph)
    assert list(counts) == [p.__name__ for p in PIPELINE]
    return sum(counts.values())


def test_run_passes_skip() -> None:
    g = Graph.from_network(_sample_cnn())
    counts = run_passes(g, skip=["fold_batch_norm"])
    # the batch norm stays, and takes the relu after it (the other relu goes into its conv)
    assert "fold_batch_norm" not in counts and counts["fuse_activations"] == 2
    (bn,) = [n for n in g.nodes if n.op == "fused_batch_norm"]
    assert bn.attrs["activation"] == {"function": "relu"}
    with pytest.raises(mm.MMError, match="fold_batchnorm.*fold_constants, fold_batch_norm"):
        run_passes(g, skip=["fold_batchnorm"])


def test_passes_have_names_and_docstrings_with_examples() -> None:
    names = [p.__name__ for p in PIPELINE]
    assert names == [
        "fold_constants",
        "fold_batch_norm",
        "clamp_as_clip",
        "fuse_hard_sigmoid",
        "fuse_hard_swish",
        "fuse_silu",
        "fold_channel_affine",
        "fold_affine_into_readers",
        "fold_hard_sigmoid",
        "fuse_activations",
        "fuse_affine_after_activation",
        "convert_layout",
        "cancel_permutes",
        "sink_permutes",
        "fold_input_normalization",
        "remove_dead_nodes",
    ]
    assert all("Before" in (p.__doc__ or "") and "After" in (p.__doc__ or "") for p in PIPELINE)
