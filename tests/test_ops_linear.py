"""IDeconvNode, IInnerProductNode and IMatMulNode: golden cases by hand, onnxruntime
(ConvTranspose, Gemm, MatMul), shape inference with its properties, and the refusals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ortcheck import assert_close, const, run_mm, run_onnx

import mmbuild as mm
from mmbuild.ops.deconv import deconv2d_nhwc
from mmbuild.ops.linear import matmul_nd

NHWC, NCHW, HWCN = mm.Layout.NHWC, mm.Layout.NCHW, mm.Layout.HWCN


def nchw_to_nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nhwc_to_nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


# == IDeconvNode ================================================================================
def deconv_mm(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    stride: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    group: int = 1,
    output_padding: Sequence[int] = (0, 0),
    mode: mm.IPaddingMode | None = None,
    layout: tuple[mm.Layout, mm.Layout, mm.Layout] | None = None,
) -> np.ndarray:
    """Run one IDeconvNode on input ``x`` with constant filter ``w`` and bias ``b``."""

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        bias = const(net, b) if b is not None else None
        node = net.add_i_deconv_node(xs[0], const(net, w), bias)
        if layout is not None:
            node.set_layout(*layout)
        node.set_group(group)
        node.set_stride(*stride)
        node.set_pad(*pads)
        node.set_dilation(*dilation)
        node.set_output_padding(*output_padding)
        if mode is not None:
            node.set_padding_mode(mode)
        return node.get_output(0)

    return run_mm(build, [x])[0]


def deconv_net(
    x_dims: Sequence[int], w_shape: Sequence[int], b_shape: Sequence[int] | None = None
) -> tuple[mm.Network, mm.INode]:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims(x_dims))
    w = const(net, np.ones(w_shape, np.float32))
    b = const(net, np.zeros(b_shape, np.float32)) if b_shape is not None else None
    return net, net.add_i_deconv_node(x, w, b)


X22 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
ONES22 = np.ones((1, 2, 2, 1), np.float32)


def test_deconv_golden_overlapping_windows() -> None:
    y = deconv_mm(X22, ONES22)
    np.testing.assert_array_equal(y[0, :, :, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])


def test_deconv_golden_stride_pads_output_padding_and_bias() -> None:
    blocks = [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    np.testing.assert_array_equal(deconv_mm(X22, ONES22, stride=(2, 2))[0, :, :, 0], blocks)
    cropped = deconv_mm(X22, ONES22, stride=(2, 2), pads=(1, 1, 1, 1))  # the middle 2x2
    np.testing.assert_array_equal(cropped[0, :, :, 0], [[1, 2], [3, 4]])
    # output_padding adds a last row and column that only the bias reaches
    y = deconv_mm(X22, ONES22, np.array([0.5], np.float32), stride=(2, 2), output_padding=(1, 1))
    want = np.full((5, 5), 0.5)
    want[:4, :4] += blocks
    np.testing.assert_array_equal(y[0, :, :, 0], want)


def test_deconv_golden_groups_and_filter_layout() -> None:
    # two input channels in two groups, one output channel each: [Cin=2, 1, 1, Cout/g=1]
    x = np.array([[[[1, 10], [2, 20]]]], np.float32)  # [1, 1, 2, 2]
    y = deconv_mm(x, np.array([2, -1], np.float32).reshape(2, 1, 1, 1), group=2)
    np.testing.assert_array_equal(y[0, 0], [[2, -10], [4, -20]])
    # one group: each input channel spreads over both outputs through its filter row
    y = deconv_mm(x, np.array([[1, 0], [1, 2]], np.float32).reshape(2, 1, 1, 2))
    np.testing.assert_array_equal(y[0, 0], [[11, 20], [22, 40]])


def test_deconv_golden_same_with_kernel_shorter_than_stride() -> None:
    # ONNX stops at (in - 1) * stride + 1; SAME here gives in * stride, ending in a zero
    x = np.array([1, 2, 3], np.float32).reshape(1, 1, 3, 1)
    y = deconv_mm(x, np.ones((1, 1, 1, 1), np.float32), stride=(1, 2), mode=mm.IPaddingMode.SAME)
    np.testing.assert_array_equal(y.ravel(), [1, 0, 2, 0, 3, 0])
    # k 3, stride 2: full [1, 1, 3, 2, 5, 3, 3], one extra cropped at the end
    y = deconv_mm(x, np.ones((1, 1, 3, 1), np.float32), stride=(1, 2), mode=mm.IPaddingMode.SAME)
    np.testing.assert_array_equal(y.ravel(), [1, 1, 3, 2, 5, 3])


def test_deconv2d_nhwc_is_exact_on_int64() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 3, 4, 4), dtype=np.int64)
    w = rng.integers(-128, 128, (4, 3, 3, 1), dtype=np.int64)
    y = deconv2d_nhwc(x, w, (2, 2), (1, 0, 0, 1), (1, 1), 4, (1, 0))
    assert y.dtype == np.int64
    ref = deconv2d_nhwc(
        x.astype(np.float64), w.astype(np.float64), (2, 2), (1, 0, 0, 1), (1, 1), 4, (1, 0)
    )
    np.testing.assert_array_equal(y, ref)


# N, Cin, H, W, Cout/g, (kh, kw), stride, pads (top, bottom, left, right), dilation, group,
# output_padding, bias
DECONV_CASES = [
    (1, 3, 4, 4, 2, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, (0, 0), True),
    (2, 4, 5, 3, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (1, 1), True),
    (1, 4, 4, 5, 2, (2, 3), (2, 3), (0, 1, 1, 0), (1, 1), 2, (1, 2), False),
    (1, 2, 3, 3, 3, (3, 3), (2, 2), (2, 1, 0, 1), (2, 2), 1, (1, 0), True),
    (1, 4, 5, 5, 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 4, (1, 1), True),  # depthwise
    (2, 6, 3, 4, 3, (4, 4), (3, 2), (1, 2, 0, 1), (1, 2), 3, (2, 1), True),
]


def _deconv_arrays(case: tuple, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    n, cin, h, w, cout_g, (kh, kw), *_, group, _, bias = case
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cin, cout_g, kh, kw)).astype(np.float32)  # ONNX [Cin, Cout/g, ...]
    b = rng.standard_normal(cout_g * group).astype(np.float32) if bias else None
    return x, wt, b


def _onnx_deconv(
    x: np.ndarray, wt: np.ndarray, b: np.ndarray | None, **attrs: object
) -> np.ndarray:
    inits = {"w": wt, **({"b": b} if b is not None else {})}
    return run_onnx("ConvTranspose", [x], attrs, initializers=inits)[0]


def _onnx_deconv_case(
    case: tuple, x: np.ndarray, wt: np.ndarray, b: np.ndarray | None
) -> np.ndarray:
    *_, stride, (pt, pb, pl, pr), dilation, group, output_padding, _ = case
    return _onnx_deconv(
        x,
        wt,
        b,
        strides=list(stride),
        pads=[pt, pl, pb, pr],
        dilations=list(dilation),
        group=group,
        output_padding=list(output_padding),
    )


@pytest.mark.parametrize("case", DECONV_CASES)
def test_deconv_matches_onnxruntime_nhwc(case: tuple) -> None:
    x, wt, b = _deconv_arrays(case, np.random.default_rng(1))
    *_, stride, pads, dilation, group, output_padding, _ = case
    got = deconv_mm(
        nchw_to_nhwc(x),
        np.ascontiguousarray(wt.transpose(0, 2, 3, 1)),
        b,
        stride=stride,
        pads=pads,
        dilation=dilation,
        group=group,
        output_padding=output_padding,
    )
    assert_close(nhwc_to_nchw(got), _onnx_deconv_case(case, x, wt, b), "fp32_accumulate")


@pytest.mark.parametrize("case", DECONV_CASES)
def test_deconv_matches_onnxruntime_nchw_layout(case: tuple) -> None:
    x, wt, b = _deconv_arrays(case, np.random.default_rng(2))
    *_, stride, pads, dilation, group, output_padding, _ = case
    got = deconv_mm(
        x,
        wt,
        b,
        stride=stride,
        pads=pads,
        dilation=dilation,
        group=group,
        output_padding=output_padding,
        layout=(NCHW, NCHW, NCHW),
    )
    assert_close(got, _onnx_deconv_case(case, x, wt, b), "fp32_accumulate")


def test_deconv_hwcn_filter_and_mixed_layouts() -> None:
    # a [3, 3, 3, 3] filter fits as NHWC when added, and set_layout reads it as HWCN
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    wt = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)  # ONNX [Cin, Cout/g, Kh, Kw]
    b = rng.standard_normal(3).astype(np.float32)
    want = _onnx_deconv(x, wt, b, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    hwcn = np.ascontiguousarray(wt.transpose(2, 3, 1, 0))  # [Kh, Kw, Cout/g, Cin]
    got = deconv_mm(
        nchw_to_nhwc(x),
        hwcn,
        b,
        stride=(2, 2),
        pads=(1, 1, 1, 1),
        output_padding=(1, 1),
        layout=(NHWC, HWCN, NCHW),
    )
    assert_close(got, want, "fp32_accumulate")


@pytest.mark.parametrize(
    ("size", "k", "stride", "dilation"),
    [(4, 3, 2, 1), (5, 4, 2, 1), (3, 5, 2, 1), (4, 3, 1, 1), (3, 3, 3, 1), (4, 3, 2, 2)],
)
def test_deconv_same_matches_onnx_same_upper(size: int, k: int, stride: int, dilation: int) -> None:
    rng = np.random.default_rng(size * 10 + k)
    x = rng.standard_normal((2, 3, size, size + 1)).astype(np.float32)
    wt = rng.standard_normal((3, 2, k, k)).astype(np.float32)
    want = _onnx_deconv(
        x, wt, None, auto_pad="SAME_UPPER", strides=[stride, stride], dilations=[dilation, dilation]
    )
    got = deconv_mm(
        x,
        wt,
        stride=(stride, stride),
        dilation=(dilation, dilation),
        output_padding=(stride - 1, 0),
        mode=mm.IPaddingMode.SAME,
        layout=(NCHW, NCHW, NCHW),
    )
    assert got.shape[2:] == (size * stride, (size + 1) * stride)  # output_padding unused
    assert_close(got, want, "fp32_accumulate")


@pytest.mark.parametrize(
    ("size", "k", "stride", "pads", "dilation", "group", "same"),
    [
        (9, 3, 2, (1, 1, 1, 1), 1, 1, False),
        (8, 4, 2, (1, 2, 0, 1), 1, 2, False),
        (11, 3, 3, (2, 0, 1, 1), 2, 4, False),
        (8, 3, 2, (0, 0, 0, 0), 1, 1, True),
        (9, 5, 3, (0, 0, 0, 0), 1, 2, True),
        (6, 1, 2, (0, 0, 0, 0), 1, 1, True),
    ],
)
def test_deconv_is_the_adjoint_of_conv(
    size: int, k: int, stride: int, pads: tuple, dilation: int, group: int, same: bool
) -> None:
    """<conv(x), y> == <x, deconv(y)> with the same filter, window and (SAME) padding."""
    rng = np.random.default_rng(size + k)
    cin, cout = 2 * group, 3 * group
    width = size + stride if same else size + 1  # SAME is the adjoint where stride divides
    x = rng.standard_normal((1, size, width, cin)).astype(np.float32)
    w = rng.standard_normal((cout, k, k, cin // group)).astype(np.float32)
    win = {"stride": (stride, stride), "pads": pads, "dilation": (dilation, dilation)}
    mode = mm.IPaddingMode.SAME if same else None

    def conv(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        node = net.add_i_conv_node(xs[0], const(net, w))
        node.set_group(group)
        node.set_stride(*win["stride"])
        node.set_pad(*win["pads"])
        node.set_dilation(*win["dilation"])
        if mode is not None:
            node.set_padding_mode(mode)
        return node.get_output(0)

    cx = run_mm(conv, [x])[0]
    y = rng.standard_normal(cx.shape).astype(np.float32)
    # the conv's size is lost to the floor of the stride: output_padding gives it back
    (sh, sw) = win["stride"]
    full = deconv_mm(y, w, group=group, mode=mode, **win)
    op = (x.shape[1] - full.shape[1], x.shape[2] - full.shape[2]) if not same else (0, 0)
    dx = deconv_mm(y, w, group=group, mode=mode, output_padding=op, **win)
    assert dx.shape == x.shape and max(op) < max(sh, sw)
    lhs = np.vdot(cx.astype(np.float64), y.astype(np.float64))
    rhs = np.vdot(x.astype(np.float64), dx.astype(np.float64))
    assert lhs == pytest.approx(rhs, rel=1e-5, abs=1e-4)


def test_deconv_shape_inference_and_setters() -> None:
    net, dc = deconv_net([-1, 16, -1, 8], [8, 3, 3, 4])
    dc.set_stride(2, 2)
    dc.set_pad(1, 1, 1, 1)
    assert dc.SetOutputPadding(1, 1).ok() and dc.get_output_padding() == (1, 1)
    assert dc.get_output(0).get_dimension() == [-1, 32, -1, 4]
    dc.set_padding_mode(mm.IPaddingMode.SAME)
    assert dc.get_output(0).get_dimension() == [-1, 32, -1, 4]
    dc.set_padding_mode(mm.IPaddingMode.VALID)  # pads 0: 15 * 2 + 2 + 1 + 1
    assert dc.get_output(0).get_dimension() == [-1, 34, -1, 4]
    net.get_input(0).set_dimension([2, 3, 5, 8])
    assert dc.get_output(0).get_dimension() == [2, 8, 12, 4]
    dc.set_group(2)  # Cout = 4 per group x 2 groups
    assert dc.get_output(0).get_dimension() == [2, 8, 12, 8]
    assert dc.get_node_type() == "IDeconvNode" and dc.policy is mm.Policy.ALWAYS
    _, dc = deconv_net([1, 8, -1, 5], [8, 4, 2, 2])  # NCHW, implied by the shapes
    assert dc.get_layout() == (NCHW, NCHW, NCHW)
    assert dc.get_output(0).get_dimension() == [1, 4, -1, 6]


def test_deconv_bias_implies_the_group() -> None:
    # the filter fits the input whatever the group; a bias of Cout = 2 groups x 3 says 2
    _, dc = deconv_net([1, 4, 4, 6], [6, 3, 3, 3], [6])
    assert dc.get_group() == 2 and dc.get_output(0).get_dimension() == [1, 6, 6, 6]
    with pytest.raises(mm.MMError, match=r"IDeconvNode 'deconv_0': .* set_group\(2\)"):
        dc.validate()
    dc.set_group(2)
    dc.validate()


def test_deconv_refusals_name_both_shapes() -> None:
    with pytest.raises(
        mm.MMError,
        match=r"IDeconvNode 'deconv_0': input 0 \(input\) has 3 channels \(shape \[1, 8, 8, 3\]\)"
        r" but the filter \(shape \[4, 3, 3, 2\]\) takes 4 input channels",
    ):
        deconv_net([1, 8, 8, 3], [4, 3, 3, 2])
    with pytest.raises(mm.MMError, match=r"input 2 \(bias\) has shape \[5\]; it must be \[4\]"):
        deconv_net([1, 8, 8, 4], [4, 3, 3, 4], [5])
    _, dc = deconv_net([1, 8, 8, 6], [6, 3, 3, 2])
    with pytest.raises(
        mm.MMError,
        match=r"\[6, 3, 3, 2\]\) has 6 input channels, which do not "
        r"divide into 4 groups",
    ):
        dc.set_group(4)
    with pytest.raises(mm.MMError, match=r"crop away the whole .* \[1, 8, 8, 6\]"):
        dc.set_pad(5, 5, 0, 0)  # 7 + 3 - 10
    with pytest.raises(mm.MMError, match="set_output_padding: -1 is below 0"):
        dc.set_output_padding(-1, 0)
    with pytest.raises(mm.MMError, match=r"set_output_padding: \(1, 1\) is not an integer"):
        dc.set_output_padding((1, 1), 0)
    assert dc.get_output_padding() == (0, 0) and dc.get_pad() == (0, 0, 0, 0)
    assert dc.get_group() == 1 and dc.get_output(0).get_dimension() == [1, 10, 10, 2]


def test_deconv_refuses_foreign_and_non_tensors() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([1, 4, 4, 2]))
    with pytest.raises(mm.MMError, match=r"argument 'w': expected an ITensor, got ndarray"):
        net.add_i_deconv_node(x, np.ones((2, 3, 3, 2), np.float32))
    with pytest.raises(mm.MMError, match="belongs to another network"):
        net.add_i_deconv_node(x, const(mm.Network(), np.ones((2, 3, 3, 2), np.float32)))
    w = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, -1, 3, 2]))
    with pytest.raises(mm.MMError, match=r"filter\) has shape \[2, -1, 3, 2\].*without -1"):
        net.add_i_deconv_node(x, w)


# == IInnerProductNode ==========================================================================
def inner_product_mm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        bias = const(net, b) if b is not None else None
        return net.add_i_inner_product_node(xs[0], const(net, w), bias).get_output(0)

    return run_mm(build, [x])[0]


def test_inner_product_golden() -> None:
    x = np.array([[1, 2]], np.float32)
    w = np.array([[1, 0], [1, 1], [0, 2]], np.float32)
    b = np.array([0.5, 0, 0], np.float32)
    np.testing.assert_array_equal(inner_product_mm(x, w, b), [[1.5, 3, 4]])
    # a [1, 2, 2] input is read row-major as [1, 4]
    x3 = np.array([[[1, 2], [3, 4]]], np.float32)
    np.testing.assert_array_equal(
        inner_product_mm(x3, np.eye(4, dtype=np.float32)[::-1], None), [[4, 3, 2, 1]]
    )


@pytest.mark.parametrize(
    ("x_shape", "n_out", "bias"),
    [((3, 5), 4, True), ((1, 7), 2, False), ((2, 3, 2, 2), 5, True), ((4, 4, 4, 3), 6, True)],
)
def test_inner_product_matches_onnx_gemm(x_shape: tuple, n_out: int, bias: bool) -> None:
    rng = np.random.default_rng(len(x_shape) + n_out)
    x = rng.standard_normal(x_shape).astype(np.float32)
    k = int(np.prod(x_shape[1:]))
    w = rng.standard_normal((n_out, k)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if bias else None
    inits = {"w": w, **({"b": b} if b is not None else {})}
    want = run_onnx("Gemm", [x.reshape(x.shape[0], k)], {"transB": 1}, initializers=inits)[0]
    assert_close(inner_product_mm(x, w, b), want, "fp32_accumulate")


def test_inner_product_shape_inference() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 2, 3]))
    ip = net.AddIInnerProductNode(x, const(net, np.ones((4, 6), np.float32)))
    assert ip.get_output(0).get_dimension() == [-1, 4] and ip.get_node_type() == "IInnerProductNode"
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([8, -1, 3]))  # K known at run time only
    ip = net.add_i_inner_product_node(x, const(net, np.ones((5, 9), np.float32)))
    assert ip.get_output(0).get_dimension() == [8, 5]
    assert ip.policy is mm.Policy.ALWAYS and ip.quantizable_inputs == (0, 1)


def test_inner_product_refusals() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, 3, 2]))
    w = const(net, np.ones((4, 7), np.float32))
    with pytest.raises(mm.MMError, match=r"shape \[2, 3, 2\] flattens to K = 6 .* \[4, 7\]"):
        net.add_i_inner_product_node(x, w)
    w = const(net, np.ones((4, 6), np.float32))
    with pytest.raises(mm.MMError, match=r"bias\) has shape \[6\]; it must be \[4\]"):
        net.add_i_inner_product_node(x, w, const(net, np.ones(6, np.float32)))
    with pytest.raises(mm.MMError, match=r"weight\) has shape \[4, 6, 1\] \(rank 3\)"):
        net.add_i_inner_product_node(x, const(net, np.ones((4, 6, 1), np.float32)))
    v = net.add_input(mm.DataType.FLOAT32, mm.Dims([6]))
    with pytest.raises(mm.MMError, match=r"shape \[6\]; .* rank >= 2 .* \[1, K\]"):
        net.add_i_inner_product_node(v, w)
    with pytest.raises(mm.MMError, match="expected an ITensor, got ndarray"):
        net.add_i_inner_product_node(x, np.ones((4, 6), np.float32))


# == IMatMulNode ================================================================================
def matmul_mm(a: np.ndarray, b: np.ndarray, ta: bool = False, tb: bool = False) -> np.ndarray:
    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        node = net.add_i_matmul_node(xs[0], xs[1])  # both operands are activations
        node.set_transpose_a(ta)
        node.set_transpose_b(tb)
        return node.get_output(0)

    return run_mm(build, [a, b])[0]


def test_matmul_golden() -> None:
    a = np.array([[1, 2], [3, 4]], np.float32)
    np.testing.assert_array_equal(matmul_mm(a, np.array([[5], [6]], np.float32)), [[17], [39]])
    np.testing.assert_array_equal(matmul_mm(a, a, ta=True), [[10, 14], [14, 20]])
    np.testing.assert_array_equal(matmul_mm(a, a, tb=True), [[5, 11], [11, 25]])
    v = np.array([1, -1], np.float32)
    np.testing.assert_array_equal(matmul_mm(v, a), [-2, -2])
    np.testing.assert_array_equal(matmul_mm(a, v, tb=True), [-1, -1])  # a vector's transpose
    assert matmul_mm(v, v).shape == ()


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "ta", "tb"),
    [
        ((3, 4), (4, 5), False, False),
        ((2, 3, 4), (4, 5), False, False),
        ((2, 1, 3, 4), (5, 4, 6), False, False),
        ((4,), (2, 4, 5), False, False),
        ((3, 4), (4,), False, False),
        ((4,), (4,), False, False),
        ((4, 3), (4, 5), True, False),
        ((3, 4), (5, 4), False, True),
        ((2, 4, 3), (2, 5, 4), True, True),
        ((7, 1, 4, 3), (2, 5, 4), True, True),
        ((1, 3, 1, 6), (4, 1, 2, 6), False, True),
    ],
)
def test_matmul_matches_onnx_matmul(a_shape: tuple, b_shape: tuple, ta: bool, tb: bool) -> None:
    rng = np.random.default_rng(len(a_shape) * 7 + len(b_shape))
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    a_onnx = np.ascontiguousarray(np.swapaxes(a, -1, -2)) if ta else a
    b_onnx = np.ascontiguousarray(np.swapaxes(b, -1, -2)) if tb else b
    want = run_onnx("MatMul", [a_onnx, b_onnx])[0]
    assert_close(matmul_mm(a, b, ta, tb), want, "fp32_accumulate")


def test_matmul_with_constant_operand_and_int64_helper() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        node = net.AddIMatMulNode(xs[0], const(net, w))
        assert node.SetTransposeB(True).ok() and node.get_transpose_b()
        return node.get_output(0)

    assert_close(run_mm(build, [a])[0], (a.astype(np.float64) @ w.T).astype(np.float32), "fp32")
    ai = rng.integers(-128, 128, (3, 2, 4), dtype=np.int64)
    bi = rng.integers(-128, 128, (3, 5, 4), dtype=np.int64)
    np.testing.assert_array_equal(matmul_nd(ai, bi, transpose_b=True), ai @ bi.transpose(0, 2, 1))


def test_matmul_refusals_and_unchanged_node() -> None:
    net = mm.Network()
    a = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, 3, 4]))
    b = net.add_input(mm.DataType.FLOAT32, mm.Dims([5, 6]))
    with pytest.raises(
        mm.MMError,
        match=r"IMatMulNode 'matmul_0': a has shape \[2, 3, 4\] \(transpose_a=False, so K = 4\) "
        r"but b has shape \[5, 6\] \(transpose_b=False, so K = 5\)",
    ):
        net.add_i_matmul_node(a, b)
    a4 = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, 1, 3, 4]))
    mmn = net.add_i_matmul_node(a4, net.add_input(mm.DataType.FLOAT32, mm.Dims([3, 4, 5])))
    with pytest.raises(mm.MMError, match=r"set_transpose_a takes True or False, not 'yes'"):
        mmn.set_transpose_a("yes")
    with pytest.raises(mm.MMError, match="so K = 3"):
        mmn.set_transpose_a(True)
    assert not mmn.get_transpose_a() and mmn.get_output(0).get_dimension() == [2, 3, 3, 5]
    c = net.add_input(mm.DataType.FLOAT32, mm.Dims([3, 1, 4, 5]))
    with pytest.raises(
        mm.MMError,
        match=r"batch dimensions of a \[2, 1, 3, 4\] and b \[3, 1, 4, 5\] cannot broadcast",
    ):
        mmn.update_input(1, c)
    assert mmn.get_input(1).get_dimension() == [3, 4, 5]
    s = net.add_input(mm.DataType.FLOAT32, mm.Dims([]))
    with pytest.raises(mm.MMError, match=r"input 1 \(b\) is a scalar"):
        net.add_i_matmul_node(a, s)
    i = net.add_input(mm.DataType.INT32, mm.Dims([4, 2]))
    with pytest.raises(mm.MMError, match=r"input 1 \(b\) is INT32"):
        net.add_i_matmul_node(a, i)


def test_matmul_transpose_implied_until_set_then_confirmed() -> None:
    # MagicMind order: add, then set_transpose_b. Until then the shapes imply the flag, and
    # validate (run when the model is built) asks for the call that confirms it
    net = mm.Network()
    a = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, 3, 4]))
    node = net.add_i_matmul_node(a, net.add_input(mm.DataType.FLOAT32, mm.Dims([5, 4])))
    assert node.get_transpose_b() and node.get_output(0).get_dimension() == [2, 3, 5]
    with pytest.raises(
        mm.MMError,
        match=r"'matmul_0': its inputs only fit with "
        r"set_transpose_b\(True\)",
    ):
        node.validate()
    with pytest.raises(mm.MMError, match="so K = 5"):
        node.set_transpose_b(False)
    assert node.get_transpose_b() and node.get_output(0).get_dimension() == [2, 3, 5]
    node.set_transpose_a(False)  # fixing a keeps b implied
    with pytest.raises(mm.MMError, match="set_transpose_b"):
        node.validate()
    assert node.set_transpose_b(True).ok()
    node.validate()
    # square operands fit without a transpose: nothing is implied
    sq = net.add_input(mm.DataType.FLOAT32, mm.Dims([4, 4]))
    node = net.add_i_matmul_node(sq, sq)
    assert not node.get_transpose_a() and not node.get_transpose_b()
    node.validate()


def test_matmul_runtime_dims() -> None:
    net = mm.Network()
    a = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 1, -1, 64]))
    b = net.add_input(mm.DataType.FLOAT32, mm.Dims([8, -1, 64]))
    node = net.add_i_matmul_node(a, b)
    node.set_transpose_b(True)
    assert node.get_output(0).get_dimension() == [-1, 8, -1, -1]
    net.get_input(0).set_dimension([2, 1, 10, 64])
    assert node.get_output(0).get_dimension() == [2, 8, 10, -1]


# -- properties of the matmul shape rule ---------------------------------------------------------
_dim = st.integers(1, 3)


@st.composite
def matmul_operands(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], bool, bool]:
    """Shapes of any small rank whose sizes are drawn independently (so some do not fit)."""
    ra, rb = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    a = tuple(draw(st.lists(_dim, min_size=ra, max_size=ra)))
    b = tuple(draw(st.lists(_dim, min_size=rb, max_size=rb)))
    return a, b, draw(st.booleans()), draw(st.booleans())


def _infer(a: Sequence[int], b: Sequence[int], ta: bool, tb: bool) -> list[int]:
    net = mm.Network()
    node = net.add_i_matmul_node(
        net.add_input(mm.DataType.FLOAT32, mm.Dims(a)),
        net.add_input(mm.DataType.FLOAT32, mm.Dims(b)),
    )
    node.set_transpose_a(ta)
    node.set_transpose_b(tb)
    return node.get_output(0).get_dimension().get_dims()


@given(matmul_operands())
def test_matmul_shape_rule_agrees_with_numpy(case: tuple) -> None:
    a, b, ta, tb = case
    try:
        want: list[int] | None = list(matmul_nd(np.zeros(a), np.zeros(b), ta, tb).shape)
    except ValueError:
        want = None
    if want is None:
        with pytest.raises(mm.MMError, match=r"IMatMulNode"):
            _infer(a, b, ta, tb)
    else:
        assert _infer(a, b, ta, tb) == want


@given(matmul_operands(), st.data())
def test_matmul_runtime_dims_never_contradict_the_known_shape(
    case: tuple, data: st.DataObject
) -> None:
    a, b, ta, tb = case
    try:
        want = list(matmul_nd(np.zeros(a), np.zeros(b), ta, tb).shape)
    except ValueError:
        return
    hide_a = data.draw(st.lists(st.booleans(), min_size=len(a), max_size=len(a)))
    hide_b = data.draw(st.lists(st.booleans(), min_size=len(b), max_size=len(b)))
    got = _infer(
        [-1 if h else d for d, h in zip(a, hide_a)],
        [-1 if h else d for d, h in zip(b, hide_b)],
        ta,
        tb,
    )
    assert len(got) == len(want)
    assert all(g in (-1, w) for g, w in zip(got, want)), (got, want)
