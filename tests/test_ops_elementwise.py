"""Activations, clip and binary elementwise ops: golden cases, onnxruntime, shapes and refusals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from ortcheck import assert_close, run_mm, run_onnx

import mmbuild as mm

RNG = np.random.default_rng(11)
# a spread of values, the saturating extremes and the kinks (0, +-3, +-6) of the functions
X = np.concatenate(
    [
        RNG.standard_normal(64) * 4,
        [-1000.0, -100.0, -6.0, -3.0, -1e-3, 0.0, 1e-3, 3.0, 6.0, 100.0, 1000.0],
    ]
).astype(np.float32)


def activation(
    mode: mm.IActivation, alpha: float | None = None, beta: float | None = None
) -> Callable[[mm.Network, list[mm.ITensor]], mm.ITensor]:
    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        node = net.add_i_activation_node(xs[0], mode)
        if alpha is not None:
            assert node.set_alpha(alpha).ok()
        if beta is not None:
            assert node.set_beta(beta).ok()
        return node.get_output(0)

    return build


def one_node(
    dims: list[int], dtype: mm.DataType = mm.DataType.FLOAT32
) -> tuple[mm.Network, mm.ITensor]:
    net = mm.Network()
    return net, net.add_input(dtype, mm.Dims(dims))


# -- activations ---------------------------------------------------------------------------------
def test_activation_golden() -> None:
    x = np.array([-1.5, 0.0, 2.0, 7.0], np.float32)
    cases = {
        mm.IActivation.RELU: [0, 0, 2, 7],
        mm.IActivation.RELU6: [0, 0, 2, 6],
        mm.IActivation.LEAKY_RELU: [-0.015, 0, 2, 7],
        mm.IActivation.HARD_SIGMOID: [0.2, 0.5, 0.9, 1.0],
        mm.IActivation.HARD_SWISH: [-0.5 * 1.5 / 2, 0, 2 * 5 / 6, 7],
    }
    for mode, expected in cases.items():
        (y,) = run_mm(activation(mode), [x])
        np.testing.assert_allclose(y, np.array(expected, np.float32), rtol=1e-6, err_msg=mode.name)


# mode -> (ONNX op, attributes, opset, tolerance); the default alpha / beta of each function
ONNX_ACTIVATIONS = {
    mm.IActivation.RELU: ("Relu", {}, 17, "exact"),
    mm.IActivation.SIGMOID: ("Sigmoid", {}, 17, "transcendental"),
    mm.IActivation.TANH: ("Tanh", {}, 17, "transcendental"),
    mm.IActivation.GELU: ("Gelu", {}, 20, "transcendental"),
    mm.IActivation.LEAKY_RELU: ("LeakyRelu", {}, 17, "fp32"),
    mm.IActivation.HARD_SIGMOID: ("HardSigmoid", {}, 17, "fp32"),
    mm.IActivation.HARD_SWISH: ("HardSwish", {}, 17, "fp32"),
    mm.IActivation.ELU: ("Elu", {}, 17, "transcendental"),
}


@pytest.mark.parametrize("mode", list(ONNX_ACTIVATIONS), ids=lambda m: m.name)
def test_activation_matches_onnxruntime(mode: mm.IActivation) -> None:
    op, attrs, opset, tol = ONNX_ACTIVATIONS[mode]
    (expected,) = run_onnx(op, [X], attrs, opset=opset)
    (y,) = run_mm(activation(mode), [X])
    assert_close(y, expected, tol)


def test_relu6_matches_onnxruntime_clip() -> None:
    bounds = {"min": np.array(0, np.float32), "max": np.array(6, np.float32)}
    (expected,) = run_onnx("Clip", [X], initializers=bounds)
    (y,) = run_mm(activation(mm.IActivation.RELU6), [X])
    assert_close(y, expected, "exact")


def test_silu_matches_x_times_onnxruntime_sigmoid() -> None:
    (sig,) = run_onnx("Sigmoid", [X])
    (y,) = run_mm(activation(mm.IActivation.SILU), [X])
    assert_close(y, X * sig, "transcendental")


@pytest.mark.parametrize(
    ("mode", "op", "alpha", "beta"),
    [
        (mm.IActivation.LEAKY_RELU, "LeakyRelu", 0.3, None),
        (mm.IActivation.ELU, "Elu", 0.5, None),
        (mm.IActivation.HARD_SIGMOID, "HardSigmoid", 1 / 6, 0.4),
    ],
)
def test_alpha_and_beta_match_onnxruntime(
    mode: mm.IActivation, op: str, alpha: float, beta: float | None
) -> None:
    attrs = {"alpha": alpha, **({"beta": beta} if beta is not None else {})}
    (expected,) = run_onnx(op, [X], attrs)
    (y,) = run_mm(activation(mode, alpha, beta), [X])
    assert_close(y, expected, "transcendental" if mode is mm.IActivation.ELU else "fp32")


def test_gelu_is_the_erf_form() -> None:
    from math import erf

    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0], np.float32)
    expected = [v / 2 * (1 + erf(v / np.sqrt(2))) for v in x.astype(np.float64)]
    (y,) = run_mm(activation(mm.IActivation.GELU), [x])
    np.testing.assert_allclose(y, np.array(expected, np.float32), rtol=1e-6)


def test_activation_parameters_and_refusals() -> None:
    net, x = one_node([-1, 4])
    leaky = net.add_i_activation_node(x, mm.IActivation.LEAKY_RELU)
    assert leaky.get_alpha() == 0.01 and leaky.get_beta() is None
    assert leaky.SetAlpha(0.2).ok() and leaky.get_alpha() == 0.2
    assert leaky.get_output(0).get_dimension() == mm.Dims([-1, 4])
    hs = net.add_i_activation_node(x, mm.IActivation.HARD_SIGMOID)
    assert (hs.get_alpha(), hs.get_beta()) == (0.2, 0.5)
    relu = net.add_i_activation_node(x, mm.IActivation.RELU)
    assert relu.get_node_type() == "IActivationNode" and relu.policy is mm.Policy.NEVER
    with pytest.raises(mm.MMError, match="RELU has no alpha; only LEAKY_RELU, HARD_SIGMOID, ELU"):
        relu.set_alpha(0.1)
    with pytest.raises(mm.MMError, match="ELU has no beta; only HARD_SIGMOID take"):
        net.add_i_activation_node(x, mm.IActivation.ELU).set_beta(0.1)
    with pytest.raises(mm.MMError, match="alpha must be a finite number, not nan"):
        leaky.set_alpha(float("nan"))
    with pytest.raises(mm.MMError, match="alpha must be a finite number, not 'big'"):
        leaky.set_alpha("big")  # type: ignore[arg-type]
    assert leaky.get_alpha() == 0.2
    with pytest.raises(
        mm.MMError,
        match=r"argument 'mode': expected an mm\.IActivation .*e\.g\. mm\.IActivation\.RELU",
    ):
        net.add_i_activation_node(x, "relu")
    _, i = one_node([4], mm.DataType.INT32)
    with pytest.raises(mm.MMError, match="INT32; this op computes on FLOAT32 or FLOAT16"):
        i.network.add_i_activation_node(i, mm.IActivation.RELU)


def test_every_activation_is_quiet_on_extreme_inputs() -> None:
    x = np.array([-3e38, -1000, 1000, 3e38], np.float32)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        for mode in mm.IActivation:
            (y,) = run_mm(activation(mode), [x])
            # log and sqrt are NaN below 0 by definition, and only there
            outside = x < 0 if mode in (mm.IActivation.LOG, mm.IActivation.SQRT) else x != x
            assert not np.isnan(y[~outside]).any(), mode.name
            assert np.isnan(y[outside]).all(), mode.name


# -- clip ----------------------------------------------------------------------------------------
def test_clip_golden_and_onnxruntime() -> None:
    (y,) = run_mm(
        lambda net, xs: net.add_i_clip_node(xs[0], 0, 6).get_output(0),
        [np.array([-1, 0.5, 9], np.float32)],
    )
    np.testing.assert_array_equal(y, [0, 0.5, 6])
    bounds = {"min": np.array(-0.5, np.float32), "max": np.array(1.25, np.float32)}
    (expected,) = run_onnx("Clip", [X], initializers=bounds)
    (y,) = run_mm(lambda net, xs: net.add_i_clip_node(xs[0], -0.5, 1.25).get_output(0), [X])
    assert_close(y, expected, "exact")


def test_clip_refusals() -> None:
    net, x = one_node([3])
    node = net.add_i_clip_node(x, -1, 1)
    assert node.get_node_type() == "IClipNode" and node.policy is mm.Policy.NEVER
    with pytest.raises(mm.MMError, match="lo 2.0 must not be above hi 1.0"):
        net.add_i_clip_node(x, 2, 1)
    with pytest.raises(mm.MMError, match="neither NaN"):
        net.add_i_clip_node(x, float("nan"), 1)
    with pytest.raises(mm.MMError, match="argument 'lo': expected a number, got str"):
        net.add_i_clip_node(x, "0", None)
    _, i = one_node([4], mm.DataType.INT32)
    with pytest.raises(mm.MMError, match="INT32"):
        i.network.add_i_clip_node(i, 0, 1)


# -- binary elementwise ----------------------------------------------------------------------------
ONNX_BINARY = {
    mm.IElementwise.ADD: "Add",
    mm.IElementwise.SUB: "Sub",
    mm.IElementwise.MUL: "Mul",
    mm.IElementwise.DIV: "Div",
    mm.IElementwise.MAX: "Max",
    mm.IElementwise.MIN: "Min",
}


def binary(mode: mm.IElementwise) -> Callable[[mm.Network, list[mm.ITensor]], mm.ITensor]:
    return lambda net, xs: net.add_i_elementwise_node(xs[0], xs[1], mode).get_output(0)


def test_elementwise_golden() -> None:
    a = np.array([[1.0, -2.0, 3.0]], np.float32)
    b = np.array([[2.0], [0.0]], np.float32)
    expected = {
        mm.IElementwise.ADD: [[3, 0, 5], [1, -2, 3]],
        mm.IElementwise.SUB: [[-1, -4, 1], [1, -2, 3]],
        mm.IElementwise.MUL: [[2, -4, 6], [0, -0.0, 0]],
        mm.IElementwise.DIV: [[0.5, -1, 1.5], [np.inf, -np.inf, np.inf]],
        mm.IElementwise.MAX: [[2, 2, 3], [1, 0, 3]],
        mm.IElementwise.MIN: [[1, -2, 2], [0, -2, 0]],
    }
    for mode, e in expected.items():
        (y,) = run_mm(binary(mode), [a, b])
        np.testing.assert_array_equal(y, np.array(e, np.float32), err_msg=mode.name)


SHAPE_PAIRS = [((2, 1, 3), (4, 1)), ((3,), (2, 3)), ((), (2, 2)), ((2, 3), (2, 3)), ((5, 1), (1,))]


@pytest.mark.parametrize("mode", list(mm.IElementwise), ids=lambda m: m.name)
@pytest.mark.parametrize(("sa", "sb"), SHAPE_PAIRS)
def test_elementwise_matches_onnxruntime(
    mode: mm.IElementwise, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a = RNG.standard_normal(sa).astype(np.float32)
    b = RNG.standard_normal(sb).astype(np.float32)
    (expected,) = run_onnx(ONNX_BINARY[mode], [a, b])
    (y,) = run_mm(binary(mode), [a, b])
    assert_close(y, expected, "fp32")


def test_division_by_zero_follows_ieee_like_onnxruntime() -> None:
    a = np.array([1.0, -1.0, 0.0, 2.0], np.float32)
    b = np.array([0.0, 0.0, 0.0, -0.0], np.float32)
    (expected,) = run_onnx("Div", [a, b])
    (y,) = run_mm(binary(mm.IElementwise.DIV), [a, b])
    np.testing.assert_array_equal(y, expected)  # inf, -inf, nan, -inf


def test_elementwise_refusals() -> None:
    net, a = one_node([2, 3])
    b = net.add_input(mm.DataType.FLOAT32, mm.Dims([4, 3]))
    with pytest.raises(
        mm.MMError,
        match=r"IElementwiseNode 'elementwise_0': the inputs a and b cannot "
        r"broadcast: shapes \[2, 3\] and \[4, 3\] differ in dimension 0 \(2 vs 4\)",
    ):
        net.add_i_elementwise_node(a, b, mm.IElementwise.ADD)
    h = net.add_input(mm.DataType.FLOAT16, mm.Dims([2, 3]))
    with pytest.raises(mm.MMError, match="inputs are FLOAT32 and FLOAT16; give both one type"):
        net.add_i_elementwise_node(a, h, mm.IElementwise.MUL)
    i = net.add_input(mm.DataType.INT32, mm.Dims([2, 3]))
    with pytest.raises(mm.MMError, match=r"input 1 \(b\) is INT32"):
        net.add_i_elementwise_node(a, i, mm.IElementwise.SUB)
    with pytest.raises(
        mm.MMError,
        match=r"argument 'mode': expected an mm\.IElementwise .*e\.g\. mm\.IElementwise\.ADD",
    ):
        net.add_i_elementwise_node(a, a, "add")
    assert net.get_all_nodes_in_network() == []
    node = net.add_i_elementwise_node(a, a, mm.IElementwise.ADD)
    assert node.get_node_type() == "IElementwiseNode" and node.policy is mm.Policy.NEVER
    with pytest.raises(mm.MMError, match=r"shapes \[2, 3\] and \[4, 3\]"):
        node.update_input(1, b)
    assert node.get_input(1) is a and node.get_output(0).get_dimension() == mm.Dims([2, 3])


def expected_with_runtime_dims(a: list[int], b: list[int]) -> list[int]:
    """Broadcasting when -1 means "any size": a known size other than 1 decides a dimension."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        known = [d for d in (x, y) if d not in (-1, 1)]
        out.append(known[0] if known else -1 if -1 in (x, y) else 1)
    return out[::-1]


@given(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=5, max_side=4), st.data())
def test_broadcast_shape_inference_matches_numpy(shapes, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    sa, sb = shapes.input_shapes
    net, a = one_node(list(sa))
    b = net.add_input(mm.DataType.FLOAT32, mm.Dims(list(sb)))
    node = net.add_i_elementwise_node(a, b, mm.IElementwise.ADD)
    assert tuple(node.get_output(0).get_dimension()) == np.broadcast_shapes(sa, sb)
    # hide some dimensions until run time: the known ones still decide, the rest stay -1
    ma = [-1 if data.draw(st.booleans()) else d for d in sa]
    mb = [-1 if data.draw(st.booleans()) else d for d in sb]
    a.set_dimension(mm.Dims(ma))
    b.set_dimension(mm.Dims(mb))
    inferred = node.get_output(0).get_dimension().get_dims()
    assert inferred == expected_with_runtime_dims(ma, mb)
    for got, true in zip(inferred, np.broadcast_shapes(sa, sb)):
        assert got in (-1, true)


@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=4),
    st.lists(st.integers(1, 4), min_size=1, max_size=4),
)
def test_broadcast_failure_names_both_shapes(sa: list[int], sb: list[int]) -> None:
    try:
        np.broadcast_shapes(tuple(sa), tuple(sb))
        fits = True
    except ValueError:
        fits = False
    net, a = one_node(sa)
    b = net.add_input(mm.DataType.FLOAT32, mm.Dims(sb))
    if fits:
        net.add_i_elementwise_node(a, b, mm.IElementwise.MAX)
    else:
        with pytest.raises(mm.MMError, match="cannot broadcast") as info:
            net.add_i_elementwise_node(a, b, mm.IElementwise.MAX)
        assert str(sa) in str(info.value) and str(sb) in str(info.value)
