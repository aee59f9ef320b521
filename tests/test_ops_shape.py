"""Shape and data-movement ops (reshape, permute, squeeze, unsqueeze, concat, split, slice, pad),
resize and cast: golden cases by hand, onnxruntime comparisons, shape inference with run-time
dimensions, the refusals, and property tests of the shape rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ortcheck import assert_close, const, run_mm, run_onnx

import mmbuild as mm
from mmbuild.ops import get_op

F32, I32, I64 = mm.DataType.FLOAT32, mm.DataType.INT32, mm.DataType.INT64
RNG = np.random.default_rng(7)


def one(x: np.ndarray, add: Callable[[mm.Network, mm.ITensor], mm.INode]) -> np.ndarray:
    """Run one node made by ``add(net, x)`` on input array ``x``; its first output."""
    return run_mm(lambda net, xs: add(net, xs[0]).get_output(0), [x])[0]


def infer(
    dims: Sequence[int], add: Callable[[mm.Network, mm.ITensor], mm.INode], dtype: mm.DataType = F32
) -> list[int]:
    """The inferred output shape of one node on an input of ``dims`` (-1 = run time)."""
    net = mm.Network()
    node = add(net, net.add_input(dtype, mm.Dims(dims)))
    return node.get_output(0).get_dimension().get_dims()


def refused(
    dims: Sequence[int],
    add: Callable[[mm.Network, mm.ITensor], Any],
    match: str,
    dtype: mm.DataType = F32,
) -> None:
    net = mm.Network()
    x = net.add_input(dtype, mm.Dims(dims))
    with pytest.raises(mm.MMError, match=match):
        add(net, x)
    assert net.get_all_nodes_in_network() == [] or all(
        n.get_node_type() == "IConstNode" for n in net.get_all_nodes_in_network()
    )


def arange(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)


# -- declarations --------------------------------------------------------------------------------
def test_declarations_policies_and_exports() -> None:
    follow = ["reshape", "permute", "squeeze", "unsqueeze", "concat", "split", "slice", "pad"]
    for op in follow:
        assert get_op(op).policy is mm.Policy.FOLLOW, op
    assert get_op("resize").policy is mm.Policy.NEVER
    assert get_op("cast").policy is mm.Policy.NEVER
    assert mm.IPadMode.REFLECT and mm.IResizeMode.BILINEAR and mm.IResizeNearestMode.FLOOR
    assert mm.IResizeCoordinateMode.ALIGN_CORNERS
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3]))
    node = net.AddIReshapeNode(x, [3, 2])
    assert node.GetNodeType() == "IReshapeNode"
    assert net.add_i_permute_node(x, [1, 0]).get_node_type() == "IPermuteNode"
    assert net.add_i_concat_node(0, [x, x]).get_node_type() == "IConcatNode"
    assert net.add_i_cast_node(x, I32).get_node_type() == "ICastNode"


# -- golden cases --------------------------------------------------------------------------------
def test_reshape_golden() -> None:
    x = arange(2, 3, 4)
    assert one(x, lambda n, t: n.add_i_reshape_node(t, [0, -1])).shape == (2, 12)
    y = one(x, lambda n, t: n.add_i_reshape_node(t, mm.Dims([4, 0, 2])))
    np.testing.assert_array_equal(y, x.reshape(4, 3, 2))
    assert one(np.float32([[5.0]]), lambda n, t: n.add_i_reshape_node(t, [])).shape == ()


def test_reshape_shape_from_const_tensor() -> None:
    x = arange(2, 3, 4)
    for dtype in (np.int32, np.int64):
        y = one(x, lambda n, t, d=dtype: n.add_i_reshape_node(t, const(n, np.array([6, -1], d))))
        np.testing.assert_array_equal(y, x.reshape(6, 4))


def test_permute_squeeze_unsqueeze_golden() -> None:
    x = arange(2, 1, 3)
    np.testing.assert_array_equal(
        one(x, lambda n, t: n.add_i_permute_node(t, [2, 0, 1])), x.transpose(2, 0, 1)
    )
    assert one(x, lambda n, t: n.add_i_squeeze_node(t, [1])).shape == (2, 3)
    assert one(arange(1, 3, 1, 2), lambda n, t: n.add_i_squeeze_node(t)).shape == (3, 2)
    assert one(arange(1, 3, 1, 2), lambda n, t: n.add_i_squeeze_node(t, [-2])).shape == (1, 3, 2)
    assert one(arange(3, 4), lambda n, t: n.add_i_unsqueeze_node(t, [0, 3])).shape == (1, 3, 4, 1)
    assert one(arange(3, 4), lambda n, t: n.add_i_unsqueeze_node(t, [-1])).shape == (3, 4, 1)
    perm = lambda n, t: n.add_i_permute_node(t, const(n, np.array([1, 0, 2], np.int64)))  # noqa: E731
    assert one(x, perm).shape == (1, 2, 3)


def test_concat_split_golden() -> None:
    a, b = arange(2, 3), arange(2, 5) + 100

    def cat(net: mm.Network, xs: list[mm.ITensor]) -> mm.ITensor:
        return net.add_i_concat_node(-1, xs).get_output(0)

    np.testing.assert_array_equal(run_mm(cat, [a, b])[0], np.concatenate([a, b], 1))
    x = arange(2, 6)
    parts = run_mm(lambda net, xs: net.add_i_split_node(xs[0], 1, 3).outputs, [x])
    assert [p.tolist() for p in parts] == [
        x[:, 0:2].tolist(),
        x[:, 2:4].tolist(),
        x[:, 4:].tolist(),
    ]
    parts = run_mm(lambda net, xs: net.add_i_split_node(xs[0], -1, [1, 5]).outputs, [x])
    assert [p.shape for p in parts] == [(2, 1), (2, 5)]
    np.testing.assert_array_equal(parts[1], x[:, 1:])


def test_slice_golden_docstring_example() -> None:
    x = arange(4, 10)
    y = one(x, lambda n, t: n.add_i_slice_node(t, [1, -8], [2, -1], [1, 3]))
    np.testing.assert_array_equal(y, x[1:3, [2, 5, 8]])
    y = one(x, lambda n, t: n.add_i_slice_node(t, [0, 10], [0, -1]))
    assert y.shape == (0, 0)


def test_pad_golden() -> None:
    x = np.float32([[1, 2], [3, 4]])
    y = one(x, lambda n, t: n.add_i_pad_node(t, [(0, 1), (1, 0)], 9))
    np.testing.assert_array_equal(y, [[9, 1, 2], [9, 3, 4], [9, 9, 9]])
    row = np.float32([[1, 2, 3]])

    def pad(mode: mm.IPadMode) -> Callable[[mm.Network, mm.ITensor], mm.INode]:
        def add(net: mm.Network, t: mm.ITensor) -> mm.INode:
            node = net.add_i_pad_node(t, [0, 0, 2, 2])  # flat [b0, a0, b1, a1]
            node.set_mode(mode)
            return node

        return add

    np.testing.assert_array_equal(one(row, pad(mm.IPadMode.REFLECT)), [[3, 2, 1, 2, 3, 2, 1]])
    np.testing.assert_array_equal(one(row, pad(mm.IPadMode.EDGE)), [[1, 1, 1, 2, 3, 3, 3]])
    pads = lambda n, t: n.add_i_pad_node(t, const(n, np.array([[1, 0], [0, 1]], np.int32)))  # noqa: E731
    np.testing.assert_array_equal(one(x, pads), [[0, 0, 0], [1, 2, 0], [3, 4, 0]])


def test_resize_golden_docstring_example() -> None:
    x = np.float32([0, 10]).reshape(1, 1, 2, 1)

    def resize(mode: mm.IResizeMode) -> Callable[[mm.Network, mm.ITensor], mm.INode]:
        def add(net: mm.Network, t: mm.ITensor) -> mm.INode:
            node = net.add_i_resize_node(t, size=[1, 4])
            node.set_mode(mode)
            return node

        return add

    np.testing.assert_array_equal(
        one(x, resize(mm.IResizeMode.BILINEAR)).ravel(), [0, 2.5, 7.5, 10]
    )
    np.testing.assert_array_equal(one(x, resize(mm.IResizeMode.NEAREST)).ravel(), [0, 0, 10, 10])


def test_cast_golden_saturates_and_wraps() -> None:
    x = np.float32([-2.7, 2.7, 300.0, -300.0, np.nan, np.inf])
    y = one(x, lambda n, t: n.add_i_cast_node(t, mm.DataType.INT8))
    assert y.dtype == np.int8 and y.tolist() == [-2, 2, 127, -128, 0, 127]
    y = one(np.float32([-1.5, 1e10, 7.9]), lambda n, t: n.add_i_cast_node(t, mm.DataType.UINT8))
    assert y.tolist() == [0, 255, 7]
    y = one(np.float64([-1e30, 1e30]).astype(np.float32), lambda n, t: n.add_i_cast_node(t, I64))
    assert y.tolist() == [np.iinfo(np.int64).min, np.iinfo(np.int64).max]
    y = one(np.int32([300, -1]), lambda n, t: n.add_i_cast_node(t, mm.DataType.UINT8))
    assert y.tolist() == [44, 255]
    y = one(np.float32([0.0, -0.5, 2.0]), lambda n, t: n.add_i_cast_node(t, mm.DataType.BOOL))
    assert y.dtype == np.bool_ and y.tolist() == [False, True, True]
    y = one(np.float32([1e5, 1 / 3]), lambda n, t: n.add_i_cast_node(t, mm.DataType.FLOAT16))
    assert np.isinf(y[0]) and y[1] == np.float32(np.float16(1 / 3))


def test_data_movement_keeps_the_input_dtype() -> None:
    cases: list[Callable[[mm.Network, mm.ITensor], mm.INode]] = [
        lambda n, t: n.add_i_reshape_node(t, [-1]),
        lambda n, t: n.add_i_permute_node(t, [1, 0]),
        lambda n, t: n.add_i_unsqueeze_node(t, [0]),
        lambda n, t: n.add_i_squeeze_node(t, [0]),
        lambda n, t: n.add_i_concat_node(0, [t, t]),
        lambda n, t: n.add_i_split_node(t, 1, 2),
        lambda n, t: n.add_i_slice_node(t, [0, 1], [1, 1]),
        lambda n, t: n.add_i_pad_node(t, [1, 1, 0, 0], 3),
    ]
    for dtype in (np.float16, np.int32, np.uint8, np.int64):
        x = arange(1, 4, dtype=dtype)
        for add in cases:
            net = mm.Network()
            node = add(net, net.add_input(mm.DataType.from_numpy(dtype), mm.Dims([1, 4])))
            assert all(t.get_data_type() is mm.DataType.from_numpy(dtype) for t in node.outputs)
            assert all(y.dtype == dtype for y in node.reference(x)), (node, dtype)
    big = np.int64([2**62 + 1])  # a float32 round trip would change it
    assert one(big, lambda n, t: n.add_i_reshape_node(t, [1, 1])).ravel()[0] == big[0]


# -- onnxruntime ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "target"),
    [
        ((2, 3, 4), [0, -1]),
        ((2, 3, 4), [4, 0, 2]),
        ((2, 3, 4), [-1]),
        ((2, 3, 4), [3, -1, 2]),
        ((6,), [2, 1, 3]),
        ((2, 0, 3), [0, -1]),
    ],
)
def test_reshape_matches_onnx(shape: tuple[int, ...], target: list[int]) -> None:
    x = arange(*shape)
    ref = run_onnx("Reshape", [x], initializers={"shape": np.array(target, np.int64)}, opset=14)
    assert_close(one(x, lambda n, t: n.add_i_reshape_node(t, target)), ref[0], "exact")


@pytest.mark.parametrize(
    "perm", [[0, 1, 2, 3], [0, 3, 1, 2], [0, 2, 3, 1], [3, 2, 1, 0], [1, 0, 3, 2]]
)
def test_permute_matches_onnx_transpose(perm: list[int]) -> None:
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = run_onnx("Transpose", [x], {"perm": perm})
    assert_close(one(x, lambda n, t: n.add_i_permute_node(t, perm)), ref[0], "exact")


@pytest.mark.parametrize(
    ("shape", "axes"), [((1, 3, 1, 2), [0, 2]), ((1, 3, 1, 2), [-2]), ((3, 1), [1])]
)
def test_squeeze_matches_onnx(shape: tuple[int, ...], axes: list[int]) -> None:
    x = arange(*shape)
    ref = run_onnx("Squeeze", [x], initializers={"axes": np.array(axes, np.int64)}, opset=13)
    assert_close(one(x, lambda n, t: n.add_i_squeeze_node(t, axes)), ref[0], "exact")


@pytest.mark.parametrize(("shape", "axes"), [((3, 4), [0, 3]), ((3, 4), [-1]), ((3,), [0, 1, -1])])
def test_unsqueeze_matches_onnx(shape: tuple[int, ...], axes: list[int]) -> None:
    x = arange(*shape)
    ref = run_onnx("Unsqueeze", [x], initializers={"axes": np.array(axes, np.int64)}, opset=13)
    assert_close(one(x, lambda n, t: n.add_i_unsqueeze_node(t, axes)), ref[0], "exact")


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_concat_matches_onnx(axis: int) -> None:
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, s in enumerate(shapes):
        s[axis] += i
    xs = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
    ref = run_onnx("Concat", xs, {"axis": axis})
    got = run_mm(lambda net, ts: net.add_i_concat_node(axis, ts).get_output(0), xs)
    assert_close(got[0], ref[0], "exact")


@pytest.mark.parametrize(("axis", "n"), [(1, 3), (-1, 2), (0, [1, 3]), (1, [2, 0, 4])])
def test_split_matches_onnx(axis: int, n: int | list[int]) -> None:
    x = arange(4, 6, 4)
    count = n if isinstance(n, int) else len(n)
    inits = {} if isinstance(n, int) else {"split": np.array(n, np.int64)}
    ref = run_onnx("Split", [x], {"axis": axis}, n_outputs=count, initializers=inits, opset=13)
    got = run_mm(lambda net, ts: net.add_i_split_node(ts[0], axis, n).outputs, [x])
    assert len(got) == count
    for g, r in zip(got, ref):
        assert_close(g, r, "exact")


@pytest.mark.parametrize(
    ("begin", "size", "stride"),
    [
        ([0, 0, 0], [-1, -1, -1], None),
        ([1, -5, 2], [2, 3, -1], [1, 1, 2]),
        ([-3, 1, 0], [-1, -1, 2], [2, 3, 3]),
        ([0, 6, 0], [1, 0, -1], None),
    ],
)
def test_slice_matches_onnx(begin: list[int], size: list[int], stride: list[int] | None) -> None:
    x = arange(4, 6, 5)
    steps = stride or [1] * 3
    starts = [b + d if b < 0 else b for b, d in zip(begin, x.shape)]
    ends = [
        np.iinfo(np.int64).max if s == -1 else b + (s - 1) * st + 1 if s else b
        for b, s, st in zip(starts, size, steps)
    ]
    inits = {
        "starts": np.array(begin, np.int64),
        "ends": np.array(ends, np.int64),
        "axes": np.arange(3, dtype=np.int64),
        "steps": np.array(steps, np.int64),
    }
    ref = run_onnx("Slice", [x], initializers=inits, opset=13)
    assert_close(one(x, lambda n, t: n.add_i_slice_node(t, begin, size, stride)), ref[0], "exact")


@pytest.mark.parametrize("mode", list(mm.IPadMode))
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_pad_matches_onnx(mode: mm.IPadMode, dtype: Any) -> None:
    x = (RNG.standard_normal((2, 4, 5)) * 10).astype(dtype)
    pairs = [(0, 1), (2, 3), (4, 1)]
    onnx_pads = np.array([b for b, _ in pairs] + [a for _, a in pairs], np.int64)
    inits = {"pads": onnx_pads, "value": np.array(7, dtype)}
    ref = run_onnx("Pad", [x], {"mode": mode.value}, initializers=inits, opset=17)

    def add(net: mm.Network, t: mm.ITensor) -> mm.INode:
        node = net.add_i_pad_node(t, pairs)
        node.set_mode(mode)
        node.set_value(7)
        return node

    got = one(x, add)
    assert got.dtype == dtype
    assert_close(got, ref[0], "exact")


RESIZE_CASES = [
    ("nearest", "half_pixel", "round_prefer_floor"),
    ("nearest", "asymmetric", "floor"),
    ("nearest", "align_corners", "round_prefer_ceil"),
    ("nearest", "half_pixel", "ceil"),
    ("linear", "half_pixel", "round_prefer_floor"),
    ("linear", "pytorch_half_pixel", "round_prefer_floor"),
    ("linear", "align_corners", "round_prefer_floor"),
    ("linear", "asymmetric", "round_prefer_floor"),
]


@pytest.mark.parametrize(("mode", "coord", "nearest"), RESIZE_CASES)
@pytest.mark.parametrize(
    "target",
    [
        ("scale", (2.0, 1.5)),
        ("scale", (0.5, 0.75)),
        ("scale", (1.7, 0.6)),
        ("size", (7, 3)),
        ("size", (1, 9)),
    ],
)
@pytest.mark.parametrize("layout", [mm.Layout.NCHW, mm.Layout.NHWC])
def test_resize_matches_onnx(
    mode: str, coord: str, nearest: str, target: tuple[str, tuple[float, float]], layout: mm.Layout
) -> None:
    x = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)  # NCHW for onnxruntime
    kind, value = target
    inits: dict[str, np.ndarray] = {"roi": np.zeros(0, np.float32)}
    if kind == "scale":
        inits["scales"] = np.array([1, 1, *value], np.float32)
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.array([2, 3, *value], np.int64)
    attrs = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    ref = run_onnx("Resize", [x], attrs, initializers=inits, opset=13)[0]

    def add(net: mm.Network, t: mm.ITensor) -> mm.INode:
        node = net.add_i_resize_node(t, **{kind: list(value)})
        if layout is mm.Layout.NCHW:
            node.set_layout(layout)
        node.set_mode(mm.IResizeMode.NEAREST if mode == "nearest" else mm.IResizeMode.BILINEAR)
        node.set_coordinate_mode(mm.IResizeCoordinateMode(coord))
        node.set_nearest_mode(mm.IResizeNearestMode(nearest))
        return node

    if layout is mm.Layout.NCHW:
        got = one(x, add)
    else:
        got = one(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), add).transpose(0, 3, 1, 2)
    assert_close(got, ref, "exact" if mode == "nearest" else "fp32")


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (np.float32, np.int32),
        (np.float32, np.int8),
        (np.float32, np.uint8),
        (np.float32, np.int64),
        (np.float32, np.float16),
        (np.float32, np.bool_),
        (np.int32, np.float32),
        (np.int64, np.int32),
        (np.bool_, np.float32),
        (np.float16, np.float32),
        (np.int32, np.int8),
    ],
)
def test_cast_matches_onnx(src: Any, dst: Any) -> None:
    from onnx import helper

    if np.dtype(src).kind == "f":
        x = (RNG.standard_normal(40) * 50).astype(src)  # in range of every target but uint8
        x = np.abs(x) if dst == np.uint8 else x
        x[:3] = [0.0, -0.0, 0.5]
    elif src == np.bool_:
        x = RNG.integers(0, 2, 40).astype(bool)
    else:
        x = RNG.integers(-(2**20), 2**20, 40).astype(src)
    ref = run_onnx("Cast", [x], {"to": helper.np_dtype_to_tensor_dtype(np.dtype(dst))})[0]
    got = one(x, lambda n, t: n.add_i_cast_node(t, mm.DataType.from_numpy(dst)))
    assert got.dtype == (np.float32 if np.dtype(dst).kind == "f" else dst)
    assert_close(got.astype(ref.dtype), ref, "exact")


# -- shape inference with run-time dimensions ----------------------------------------------------
def test_reshape_infers_what_it_can_with_runtime_dims() -> None:
    assert infer([-1, 3, 4], lambda n, t: n.add_i_reshape_node(t, [0, -1])) == [-1, 12]
    assert infer([-1, 3, 4], lambda n, t: n.add_i_reshape_node(t, [0, 2, -1])) == [-1, 2, 6]
    assert infer([-1, 3, 4], lambda n, t: n.add_i_reshape_node(t, [-1, 6])) == [-1, 6]
    assert infer([-1, 3, 4], lambda n, t: n.add_i_reshape_node(t, [2, 0, 0])) == [2, 3, 4]
    assert infer([2, -1, -1], lambda n, t: n.add_i_reshape_node(t, [0, 0, -1, 1])) == [2, -1, -1, 1]
    assert infer([2, -1], lambda n, t: n.add_i_reshape_node(t, [4, 3])) == [4, 3]
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([-1, 3, 4]))
    y = net.add_i_reshape_node(x, [-1, 6]).get_output(0)
    x.set_dimension(mm.Dims([2, 3, 4]))  # a new input shape re-infers the -1
    assert y.get_dimension() == mm.Dims([4, 6])
    x.set_dimension(mm.Dims([-1, 3, 4]))
    z = net.add_i_reshape_node(x, [-1, 24]).get_output(0)
    assert z.get_dimension() == mm.Dims([-1, 24])
    net.mark_output(z)
    with pytest.raises(mm.MMError, match=r"input of shape \[1, 3, 4\] \(12 elements\)"):
        mm.run_reference(net, [np.zeros((1, 3, 4), np.float32)])


def test_other_ops_infer_with_runtime_dims() -> None:
    assert infer([-1, 3], lambda n, t: n.add_i_permute_node(t, [1, 0])) == [3, -1]
    assert infer([-1, 1, 3], lambda n, t: n.add_i_squeeze_node(t, [1])) == [-1, 3]
    assert infer([-1, 3], lambda n, t: n.add_i_squeeze_node(t, [0])) == [3]
    assert infer([-1, 3], lambda n, t: n.add_i_unsqueeze_node(t, [1])) == [-1, 1, 3]
    assert infer([-1, 6], lambda n, t: n.add_i_split_node(t, 0, 2)) == [-1, 6]
    assert infer([4, -1], lambda n, t: n.add_i_split_node(t, 1, 2)) == [4, -1]
    assert infer([4, -1], lambda n, t: n.add_i_split_node(t, 1, [2, 3])) == [4, 2]
    assert infer([-1, 10], lambda n, t: n.add_i_slice_node(t, [1, 2], [-1, 3], [1, 2])) == [-1, 3]
    assert infer([-1, 10], lambda n, t: n.add_i_slice_node(t, [-2, 0], [2, -1])) == [2, 10]
    assert infer([-1, 5], lambda n, t: n.add_i_pad_node(t, [(1, 1), (2, 0)])) == [-1, 7]
    assert infer([-1, -1, 8, 3], lambda n, t: n.add_i_resize_node(t, scale=[2, 0.5])) == [
        -1,
        -1,
        4,
        3,
    ]
    assert infer([1, -1, -1, 3], lambda n, t: n.add_i_resize_node(t, size=[5, 6])) == [1, 5, 6, 3]
    assert infer([-1, 3], lambda n, t: n.add_i_cast_node(t, I32)) == [-1, 3]
    net = mm.Network()
    a = net.add_input(F32, mm.Dims([-1, 3]))
    b = net.add_input(F32, mm.Dims([4, -1]))
    assert net.add_i_concat_node(1, [a, b]).get_output(0).get_dimension() == mm.Dims([4, -1])
    assert net.add_i_concat_node(0, [a, b]).get_output(0).get_dimension() == mm.Dims([-1, 3])


def test_runtime_checks_in_the_reference() -> None:
    def run(
        dims: list[int], add: Callable[[mm.Network, mm.ITensor], mm.INode], x: np.ndarray
    ) -> Any:
        net = mm.Network()
        node = add(net, net.add_input(F32, mm.Dims(dims)))
        for t in node.outputs:
            net.mark_output(t)
        return mm.run_reference(net, [x])

    with pytest.raises(mm.MMError, match="has size 2, not 1"):
        run([-1, 3], lambda n, t: n.add_i_squeeze_node(t, [0]), np.zeros((2, 3), np.float32))
    with pytest.raises(mm.MMError, match="does not divide into 2"):
        run([-1], lambda n, t: n.add_i_split_node(t, 0, 2), np.zeros(3, np.float32))
    with pytest.raises(mm.MMError, match="past the last index"):
        run([-1], lambda n, t: n.add_i_slice_node(t, [1], [3]), np.zeros(3, np.float32))
    with pytest.raises(mm.MMError, match="REFLECT"):
        r = lambda n, t: n.add_i_pad_node(t, [2, 0])  # noqa: E731
        run(
            [-1],
            lambda n, t: (node := r(n, t), node.set_mode(mm.IPadMode.REFLECT))[0],
            np.zeros(2, np.float32),
        )


# -- refusals ------------------------------------------------------------------------------------
def test_reshape_refusals() -> None:
    refused([2, 3, 4], lambda n, t: n.add_i_reshape_node(t, [5, -1]), r"\[2, 3, 4\] to \[5, -1\]")
    refused(
        [2, 3, 4],
        lambda n, t: n.add_i_reshape_node(t, [5, 5]),
        r"\[2, 3, 4\] to \[5, 5\]: 24 input elements vs 25",
    )
    refused([2, 3], lambda n, t: n.add_i_reshape_node(t, [-1, -1]), "more than one -1")
    refused([2, 3], lambda n, t: n.add_i_reshape_node(t, [-2, 3]), "holds -2")
    refused([2, 3], lambda n, t: n.add_i_reshape_node(t, [3, 2, 0]), "0 at index 2.*rank 2")
    refused([2, 0, 3], lambda n, t: n.add_i_reshape_node(t, [0, 0, -1]), "ambiguous")
    refused([-1, 3], lambda n, t: n.add_i_reshape_node(t, [5]), "can never make the 5")
    refused([2, 3], lambda n, t: n.add_i_reshape_node(t, "2,3"), "list of integers")
    refused([2, 3], lambda n, t: n.add_i_reshape_node(t, [2.0, 3]), "not an integer")
    refused([2, 3], lambda n, t: n.add_i_reshape_node(t, [[2, 3]]), "flat list")
    fshape = lambda n, t: n.add_i_reshape_node(t, const(n, np.array([3, 2], np.float32)))  # noqa: E731
    refused([2, 3], fshape, "FLOAT32; it must hold integers")
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3]))
    s = net.add_input(I64, mm.Dims([2]))
    with pytest.raises(mm.MMError, match="computed at run time.*constant tensor"):
        net.add_i_reshape_node(x, s)
    other = mm.Network().add_input(I64, mm.Dims([2]))
    with pytest.raises(mm.MMError, match="another network"):
        net.add_i_reshape_node(x, other)


def test_permute_squeeze_unsqueeze_refusals() -> None:
    refused([2, 3], lambda n, t: n.add_i_permute_node(t, [0, 0]), "not a permutation of 0..1")
    refused([2, 3], lambda n, t: n.add_i_permute_node(t, [-1, 0]), "not a permutation")
    refused([2, 3], lambda n, t: n.add_i_permute_node(t, [2, 0, 1]), r"rank 2; give one axis")
    refused([2, 3], lambda n, t: n.add_i_squeeze_node(t, [1]), "size 3, not 1")
    refused([1, 3], lambda n, t: n.add_i_squeeze_node(t, [2]), "axis 2 is out of range for rank 2")
    refused([1, 3], lambda n, t: n.add_i_squeeze_node(t, [0, -2]), "twice")
    refused([-1, 3], lambda n, t: n.add_i_squeeze_node(t), "pass the axes")
    refused([2, 3], lambda n, t: n.add_i_unsqueeze_node(t, []), "empty")
    refused([2, 3], lambda n, t: n.add_i_unsqueeze_node(t, [3]), "out of range for rank 3")
    refused([2, 3], lambda n, t: n.add_i_unsqueeze_node(t, [0, -4]), "twice")


def test_concat_split_refusals() -> None:
    net = mm.Network()
    a = net.add_input(F32, mm.Dims([2, 3]))
    b = net.add_input(F32, mm.Dims([2, 4]))
    c = net.add_input(F32, mm.Dims([2, 3, 1]))
    d = net.add_input(I32, mm.Dims([2, 3]))
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: net.add_i_concat_node([a, b], 1), "check the order of the arguments"),
        (lambda: net.add_i_concat_node(1, []), "non-empty list"),
        (lambda: net.add_i_concat_node(0, [a, b]), r"dimension 1 differs \(4 vs 3\)"),
        (lambda: net.add_i_concat_node(1, [a, c]), r"\[2, 3, 1\] \(rank 3\)"),
        (lambda: net.add_i_concat_node(0, [a, d]), "INT32 but input 0 is FLOAT32"),
        (lambda: net.add_i_concat_node(2, [a, b]), "axis 2 is out of range"),
        (lambda: net.add_i_concat_node(1.0, [a, b]), "expected an integer, got float"),
        (lambda: net.add_i_split_node(b, 1, 3), r"\[2, 4\] has size 4, which does not divide"),
        (lambda: net.add_i_split_node(b, 1, [1, 2]), "sum to 3; make them sum to 4"),
        (lambda: net.add_i_split_node(b, 1, 0), "below 1"),
        (lambda: net.add_i_split_node(b, 1, [5, -1]), ">= 0"),
        (lambda: net.add_i_split_node(b, -3, 2), "out of range"),
    ]
    for call, match in cases:
        with pytest.raises(mm.MMError, match=match):
            call()
    assert net.get_all_nodes_in_network() == []


def test_slice_pad_refusals() -> None:
    refused([4, 5], lambda n, t: n.add_i_slice_node(t, [0], [1, 1]), "one value per input")
    refused([4, 5], lambda n, t: n.add_i_slice_node(t, [0, 0], [1, 1], [1, 0]), "positive strides")
    refused([4, 5], lambda n, t: n.add_i_slice_node(t, [0, 0], [1, 1], [-1, 1]), "positive strides")
    refused([4, 5], lambda n, t: n.add_i_slice_node(t, [0, 0], [1, -2]), "below -1")
    refused([4, 5], lambda n, t: n.add_i_slice_node(t, [0, 6], [1, 1]), "begin 6 is out of range")
    refused([4, 5], lambda n, t: n.add_i_slice_node(t, [-5, 0], [1, 1]), "begin -5 is out of range")
    refused([4, 5], lambda n, t: n.add_i_slice_node(t, [0, 1], [1, 3], [1, 2]), "end at 5, past")
    refused([4, 5, 6], lambda n, t: n.add_i_slice_node(t, [0, 1], [1, 3]), "rank 3")
    refused([4, 5], lambda n, t: n.add_i_pad_node(t, [1, 2, 3]), "two values per dimension")
    refused([4, 5], lambda n, t: n.add_i_pad_node(t, [(1, -1), (0, 0)]), "negative")
    refused([4, 5], lambda n, t: n.add_i_pad_node(t, [(1, 1)]), "1 .* pairs .* rank 2")
    refused([4, 5], lambda n, t: n.add_i_pad_node(t, [0, 0, 0, 0], "x"), "expected a number")
    refused([4, 5], lambda n, t: n.add_i_pad_node(t, [0, 0, 0, 0], 0.5), "not representable", I32)
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([2, 3]))
    node = net.add_i_pad_node(x, [(0, 0), (3, 0)])
    with pytest.raises(mm.MMError, match=r"REFLECT pads \(3, 0\) .* below its size 3"):
        node.set_mode(mm.IPadMode.REFLECT)
    assert node.get_mode() is mm.IPadMode.CONSTANT  # the refused setter changed nothing
    with pytest.raises(mm.MMError, match="set_mode takes one of"):
        node.set_mode("reflect")  # type: ignore[arg-type]
    empty = net.add_input(F32, mm.Dims([0, 3]))
    with pytest.raises(mm.MMError, match="no edge"):
        net.add_i_pad_node(empty, [1, 0, 0, 0]).set_mode(mm.IPadMode.EDGE)


def test_resize_cast_refusals() -> None:
    nhwc = [1, 4, 4, 3]
    refused(nhwc, lambda n, t: n.add_i_resize_node(t), "exactly one")
    refused(nhwc, lambda n, t: n.add_i_resize_node(t, [2, 2], [2, 2]), "exactly one")
    refused(nhwc, lambda n, t: n.add_i_resize_node(t, size=[2]), "two sizes")
    refused(nhwc, lambda n, t: n.add_i_resize_node(t, size=[0, 2]), ">= 1")
    refused(nhwc, lambda n, t: n.add_i_resize_node(t, scale=[2, -1]), "> 0")
    refused(nhwc, lambda n, t: n.add_i_resize_node(t, scale=["a", 1]), "two numbers")
    refused(nhwc, lambda n, t: n.add_i_resize_node(t, scale=[0.1, 1]), r"floor\(4 \* 0.1\) = 0")
    refused([4, 4, 3], lambda n, t: n.add_i_resize_node(t, scale=[2, 2]), "rank 3.*rank 4")
    refused(nhwc, lambda n, t: n.add_i_resize_node(t, scale=[2, 2]), "cast it", I32)
    net = mm.Network()
    node = net.add_i_resize_node(net.add_input(F32, mm.Dims(nhwc)), scale=[2, 2])
    for call in (node.set_mode, node.set_coordinate_mode, node.set_nearest_mode):
        with pytest.raises(mm.MMError, match="takes one of"):
            call("bilinear")
    with pytest.raises(mm.MMError, match="NHWC or mm.Layout.NCHW"):
        node.set_layout(mm.Layout.HWCN)
    node.set_layout(mm.Layout.NCHW)
    assert node.get_output(0).get_dimension() == mm.Dims([1, 4, 8, 6])
    refused([2], lambda n, t: n.add_i_cast_node(t, mm.DataType.QINT8), "is not one of")
    refused([2], lambda n, t: n.add_i_cast_node(t, np.int32), "expected an mm.DataType")
    refused([2], lambda n, t: n.add_i_cast_node(t, F32), "codes mean nothing", mm.DataType.QINT8)


# -- properties of the shape rules ---------------------------------------------------------------
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=5)


@given(shapes, st.randoms(use_true_random=False))
def test_permute_then_inverse_is_identity(dims: list[int], rnd: Any) -> None:
    perm = list(range(len(dims)))
    rnd.shuffle(perm)
    inverse = list(np.argsort(perm))
    net = mm.Network()
    x = net.add_input(F32, mm.Dims(dims))
    y = net.add_i_permute_node(x, perm).get_output(0)
    assert y.get_dimension().get_dims() == [dims[p] for p in perm]
    z = net.add_i_permute_node(y, inverse).get_output(0)
    assert z.get_dimension() == x.get_dimension()
    net.mark_output(z)
    a = RNG.standard_normal(dims).astype(np.float32)
    np.testing.assert_array_equal(mm.run_reference(net, [a])[z.get_tensor_name()], a)


@given(shapes, st.data())
def test_reshape_preserves_the_element_count(dims: list[int], data: Any) -> None:
    count = int(np.prod(dims))
    target = []
    rest = count
    while rest > 1:  # a random factorisation of the element count
        f = data.draw(st.sampled_from([d for d in range(1, rest + 1) if rest % d == 0]))
        target.append(f)
        rest //= f
    target.append(rest)
    at = data.draw(st.integers(0, len(target) - 1))
    spec = [-1 if i == at else t for i, t in enumerate(target)]
    out = infer(dims, lambda n, t: n.add_i_reshape_node(t, spec))
    assert out == target and int(np.prod(out)) == count
    x = arange(*dims)
    np.testing.assert_array_equal(
        one(x, lambda n, t: n.add_i_reshape_node(t, spec)), x.reshape(target)
    )


@given(shapes, st.data())
def test_concat_and_split_shapes_agree(dims: list[int], data: Any) -> None:
    axis = data.draw(st.integers(-len(dims), len(dims) - 1))
    sizes = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))
    arrays = []
    for s in sizes:
        shape = list(dims)
        shape[axis] = s
        arrays.append(RNG.standard_normal(shape).astype(np.float32))
    want = np.concatenate(arrays, axis)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> list[mm.ITensor]:
        y = net.add_i_concat_node(axis, xs).get_output(0)
        assert y.get_dimension().get_dims() == list(want.shape)
        return net.add_i_split_node(y, axis, sizes).outputs

    for got, a in zip(run_mm(build, arrays), arrays):
        np.testing.assert_array_equal(got, a)
