"""Pooling and resize kernels against their op references, float32 and fp16.

Tolerances, each with its reason:

- max pooling and NEAREST resize: exact (they pick input elements);
- BILINEAR resize: exact (the kernel does the reference's float64 operations in its order and
  rounds once);
- average pooling: exact on data whose window sums are exact in float64 (multiples of 1/8
  here), where the order of the sum cannot matter; within 1 ulp of the output type on random
  data, because numpy may sum a window in another order, which changes the float64 sum when a
  window's values span more than about 29 binades.

NaN results must be NaN at the same positions (the payload may be quieted by the fp16
conversion); every other result is compared bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernelcheck import Build, as_float, assert_ulps, check_dispatchers, one_node_step

import mmbuild as mm
from mmbuild.errors import MMError
from mmbuild.kernels.cpu import window
from mmbuild.kernels.table import KERNELS

RNG = np.random.default_rng(5)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

NHWC, NCHW = mm.Layout.NHWC, mm.Layout.NCHW
LAYOUTS = [(NHWC, NHWC), (NCHW, NCHW), (NCHW, NHWC), (NHWC, NCHW)]
FLOATS = [np.float32, np.float16]
FP32 = mm.DataType.FLOAT32


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def check(build: Build, x: np.ndarray, max_ulps: int = 0) -> np.ndarray:
    """Run the kernel of ``build`` on ``x`` (a FLOAT16 step for a float16 ``x``) and compare
    it with the kernel's reference: NaN where it has NaN, otherwise within ``max_ulps``."""
    dtype = mm.DataType.FLOAT16 if x.dtype == np.float16 else mm.DataType.FLOAT32
    case = one_node_step(build, [(x.shape, dtype)], dtype)
    inputs = case.buffers([x])
    runner = case.runner()
    check_dispatchers(runner)
    (y,) = outs = case.outputs(inputs)
    runner(inputs, outs)
    (expected,) = case.reference(inputs)
    assert_ulps(y, expected, dtype, ulps=max_ulps)
    return as_float(y, dtype)


def nhwc_input(
    n: int, h: int, w: int, c: int, layout: mm.Layout, dtype: type, grid: bool = False
) -> np.ndarray:
    """Random values of shape [n, h, w, c] in ``layout``; ``grid``: multiples of 1/8 in
    [-8, 8], whose sums are exact."""
    shape = (n, c, h, w) if layout is NCHW else (n, h, w, c)
    if grid:
        return (RNG.integers(-64, 65, shape) / 8).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def pool_builder(op: str, kernel: tuple[int, int] | None, **attrs: Any) -> Build:
    """A pooling node: ``attrs`` are stride, pad, padding_mode, layout, ceil, count_include_pad."""

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        add = net.add_i_maxpool2d_node if op == "max" else net.add_i_avgpool2d_node
        node = add(xs[0], attrs.get("ceil", False))
        if "layout" in attrs:
            node.set_layout(*attrs["layout"])
        if "pad" in attrs:
            node.set_pad(*attrs["pad"])
        if kernel is not None:
            node.set_kernel(*kernel)
        if "stride" in attrs:
            node.set_stride(*attrs["stride"])
        if "padding_mode" in attrs:
            node.set_padding_mode(attrs["padding_mode"])
        if "count_include_pad" in attrs:
            node.set_count_include_pad(attrs["count_include_pad"])
        return node

    return build


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------
# (N, H, W, C), kernel, window attributes
POOL_CASES: list[tuple[tuple[int, int, int, int], tuple[int, int] | None, dict[str, Any]]] = [
    ((1, 4, 4, 1), (2, 2), {}),  # the stride follows the kernel
    ((2, 7, 5, 3), (3, 3), {"stride": (2, 2), "pad": (1, 1, 1, 1)}),  # window > stride
    ((1, 7, 5, 4), (3, 2), {"stride": (1, 2), "pad": (0, 2, 1, 0)}),
    ((3, 8, 8, 2), (3, 3), {"stride": (2, 2), "ceil": True}),  # a window overhangs the input
    ((1, 6, 7, 1), (2, 3), {"stride": (2, 2), "pad": (1, 0, 2, 1), "ceil": True}),
    ((2, 7, 6, 3), (3, 3), {"stride": (2, 2), "padding_mode": mm.IPaddingMode.SAME}),
    ((1, 9, 11, 2), (5, 5), {"stride": (3, 3), "pad": (2, 2, 2, 2), "ceil": True}),
    ((2, 5, 6, 1), (2, 4), {"stride": (3, 1), "padding_mode": mm.IPaddingMode.VALID}),
    ((1, 3, 3, 5), None, {}),  # no kernel set: 1x1
    ((1, 1, 1, 2), (3, 3), {"stride": (1, 1), "pad": (1, 1, 1, 1)}),  # one pixel, all padding
]


@pytest.mark.parametrize(("shape", "kernel", "attrs"), POOL_CASES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"{lay[0].name}-{lay[1].name}")
@pytest.mark.parametrize("dtype", FLOATS)
def test_maxpool(
    shape: tuple[int, ...], kernel: Any, attrs: dict[str, Any], layout: Any, dtype: type
) -> None:
    x = nhwc_input(*shape, layout[0], dtype)
    check(pool_builder("max", kernel, layout=layout, **attrs), x)


@pytest.mark.parametrize(("shape", "kernel", "attrs"), POOL_CASES)
@pytest.mark.parametrize("layout", LAYOUTS[:3], ids=lambda lay: f"{lay[0].name}-{lay[1].name}")
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("include_pad", [False, True])
def test_avgpool_exact_on_exact_sums(
    shape: tuple[int, ...], kernel: Any, attrs: dict[str, Any], layout: Any, dtype: type,
    include_pad: bool,
) -> None:  # fmt: skip
    x = nhwc_input(*shape, layout[0], dtype, grid=True)
    build = pool_builder("avg", kernel, layout=layout, count_include_pad=include_pad, **attrs)
    check(build, x)


@pytest.mark.parametrize(("shape", "kernel", "attrs"), POOL_CASES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_avgpool_random_data_within_one_ulp(
    shape: tuple[int, ...], kernel: Any, attrs: dict[str, Any], dtype: type
) -> None:
    x = nhwc_input(*shape, NHWC, dtype)
    check(pool_builder("avg", kernel, count_include_pad=True, **attrs), x, max_ulps=1)
    check(pool_builder("avg", kernel, **attrs), x, max_ulps=1)


def test_pool_golden() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    y = check(pool_builder("max", (2, 2)), x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[5, 7], [13, 15]])
    # the avgpool declaration's example: [pad, 1] and [2, 3]
    x = np.array([1, 2, 3], np.float32).reshape(1, 1, 3, 1)
    attrs = {"stride": (1, 2), "pad": (0, 0, 1, 0)}
    y = check(pool_builder("avg", (1, 2), **attrs), x)
    np.testing.assert_array_equal(y.ravel(), [1, 2.5])
    y = check(pool_builder("avg", (1, 2), count_include_pad=True, **attrs), x)
    np.testing.assert_array_equal(y.ravel(), [0.5, 2.5])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf in the reference
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("layout", LAYOUTS[:2], ids=lambda lay: lay[0].name)
def test_pool_nan_and_infinities(dtype: type, layout: Any) -> None:
    x = nhwc_input(2, 6, 6, 3, layout[0], dtype)
    flat = x.reshape(-1)
    flat[RNG.choice(flat.size, 12, replace=False)] = np.nan
    flat[RNG.choice(flat.size, 6, replace=False)] = np.inf
    flat[RNG.choice(flat.size, 6, replace=False)] = -np.inf
    attrs = {"stride": (2, 2), "pad": (1, 1, 1, 1), "layout": layout}
    y = check(pool_builder("max", (3, 3), **attrs), x)
    assert np.isnan(y).any()
    check(pool_builder("avg", (3, 3), **attrs), x, max_ulps=1)


def test_maxpool_all_negative_windows_ignore_padding() -> None:
    x = -np.abs(nhwc_input(1, 5, 5, 2, NHWC, np.float32)) - 1
    y = check(pool_builder("max", (3, 3), stride=(2, 2), pad=(1, 1, 1, 1)), x)
    assert (y < 0).all()


@SETTINGS
@given(data=st.data())
def test_pool_any_geometry(data: st.DataObject) -> None:
    draw = data.draw
    kh, kw = draw(st.integers(1, 4), label="kh"), draw(st.integers(1, 4), label="kw")
    sh, sw = draw(st.integers(1, 3), label="sh"), draw(st.integers(1, 3), label="sw")
    pads = tuple(draw(st.integers(0, k - 1)) for k in (kh, kh, kw, kw))
    h = draw(st.integers(max(1, kh - pads[0] - pads[1]), 9), label="h")
    w = draw(st.integers(max(1, kw - pads[2] - pads[3]), 9), label="w")
    n, c = draw(st.integers(1, 2), label="n"), draw(st.integers(1, 4), label="c")
    layout = draw(st.sampled_from(LAYOUTS), label="layout")
    ceil = draw(st.booleans(), label="ceil")
    op = draw(st.sampled_from(["max", "avg"]), label="op")
    attrs: dict[str, Any] = {"stride": (sh, sw), "pad": pads, "layout": layout, "ceil": ceil}
    if op == "avg":
        attrs["count_include_pad"] = draw(st.booleans(), label="count_include_pad")
    check(pool_builder(op, (kh, kw), **attrs), nhwc_input(n, h, w, c, layout[0], np.float32,
                                                          grid=True))  # fmt: skip


def test_pool_refuses_pads_without_a_kernel() -> None:
    x = nhwc_input(1, 4, 4, 1, NHWC, np.float32)
    case = one_node_step(pool_builder("max", None, pad=(1, 0, 0, 0)), [(x.shape, FP32)], FP32)
    outs = case.outputs([x])
    with pytest.raises(MMError, match="call set_kernel"):
        case.runner()([x], outs)


def test_pool_kernels_are_registered_for_float_types() -> None:
    floats = {mm.DataType.FLOAT32, mm.DataType.FLOAT16}
    for op in ("avgpool2d", "resize"):
        assert {p for (o, p) in KERNELS if o == op} == floats
    # and max pooling of codes carried between quantized convs (test_carry.py)
    assert {p for (o, p) in KERNELS if o == "maxpool2d"} == {
        *floats,
        mm.DataType.QINT8,
        mm.DataType.QINT16,
    }


# ---------------------------------------------------------------------------------------------
# Resize
# ---------------------------------------------------------------------------------------------
def resize_builder(
    size: Sequence[int] | None,
    scale: Sequence[float] | None,
    mode: mm.IResizeMode,
    coord: mm.IResizeCoordinateMode,
    nearest: mm.IResizeNearestMode = mm.IResizeNearestMode.ROUND_PREFER_FLOOR,
    layout: mm.Layout = NHWC,
) -> Build:
    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        node = net.add_i_resize_node(xs[0], size=size, scale=scale)
        node.set_mode(mode)
        node.set_coordinate_mode(coord)
        node.set_nearest_mode(nearest)
        node.set_layout(layout)
        return node

    return build


# (N, H, W, C), size, scale
RESIZE_CASES = [
    ((1, 3, 4, 2), (7, 9), None),  # up
    ((2, 7, 9, 3), None, (0.5, 0.6)),  # down, by scale
    ((1, 5, 4, 1), (1, 1), None),  # one output
    ((1, 4, 3, 2), None, (1.7, 2.3)),
    ((1, 1, 6, 2), (3, 2), None),  # a one-row input
]
MODES = [(mm.IResizeMode.NEAREST, n) for n in mm.IResizeNearestMode] + [
    (mm.IResizeMode.BILINEAR, mm.IResizeNearestMode.ROUND_PREFER_FLOOR)
]


@pytest.mark.parametrize(("shape", "size", "scale"), RESIZE_CASES)
@pytest.mark.parametrize(("mode", "nearest"), MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("coord", list(mm.IResizeCoordinateMode), ids=lambda m: m.name)
@pytest.mark.parametrize("layout", [NHWC, NCHW], ids=lambda m: m.name)
def test_resize_fp32(
    shape: tuple[int, ...], size: Any, scale: Any, mode: Any, nearest: Any, coord: Any,
    layout: mm.Layout,
) -> None:  # fmt: skip
    x = nhwc_input(*shape, layout, np.float32)
    check(resize_builder(size, scale, mode, coord, nearest, layout), x)


@pytest.mark.parametrize(("shape", "size", "scale"), RESIZE_CASES)
@pytest.mark.parametrize("mode", list(mm.IResizeMode), ids=lambda m: m.name)
@pytest.mark.parametrize("coord", list(mm.IResizeCoordinateMode), ids=lambda m: m.name)
def test_resize_fp16(shape: tuple[int, ...], size: Any, scale: Any, mode: Any, coord: Any) -> None:
    x = nhwc_input(*shape, NCHW, np.float16)
    check(resize_builder(size, scale, mode, coord, layout=NCHW), x)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the reference
def test_resize_golden_and_nan() -> None:
    x = np.array([0, 10], np.float32).reshape(1, 1, 2, 1)
    half = mm.IResizeCoordinateMode.HALF_PIXEL
    y = check(resize_builder((1, 4), None, mm.IResizeMode.BILINEAR, half), x)
    np.testing.assert_array_equal(y.ravel(), [0, 2.5, 7.5, 10])
    y = check(resize_builder((1, 4), None, mm.IResizeMode.NEAREST, half), x)
    np.testing.assert_array_equal(y.ravel(), [0, 0, 10, 10])
    x = nhwc_input(1, 4, 4, 2, NHWC, np.float32)
    x[0, 1, 2, 0], x[0, 3, 0, 1] = np.nan, np.inf
    y = check(resize_builder((7, 5), None, mm.IResizeMode.BILINEAR, half), x)
    assert np.isnan(y).any()


# ---------------------------------------------------------------------------------------------
# The parallel loops, reached by lowering the threshold
# ---------------------------------------------------------------------------------------------
def test_parallel_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window, "PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(window, "_CHUNK", 5)  # many chunks, and a ragged last one
    x = nhwc_input(3, 9, 8, 2, NHWC, np.float32, grid=True)
    attrs = {"stride": (2, 2), "pad": (1, 1, 1, 1), "ceil": True}
    check(pool_builder("max", (3, 3), **attrs), x)
    check(pool_builder("avg", (3, 3), count_include_pad=True, **attrs), x)
    half = mm.IResizeCoordinateMode.HALF_PIXEL
    check(resize_builder((13, 5), None, mm.IResizeMode.BILINEAR, half), x)
    check(resize_builder(None, (1.5, 2.0), mm.IResizeMode.NEAREST, half), x)
