"""The data-movement kernels against their op references: bit-exact in every precision.

reshape, squeeze, unsqueeze, permute, concat, split, slice and pad copy elements without
arithmetic, so each kernel's output must equal the reference's bit for bit (compared as bytes,
so NaN payloads and signed zeros count too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernelcheck import Build, OneNode, check_dispatchers, one_node_step

import mmbuild as mm
from mmbuild.errors import MMError
from mmbuild.kernels.cpu import movement
from mmbuild.kernels.table import KERNELS

RNG = np.random.default_rng(11)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

ALL_DTYPES = [np.float32, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_]


# ---------------------------------------------------------------------------------------------
# A one-node step, run by its kernel and by the kernel's reference
# ---------------------------------------------------------------------------------------------
def case_for(build: Build, arrays: Sequence[np.ndarray]) -> OneNode:
    """The one-node step of ``build`` with inputs typed as ``arrays`` (float16 arrays make a
    FLOAT16 step)."""
    specs = [(a.shape, mm.DataType.from_numpy(a.dtype)) for a in arrays]
    half = any(a.dtype == np.float16 for a in arrays)
    return one_node_step(build, specs, mm.DataType.FLOAT16 if half else mm.DataType.FLOAT32)


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert actual.tobytes() == expected.tobytes(), (actual, expected)


def check_exact(build: Build, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the kernel of ``build`` on ``arrays``: its outputs equal the reference's bytes."""
    case = case_for(build, arrays)
    inputs = case.buffers(arrays)
    runner = case.runner()
    check_dispatchers(runner)
    outs = case.outputs(inputs)
    runner(inputs, outs)
    expected = case.reference(inputs)
    assert len(outs) == len(expected)
    for a, e in zip(outs, expected):
        assert_bits_equal(a, e)
    return outs


def sample(shape: Sequence[int], dtype: type) -> np.ndarray:
    """Values of ``dtype`` covering its range; floats include NaN, inf and -0.0."""
    n = int(np.prod(shape, dtype=np.int64))
    if np.dtype(dtype).kind == "f":
        v = RNG.standard_normal(n).astype(dtype)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0], dtype=dtype)
        v[: min(n, 4)] = specials[: min(n, 4)]
        return RNG.permutation(v).reshape(shape)
    if dtype is np.bool_:
        return RNG.integers(0, 2, n).astype(bool).reshape(shape)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, n, endpoint=True, dtype=dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------
MOVEMENT_OPS = ["reshape", "squeeze", "unsqueeze", "permute", "concat", "split", "slice", "pad"]


@pytest.mark.parametrize("op", MOVEMENT_OPS)
def test_every_movement_op_has_one_kernel_for_every_precision(op: str) -> None:
    kernels = {KERNELS[op, p] for p in movement.MOVEMENT_PRECISIONS}
    assert len(kernels) == 1


# ---------------------------------------------------------------------------------------------
# reshape, squeeze, unsqueeze
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_reshape_copies_in_every_precision(dtype: type) -> None:
    x = sample([2, 3, 5], dtype)
    (y,) = check_exact(lambda net, xs: net.add_i_reshape_node(xs[0], [0, -1]), [x])
    assert y.shape == (2, 15)


@pytest.mark.parametrize("shape", [[1, 7], [3, 1, 5, 1], [4]])
def test_reshape_squeeze_unsqueeze_shapes(shape: list[int]) -> None:
    x = sample(shape, np.float32)
    check_exact(lambda net, xs: net.add_i_reshape_node(xs[0], [-1, 1]), [x])
    check_exact(lambda net, xs: net.add_i_unsqueeze_node(xs[0], [0, -1]), [x])
    if 1 in shape:
        check_exact(lambda net, xs: net.add_i_squeeze_node(xs[0]), [x])
        axis = shape.index(1) - len(shape)  # a negative axis
        check_exact(lambda net, xs: net.add_i_squeeze_node(xs[0], [axis]), [x])


def test_reshape_with_a_constant_shape_tensor() -> None:
    x = sample([2, 6], np.int32)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        shape = np.array([3, 4], np.int64)
        c = net.add_i_const_node(mm.DataType.INT64, mm.Dims([2]), shape).get_output(0)
        return net.add_i_reshape_node(xs[0], c)

    (y,) = check_exact(build, [x])
    assert y.shape == (3, 4)


def test_reshape_refuses_an_input_that_does_not_fit() -> None:
    case = case_for(
        lambda net, xs: net.add_i_reshape_node(xs[0], [6]), [sample([2, 3], np.float32)]
    )
    outs = case.outputs(case.buffers([sample([2, 3], np.float32)]))
    with pytest.raises(MMError, match="cannot fill the output"):
        case.runner()([np.zeros((2, 4), np.float32)], outs)


def test_copy_reads_a_strided_input_view() -> None:
    big = sample([4, 10], np.float32)
    x = big[:, 1:8:2]  # shape [4, 4], strides (10, 2) elements
    case = case_for(lambda net, xs: net.add_i_reshape_node(xs[0], [16]), [x])
    outs = case.outputs([x])
    case.runner()([x], outs)
    assert_bits_equal(outs[0], x.reshape(16))


# ---------------------------------------------------------------------------------------------
# permute
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_permute_nhwc_to_nchw_in_every_precision(dtype: type) -> None:
    x = sample([2, 5, 7, 3], dtype)
    check_exact(lambda net, xs: net.add_i_permute_node(xs[0], [0, 3, 1, 2]), [x])


@SETTINGS
@given(data=st.data())
def test_permute_any_rank(data: st.DataObject) -> None:
    shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=5), label="shape")
    perm = data.draw(st.permutations(range(len(shape))), label="perm")
    x = sample(shape, np.float32)
    check_exact(lambda net, xs: net.add_i_permute_node(xs[0], list(perm)), [x])


def test_permute_of_a_strided_view() -> None:
    x = sample([3, 8, 5], np.int16)[:, ::3, 1:]
    case = case_for(lambda net, xs: net.add_i_permute_node(xs[0], [2, 0, 1]), [x])
    outs = case.outputs([x])
    case.runner()([x], outs)
    assert_bits_equal(outs[0], np.transpose(x, (2, 0, 1)))


# ---------------------------------------------------------------------------------------------
# concat, split
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shapes", "axis"),
    [
        ([[2, 3], [2, 5]], 1),
        ([[1, 3, 4], [2, 3, 4], [3, 3, 4]], 0),
        ([[2, 3, 1], [2, 3, 4], [2, 3, 2]], -1),
        ([[2, 1, 5], [2, 3, 5]], -2),
        ([[3, 2], [3, 0], [3, 1]], 1),
        ([[4, 5]], 0),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.bool_])
def test_concat(shapes: list[list[int]], axis: int, dtype: type) -> None:
    arrays = [sample(s, dtype) for s in shapes]
    check_exact(lambda net, xs: net.add_i_concat_node(axis, xs), arrays)


@pytest.mark.parametrize(
    ("shape", "axis", "n"),
    [
        ([2, 6], 1, 3),
        ([2, 6], -1, [1, 5]),
        ([5, 3, 2], 0, [2, 0, 3]),
        ([1, 4, 3], -2, 2),
        ([7], 0, 1),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_split(shape: list[int], axis: int, n: int | list[int], dtype: type) -> None:
    outs = check_exact(lambda net, xs: net.add_i_split_node(xs[0], axis, n), [sample(shape, dtype)])
    assert len(outs) == (n if isinstance(n, int) else len(n))


# ---------------------------------------------------------------------------------------------
# slice
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "begin", "size", "stride"),
    [
        ([4, 10], [1, -8], [2, -1], [1, 3]),  # the declaration's example
        ([3, 5, 7], [0, 0, 0], [-1, -1, -1], None),  # everything
        ([3, 5, 7], [2, -5, 6], [1, 3, 1], [1, 2, 1]),
        ([2, 9], [0, 3], [2, 0], None),  # an empty output
        ([1, 6, 5, 3], [0, 1, 0, 2], [1, -1, 3, 1], [1, 2, 2, 1]),
        ([8], [-1], [1], [5]),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8])
def test_slice(
    shape: list[int], begin: list[int], size: list[int], stride: list[int] | None, dtype: type
) -> None:
    x = sample(shape, dtype)
    check_exact(lambda net, xs: net.add_i_slice_node(xs[0], begin, size, stride), [x])


# ---------------------------------------------------------------------------------------------
# pad
# ---------------------------------------------------------------------------------------------
PADS = [
    ([5], [(2, 3)]),
    ([1, 4], [(0, 0), (3, 2)]),
    ([2, 3, 4], [(1, 1), (0, 2), (3, 0)]),
    ([2, 5, 5, 3], [(0, 0), (2, 2), (1, 4), (0, 0)]),
    ([3, 2], [(0, 0), (0, 0)]),
    # unpadded unit dimensions dropped, unpadded neighbours merged: 4 rows of 3 x 2 + 3
    ([1, 4, 1, 3, 2, 1], [(0, 0), (0, 0), (0, 0), (0, 0), (2, 1), (0, 0)]),
    ([2, 1, 3, 4, 1], [(0, 0), (0, 0), (0, 0), (1, 2), (0, 0)]),
]


@pytest.mark.parametrize(("shape", "pads"), PADS)
@pytest.mark.parametrize("mode", list(mm.IPadMode))
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_pad_every_mode(
    shape: list[int], pads: list[tuple[int, int]], mode: mm.IPadMode, dtype: type
) -> None:
    if mode is mm.IPadMode.REFLECT and any(max(p) >= n for n, p in zip(shape, pads)):
        pytest.skip("REFLECT needs each pad below its dimension")

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        node = net.add_i_pad_node(xs[0], pads, 7.0)
        node.set_mode(mode)
        return node

    check_exact(build, [sample(shape, dtype)])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.bool_])
def test_pad_integer_types(dtype: type) -> None:
    value = 1.0 if dtype is np.bool_ else -1.0 if dtype != np.uint8 else 200.0
    x = sample([3, 4], dtype)
    (y,) = check_exact(lambda net, xs: net.add_i_pad_node(xs[0], [(1, 0), (2, 1)], value), [x])
    assert y[0, 0] == np.array(value).astype(dtype)


@pytest.mark.parametrize("value", [0.1, -2.5e-8, 1e6, float("nan"), -0.0])
def test_pad_fp16_value_rounds_as_the_reference(value: float) -> None:
    x = sample([2, 3], np.float16)
    with np.errstate(over="ignore"):  # 1e6 pads with inf
        check_exact(lambda net, xs: net.add_i_pad_node(xs[0], [(1, 1), (0, 2)], value), [x])


def test_pad_of_a_scalar_is_a_copy() -> None:
    # (np.pad, and so the reference, refuses a 0-d array: compare with the input itself)
    x = np.array(3.5, np.float32)
    case = case_for(lambda net, xs: net.add_i_pad_node(xs[0], []), [x])
    outs = case.outputs([x])
    case.runner()([x], outs)
    assert_bits_equal(outs[0], x)


def test_pad_reflect_golden() -> None:
    x = np.array([1, 2, 3], np.int32)

    def build(mode: mm.IPadMode) -> Build:
        def add(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
            node = net.add_i_pad_node(xs[0], [(2, 2)])
            node.set_mode(mode)
            return node

        return add

    (y,) = check_exact(build(mm.IPadMode.REFLECT), [x])
    np.testing.assert_array_equal(y, [3, 2, 1, 2, 3, 2, 1])
    (y,) = check_exact(build(mm.IPadMode.EDGE), [x])
    np.testing.assert_array_equal(y, [1, 1, 1, 2, 3, 3, 3])


# ---------------------------------------------------------------------------------------------
# The parallel loops, reached by lowering the threshold
# ---------------------------------------------------------------------------------------------
def test_parallel_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(movement, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(movement, "PARALLEL_MIN_GATHER", 1)
    monkeypatch.setattr(movement, "_CHUNK", 7)  # many chunks, and a ragged last one
    x = sample([3, 20, 9], np.float32)
    check_exact(lambda net, xs: net.add_i_reshape_node(xs[0], [-1]), [x])
    check_exact(lambda net, xs: net.add_i_permute_node(xs[0], [2, 0, 1]), [x])
    check_exact(lambda net, xs: net.add_i_concat_node(1, [xs[0], xs[0]]), [x])

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        node = net.add_i_pad_node(xs[0], [(1, 2), (0, 3), (4, 1)])
        node.set_mode(mm.IPadMode.REFLECT)
        return node

    check_exact(build, [x])


def test_concat_refuses_buffers_of_another_type() -> None:
    arrays = [sample([2, 3], np.float32), sample([2, 2], np.float32)]
    case = case_for(lambda net, xs: net.add_i_concat_node(1, xs), arrays)
    inputs = case.buffers(arrays)
    outs = case.outputs(inputs)
    with pytest.raises(MMError, match="share one type"):
        case.runner()([inputs[0], inputs[1].astype(np.float16).view(np.uint16)], outs)


def test_one_runner_serves_several_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    build: Build = lambda net, xs: net.add_i_permute_node(xs[0], [2, 0, 1])  # noqa: E731
    arrays = [sample([2, 3, 50, 7], np.float32)[..., 0] for _ in range(8)]
    case = case_for(build, arrays[:1])
    runner = case.runner()

    def run(x: np.ndarray) -> bool:
        outs = case.outputs([x])
        runner([x], outs)
        return outs[0].tobytes() == np.transpose(x, (2, 0, 1)).tobytes()

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, arrays * 4))
