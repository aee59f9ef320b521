"""Pointwise fusions (hard sigmoid, hard swish, SiLU) and the per-channel scale/shift fold:
numbers before and after, structure, and the cases where they must not fire."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from ortcheck import const
from test_passes import (
    _conv,
    _deconv,
    batch_norm,
    check_graph,
    config,
    ops,
    rewrite_keeps_numbers,
    weights,
)

import mmbuild as mm
from mmbuild.graph import Graph
from mmbuild.passes import (
    clamp_as_clip,
    fold_affine_into_readers,
    fold_batch_norm,
    fold_channel_affine,
    fold_hard_sigmoid,
    fuse_hard_sigmoid,
    fuse_hard_swish,
    fuse_silu,
    run_passes,
)
from mmbuild.precision import plan_precision

F32, F16 = mm.DataType.FLOAT32, mm.DataType.FLOAT16
NCHW = mm.Layout.NCHW
E = mm.IElementwise


def scalar(net: mm.Network, v: float, rank: int = 0) -> mm.ITensor:
    return const(net, np.full((1,) * rank, v, np.float32))


def ew(net: mm.Network, a: mm.ITensor, b: mm.ITensor, mode: E) -> mm.ITensor:
    return net.add_i_elementwise_node(a, b, mode).get_output(0)


def relu6_x_plus_3(net: mm.Network, x: mm.ITensor, use_relu6: bool = False) -> mm.ITensor:
    t = ew(net, x, scalar(net, 3.0), E.ADD)
    if use_relu6:
        return net.add_i_activation_node(t, mm.IActivation.RELU6).get_output(0)
    return net.add_i_clip_node(t, 0.0, 6.0).get_output(0)


def by_six(net: mm.Network, t: mm.ITensor, multiply: bool) -> mm.ITensor:
    if multiply:
        return ew(net, scalar(net, 1 / 6, 1), t, E.MUL)
    return ew(net, t, scalar(net, 6.0), E.DIV)


def hard_sigmoid_node(net: mm.Network, x: mm.ITensor, alpha: float, beta: float) -> mm.ITensor:
    node = net.add_i_activation_node(x, mm.IActivation.HARD_SIGMOID)
    node.set_alpha(alpha)
    node.set_beta(beta)
    return node.get_output(0)


def graph_of(
    body: Callable[[mm.Network, mm.ITensor], mm.ITensor], dims: tuple[int, ...] = (2, 3, 4, 5)
) -> tuple[Graph, mm.Network]:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims(list(dims)))
    net.mark_output(body(net, x))
    return Graph.from_network(net), net


HSWISH_FORMS: dict[str, Callable[[mm.Network, mm.ITensor], mm.ITensor]] = {
    "x*clip(x+3,0,6)/6": lambda net, x: by_six(net, ew(net, x, relu6_x_plus_3(net, x), E.MUL),
                                               False),
    "clip(x+3,0,6)*x*(1/6)": lambda net, x: by_six(net, ew(net, relu6_x_plus_3(net, x), x, E.MUL),
                                                   True),
    "x*(relu6(x+3)/6)": lambda net, x: ew(net, x, by_six(net, relu6_x_plus_3(net, x, True), False),
                                          E.MUL),
    "(clip(x+3,0,6)*(1/6))*x": lambda net, x: ew(net, by_six(net, relu6_x_plus_3(net, x), True),
                                                 x, E.MUL),
    "x*hard_sigmoid(x)": lambda net, x: ew(net, x, hard_sigmoid_node(net, x, 1 / 6, 0.5), E.MUL),
}  # fmt: skip


@pytest.mark.parametrize("form", sorted(HSWISH_FORMS))
def test_hard_swish_forms_become_one_activation(form: str) -> None:
    g, _ = graph_of(lambda net, x: HSWISH_FORMS[form](net, ew(net, x, scalar(net, 4.0), E.MUL)))
    scale = g.nodes[0]  # x * 4 reaches past the kinks of the clip at -3 and 3
    output = g.outputs[0]

    def both(graph: Graph) -> int:
        return fuse_hard_sigmoid(graph) + fuse_hard_swish(graph)

    # the forms with a gate "clip(x + 3, 0, 6) / 6" fuse it first, then the product
    gate_first = form in ("x*(relu6(x+3)/6)", "(clip(x+3,0,6)*(1/6))*x")
    assert rewrite_keeps_numbers(g, both, "fp32") == (2 if gate_first else 1)
    assert ops(g) == ["elementwise", "activation"]
    (act,) = g.nodes[1:]
    assert act.attrs["mode"] is mm.IActivation.HARD_SWISH
    assert act.inputs == scale.outputs and act.outputs == [output]
    assert len(act.fused) >= 1 and act.name not in act.fused
    assert [t for t, v in g.tensors.items() if v.is_const] == scale.inputs[1:]  # the rest went


def test_hard_swish_values_by_hand() -> None:
    g, _ = graph_of(HSWISH_FORMS["x*clip(x+3,0,6)/6"], (7,))
    x = np.array([-4.0, -3.0, -1.5, 0.0, 1.0, 3.0, 5.0], np.float32)
    expected = np.array([0.0, 0.0, -0.375, 0.0, 2 / 3, 3.0, 5.0], np.float32)
    np.testing.assert_allclose(g.run_reference([x])[g.outputs[0]], expected, rtol=1e-6, atol=0)
    assert fuse_hard_swish(g) == 1 and ops(g) == ["activation"]
    np.testing.assert_allclose(g.run_reference([x])[g.outputs[0]], expected, rtol=1e-6, atol=0)


def test_hard_sigmoid_from_clip_chain() -> None:
    g, _ = graph_of(lambda net, x: by_six(net, relu6_x_plus_3(net, x), False))
    assert rewrite_keeps_numbers(g, fuse_hard_sigmoid, "fp32") == 1
    (node,) = g.nodes
    assert node.attrs == {"mode": mm.IActivation.HARD_SIGMOID, "alpha": 1 / 6, "beta": 0.5}
    assert len(node.fused) == 2


def test_silu_either_side() -> None:
    for order in (0, 1):

        def body(net: mm.Network, x: mm.ITensor, order: int = order) -> mm.ITensor:
            s = net.add_i_activation_node(x, mm.IActivation.SIGMOID).get_output(0)
            return ew(net, *((x, s) if order == 0 else (s, x)), E.MUL)

        g, _ = graph_of(body)
        assert rewrite_keeps_numbers(g, fuse_silu, "fp32") == 1
        (node,) = g.nodes
        assert node.attrs["mode"] is mm.IActivation.SILU and node.inputs == g.inputs


@pytest.mark.parametrize("mode, const_first", [(E.MAX, False), (E.MAX, True), (E.MIN, False)])
def test_max_or_min_with_a_scalar_becomes_a_clip(mode: E, const_first: bool) -> None:
    def body(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
        c = scalar(net, 0.5, rank=2)
        return ew(net, *((c, x) if const_first else (x, c)), mode)

    g, _ = graph_of(body)
    assert rewrite_keeps_numbers(g, clamp_as_clip) == 1
    (clip,) = g.nodes
    bounds = (0.5, np.inf) if mode is E.MAX else (-np.inf, 0.5)
    assert clip.op == "clip" and (clip.attrs["lo"], clip.attrs["hi"]) == bounds
    assert clip.inputs == g.inputs and not [t for t in g.tensors.values() if t.is_const]


def test_max_with_zero_fuses_into_the_conv_as_a_relu_would() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    y = ew(net, _conv_then(net, x, False, True), scalar(net, 0.0), E.MAX)
    net.mark_output(y)
    g = Graph.from_network(net)
    inputs = [np.random.default_rng(3).normal(size=(2, 7, 5, 4)).astype(np.float32)]
    before = g.run_reference(inputs)[g.outputs[0]]
    assert before.min() == 0.0 and (before > 0).any()  # the max clamps some values, not all
    run_passes(g)
    assert ops(g) == ["conv"]
    assert g.nodes[0].attrs["activation"] == {"function": "clip", "lo": 0.0, "hi": np.inf}
    np.testing.assert_array_equal(g.run_reference(inputs)[g.outputs[0]], before)


@pytest.mark.parametrize("case", ["vector", "nan", "two_tensors", "widening"])
def test_max_becomes_no_clip(case: str) -> None:
    def body(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
        other = {
            "vector": lambda: const(net, np.zeros(5, np.float32)),
            "nan": lambda: scalar(net, np.nan),
            "two_tensors": lambda: ew(net, x, scalar(net, 2.0), E.MUL),
            "widening": lambda: const(net, np.zeros((1, 1, 1, 1, 1), np.float32)),
        }[case]()
        return ew(net, x, other, E.MAX)

    g, _ = graph_of(body)
    before = ops(g)
    assert clamp_as_clip(g) == 0 and ops(g) == before


def test_compose_activations_examples_and_refusals() -> None:
    import doctest

    from mmbuild.passes import fuse

    assert doctest.testmod(fuse).failed == 0
    clip = {"function": "clip", "lo": 7.0, "hi": 9.0}
    assert fuse.compose_activations({"function": "clip", "lo": 0.0, "hi": 6.0}, clip) is None
    assert fuse.compose_activations({"function": "hard_swish"}, clip) is None
    assert fuse.compose_activations({"function": "relu"}, {"function": "relu"}) is None
    leaky = {"function": "leaky_relu", "alpha": 0.2}
    assert fuse.compose_activations(leaky, clip) is None  # an upper bound needs a second clamp


@pytest.mark.parametrize("producer", ["leaky", "relu"])
def test_a_clip_after_a_fused_activation_joins_it(producer: str) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    t = _conv_then(net, x, False, True)
    node = net.add_i_activation_node(
        t, mm.IActivation.LEAKY_RELU if producer == "leaky" else mm.IActivation.RELU
    )
    if producer == "leaky":
        node.set_alpha(0.2)
    lo, hi = (-0.4, np.inf) if producer == "leaky" else (0.5, 2.0)
    net.mark_output(net.add_i_clip_node(node.get_output(0), lo, hi).get_output(0))
    g = Graph.from_network(net)
    inputs = [np.random.default_rng(3).normal(size=(2, 7, 5, 4)).astype(np.float32)]
    before = g.run_reference(inputs)[g.outputs[0]]
    assert (before == np.float32(lo)).any()  # the clip bites
    run_passes(g)
    assert ops(g) == ["conv"] and len(g.nodes[0].fused) == 2
    want = ({"function": "leaky_relu", "alpha": np.float32(0.2), "lo": lo} if producer == "leaky"
            else {"function": "clip", "lo": lo, "hi": hi})  # fmt: skip
    assert g.nodes[0].attrs["activation"] == want
    # the leaky relu node computes its product in float64 (a last-ulp difference), the
    # epilogue in float32
    after = g.run_reference(inputs)[g.outputs[0]]
    np.testing.assert_allclose(after, before, rtol=2e-7 if producer == "leaky" else 0, atol=0)


def test_activations_after_a_batch_norm_that_stays_fuse_into_it() -> None:
    # openWakeWord: conv -> relu -> batch norm -> leaky relu -> max(x, -0.4); the batch norm
    # after the relu cannot fold into the conv, and takes the two activations after it
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    t = net.add_i_activation_node(_conv_then(net, x, False, True), mm.IActivation.RELU)
    t = batch_norm(net, t.get_output(0), 6, 3).get_output(0)
    leaky = net.add_i_activation_node(t, mm.IActivation.LEAKY_RELU)
    leaky.set_alpha(0.2)
    net.mark_output(ew(net, leaky.get_output(0), scalar(net, -0.4), E.MAX))
    g = Graph.from_network(net)
    rewrite_keeps_numbers(g, lambda graph: sum(run_passes(graph).values()), "fp32")
    assert ops(g) == ["conv", "fused_batch_norm"]
    conv, bn = g.nodes
    assert conv.attrs["activation"] == {"function": "relu"}
    assert bn.attrs["activation"] == {"function": "leaky_relu", "alpha": np.float32(0.2),
                                      "lo": np.float32(-0.4)}  # fmt: skip


NOT_FUSED: dict[str, Callable[[mm.Network, mm.ITensor], mm.ITensor]] = {
    # clip(x + 3, 0, 5) / 6 is no hard sigmoid
    "other_clip": lambda net, x: by_six(
        net, net.add_i_clip_node(ew(net, x, scalar(net, 3.0), E.ADD), 0.0, 5.0).get_output(0),
        False),
    # / 5
    "other_divisor": lambda net, x: ew(net, relu6_x_plus_3(net, x), scalar(net, 5.0), E.DIV),
    # 6 / clip(...) is not clip(...) / 6
    "divisor_first": lambda net, x: ew(net, scalar(net, 6.0), relu6_x_plus_3(net, x), E.DIV),
    # x + [3, 3, 3, 3, 3]: a constant of several values (even equal ones) is no scalar
    "vector_constant": lambda net, x: by_six(net, net.add_i_clip_node(
        ew(net, x, const(net, np.full(5, 3.0, np.float32)), E.ADD), 0.0, 6.0).get_output(0),
        False),
    # ONNX's default hard sigmoid (alpha 0.2) times x is no hard swish
    "onnx_default_hard_sigmoid": lambda net, x: ew(net, x, hard_sigmoid_node(net, x, 0.2, 0.5),
                                                   E.MUL),
    # x * sigmoid(z), z != x
    "sigmoid_of_another": lambda net, x: ew(
        net, x, net.add_i_activation_node(ew(net, x, scalar(net, 2.0), E.MUL),
                                          mm.IActivation.SIGMOID).get_output(0), E.MUL),
    # the sigmoid is read twice
    "gate_read_twice": lambda net, x: ew(
        net, ew(net, x, s := net.add_i_activation_node(x, mm.IActivation.SIGMOID).get_output(0),
                E.MUL), s, E.ADD),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NOT_FUSED))
def test_pointwise_fusions_do_not_fire(case: str) -> None:
    g, _ = graph_of(NOT_FUSED[case])
    before = ops(g)
    passes = (fuse_hard_sigmoid, fuse_hard_swish, fuse_silu)
    assert rewrite_keeps_numbers(g, lambda graph: sum(p(graph) for p in passes)) == 0
    assert ops(g) == before


def test_pointwise_fusion_does_not_fire_when_an_inner_tensor_is_an_output() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 5]))
    r = relu6_x_plus_3(net, x)
    net.mark_output(r)
    net.mark_output(by_six(net, r, False))
    g = Graph.from_network(net)
    assert fuse_hard_sigmoid(g) == 0 and len(g.nodes) == 3


def test_pointwise_fusion_does_not_fire_across_types() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 5]))
    s = net.add_i_activation_node(x, mm.IActivation.SIGMOID)
    s.set_output_type(0, F16)
    mul = net.add_i_elementwise_node(x, s.get_output(0), E.MUL)
    mul.set_precision(0, F16)
    mul.set_precision(1, F16)
    net.mark_output(mul.get_output(0))
    g = Graph.from_network(net, plan_precision(net, config("force_float32")))
    assert fuse_silu(g) == 0


def test_silu_in_float16() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 5]))
    s = net.add_i_activation_node(x, mm.IActivation.SIGMOID).get_output(0)
    net.mark_output(ew(net, x, s, E.MUL))
    g = Graph.from_network(net, plan_precision(net, config("force_float16")))
    assert fuse_silu(g) == 1
    check_graph(g)
    assert g.nodes[0].precisions == [F16]


# -- fold_channel_affine -----------------------------------------------------------------------
def _conv_then(net: mm.Network, x: mm.ITensor, nchw: bool, bias: bool) -> mm.ITensor:
    if nchw:
        node = _conv(net, x, weights([6, 4, 3, 3]), 6 if bias else None, pad=(1, 1, 1, 1))
        node.set_layout(NCHW, NCHW, NCHW)
    else:
        node = _conv(net, x, weights([6, 3, 3, 4]), 6 if bias else None, pad=(1, 1, 1, 1))
    return node.get_output(0)


def _per_channel(net: mm.Network, nchw: bool, values: np.ndarray) -> mm.ITensor:
    return const(net, values.reshape((1, 6, 1, 1) if nchw else (6,)).astype(np.float32))


@pytest.mark.parametrize("nchw", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mode", ["mul_add", "div_sub", "scalar_mul", "const_first_mul"])
def test_fold_channel_affine_into_conv(nchw: bool, bias: bool, mode: str) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 4, 7, 5] if nchw else [2, 7, 5, 4]))
    t = _conv_then(net, x, nchw, bias)
    s = np.random.default_rng(3).uniform(0.5, 2.0, 6)
    c = np.random.default_rng(4).normal(0, 1, 6)
    if mode == "mul_add":
        t = ew(net, ew(net, t, _per_channel(net, nchw, s), E.MUL), _per_channel(net, nchw, c),
               E.ADD)  # fmt: skip
    elif mode == "div_sub":
        t = ew(net, ew(net, t, _per_channel(net, nchw, s), E.DIV), _per_channel(net, nchw, c),
               E.SUB)  # fmt: skip
    elif mode == "scalar_mul":
        t = ew(net, t, scalar(net, 2.5, 1), E.MUL)
    else:
        t = ew(net, _per_channel(net, nchw, s), t, E.MUL)
    net.mark_output(t)
    g = Graph.from_network(net)
    expected = 1 if mode in ("scalar_mul", "const_first_mul") else 2
    assert rewrite_keeps_numbers(g, fold_channel_affine, "fp32") == expected
    (conv,) = g.nodes
    assert conv.op == "conv" and len(conv.inputs) == 3 and len(conv.fused) == expected
    assert conv.outputs == g.outputs


def test_a_batch_norm_after_a_bias_add_folds_with_it() -> None:
    # a deconv whose bias is a separate add, then a batch norm: DBNet's head as exported
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 5, 6, 4]))
    t = _deconv(net, x, weights([4, 2, 2, 6]), None, stride=(2, 2)).get_output(0)
    t = ew(net, t, _per_channel(net, False, np.arange(6.0)), E.ADD)
    net.mark_output(batch_norm(net, t, 6, 3).get_output(0))
    g = Graph.from_network(net)
    assert ops(g) == ["deconv", "elementwise", "fused_batch_norm"]
    assert rewrite_keeps_numbers(g, fold_batch_norm, "fp32") == 1
    (deconv,) = g.nodes
    assert deconv.op == "deconv" and len(deconv.fused) == 2 and len(deconv.inputs) == 3


def test_fold_channel_affine_into_inner_product_by_hand() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([1, 1]))
    fc = net.add_i_inner_product_node(x, const(net, np.array([[2.0]], np.float32)),
                                      const(net, np.array([1.0], np.float32)))  # fmt: skip
    net.mark_output(ew(net, fc.get_output(0), scalar(net, 3.0, 2), E.MUL))
    g = Graph.from_network(net)
    assert fold_channel_affine(g) == 1
    (node,) = g.nodes
    w, b = (g.value(t) for t in node.inputs[1:])
    assert w is not None and b is not None
    assert (float(w[0, 0]), float(b[0])) == (6.0, 3.0)  # (2x + 1) * 3 = 6x + 3


CHANNEL_NOT_FOLDED = ["across_channels", "const_minus_t", "const_over_t", "t_read_twice",
                      "fused_activation", "zero_divisor", "widens", "conv_is_output"]  # fmt: skip


@pytest.mark.parametrize("case", CHANNEL_NOT_FOLDED)
def test_fold_channel_affine_does_not_fire(case: str) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    conv = _conv(net, x, weights([6, 3, 3, 4]), 6, pad=(1, 1, 1, 1))
    t = conv.get_output(0)
    s6 = const(net, np.linspace(0.5, 2, 6).astype(np.float32))
    if case == "across_channels":  # varies along W, not C
        y = ew(net, t, const(net, np.linspace(1, 2, 5).reshape(5, 1).astype(np.float32)), E.MUL)
    elif case == "const_minus_t":
        y = ew(net, s6, t, E.SUB)
    elif case == "const_over_t":
        y = ew(net, s6, t, E.DIV)
    elif case == "t_read_twice":
        y = ew(net, ew(net, t, s6, E.MUL), t, E.ADD)
    elif case == "fused_activation":
        t = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
        y = ew(net, t, s6, E.MUL)
    elif case == "zero_divisor":
        y = ew(net, t, const(net, np.array([1, 2, 0, 1, 1, 1], np.float32)), E.DIV)
    elif case == "widens":
        y = ew(net, t, const(net, np.ones((3, 1, 1, 1, 6), np.float32)), E.MUL)
    else:
        net.mark_output(t)
        y = ew(net, t, s6, E.MUL)
    net.mark_output(y)
    g = Graph.from_network(net)
    if case == "fused_activation":
        from mmbuild.passes import fuse_activations

        assert fuse_activations(g) == 1
    n = len(g.nodes)
    assert rewrite_keeps_numbers(g, fold_channel_affine, "fp32") == 0
    assert len(g.nodes) == n


# -- fold_hard_sigmoid -------------------------------------------------------------------------
@pytest.mark.parametrize("producer", ["conv", "inner_product"])
def test_fold_hard_sigmoid_into_the_producer(producer: str) -> None:
    net = mm.Network()
    if producer == "conv":
        x = net.add_input(F32, mm.Dims([2, 1, 1, 8]))
        t = _conv(net, x, weights([6, 1, 1, 8], 2.0), 6).get_output(0)
    else:
        x = net.add_input(F32, mm.Dims([2, 8]))
        t = net.add_i_inner_product_node(x, const(net, weights([6, 8], 2.0))).get_output(0)
    net.mark_output(hard_sigmoid_node(net, t, 0.2, 0.5))  # ONNX's default alpha too
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, fold_hard_sigmoid, "fp32") == 1
    (node,) = g.nodes
    assert node.op == producer and node.attrs["activation"]["hi"] == 1.0


def test_fold_hard_sigmoid_does_not_fire() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 1, 1, 8]))
    t = net.add_i_activation_node(_conv(net, x, weights([6, 1, 1, 8]), 6).get_output(0),
                                  mm.IActivation.RELU).get_output(0)  # fmt: skip
    h = hard_sigmoid_node(net, t, 1 / 6, 0.5)  # it reads a relu, not the conv
    net.mark_output(h)
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, fold_hard_sigmoid) == 0 and len(g.nodes) == 3


# -- the pipeline on a MobileNetV3-style gate ------------------------------------------------
def test_pipeline_turns_conv_gates_into_few_steps() -> None:
    """conv -> x * clip(x + 3, 0, 6) / 6, then an SE-like gate: conv -> relu6(. + 3) / 6 -> mul."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([1, 6, 5, 4]))
    t = _conv(net, x, weights([8, 3, 3, 4]), 8, pad=(1, 1, 1, 1)).get_output(0)
    t = HSWISH_FORMS["x*clip(x+3,0,6)/6"](net, t)
    g_in = _conv(net, t, weights([8, 1, 1, 8]), 8).get_output(0)
    gate = by_six(net, relu6_x_plus_3(net, g_in, True), True)
    net.mark_output(ew(net, t, gate, E.MUL))
    g = Graph.from_network(net)
    counts: dict[str, int] = {}

    def pipeline(graph: Graph) -> int:
        counts.update(run_passes(graph))
        return sum(counts.values())

    rewrite_keeps_numbers(g, pipeline, "fp32")
    assert ops(g) == ["conv", "conv", "elementwise"]
    assert g.nodes[0].attrs["activation"] == {"function": "hard_swish"}  # the conv's epilogue
    gate_conv = g.nodes[1]  # the hard sigmoid went into its weights and a clip epilogue
    assert gate_conv.attrs["activation"] == {"function": "clip", "lo": 0.0, "hi": 1.0}
    assert counts["fuse_hard_sigmoid"] == 1 and counts["fuse_hard_swish"] == 1
    assert counts["fold_hard_sigmoid"] == 1 and counts["fuse_activations"] == 1


@pytest.mark.parametrize("mode", ["force_float32", "force_float16", "qint8_mixed_float32"])
def test_fused_activations_build_and_run_close_to_the_chain(mode: str) -> None:
    def make() -> mm.Network:
        net = mm.Network()
        x = net.add_input(F32, mm.Dims([2, 6, 5, 4]))
        x.set_dynamic_range(mm.Range(-4, 4))
        t = _conv(net, x, np.full((8, 3, 3, 4), 0.1, np.float32), None, pad=(1, 1, 1, 1))
        t.get_output(0).set_dynamic_range(mm.Range(-5, 5))
        h = HSWISH_FORMS["x*clip(x+3,0,6)/6"](net, ew(net, t.get_output(0), scalar(net, 2.0),
                                                       E.MUL))  # fmt: skip
        s = net.add_i_activation_node(h, mm.IActivation.SIGMOID).get_output(0)
        net.mark_output(ew(net, h, s, E.MUL))
        for node in net.get_all_nodes_in_network():
            for o in node.outputs:
                if o.get_dynamic_range() is None:
                    o.set_dynamic_range(mm.Range(-10, 10))
        return net

    x = np.random.default_rng(5).uniform(-4, 4, (2, 6, 5, 4)).astype(np.float32)
    model = mm.Builder().build_model("gates", make(), config(mode))
    steps = [s for s in model.data.steps if s.op != "cast"]
    assert [s.op for s in steps] == ["conv", "activation"]  # conv[* 2, hard swish], silu
    assert steps[0].op_attrs["activation"] == {"function": "hard_swish"}
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(x)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    expected = mm.run_reference(make(), [x])
    (want,) = expected.values()
    tol = {"force_float32": 1e-5, "force_float16": 2e-2, "qint8_mixed_float32": 5e-2}[mode]
    np.testing.assert_allclose(outputs[0].asnumpy().astype(np.float32), want, rtol=tol, atol=tol)


# -- fold_affine_into_readers ------------------------------------------------------------------
def _affine_then(net: mm.Network, t: mm.ITensor, form: str) -> mm.ITensor:
    """PPLCNetV3's learnable affine block after a hard swish: ``t * 1.5 + 0.25``."""
    t = net.add_i_activation_node(t, mm.IActivation.HARD_SWISH).get_output(0)
    if "mul" in form:
        t = (
            ew(net, scalar(net, 1.5), t, E.MUL)
            if "first" in form
            else ew(net, t, scalar(net, 1.5, 1), E.MUL)
        )
    if "add" in form:
        t = ew(net, t, scalar(net, 0.25), E.ADD)
    return t


@pytest.mark.parametrize("form", ["mul_add", "const_first_mul_add", "mul", "add"])
def test_a_scalar_affine_folds_into_the_unpadded_convs_reading_it(form: str) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    t = _affine_then(net, _conv_then(net, x, False, True), form)
    one = _conv(net, t, weights([3, 1, 1, 6]), 3).get_output(0)  # 1x1
    valid = _conv(net, t, weights([2, 3, 3, 6]), None).get_output(0)  # 3x3 unpadded, no bias
    net.mark_output(one)
    net.mark_output(valid)
    g = Graph.from_network(net)
    assert rewrite_keeps_numbers(g, fold_affine_into_readers, "fp32") == 1
    assert ops(g) == ["conv", "activation", "conv", "conv"]
    act, first, second = g.nodes[1:]
    assert first.inputs[0] == second.inputs[0] == act.outputs[0]
    assert len(second.inputs) == 3  # the 3x3 conv gained a bias: b * sum(W)
    assert len(first.fused) == len(second.fused) == ("mul" in form) + ("add" in form)


@pytest.mark.parametrize("case", ["padded_reader", "pool_reader", "network_output", "vector"])
def test_a_scalar_affine_does_not_fold_forward(case: str) -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    t = net.add_i_activation_node(_conv_then(net, x, False, True),
                                  mm.IActivation.HARD_SWISH).get_output(0)  # fmt: skip
    scale = const(net, np.full(6, 1.5, np.float32)) if case == "vector" else scalar(net, 1.5)
    t = ew(net, t, scale, E.MUL)
    pad = (1, 1, 1, 1) if case == "padded_reader" else (0, 0, 0, 0)
    net.mark_output(_conv(net, t, weights([3, 3, 3, 6]), 3, pad=pad).get_output(0))
    if case == "pool_reader":
        net.mark_output(net.add_i_maxpool2d_node(t).get_output(0))
    if case == "network_output":
        net.mark_output(t)
    g = Graph.from_network(net)
    before = ops(g)
    assert fold_affine_into_readers(g) == 0 and ops(g) == before


@pytest.mark.parametrize("mode", ["force_float32", "force_float16", "qint8_mixed_float16"])
def test_a_batch_norm_with_a_fused_activation_runs_as_its_reference(mode: str) -> None:
    from mmbuild.runtime.inspect import validate

    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 7, 5, 4]))
    x.set_dynamic_range(mm.Range(-4, 4))
    t = net.add_i_activation_node(_conv_then(net, x, False, True), mm.IActivation.RELU)
    t = batch_norm(net, t.get_output(0), 6, 3).get_output(0)
    leaky = net.add_i_activation_node(t, mm.IActivation.LEAKY_RELU)
    leaky.set_alpha(0.2)
    y = ew(net, leaky.get_output(0), scalar(net, -0.4), E.MAX)
    net.mark_output(_conv(net, y, weights([3, 1, 1, 6]), 3).get_output(0))
    for node in net.get_all_nodes_in_network():
        for o in node.outputs:
            o.set_dynamic_range(mm.Range(-10, 10))
    model = mm.Builder().build_model("bn_act", net, config(mode))
    bn = next(s for s in model.data.steps if s.op == "fused_batch_norm")
    assert bn.op_attrs["activation"]["function"] == "leaky_relu"
    assert [s.op for s in model.data.steps if s.op != "cast"] == [
        "conv",
        "fused_batch_norm",
        "conv",
    ]
    xs = np.random.default_rng(5).uniform(-4, 4, (2, 7, 5, 4)).astype(np.float32)
    report = validate(model, xs)
    assert report.ok(), str(report)
