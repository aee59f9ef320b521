"""The batch norm, layer norm, softmax and reduce kernels against the references of their
precision."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernelcheck import as_float, assert_ulps, check_dispatchers, one_node_step

import mmbuild as mm
from mmbuild.kernels.cpu import normalize, pointwise
from mmbuild.kernels.table import KERNELS as KERNELS_TABLE

# the references compute inf - inf, 0 / 0 and overflow to fp16 on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32, F16 = mm.DataType.FLOAT32, mm.DataType.FLOAT16
KERNELS = [
    normalize.BatchNormKernel,
    normalize.LayerNormKernel,
    normalize.SoftmaxKernel,
    normalize.ReduceKernel,
]
PRECISIONS = [(F32, F32), (F16, F16), (F16, F32)]

# name -> (ulps of the output type, reason)
ULPS = {
    "exact": (0, "the reference's float64 operations in the same order, rounded the same way"),
    "sum": (
        1,
        "numpy's order where the kernel can follow it (test_sums_follow_numpys_order); where "
        "numpy's iterator orders a mixed reduction or an inner-axis softmax otherwise, float64 "
        "sums a few float64 ulps apart, which can move the float32 (fp16) rounding; plus "
        "atol = n * 2**-52 * sum|x| for the cancellation in a sum near 0",
    ),
}


def _values(rng: np.random.Generator, shape: tuple[int, ...], specials: bool = True) -> np.ndarray:
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    if specials and x.size >= 4:
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, 2, replace=False)] = [0.0, -0.0]
    return x


def _const(net: mm.Network, value: np.ndarray) -> mm.ITensor:
    value = np.asarray(value, np.float32)
    return net.add_i_const_node(F32, mm.Dims(list(value.shape)), value).get_output(0)


def _layer_norm(axis: int, eps: float):  # type: ignore[no-untyped-def]
    return lambda net, xs: net.add_i_layer_norm_node(xs[0], None, None, axis, eps)


def _reduce(axes, mode: mm.IReduce, keep: bool = False):  # type: ignore[no-untyped-def]
    return lambda net, xs: net.add_i_reduce_node(xs[0], axes, mode, keep)


def _sum_atol(x: np.ndarray, n: int) -> float:
    return float(n * 2.0**-52 * np.abs(x.astype(np.float64)).sum())


# -- fused_batch_norm -------------------------------------------------------------------------
@pytest.mark.parametrize("precision,out_type", PRECISIONS)
@pytest.mark.parametrize(
    "shape,axis",
    [
        ((1, 4, 4, 3), -1),
        ((2, 9, 11, 5), -1),  # 198 rows of 5 channels: 51 at a time, then 45 one by one
        ((2, 3, 5, 5), 1),
        ((7,), 0),
        ((2, 3), -2),
        ((3, 1, 2), 1),
    ],
)
def test_batch_norm_is_exact(shape, axis, precision, out_type) -> None:
    rng = np.random.default_rng(len(shape))
    c = shape[axis]
    mean = rng.standard_normal(c)
    var = np.abs(rng.standard_normal(c)) + 0.1
    var[0] = 0.0  # with eps 0: x == mean gives 0/0, others +-inf, as the reference
    scale, offset = rng.standard_normal(c), rng.standard_normal(c)
    eps = 0.0 if c > 1 else 1e-3

    def build(net, xs):  # type: ignore[no-untyped-def]
        params = [_const(net, p) for p in (mean, var, scale, offset)]
        return net.add_i_fused_batch_norm_node(xs[0], *params, axis, eps)

    case = one_node_step(build, [(shape, F32)], precision, [out_type])
    x = _values(rng, shape)
    x.reshape(-1)[0] = np.float32(mean[0])
    inputs = case.buffers([x])
    assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], out_type, ULPS["exact"][0])
    check_dispatchers(case.runner())


# -- layer_norm -------------------------------------------------------------------------------
@pytest.mark.parametrize("precision,out_type", PRECISIONS)
@pytest.mark.parametrize("shape,axis", [((2, 5, 8), -1), ((3, 4, 6), 1), ((1, 9), 0), ((4, 1), -1)])
@pytest.mark.parametrize("affine", [0, 1, 2])
def test_layer_norm_matches_reference(shape, axis, affine, precision, out_type) -> None:
    rng = np.random.default_rng(affine)
    normalized = shape[axis % len(shape) :]
    n = int(np.prod(normalized))

    def build(net, xs):  # type: ignore[no-untyped-def]
        scale = _const(net, rng.standard_normal(normalized)) if affine >= 1 else None
        bias = _const(net, rng.standard_normal(normalized)) if affine >= 2 else None
        return net.add_i_layer_norm_node(xs[0], scale, bias, axis, 1e-5)

    case = one_node_step(build, [(shape, F32)], precision, [out_type])
    x = _values(rng, shape)
    inputs = case.buffers([x])
    assert_ulps(
        case.run(inputs)[0],
        case.reference(inputs)[0],
        out_type,
        ULPS["sum"][0],
        atol=_sum_atol(x, n),
    )
    check_dispatchers(case.runner())


def test_layer_norm_constant_rows_and_specials() -> None:
    """A constant row (exact sums) gives 0 with eps > 0 and 0/0 = NaN with eps 0; a NaN or
    inf poisons only its own row."""
    x = np.array([[2, 2, 2, 2], [1, np.nan, 3, 4], [1, np.inf, 3, 4], [-1, 0, 1, 8]], np.float32)
    for eps in (0.0, 1e-5):
        case = one_node_step(_layer_norm(-1, eps), [(x.shape, F32)], F32)
        got = case.run(case.buffers([x]))[0]
        assert_ulps(got, case.reference([x])[0], F32, 0)
        assert np.isnan(got[1:3]).all() and np.isfinite(got[3]).all()


# -- softmax ----------------------------------------------------------------------------------
@pytest.mark.parametrize("precision,out_type", PRECISIONS)
@pytest.mark.parametrize(
    "shape,axis",
    [
        ((1, 5), -1),
        ((2, 3, 4), 0),
        ((2, 3, 4), 1),
        ((3, 1, 7), -2),
        ((2, 3, 130), 1),
        ((6,), 0),
    ],
)
def test_softmax_matches_reference(shape, axis, precision, out_type) -> None:
    rng = np.random.default_rng(sum(shape))
    case = one_node_step(
        lambda net, xs: net.add_i_softmax_node(xs[0], axis), [(shape, F32)], precision, [out_type]
    )
    x = _values(rng, shape) * 4
    inputs = case.buffers([x])
    assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], out_type, ULPS["sum"][0])
    check_dispatchers(case.runner())


def test_softmax_special_rows() -> None:
    x = np.array(
        [
            [1, 2, 3, 4],
            [1000, 1000, -1000, 0],  # large: the max is subtracted first
            [np.nan, 0, 1, 2],  # NaN makes the row NaN
            [np.inf, 0, 1, 2],  # inf - inf = NaN, as the reference
            [-np.inf, -np.inf, -np.inf, -np.inf],
            [-np.inf, 0, 0, -np.inf],
        ],
        np.float32,
    )
    case = one_node_step(lambda net, xs: net.add_i_softmax_node(xs[0], -1), [(x.shape, F32)], F32)
    got = case.run(case.buffers([x]))[0]
    assert_ulps(got, case.reference([x])[0], F32, 0)
    assert np.allclose(got[1], [0.5, 0.5, 0, 0]) and np.allclose(got[5], [0, 0.5, 0.5, 0])
    assert np.isnan(got[2:5]).all()


# -- reduce -----------------------------------------------------------------------------------
AXES = [(1, 2), (-1,), (0, 3), (0, 1, 2, 3), (3, 1), (2,)]


@pytest.mark.parametrize("precision,out_type", PRECISIONS)
@pytest.mark.parametrize("mode", list(mm.IReduce))
def test_reduce_matches_reference(mode, precision, out_type) -> None:
    rng = np.random.default_rng(list(mm.IReduce).index(mode))
    # (2, 9, 17, 4) over axes (1, 2) is an NHWC global pool: 153 rows of 4 channels, 64 at a time
    for shape in [(2, 3, 4, 5), (1, 7, 1, 3), (2, 9, 17, 4)]:
        x = _values(rng, shape)
        x.reshape(-1)[5] = np.nan if mode in (mm.IReduce.MAX, mm.IReduce.MIN) else x.flat[5]
        for axes in AXES:
            for keep in (False, True):
                build = _reduce(axes, mode, keep)
                case = one_node_step(build, [(shape, F32)], precision, [out_type])
                inputs = case.buffers([x])
                got, want = case.run(inputs)[0], case.reference(inputs)[0]
                n = int(np.prod([shape[a] for a in axes]))
                if mode in (mm.IReduce.MAX, mm.IReduce.MIN):
                    assert_ulps(got, want, out_type, 0, signed_zeros=False)
                else:
                    assert_ulps(got, want, out_type, ULPS["sum"][0], atol=_sum_atol(x, n))
    check_dispatchers(case.runner())


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    data=st.data(),
    mode=st.sampled_from(list(mm.IReduce)),
    keep=st.booleans(),
)
def test_reduce_any_axes(shape, data, mode, keep) -> None:
    rank = len(shape)
    axes = data.draw(
        st.lists(
            st.integers(-rank, rank - 1), min_size=1, max_size=rank, unique_by=lambda a: a % rank
        )
    )
    x = _values(np.random.default_rng(rank), tuple(shape))
    case = one_node_step(_reduce(axes, mode, keep), [(tuple(shape), F32)], F32)
    inputs = case.buffers([x])
    got, want = case.run(inputs)[0], case.reference(inputs)[0]
    assert got.shape == want.shape
    n = int(np.prod([shape[a] for a in axes]))
    assert_ulps(got, want, F32, ULPS["sum"][0], atol=_sum_atol(x, n), signed_zeros=False)


@pytest.mark.parametrize("shape,axis", [((2, 0, 3), 1), ((2, 3, 0), -1)])
def test_reduce_over_an_empty_axis(shape, axis) -> None:
    x = np.zeros(shape, np.float32)
    kept = tuple(s for d, s in enumerate(shape) if d != axis % len(shape))
    expect = {
        mm.IReduce.SUM: 0.0,
        mm.IReduce.MEAN: np.nan,
        mm.IReduce.MAX: -np.inf,
        mm.IReduce.MIN: np.inf,
    }
    for mode, value in expect.items():
        case = one_node_step(_reduce(axis, mode), [(shape, F32)], F16)
        got = case.run(case.buffers([x]))[0]
        assert got.shape == kept
        assert_ulps(got, case.reference(case.buffers([x]))[0], F16, 0)
        assert np.array_equal(as_float(got, F16), np.full(kept, value), equal_nan=True)


@pytest.mark.parametrize("precision", [F32, F16])
def test_sums_follow_numpys_order(precision) -> None:
    """Sums over trailing or leading axes run in numpy's order (pairwise along a contiguous
    run, run after run otherwise), so these results are bit-identical to the reference."""
    rng = np.random.default_rng(12)
    shape = (3, 40, 33)
    builds = [
        _layer_norm(-1, 1e-5),
        _layer_norm(1, 1e-5),
        lambda net, xs: net.add_i_softmax_node(xs[0], -1),
        _reduce((1, 2), mm.IReduce.SUM),
        _reduce(-1, mm.IReduce.MEAN, True),
        _reduce((0, 1), mm.IReduce.SUM),
        _reduce((0, 1, 2), mm.IReduce.MEAN),
    ]
    for build in builds:
        case = one_node_step(build, [(shape, F32)], precision)
        inputs = case.buffers([_values(rng, shape) + np.float32(rng.standard_normal())])
        assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], precision, 0)


# -- shared: table entries, fused activation, threads ----------------------------------------
def test_table_entries() -> None:
    for cls in KERNELS:
        for op in cls.ops:
            assert {p for (o, p) in KERNELS_TABLE if o == op} == {F32, F16}
            assert all(type(KERNELS_TABLE[op, p]) is cls for p in (F32, F16))


def test_fused_activation() -> None:
    rng = np.random.default_rng(9)
    x = _values(rng, (2, 3, 4))

    def build(net, xs):  # type: ignore[no-untyped-def]
        params = [_const(net, p) for p in rng.standard_normal((4, 4)) ** 2]
        return net.add_i_fused_batch_norm_node(xs[0], *params, -1, 1e-5)

    for build_fn, act in [
        (build, {"function": "relu"}),
        (
            lambda net, xs: net.add_i_softmax_node(xs[0], 1),
            {"function": "clip", "lo": 0.2, "hi": 0.5},
        ),
        (_reduce(2, mm.IReduce.SUM), {"function": "leaky_relu", "alpha": 0.5}),
    ]:
        case = one_node_step(build_fn, [((2, 3, 4), F32)], F32, activation=act)
        inputs = case.buffers([x])
        assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], F32, 1, atol=1e-6)


def test_parallel_split_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the size threshold the same work runs in prange chunks (here: tiny ones)."""
    monkeypatch.setattr(pointwise, "PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(pointwise, "CHUNK", 5)
    rng = np.random.default_rng(10)
    shape = (3, 5, 70)
    x = _values(rng, shape)

    def batch_norm(net, xs):  # type: ignore[no-untyped-def]
        params = [_const(net, p) for p in np.abs(rng.standard_normal((4, 5)))]
        return net.add_i_fused_batch_norm_node(xs[0], *params, 1, 1e-5)

    for build in [
        batch_norm,
        _layer_norm(-1, 1e-5),
        lambda net, xs: net.add_i_softmax_node(xs[0], 1),
        lambda net, xs: net.add_i_softmax_node(xs[0], -1),
    ]:
        case = one_node_step(build, [(shape, F32)], F32)
        inputs = case.buffers([x])
        assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], F32, 1, atol=1e-7)


def test_dynamic_batch_reuses_one_runner() -> None:
    case = one_node_step(lambda net, xs: net.add_i_softmax_node(xs[0], -1), [((-1, 6), F32)], F16)
    runner, rng = case.runner(), np.random.default_rng(11)
    for batch in (1, 5):
        inputs = case.buffers([_values(rng, (batch, 6))])
        outs = case.outputs(inputs)
        runner(inputs, outs)
        assert_ulps(outs[0], case.reference(inputs)[0], F16, 1)
