"""IConvNode: golden cases by hand, onnxruntime Conv over the window attributes, shape inference
and the refusals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from ortcheck import assert_close, const, run_mm, run_onnx

import mmbuild as mm

NHWC, NCHW, HWCN = mm.Layout.NHWC, mm.Layout.NCHW, mm.Layout.HWCN


def conv_mm(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    stride: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    group: int = 1,
    mode: mm.IPaddingMode | None = None,
    layout: tuple[mm.Layout, mm.Layout, mm.Layout] | None = None,
) -> np.ndarray:
    """Run one IConvNode on input ``x`` with constant filter ``w`` and bias ``b``."""

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        bias = const(net, b) if b is not None else None
        node = net.add_i_conv_node(xs[0], const(net, w), bias)
        if layout is not None:
            node.set_layout(*layout)
        node.set_stride(*stride)
        node.set_pad(*pads)
        node.set_dilation(*dilation)
        node.set_group(group)
        if mode is not None:
            node.set_padding_mode(mode)
        return node.get_output(0)

    return run_mm(build, [x])[0]


def conv_net(x_dims: Sequence[int], w_shape: Sequence[int]) -> tuple[mm.Network, mm.INode]:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims(x_dims))
    w = const(net, np.ones(w_shape, np.float32))
    return net, net.add_i_conv_node(x, w)


def nchw_to_nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nhwc_to_nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


# -- golden cases, worked by hand ------------------------------------------------------------
X33 = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_golden_sum_of_2x2_windows() -> None:
    y = conv_mm(X33, np.ones((1, 2, 2, 1), np.float32))
    np.testing.assert_array_equal(y[0, :, :, 0], [[12, 16], [24, 28]])


def test_golden_stride_pad_and_bias() -> None:
    # padded by one all round, 2x2 windows at stride 2 start at (-1, -1): [[1, 2+3], [4+7, 28]]
    y = conv_mm(
        X33,
        np.ones((1, 2, 2, 1), np.float32),
        np.array([1], np.float32),
        stride=(2, 2),
        pads=(1, 1, 1, 1),
    )
    np.testing.assert_array_equal(y[0, :, :, 0], [[2, 6], [12, 29]])


def test_golden_dilation_reads_the_corners() -> None:
    y = conv_mm(X33, np.ones((1, 2, 2, 1), np.float32), dilation=(2, 2))
    np.testing.assert_array_equal(y.ravel(), [1 + 3 + 7 + 9])


def test_golden_groups_keep_channels_apart() -> None:
    x = np.stack([[[1, 2], [3, 4]], [[10, 20], [30, 40]]], axis=-1)[None].astype(np.float32)
    w = np.stack([np.ones((2, 2)), [[1, 0], [0, -1]]])[..., None].astype(np.float32)  # [2,2,2,1]
    y = conv_mm(x, w, group=2)
    np.testing.assert_array_equal(y.ravel(), [1 + 2 + 3 + 4, 10 - 40])


def test_golden_output_channels_and_filter_layout() -> None:
    # filter [Cout=2, 1, 1, Cin=2]: out0 = in0 + 2 * in1, out1 = -in0
    x = np.array([[[[1, 10], [2, 20]]]], np.float32)  # [1, 1, 2, 2]
    w = np.array([[1, 2], [-1, 0]], np.float32).reshape(2, 1, 1, 2)
    y = conv_mm(x, w)
    np.testing.assert_array_equal(y[0, 0], [[21, -1], [42, -2]])


# -- against onnxruntime Conv -----------------------------------------------------------------
# N, Cin, H, W, Cout, (kh, kw), stride, pads (top, bottom, left, right), dilation, group, bias
CASES = [
    (1, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    (2, 3, 9, 7, 5, (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1, False),
    (1, 4, 10, 9, 6, (3, 2), (2, 1), (1, 0, 2, 1), (1, 1), 1, True),
    (1, 2, 11, 11, 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2), 1, True),
    (2, 6, 8, 8, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True),
    (1, 4, 7, 7, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, True),  # depthwise
    (1, 3, 6, 6, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 3, False),  # depthwise, multiplier 2
    (3, 5, 4, 4, 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),  # pointwise
    (1, 8, 9, 9, 8, (5, 5), (3, 3), (2, 1, 0, 3), (2, 1), 4, True),
]


def _case_arrays(case: tuple, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    n, cin, h, w, cout, (kh, kw), _, _, _, group, bias = case
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, cin // group, kh, kw)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    return x, wt, b


def _onnx_conv(x: np.ndarray, wt: np.ndarray, b: np.ndarray | None, **attrs: object) -> np.ndarray:
    inits = {"w": wt, **({"b": b} if b is not None else {})}
    return run_onnx("Conv", [x], attrs, initializers=inits)[0]


@pytest.mark.parametrize("case", CASES)
def test_matches_onnxruntime_nhwc(case: tuple) -> None:
    x, wt, b = _case_arrays(case, np.random.default_rng(0))
    *_, stride, (pt, pb, pl, pr), dilation, group, _ = case
    want = _onnx_conv(
        x, wt, b, strides=list(stride), pads=[pt, pl, pb, pr], dilations=list(dilation), group=group
    )
    got = conv_mm(
        nchw_to_nhwc(x),
        nchw_to_nhwc(wt),
        b,
        stride=stride,
        pads=(pt, pb, pl, pr),
        dilation=dilation,
        group=group,
    )
    assert_close(nhwc_to_nchw(got), want, "fp32_accumulate")


@pytest.mark.parametrize("case", CASES[::2])
def test_matches_onnxruntime_nchw_layout(case: tuple) -> None:
    x, wt, b = _case_arrays(case, np.random.default_rng(1))
    *_, stride, (pt, pb, pl, pr), dilation, group, _ = case
    want = _onnx_conv(
        x, wt, b, strides=list(stride), pads=[pt, pl, pb, pr], dilations=list(dilation), group=group
    )
    got = conv_mm(
        x,
        wt,
        b,
        stride=stride,
        pads=(pt, pb, pl, pr),
        dilation=dilation,
        group=group,
        layout=(NCHW, NCHW, NCHW),
    )
    assert_close(got, want, "fp32_accumulate")


def test_mixed_layouts_and_hwcn_filter() -> None:
    x, wt, b = _case_arrays(CASES[4], np.random.default_rng(2))
    want = _onnx_conv(x, wt, b, pads=[1, 1, 1, 1], group=2)
    got = conv_mm(x, wt, b, pads=(1, 1, 1, 1), group=2, layout=(NCHW, NCHW, NHWC))
    assert_close(nhwc_to_nchw(got), want, "fp32_accumulate")
    # a [3, 3, 3, 3] filter fits as NHWC when added, and set_layout reads it as HWCN
    rng = np.random.default_rng(3)
    x, wt = rng.standard_normal((1, 3, 6, 5)).astype(np.float32), rng.standard_normal((3, 3, 3, 3))
    wt = wt.astype(np.float32)
    want = _onnx_conv(x, wt, None, pads=[1, 1, 1, 1])
    hwcn = np.ascontiguousarray(wt.transpose(2, 3, 1, 0))  # [Kh, Kw, Cin/g, Cout]
    got = conv_mm(nchw_to_nhwc(x), hwcn, pads=(1, 1, 1, 1), layout=(NHWC, HWCN, NHWC))
    assert_close(nhwc_to_nchw(got), want, "fp32_accumulate")


@pytest.mark.parametrize("layout_first", [True, False])
def test_magicmind_order_nchw_depthwise_either_setter_first(layout_first: bool) -> None:
    # added before set_layout / set_group, which may come in either order: the shapes are
    # ambiguous (NHWC with group 12 / 3 = 4 fits too) until the setters say which is meant
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 32, 12, 12)).astype(np.float32)
    wt = rng.standard_normal((64, 1, 3, 3)).astype(np.float32)
    net = mm.Network()
    xt = net.add_input(mm.DataType.FLOAT32, mm.Dims(x.shape))
    conv = net.add_i_conv_node(xt, const(net, wt))
    assert (conv.get_layout()[0], conv.get_group()) == (NHWC, 4)
    with pytest.raises(mm.MMError, match=r"only fit with set_group\(4\), which their shapes"):
        conv.validate()  # the builder refuses what no setter confirmed
    setters = [lambda: conv.set_layout(NCHW, NCHW, NCHW), lambda: conv.set_group(32)]
    for setter in setters if layout_first else setters[::-1]:
        assert setter().ok()
    assert conv.get_layout() == (NCHW, NCHW, NCHW) and conv.get_group() == 32
    conv.validate()
    conv.set_pad(1, 1, 1, 1)
    net.mark_output(conv.get_output(0))
    got = mm.run_reference(net, [x])[conv.get_output(0).get_tensor_name()]
    assert_close(got, _onnx_conv(x, wt, None, pads=[1, 1, 1, 1], group=32), "fp32_accumulate")


def test_ambiguous_shapes_keep_nhwc_until_set_layout() -> None:
    _, conv = conv_net([1, 3, 3, 3], [3, 3, 3, 3])
    assert conv.get_layout() == (NHWC, NHWC, NHWC) and conv.get_group() == 1
    assert conv.get_output(0).get_dimension() == [1, 1, 1, 3]
    _, conv = conv_net([1, 3, 5, 7], [4, 3, 3, 3])
    assert conv.get_layout() == (NCHW, NCHW, NCHW)
    assert conv.get_output(0).get_dimension() == [1, 4, 3, 5]
    with pytest.raises(
        mm.MMError, match=r"set_layout\(mm.Layout.NCHW, mm.Layout.NCHW, mm.Layout.NCHW\)"
    ):
        conv.validate()
    conv.set_layout(NCHW, NCHW, NHWC)
    assert conv.get_output(0).get_dimension() == [1, 3, 5, 4]
    conv.validate()


def test_same_padding_with_dilation_equals_the_explicit_pads() -> None:
    # ONNX refuses SAME with dilation. H 9, k 3, d 2, s 3: out 3, pads (1, 1);
    # W 10: out 4, pad total 3 * 3 + 5 - 10 = 4, pads (2, 2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 9, 10, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    same = conv_mm(x, w, stride=(3, 3), dilation=(2, 2), mode=mm.IPaddingMode.SAME)
    explicit = conv_mm(x, w, stride=(3, 3), dilation=(2, 2), pads=(1, 1, 2, 2))
    assert same.shape == (1, 3, 4, 3)
    assert_close(same, explicit, "exact")


def test_same_padding_ignores_explicit_pads_and_valid_means_none() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 7, 7, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    same = conv_mm(x, w, pads=(4, 4, 4, 4), mode=mm.IPaddingMode.SAME)
    assert same.shape == (1, 7, 7, 3)
    assert_close(same, conv_mm(x, w, pads=(1, 1, 1, 1)), "exact")
    valid = conv_mm(x, w, pads=(2, 2, 2, 2), mode=mm.IPaddingMode.VALID)
    assert_close(valid, conv_mm(x, w), "exact")


# -- shape inference ---------------------------------------------------------------------------
def test_shape_inference_lets_runtime_dims_through() -> None:
    _, conv = conv_net([-1, 32, 32, 3], [16, 3, 3, 3])
    conv.set_stride(2, 2)
    conv.set_pad(1, 1, 1, 1)
    assert conv.get_output(0).get_dimension() == [-1, 16, 16, 16]
    _, conv = conv_net([-1, -1, 20, 3], [8, 3, 3, 3])
    assert conv.get_output(0).get_dimension() == [-1, -1, 18, 8]
    conv.set_padding_mode(mm.IPaddingMode.SAME)
    assert conv.get_output(0).get_dimension() == [-1, -1, 20, 8]
    _, conv = conv_net([1, 8, 8, -1], [4, 3, 3, 3])  # unknown channels are not checked
    assert conv.get_output(0).get_dimension() == [1, 6, 6, 4]
    _, conv = conv_net([-1, 3, -1, 10], [4, 3, 3, 3])
    conv.set_layout(NCHW, NCHW, NCHW)
    assert conv.get_output(0).get_dimension() == [-1, 4, -1, 8]


def test_new_input_shape_reinfers_and_setters_round_trip() -> None:
    net, conv = conv_net([1, 8, 8, 3], [4, 3, 3, 3])
    relu = net.add_i_activation_node(conv.get_output(0), mm.IActivation.RELU)
    net.get_input(0).set_dimension(mm.Dims([2, 12, 10, 3]))
    assert relu.get_output(0).get_dimension() == [2, 10, 8, 4]
    assert conv.SetStride(2, 1).ok() and conv.get_stride() == (2, 1)
    conv.set_pad(1, 0, 2, 0)
    conv.set_dilation(1, 2)
    assert (conv.get_pad(), conv.get_dilation(), conv.get_group()) == ((1, 0, 2, 0), (1, 2), 1)
    assert relu.get_output(0).get_dimension() == [2, 6, 8, 4]
    assert conv.get_node_type() == "IConvNode" and conv.get_input_count() == 2


def test_camelcase_adder_and_bias_slot() -> None:
    net = mm.Network()
    x = net.AddInput(mm.DataType.FLOAT32, mm.Dims([1, 4, 4, 2]))
    conv = net.AddIConvNode(
        x, const(net, np.ones((3, 1, 1, 2), np.float32)), const(net, np.zeros(3, np.float32))
    )
    assert conv.get_input_count() == 3 and conv.get_output(0).get_dimension() == [1, 4, 4, 3]


# -- refusals ----------------------------------------------------------------------------------
def test_channel_mismatch_names_both_shapes() -> None:
    with pytest.raises(mm.MMError, match=r"4 channels \(shape \[1, 8, 8, 4\]\).*\[5, 3, 3, 3\]"):
        conv_net([1, 8, 8, 4], [5, 3, 3, 3])


def test_bad_stride_pad_dilation_are_refused() -> None:
    _, conv = conv_net([1, 8, 8, 3], [4, 3, 3, 3])
    with pytest.raises(mm.MMError, match=r"IConvNode 'conv_0': set_stride: 0 is below 1"):
        conv.set_stride(0, 1)
    with pytest.raises(mm.MMError, match="set_stride: 1.5 is not an integer"):
        conv.set_stride(1.5, 1)
    with pytest.raises(mm.MMError, match="set_pad: -1 is below 0"):
        conv.set_pad(0, 0, -1, 0)
    with pytest.raises(mm.MMError, match="set_dilation: True is not an integer"):
        conv.set_dilation(True, 1)
    with pytest.raises(mm.MMError, match="set_group: 0 is below 1"):
        conv.set_group(0)


def test_group_that_does_not_divide() -> None:
    # 6 input channels fit 3 per group x 2 groups, but 3 output channels do not make 2 groups
    with pytest.raises(mm.MMError, match=r"6 channels \(shape \[1, 8, 8, 6\]\) .* \[3, 3, 3, 3\]"):
        conv_net([1, 8, 8, 6], [3, 3, 3, 3])
    _, conv = conv_net([1, 8, 8, 6], [4, 3, 3, 3])
    assert conv.get_group() == 2  # implied by the shapes
    with pytest.raises(mm.MMError, match=r"takes 3 per group x 4 groups = 12"):
        conv.set_group(4)
    _, conv = conv_net([1, 8, 8, -1], [3, 3, 3, 3])  # channels known at run time only
    with pytest.raises(
        mm.MMError,
        match=r"\[3, 3, 3, 3\]\) has 3 output channels, which do not "
        "divide into 2 groups",
    ):
        conv.set_group(2)
    assert conv.get_group() == 1


def test_bias_of_wrong_shape() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 8, 8, 3]))
    w = const(net, np.ones((4, 3, 3, 3), np.float32))
    for shape in ([3], [1, 4]):
        b = const(net, np.zeros(shape, np.float32))
        with pytest.raises(mm.MMError, match=r"input 2 \(bias\) has shape .* it must be \[4\]"):
            net.add_i_conv_node(x, w, b)


def test_non_tensor_and_foreign_tensor_inputs() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 8, 8, 3]))
    w_np = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(
        mm.MMError,
        match=r"argument 'w': expected an ITensor, got ndarray .*"
        r"make a constant tensor of it with add_i_const_node",
    ):
        net.add_i_conv_node(x, w_np)
    other = mm.Network()
    w_other = const(other, w_np)
    with pytest.raises(mm.MMError, match="belongs to another network"):
        net.add_i_conv_node(x, w_other)
    with pytest.raises(mm.MMError, match=r"argument 'w' is missing \(None\); pass an ITensor"):
        net.add_i_conv_node(x, None, const(net, np.zeros(4, np.float32)))
    assert net.get_all_nodes_in_network()[-1].get_node_type() == "IConstNode"  # no conv added


def test_rank_dtype_and_filter_shape_refusals() -> None:
    with pytest.raises(mm.MMError, match=r"input 1 \(filter\) has shape \[4, 3, 3\] \(rank 3\)"):
        conv_net([1, 8, 8, 3], [4, 3, 3])
    with pytest.raises(mm.MMError, match=r"input 0 \(input\) has shape \[8, 8, 3\]"):
        conv_net([8, 8, 3], [4, 3, 3, 3])
    net = mm.Network()
    x = net.add_input(mm.DataType.INT32, mm.Dims([1, 8, 8, 3]))
    with pytest.raises(mm.MMError, match="input 0 .* is INT32"):
        net.add_i_conv_node(x, const(net, np.ones((4, 3, 3, 3), np.float32)))
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 8, 8, 3]))
    w = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 3, 3, 3]))
    with pytest.raises(mm.MMError, match=r"filter\) has shape \[-1, 3, 3, 3\].*without -1"):
        net.add_i_conv_node(x, w)


def test_filter_larger_than_the_input_is_refused_at_build_until_padded() -> None:
    # 1x1 input, 3x3 filter, no pads: there is no output pixel (not a run-time size). The pads
    # that make it fit may come after the node is added, so the build is what refuses it.
    net, conv = conv_net([1, 1, 1, 3], [4, 3, 3, 3])
    net.mark_output(conv.get_output(0))
    assert conv.get_output(0).get_dimension() == [1, 0, 0, 4]
    with pytest.raises(mm.MMError, match=r"3x3 filter .* does not fit the 1x1 input"):
        mm.Builder().build_model("too_small", net)
    conv.set_pad(1, 1, 1, 1)
    assert conv.get_output(0).get_dimension() == [1, 1, 1, 4]
    mm.Builder().build_model("padded", net)
    _, conv = conv_net([1, 1, 1, 3], [4, 1, 1, 3])
    conv.set_stride(3, 3)
    assert conv.get_output(0).get_dimension() == [1, 1, 1, 4]


def test_refused_setter_leaves_the_node_unchanged() -> None:
    net, conv = conv_net([1, 5, 5, 4], [4, 3, 3, 2])
    conv.set_group(2)
    relu = net.add_i_activation_node(conv.get_output(0), mm.IActivation.RELU)
    before = (dict(conv.attrs), relu.get_output(0).get_dimension())
    with pytest.raises(mm.MMError, match="channels"):
        conv.set_group(1)
    with pytest.raises(mm.MMError, match="set_layout: the input layout"):
        conv.set_layout(HWCN, NHWC, NHWC)
    with pytest.raises(mm.MMError, match="IPaddingMode"):
        conv.set_padding_mode("same")
    assert (dict(conv.attrs), relu.get_output(0).get_dimension()) == before
    assert conv.get_output(0).get_dimension() == [1, 3, 3, 4]


def test_a_setter_re_chooses_the_layout_and_group_the_shapes_implied() -> None:
    """[N, 1, 3, 2] with filter [2, 1, 3, 1] first fits as NCHW with group 1; a dilation of
    2 x 1 only fits the NHWC depthwise reading, which the setter then chooses (and set_group
    confirms) instead of refusing."""
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 1, 3, 2]))
    w = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([2, 1, 3, 1]), np.ones(6))
    conv = net.add_i_conv_node(x, w.get_output(0))
    assert conv.attrs["layout"][0] is mm.Layout.NCHW and conv.attrs["group"] == 1
    conv.set_dilation(2, 1)
    assert conv.attrs["layout"][0] is mm.Layout.NHWC and conv.attrs["group"] == 2
    with pytest.raises(mm.MMError, match=r"set_group\(2\)"):
        conv.validate()
    conv.set_group(2)
    conv.validate()
    assert conv.get_output(0).get_dimension() == mm.Dims([-1, 1, 1, 2])
