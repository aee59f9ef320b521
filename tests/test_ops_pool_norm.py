"""Pooling, reduction and normalization ops: golden cases, onnxruntime, shapes and refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ortcheck import assert_close, const, run_mm, run_onnx

import mmbuild as mm

RNG = np.random.default_rng(7)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def one_node(
    dims: list[int], add: Any, dtype: mm.DataType = mm.DataType.FLOAT32
) -> tuple[mm.Network, mm.INode]:
    """A network with one input of ``dims`` and the node ``add(net, x)``."""
    net = mm.Network()
    x = net.add_input(dtype, mm.Dims(dims))
    return net, add(net, x)


def out_dims(node: mm.INode) -> list[int]:
    return node.get_output(0).get_dimension().get_dims()


# -- pooling: golden cases ---------------------------------------------------------------------
def test_maxpool_2x2_with_the_default_stride() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        pool = net.add_i_maxpool2d_node(xs[0])
        assert pool.set_kernel(2, 2).ok()
        return pool.get_output(0)

    (y,) = run_mm(build, [x])
    np.testing.assert_array_equal(y[0, :, :, 0], [[5, 7], [13, 15]])


def test_pool_defaults_fit_any_input() -> None:
    _, pool = one_node([1, 1, 1, 2], lambda n, x: n.add_i_maxpool2d_node(x))
    assert pool.get_node_type() == "IMaxPool2DNode" and pool.policy is mm.Policy.FOLLOW
    assert pool.get_kernel() == (1, 1) and pool.get_stride() == (1, 1)
    assert pool.get_pad() == (0, 0, 0, 0) and not pool.get_ceil_mode()
    assert out_dims(pool) == [1, 1, 1, 2]


def test_stride_follows_kernel_until_set() -> None:
    _, pool = one_node([1, 9, 9, 2], lambda n, x: n.add_i_maxpool2d_node(x))
    assert pool.set_kernel(3, 3).ok()
    assert pool.get_stride() == (3, 3) and out_dims(pool) == [1, 3, 3, 2]
    assert pool.SetStride(1, 2).ok()
    assert pool.get_stride() == (1, 2) and out_dims(pool) == [1, 7, 4, 2]
    pool.set_kernel(2, 2)  # a stride once set stays
    assert pool.get_stride() == (1, 2) and out_dims(pool) == [1, 8, 4, 2]


def test_maxpool_ceil_mode_golden() -> None:
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        pool = net.add_i_maxpool2d_node(xs[0], True)
        pool.set_kernel(2, 2)
        return pool.get_output(0)

    (y,) = run_mm(build, [x])
    np.testing.assert_array_equal(y[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


def test_maxpool_pads_with_minus_infinity() -> None:
    x = -np.arange(1, 5, dtype=np.float32).reshape(1, 1, 4, 1)  # all negative

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        pool = net.add_i_maxpool2d_node(xs[0])
        pool.set_kernel(1, 2)
        pool.set_pad(0, 0, 1, 1)
        return pool.get_output(0)

    (y,) = run_mm(build, [x])
    np.testing.assert_array_equal(y.ravel(), [-1, -2, -4])


@pytest.mark.parametrize(("include", "expected"), [(False, [1.0, 2.5]), (True, [0.5, 2.5])])
def test_avgpool_count_include_pad_golden(include: bool, expected: list[float]) -> None:
    x = np.array([1, 2, 3], np.float32).reshape(1, 1, 3, 1)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        pool = net.add_i_avgpool2d_node(xs[0])
        pool.set_kernel(1, 2)
        pool.set_stride(1, 2)
        pool.set_pad(0, 0, 1, 0)
        assert pool.set_count_include_pad(include).ok()
        assert pool.get_count_include_pad() is include
        return pool.get_output(0)

    (y,) = run_mm(build, [x])
    np.testing.assert_array_equal(y.ravel(), expected)


def test_pool_out_drops_a_window_that_starts_in_the_end_padding() -> None:
    from mmbuild.ops.pool import pool_out

    assert pool_out(8, 3, 2, 0, 0, False) == 3 and pool_out(8, 3, 2, 0, 0, True) == 4
    assert pool_out(6, 2, 2, 0, 1, True) == 3  # the 4th window would start at 6: dropped
    assert pool_out(6, 2, 2, 1, 0, True) == 4  # shifted right by the left pad: kept
    assert pool_out(-1, 3, 2, 1, 1, True) == -1


# -- pooling against onnxruntime ------------------------------------------------------------------
def pool_pair(
    kind: str,
    x_nchw: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    ceil: bool = False,
    include: bool = False,
    nchw: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(mmbuild, onnxruntime) results in NCHW; pads are (top, bottom, left, right)."""
    attrs: dict[str, Any] = {
        "kernel_shape": list(kernel),
        "strides": list(stride),
        "pads": [pads[0], pads[2], pads[1], pads[3]],
        "ceil_mode": int(ceil),
    }
    op = "MaxPool" if kind == "max" else "AveragePool"
    if kind == "avg":
        attrs["count_include_pad"] = int(include)
    (expected,) = run_onnx(op, [x_nchw], attrs)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        add = net.add_i_maxpool2d_node if kind == "max" else net.add_i_avgpool2d_node
        pool = add(xs[0], ceil)
        if nchw:
            pool.set_layout(mm.Layout.NCHW, mm.Layout.NCHW)
        pool.set_pad(*pads)
        pool.set_kernel(*kernel)
        pool.set_stride(*stride)
        if kind == "avg":
            pool.set_count_include_pad(include)
        return pool.get_output(0)

    x_in = x_nchw if nchw else x_nchw.transpose(0, 2, 3, 1).copy()
    (y,) = run_mm(build, [x_in])
    return (y if nchw else y.transpose(0, 3, 1, 2)), expected


POOL_CASES = [
    # kernel, stride, pads (t, b, l, r), ceil
    ((2, 2), (2, 2), (0, 0, 0, 0), False),
    ((3, 3), (2, 2), (1, 1, 1, 1), False),
    ((3, 3), (2, 2), (1, 1, 1, 1), True),
    ((3, 2), (1, 2), (0, 2, 1, 0), False),
    ((3, 3), (3, 2), (2, 0, 0, 1), True),
    ((2, 3), (2, 3), (1, 0, 2, 1), True),
    ((7, 7), (1, 1), (0, 0, 0, 0), False),  # global
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("kernel", "stride", "pads", "ceil"), POOL_CASES)
@pytest.mark.parametrize("nchw", [False, True], ids=["NHWC", "NCHW"])
def test_pool_matches_onnxruntime(
    kind: str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    ceil: bool,
    nchw: bool,
) -> None:
    x = rand(2, 3, 7, 7)
    includes = [False, True] if kind == "avg" else [False]
    for include in includes:
        y, expected = pool_pair(kind, x, kernel, stride, pads, ceil, include, nchw)
        assert_close(y, expected, "exact" if kind == "max" else "fp32")


def test_pool_ceil_mode_sweep_matches_onnxruntime() -> None:
    """Every 1-D configuration with asymmetric pads, ceil mode, both divisor rules."""
    for size in (1, 2, 5, 6):
        for k in (1, 2, 3):
            for s in (1, 2, 3):
                for pb in range(k):
                    for pe in range(k):
                        if size + pb + pe < k:
                            continue
                        x = rand(1, 1, 1, size)
                        args = ((1, k), (1, s), (0, 0, pb, pe), True)
                        y, expected = pool_pair("max", x, *args, nchw=True)
                        assert_close(y, expected, "exact")
                        for include in (False, True):
                            y, expected = pool_pair("avg", x, *args, include, nchw=True)
                            assert_close(y, expected, "fp32")


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_same_padding_matches_onnxruntime_same_upper(kind: str) -> None:
    x = rand(1, 2, 7, 6)
    op = "MaxPool" if kind == "max" else "AveragePool"
    (expected,) = run_onnx(
        op, [x], {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}
    )

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        add = net.add_i_maxpool2d_node if kind == "max" else net.add_i_avgpool2d_node
        pool = add(xs[0])
        pool.set_layout(mm.Layout.NCHW, mm.Layout.NCHW)
        pool.set_padding_mode(mm.IPaddingMode.SAME)
        pool.set_kernel(3, 2)
        pool.set_stride(2, 2)
        return pool.get_output(0)

    (y,) = run_mm(build, [x])
    assert y.shape == (1, 2, 4, 3)
    assert_close(y, expected, "fp32")


def test_pool_valid_mode_ignores_pads_and_layouts_convert() -> None:
    x = rand(1, 6, 6, 2)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> list[mm.ITensor]:
        valid = net.add_i_avgpool2d_node(xs[0])
        valid.set_kernel(2, 2)
        valid.set_pad(1, 1, 1, 1)
        valid.set_padding_mode(mm.IPaddingMode.VALID)
        to_nchw = net.add_i_avgpool2d_node(xs[0])
        to_nchw.set_kernel(2, 2)
        to_nchw.set_layout(mm.Layout.NHWC, mm.Layout.NCHW)
        return [valid.get_output(0), to_nchw.get_output(0)]

    y_valid, y_nchw = run_mm(build, [x])
    expected = x.reshape(1, 3, 2, 3, 2, 2).mean(axis=(2, 4))
    assert_close(y_valid, expected, "fp32")
    assert_close(y_nchw, expected.transpose(0, 3, 1, 2), "fp32")


def test_pool_shapes_with_runtime_dims() -> None:
    _, pool = one_node([-1, -1, 10, 3], lambda n, x: n.add_i_avgpool2d_node(x, True))
    pool.set_kernel(3, 3)
    pool.set_stride(2, 2)
    assert out_dims(pool) == [-1, -1, 5, 3]
    pool.set_padding_mode(mm.IPaddingMode.SAME)
    assert out_dims(pool) == [-1, -1, 5, 3]
    pool.set_layout(mm.Layout.NHWC, mm.Layout.NCHW)
    assert out_dims(pool) == [-1, 3, -1, 5]


def test_pads_may_come_before_the_kernel() -> None:
    """A 1-wide input takes a 3-wide kernel with pads 1: the pads first, then the kernel."""
    x = rand(1, 2, 5, 1)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        pool = net.add_i_maxpool2d_node(xs[0])
        pool.set_layout(mm.Layout.NCHW, mm.Layout.NCHW)
        pool.set_pad(1, 1, 1, 1)  # waits for its kernel: not checked against the 1x1 default
        pool.set_kernel(3, 3)
        pool.set_stride(1, 1)
        return pool.get_output(0)

    (y,) = run_mm(build, [x])
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    assert_close(y, run_onnx("MaxPool", [x], attrs)[0], "exact")


def test_pads_without_a_kernel_are_refused_when_run() -> None:
    net, pool = one_node([1, 4, 4, 1], lambda n, x: n.add_i_maxpool2d_node(x))
    pool.set_pad(1, 1, 1, 1)
    net.mark_output(pool.get_output(0))
    with pytest.raises(mm.MMError, match=r"pads \[1, 1, 1, 1\] are set but the kernel never was"):
        mm.run_reference(net, [np.zeros((1, 4, 4, 1), np.float32)])


def test_pool_refusals() -> None:
    net, pool = one_node([1, 4, 4, 3], lambda n, x: n.add_i_maxpool2d_node(x))
    pool.set_kernel(2, 2)
    with pytest.raises(
        mm.MMError, match=r"5x5 kernel does not fit the input \[1, 4, 4, 3\] \(read as NHWC"
    ):
        pool.set_kernel(5, 5)
    assert pool.get_kernel() == (2, 2) and out_dims(pool) == [1, 2, 2, 3]  # unchanged
    pool.set_pad(1, 1, 0, 0)
    with pytest.raises(mm.MMError, match="top pad 2 is not smaller than the kernel's H size 2"):
        pool.set_pad(2, 0, 0, 0)
    with pytest.raises(mm.MMError, match="below 1"):
        pool.set_kernel(0, 2)
    with pytest.raises(mm.MMError, match="2.5 is not an integer"):
        pool.set_stride(2.5, 2)
    with pytest.raises(mm.MMError, match="below 0"):
        pool.set_pad(-1, 0, 0, 0)
    with pytest.raises(mm.MMError, match="IPaddingMode"):
        pool.set_padding_mode("same")  # type: ignore[arg-type]
    with pytest.raises(mm.MMError, match="HWCN"):
        pool.set_layout(mm.Layout.HWCN, mm.Layout.NHWC)
    with pytest.raises(mm.MMError, match="True or False"):
        pool.set_ceil_mode(1)  # type: ignore[arg-type]
    with pytest.raises(mm.MMError, match="argument 'ceil_mode': expected True or False"):
        net.add_i_avgpool2d_node(net.get_input(0), "yes")
    avg = net.add_i_avgpool2d_node(net.get_input(0))
    with pytest.raises(mm.MMError, match="IAvgPool2DNode 'avgpool2d_0'.*True or False"):
        avg.set_count_include_pad(None)  # type: ignore[arg-type]
    with pytest.raises(mm.MMError, match=r"shape \[4, 4, 3\] \(rank 3\); this op takes rank 4"):
        one_node([4, 4, 3], lambda n, x: n.add_i_maxpool2d_node(x))
    with pytest.raises(mm.MMError, match="INT32; this op computes on FLOAT32"):
        one_node([1, 4, 4, 3], lambda n, x: n.add_i_avgpool2d_node(x), mm.DataType.INT32)


def test_pool_setters_have_camelcase_aliases() -> None:
    _, pool = one_node([1, 8, 8, 1], lambda n, x: n.AddIAvgPool2DNode(x, False))
    assert pool.SetKernel(4, 4).ok() and pool.SetCountIncludePad(True).ok()
    assert pool.SetPaddingMode(mm.IPaddingMode.VALID).ok() and out_dims(pool) == [1, 2, 2, 1]


# -- reduce ---------------------------------------------------------------------------------------
def test_reduce_golden() -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    results = run_mm(
        lambda net, xs: [
            net.add_i_reduce_node(xs[0], -1, mm.IReduce.MEAN).get_output(0),
            net.add_i_reduce_node(xs[0], [-1], mm.IReduce.MEAN, True).get_output(0),
            net.add_i_reduce_node(xs[0], [0, 1], mm.IReduce.SUM).get_output(0),
            net.add_i_reduce_node(xs[0], 0, mm.IReduce.MAX).get_output(0),
            net.add_i_reduce_node(xs[0], (1,), mm.IReduce.MIN, keep_dims=True).get_output(0),
        ],
        [x],
    )
    expected = [[2, 5], [[2], [5]], 21, [4, 5, 6], [[1], [4]]]
    for y, e in zip(results, expected):
        np.testing.assert_array_equal(y, np.array(e, np.float32))


def test_reduce_over_an_empty_axis_follows_onnx() -> None:
    x = np.zeros((2, 0), np.float32)
    results = run_mm(
        lambda net, xs: [
            net.add_i_reduce_node(xs[0], 1, mode).get_output(0)
            for mode in (mm.IReduce.SUM, mm.IReduce.MEAN, mm.IReduce.MAX, mm.IReduce.MIN)
        ],
        [x],
    )
    assert (results[0] == 0).all() and np.isnan(results[1]).all()
    assert (results[2] == -np.inf).all() and (results[3] == np.inf).all()


ONNX_REDUCE = {
    mm.IReduce.MEAN: "ReduceMean",
    mm.IReduce.SUM: "ReduceSum",
    mm.IReduce.MAX: "ReduceMax",
    mm.IReduce.MIN: "ReduceMin",
}


@pytest.mark.parametrize("mode", list(mm.IReduce))
@pytest.mark.parametrize("axes", [[1], [-1], [0, 2], [1, 2, 3], [3, 0]])
@pytest.mark.parametrize("keep", [False, True])
def test_reduce_matches_onnxruntime(mode: mm.IReduce, axes: list[int], keep: bool) -> None:
    x = rand(2, 5, 6, 7, scale=3.0)
    # opset 18: every Reduce* takes its axes as an input
    (expected,) = run_onnx(
        ONNX_REDUCE[mode],
        [x],
        {"keepdims": int(keep)},
        initializers={"axes": np.array(axes, np.int64)},
        opset=18,
    )
    (y,) = run_mm(lambda net, xs: net.add_i_reduce_node(xs[0], axes, mode, keep).get_output(0), [x])
    exact = mode in (mm.IReduce.MAX, mm.IReduce.MIN)
    assert_close(y, expected, "exact" if exact else "fp32_accumulate")


def test_reduce_setters_and_runtime_dims() -> None:
    _, node = one_node([-1, 4, -1], lambda n, x: n.add_i_reduce_node(x, 1, mm.IReduce.SUM))
    assert out_dims(node) == [-1, -1] and node.get_node_type() == "IReduceNode"
    assert node.set_keep_dims(True).ok() and out_dims(node) == [-1, 1, -1]
    assert node.SetAxes([0, -1]).ok() and out_dims(node) == [1, 4, 1]
    assert node.get_axes() == (0, -1) and node.get_keep_dims() and node.mode is mm.IReduce.SUM


def test_reduce_refusals() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, 3, 4]))
    with pytest.raises(mm.MMError, match=r"axis 3 of axes \[3\] is out of range.*rank 3.*-3\.\.2"):
        net.add_i_reduce_node(x, 3, mm.IReduce.SUM)
    with pytest.raises(mm.MMError, match=r"axes \[1, -2\] name axis 1 twice"):
        net.add_i_reduce_node(x, [1, -2], mm.IReduce.SUM)
    with pytest.raises(mm.MMError, match="name axis 0 twice"):
        net.add_i_reduce_node(x, [0, 0], mm.IReduce.MAX)
    with pytest.raises(mm.MMError, match=r"axes is empty.*list\(range\(rank\)\)"):
        net.add_i_reduce_node(x, [], mm.IReduce.MEAN)
    with pytest.raises(
        mm.MMError, match="argument 'axes': expected an integer or a list of integers, got str"
    ):
        net.add_i_reduce_node(x, "1", mm.IReduce.MEAN)
    with pytest.raises(
        mm.MMError, match=r"argument 'mode': expected an mm\.IReduce .*e\.g\. mm\.IReduce\.MEAN"
    ):
        net.add_i_reduce_node(x, 1, "mean")
    with pytest.raises(mm.MMError, match="argument 'keep_dims': expected True or False"):
        net.add_i_reduce_node(x, 1, mm.IReduce.MEAN, 1)
    node = net.add_i_reduce_node(x, 1, mm.IReduce.MEAN)
    with pytest.raises(mm.MMError, match=r"IReduceNode 'reduce_0': axis 5"):
        node.set_axes(5)
    with pytest.raises(mm.MMError, match="IReduceNode 'reduce_0'.*axes is empty"):
        node.set_axes([])
    assert node.get_axes() == (1,) and out_dims(node) == [2, 4]
    s = net.add_input(mm.DataType.FLOAT32, mm.Dims([]))
    with pytest.raises(mm.MMError, match="scalar"):
        net.add_i_reduce_node(s, 0, mm.IReduce.SUM)
    assert len(net.get_all_nodes_in_network()) == 1


@st.composite
def shape_and_axes(draw: st.DrawFn) -> tuple[list[int], list[int], bool]:
    shape = draw(st.lists(st.integers(-1, 5), min_size=1, max_size=5))
    rank = len(shape)
    chosen = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    axes = [a - rank if draw(st.booleans()) else a for a in chosen]
    return shape, axes, draw(st.booleans())


@given(shape_and_axes())
def test_reduce_shape_inference_matches_numpy(case: tuple[list[int], list[int], bool]) -> None:
    shape, axes, keep = case
    _, node = one_node(shape, lambda n, x: n.add_i_reduce_node(x, axes, mm.IReduce.MEAN, keep))
    concrete = [3 if d == -1 else d for d in shape]
    expected = list(np.zeros(concrete).sum(axis=tuple(axes), keepdims=keep).shape)
    # a run-time dimension that survives the reduction stays -1
    kept = [d for i, d in enumerate(shape) if i not in {a % len(shape) for a in axes}]
    if keep:
        kept = [1 if i in {a % len(shape) for a in axes} else d for i, d in enumerate(shape)]
    assert out_dims(node) == kept
    assert [3 if d == -1 else d for d in kept] == expected


@given(shape_and_axes(), st.data())
def test_reduce_refuses_any_repeated_axis(
    case: tuple[list[int], list[int], bool], data: st.DataObject
) -> None:
    shape, axes, keep = case
    twin = data.draw(st.sampled_from(axes))
    twin = twin + len(shape) if twin < 0 else twin - len(shape)  # the same axis, spelt otherwise
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims(shape))
    with pytest.raises(mm.MMError, match="twice"):
        net.add_i_reduce_node(x, [*axes, twin], mm.IReduce.SUM, keep)


# -- batch norm ------------------------------------------------------------------------------------
def bn_params(c: int) -> list[np.ndarray]:
    return [rand(c), np.abs(rand(c)) + 0.1, rand(c), rand(c)]


def test_batch_norm_golden() -> None:
    x = np.array([[1.0, 4.0]], np.float32)
    params = [np.array(p, np.float32) for p in ([0, 2], [1, 4], [1, 1], [0, 1])]

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        ps = [const(net, p) for p in params]
        return net.add_i_fused_batch_norm_node(xs[0], *ps, -1, 0.0).get_output(0)

    (y,) = run_mm(build, [x])
    np.testing.assert_array_equal(y, [[1.0, 2.0]])


@pytest.mark.parametrize("nchw", [True, False], ids=["NCHW", "NHWC"])
def test_batch_norm_matches_onnxruntime(nchw: bool) -> None:
    x, params = rand(2, 4, 5, 3), bn_params(4)
    names = ["scale", "B", "input_mean", "input_var"]
    order = [params[2], params[3], params[0], params[1]]  # ONNX: scale, B, mean, var
    (expected,) = run_onnx(
        "BatchNormalization", [x], {"epsilon": 1e-3}, initializers=dict(zip(names, order))
    )

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        ps = [const(net, p) for p in params]
        node = net.add_i_fused_batch_norm_node(xs[0], *ps, 1 if nchw else 3, 1e-3)
        assert node.get_node_type() == "IFusedBatchNormNode" and node.get_epsilon() == 1e-3
        return node.get_output(0)

    x_in = x if nchw else x.transpose(0, 2, 3, 1).copy()
    (y,) = run_mm(build, [x_in])
    assert_close(y if nchw else y.transpose(0, 3, 1, 2), expected, "fp32")


def test_batch_norm_shapes_and_refusals() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 8, 8, 3]))
    p3 = [const(net, p) for p in bn_params(3)]
    p4 = const(net, np.ones(4, np.float32))
    node = net.add_i_fused_batch_norm_node(x, *p3, -1)
    assert out_dims(node) == [-1, 8, 8, 3] and node.get_epsilon() == 1e-5
    with pytest.raises(mm.MMError, match=r"input 2 \(var\) has shape \[4\]; it must be \[3\].*"):
        net.add_i_fused_batch_norm_node(x, p3[0], p4, p3[2], p3[3], 3)
    with pytest.raises(mm.MMError, match=r"input 1 \(mean\) has shape \[3\]; it must be \[8\]"):
        node.set_axis(1)
    assert node.get_axis() == -1
    with pytest.raises(mm.MMError, match="axis 4 is out of range for a tensor of rank 4"):
        net.add_i_fused_batch_norm_node(x, *p3, 4)
    with pytest.raises(mm.MMError, match="epsilon is -0.1; use a finite number >= 0"):
        net.add_i_fused_batch_norm_node(x, *p3, -1, -0.1)
    with pytest.raises(mm.MMError, match="set_epsilon: epsilon is nan"):
        node.set_epsilon(float("nan"))
    with pytest.raises(
        mm.MMError, match=r"argument 'axis': expected an integer, got float \(1.0\)"
    ):
        net.add_i_fused_batch_norm_node(x, *p3, 1.0)
    with pytest.raises(mm.MMError, match=r"argument 'offset' is missing \(None\)"):
        net.add_i_fused_batch_norm_node(x, p3[0], p3[1], p3[2], None, -1)
    # a run-time channel count accepts parameters of any length
    y = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, -1]))
    assert out_dims(net.add_i_fused_batch_norm_node(y, *p3, 1)) == [2, -1]


# -- layer norm ------------------------------------------------------------------------------------
def test_layer_norm_golden() -> None:
    x = np.array([[1, 3]], np.float32)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> list[mm.ITensor]:
        scale = const(net, np.array([2, 2], np.float32))
        bias = const(net, np.array([0, 1], np.float32))
        plain = net.add_i_layer_norm_node(xs[0], eps=0.0)
        affine = net.add_i_layer_norm_node(xs[0], scale, bias, -1, 0.0)
        return [plain.get_output(0), affine.get_output(0)]

    plain, affine = run_mm(build, [x])
    np.testing.assert_array_equal(plain, [[-1, 1]])
    np.testing.assert_array_equal(affine, [[-2, 3]])


@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layer_norm_matches_onnxruntime(axis: int, with_bias: bool) -> None:
    x = rand(2, 3, 4, 5, scale=2.0) + 1.0
    norm_shape = x.shape[axis % 4 :]
    scale, bias = rand(*norm_shape), rand(*norm_shape)
    inits = {"scale": scale, **({"B": bias} if with_bias else {})}
    (expected,) = run_onnx(
        "LayerNormalization", [x], {"axis": axis, "epsilon": 1e-5}, initializers=inits
    )

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        b = const(net, bias) if with_bias else None
        node = net.add_i_layer_norm_node(xs[0], const(net, scale), b, axis)
        assert node.get_node_type() == "ILayerNormNode" and node.get_epsilon() == 1e-5
        return node.get_output(0)

    (y,) = run_mm(build, [x])
    assert_close(y, expected, "fp32_accumulate")


def test_layer_norm_without_scale_matches_onnxruntime_with_ones() -> None:
    x = rand(3, 16, scale=4.0)
    (expected,) = run_onnx(
        "LayerNormalization", [x], {"axis": -1}, initializers={"s": np.ones(16, np.float32)}
    )
    (y,) = run_mm(lambda net, xs: net.add_i_layer_norm_node(xs[0]).get_output(0), [x])
    assert_close(y, expected, "fp32_accumulate")


def test_layer_norm_shapes_and_refusals() -> None:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 4, 6]))
    s46, s6 = const(net, np.ones((4, 6), np.float32)), const(net, np.ones(6, np.float32))
    node = net.add_i_layer_norm_node(x, s46, None, -2)
    assert out_dims(node) == [-1, 4, 6] and node.get_axis() == -2
    with pytest.raises(
        mm.MMError,
        match=r"input 1 \(scale\) has shape \[4, 6\]; it must have the normalized "
        r"shape \[6\]",
    ):
        node.set_axis(-1)
    assert node.set_epsilon(1e-3).ok() and node.get_epsilon() == 1e-3
    with pytest.raises(mm.MMError, match=r"input 2 \(bias\) has shape \[6\].*\[4, 6\]"):
        net.add_i_layer_norm_node(x, s46, s6, 1)
    with pytest.raises(mm.MMError, match="bias was given without a scale"):
        net.add_i_layer_norm_node(x, None, s6)
    with pytest.raises(mm.MMError, match="axis -4 is out of range for a tensor of rank 3"):
        net.add_i_layer_norm_node(x, axis=-4)
    with pytest.raises(mm.MMError, match="argument 'eps': expected a number"):
        net.add_i_layer_norm_node(x, eps="small")
    # a run-time normalized dimension fits a scale of any size there
    y = net.add_input(mm.DataType.FLOAT32, mm.Dims([2, -1]))
    assert out_dims(net.add_i_layer_norm_node(y, s6)) == [2, -1]


# -- softmax ---------------------------------------------------------------------------------------
def test_softmax_golden_and_stable() -> None:
    x = np.array([[1, 2, 3], [1000, 1000, -1000]], np.float32)
    (y,) = run_mm(lambda net, xs: net.add_i_softmax_node(xs[0], 1).get_output(0), [x])
    np.testing.assert_allclose(y[0], [0.09003057, 0.24472847, 0.66524096], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0.5, 0.5, 0.0])


@pytest.mark.parametrize("axis", [0, 1, -1, 2])
def test_softmax_matches_onnxruntime(axis: int) -> None:
    x = rand(3, 4, 5, scale=5.0)
    (expected,) = run_onnx("Softmax", [x], {"axis": axis}, opset=13)
    (y,) = run_mm(lambda net, xs: net.add_i_softmax_node(xs[0], axis).get_output(0), [x])
    assert_close(y, expected, "transcendental")


def test_softmax_shapes_and_refusals() -> None:
    net, node = one_node([-1, 10], lambda n, x: n.add_i_softmax_node(x, -1))
    assert out_dims(node) == [-1, 10] and node.get_node_type() == "ISoftmaxNode"
    assert node.policy is mm.Policy.NEVER
    with pytest.raises(mm.MMError, match="ISoftmaxNode 'softmax_0': axis 2 is out of range"):
        node.set_axis(2)
    assert node.SetAxis(0).ok() and node.get_axis() == 0
    with pytest.raises(mm.MMError, match="argument 'axis' is missing \\(None\\); pass an integer"):
        net.add_i_softmax_node(net.get_input(0), None)
    s = net.add_input(mm.DataType.FLOAT32, mm.Dims([]))
    with pytest.raises(mm.MMError, match=r"scalar \(shape \[\]\)"):
        net.add_i_softmax_node(s, 0)
    i = net.add_input(mm.DataType.INT32, mm.Dims([4]))
    with pytest.raises(mm.MMError, match="INT32"):
        net.add_i_softmax_node(i, 0)


def test_policies() -> None:
    assert mm.IMaxPool2DNode.policy is mm.Policy.FOLLOW
    for cls in (
        mm.IAvgPool2DNode,
        mm.IReduceNode,
        mm.IFusedBatchNormNode,
        mm.ILayerNormNode,
        mm.ISoftmaxNode,
    ):
        assert cls.policy is mm.Policy.NEVER
