"""The activation, clip, elementwise and cast kernels against the references of their precision."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from kernelcheck import assert_ulps, check_dispatchers, one_node_step

import mmbuild as mm
from mmbuild.kernels.cpu import fastmath, pointwise

# the references compute inf - inf, 0 * inf and overflow to fp16 on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32, F16 = mm.DataType.FLOAT32, mm.DataType.FLOAT16

# name -> (ulps of the output type, reason)
ULPS = {
    "exact": (0, "the same IEEE operations in the same order as the reference, rounded once"),
    "libm": (
        1,
        "exp / log / erf / log1p of float64 come from libm, numpy's from its own code; they "
        "differ by at most a float64 ulp, which can move the float32 (and fp16) rounding",
    ),
}
# The functions ONNX models bring in rarely, computed with float64 libm
LIBM = {mm.IActivation.EXP, mm.IActivation.LOG, mm.IActivation.SQRT, mm.IActivation.ERF,
        mm.IActivation.SOFTPLUS, mm.IActivation.MISH}  # fmt: skip
# The smooth functions are float32 polynomials (mmbuild.kernels.cpu.fastmath), within their
# stated float32 ulps of the float64 reference; rounded to fp16 they are within one fp16 ulp.
TRANSCENDENTAL = {
    mm.IActivation.SIGMOID: "sigmoid",
    mm.IActivation.TANH: "tanh",
    mm.IActivation.GELU: "gelu",
    mm.IActivation.SILU: "silu",
    mm.IActivation.ELU: "elu",
}


def activation_ulps(mode: mm.IActivation, out_type: mm.DataType) -> dict[str, float]:
    """``assert_ulps`` tolerances of an activation's kernel against its reference."""
    if mode in LIBM:
        return {"ulps": ULPS["libm"][0]}
    if mode not in TRANSCENDENTAL:
        return {"ulps": ULPS["exact"][0]}
    ulps = fastmath.MAX_ULPS[TRANSCENDENTAL[mode]] if out_type is F32 else 1
    return {"ulps": ulps, "atol": fastmath.ATOL}


# (input precision, output type): same type, and each float precision writing the other
PRECISIONS = [(F32, F32), (F16, F16), (F16, F32), (F32, F16)]
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -3e-39, 65504.0, 65520.0, -1e30, 6.0, 3.0]


def _values(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 4.0) -> np.ndarray:
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    flat = x.reshape(-1)
    k = min(flat.size, len(SPECIALS))
    flat[rng.choice(flat.size, k, replace=False)] = SPECIALS[:k]
    return x


def _spec(shape: tuple[int, ...]) -> tuple[tuple[int, ...], mm.DataType]:
    return shape, F32


# -- activation and clip ----------------------------------------------------------------------
@pytest.mark.parametrize("precision,out_type", PRECISIONS)
@pytest.mark.parametrize("mode", list(mm.IActivation))
def test_activation_matches_reference(mode, precision, out_type) -> None:
    rng = np.random.default_rng(list(mm.IActivation).index(mode))
    for shape in [(1,), (2, 3, 5), (1, 7, 7, 3), ()]:
        case = one_node_step(
            lambda net, xs: net.add_i_activation_node(xs[0], mode),
            [_spec(shape)],
            precision,
            [out_type],
        )
        inputs = case.buffers([_values(rng, shape)])
        tol = activation_ulps(mode, out_type)
        assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], out_type, **tol)
    check_dispatchers(case.runner())


@pytest.mark.parametrize(
    "mode,alpha,beta",
    [
        (mm.IActivation.LEAKY_RELU, 0.3, None),
        (mm.IActivation.ELU, 0.7, None),
        (mm.IActivation.HARD_SIGMOID, 0.25, 0.4),
    ],
)
@pytest.mark.parametrize("precision", [F32, F16])
def test_activation_parameters(mode, alpha, beta, precision) -> None:
    def build(net, xs):  # type: ignore[no-untyped-def]
        node = net.add_i_activation_node(xs[0], mode)
        node.set_alpha(alpha)
        if beta is not None:
            node.set_beta(beta)
        return node

    case = one_node_step(build, [_spec((3, 17))], precision)
    inputs = case.buffers([_values(np.random.default_rng(1), (3, 17))])
    tol = activation_ulps(mode, precision)
    assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], precision, **tol)


def test_activation_edge_values_exactly() -> None:
    """Hand-checked values: numpy's maximum gives RELU(-0.0) = +0.0, clip keeps -0.0."""
    x = np.array([-0.0, 0.0, np.nan, -2.0, 7.0, np.inf, -np.inf], np.float32)
    expect = {
        mm.IActivation.RELU: [0.0, 0.0, np.nan, 0.0, 7.0, np.inf, 0.0],
        mm.IActivation.RELU6: [-0.0, 0.0, np.nan, 0.0, 6.0, 6.0, 0.0],
        mm.IActivation.LEAKY_RELU: [-0.0, 0.0, np.nan, -0.02, 7.0, np.inf, -np.inf],
        mm.IActivation.SIGMOID: [0.5, 0.5, np.nan, 0.11920292, 0.99908894, 1.0, 0.0],
    }
    for mode, want in expect.items():
        case = one_node_step(
            lambda net, xs, m=mode: net.add_i_activation_node(xs[0], m), [_spec(x.shape)], F32
        )
        got = case.run(case.buffers([x]))[0]
        assert_ulps(got, np.array(want, np.float32), F32, **activation_ulps(mode, F32))


@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (-1.5, 0.1), (0.3, 0.3), (-np.inf, 2.0)])
@pytest.mark.parametrize("precision,out_type", PRECISIONS[:3])
def test_clip_matches_reference(lo, hi, precision, out_type) -> None:
    case = one_node_step(
        lambda net, xs: net.add_i_clip_node(xs[0], lo, hi),
        [_spec((2, 9, 3))],
        precision,
        [out_type],
    )
    inputs = case.buffers([_values(np.random.default_rng(2), (2, 9, 3))])
    assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], out_type, ULPS["exact"][0])
    check_dispatchers(case.runner())


# -- elementwise ------------------------------------------------------------------------------
BROADCASTS = [
    ((3,), (3,)),
    ((2, 1, 3), (4, 1)),
    ((1,), (2, 3)),
    ((), (2, 3)),
    ((5, 1, 1, 7), (1, 6, 1, 1)),
    ((2, 3, 1, 2, 1, 2, 3, 2), (4, 2, 1, 2, 1, 2)),  # rank 8
    ((0, 3), (1, 3)),
    ((1, 1), (1, 1)),
    # short rows against one broadcast row (a channel scale): tiled 32 rows at a time, 6 left
    ((2, 70, 8), (2, 1, 8)),
]


def _elementwise(shape_a, shape_b, mode, precision, out_type=None, activation=None):  # type: ignore[no-untyped-def]
    return one_node_step(
        lambda net, xs: net.add_i_elementwise_node(xs[0], xs[1], mode),
        [_spec(shape_a), _spec(shape_b)],
        precision,
        [out_type or precision],
        activation,
    )


@pytest.mark.parametrize("precision,out_type", PRECISIONS)
@pytest.mark.parametrize("mode", list(mm.IElementwise))
def test_elementwise_is_bit_exact(mode, precision, out_type) -> None:
    rng = np.random.default_rng(3)
    for shape_a, shape_b in BROADCASTS:
        case = _elementwise(shape_a, shape_b, mode, precision, out_type)
        inputs = case.buffers([_values(rng, shape_a), _values(rng, shape_b)])
        assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], out_type, ULPS["exact"][0])
        assert_ulps(case.run(inputs[::-1])[0], case.reference(inputs[::-1])[0], out_type, 0)
    check_dispatchers(case.runner())


@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=6, max_side=4),
    mode=st.sampled_from(list(mm.IElementwise)),
    seed=st.integers(0, 2**16),
)
def test_elementwise_broadcasting_any_shapes(shapes, mode, seed) -> None:
    shape_a, shape_b = shapes.input_shapes
    rng = np.random.default_rng(seed)
    case = _elementwise(shape_a, shape_b, mode, F32)
    inputs = case.buffers([_values(rng, shape_a), _values(rng, shape_b)])
    got = case.run(inputs)[0]
    assert got.shape == shapes.result_shape
    assert_ulps(got, case.reference(inputs)[0], F32, ULPS["exact"][0])


def test_elementwise_max_min_mirror_numpy_on_nan_and_zeros() -> None:
    a = np.array([-0.0, 0.0, np.nan, 1.0, np.nan], np.float32)
    b = np.array([0.0, -0.0, 1.0, np.nan, np.nan], np.float32)
    for mode, fn in [(mm.IElementwise.MAX, np.maximum), (mm.IElementwise.MIN, np.minimum)]:
        case = _elementwise(a.shape, b.shape, mode, F32)
        assert_ulps(case.run(case.buffers([a, b]))[0], fn(a, b), F32, 0)


def test_elementwise_dynamic_batch_reuses_one_runner() -> None:
    case = one_node_step(
        lambda net, xs: net.add_i_elementwise_node(xs[0], xs[1], mm.IElementwise.SUB),
        [((-1, 3, 5), F32), ((3, 1), F32)],
        F16,
    )
    runner, rng = case.runner(), np.random.default_rng(4)
    for batch in (1, 4):
        inputs = case.buffers([_values(rng, (batch, 3, 5)), _values(rng, (3, 1))])
        outs = case.outputs(inputs)
        runner(inputs, outs)
        assert_ulps(outs[0], case.reference(inputs)[0], F16, 0)


@pytest.mark.parametrize(
    "activation",
    [
        {"function": "relu"},
        {"function": "clip", "lo": -0.5, "hi": 0.75},
        {"function": "leaky_relu", "alpha": 0.1},
    ],
)
def test_fused_activation(activation) -> None:
    rng = np.random.default_rng(5)
    case = _elementwise((2, 5), (5,), mm.IElementwise.ADD, F32, activation=activation)
    inputs = case.buffers([_values(rng, (2, 5)), _values(rng, (5,))])
    assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], F32, 0)
    act = one_node_step(
        lambda net, xs: net.add_i_activation_node(xs[0], mm.IActivation.TANH),
        [_spec((9,))],
        F16,
        activation=activation,
    )
    inputs = act.buffers([_values(rng, (9,))])
    tol = activation_ulps(mm.IActivation.TANH, F16)
    assert_ulps(act.run(inputs)[0], act.reference(inputs)[0], F16, **tol)


def test_parallel_split_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the size threshold the same elements run in prange chunks (here: tiny ones)."""
    monkeypatch.setattr(pointwise, "PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(pointwise, "CHUNK", 7)
    rng = np.random.default_rng(6)
    case = _elementwise((3, 1, 5), (4, 1), mm.IElementwise.DIV, F32)
    inputs = case.buffers([_values(rng, (3, 1, 5)), _values(rng, (4, 1))])
    assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], F32, 0)
    act = one_node_step(
        lambda net, xs: net.add_i_activation_node(xs[0], mm.IActivation.GELU), [_spec((5, 11))], F32
    )
    inputs = act.buffers([_values(rng, (5, 11))])
    tol = activation_ulps(mm.IActivation.GELU, F32)
    assert_ulps(act.run(inputs)[0], act.reference(inputs)[0], F32, **tol)
    cast = one_node_step(lambda net, xs: net.add_i_cast_node(xs[0], F16), [_spec((50,))], F32)
    inputs = cast.buffers([_values(rng, (50,))])
    assert_ulps(cast.run(inputs)[0], cast.reference(inputs)[0], F16, 0)


def test_one_runner_in_many_threads() -> None:
    rng = np.random.default_rng(7)
    case = _elementwise((8, 1, 33), (5, 1), mm.IElementwise.MUL, F32)
    runner = case.runner()
    work = [case.buffers([_values(rng, (8, 1, 33)), _values(rng, (5, 1))]) for _ in range(6)]
    results: list = [None] * len(work)

    def go(i: int) -> None:
        outs = case.outputs(work[i])
        for _ in range(20):
            runner(work[i], outs)
        results[i] = outs[0]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for inputs, got in zip(work, results):
        assert_ulps(got, case.reference(inputs)[0], F32, 0)


# -- cast -------------------------------------------------------------------------------------
I8, I16, I32, I64 = mm.DataType.INT8, mm.DataType.INT16, mm.DataType.INT32, mm.DataType.INT64
U8, BOOL = mm.DataType.UINT8, mm.DataType.BOOL
ALL_TYPES = [F32, F16, I8, I16, I32, I64, U8, BOOL]
FLOAT_EDGES = [
    np.nan,
    np.inf,
    -np.inf,
    0.0,
    -0.0,
    0.5,
    -0.5,
    2.7,
    -2.7,
    127.9,
    128.0,
    -128.9,
    -129.0,
    255.5,
    256.0,
    300.0,
    -1.0,
    32767.9,
    65519.0,
    65520.0,
    1e-8,
    3.0e9,
    -3.0e9,
    9.3e18,
    -9.3e18,
    1e30,
    2049.0,
    0.1,
]
INT_EDGES = [
    0,
    1,
    -1,
    127,
    128,
    -128,
    -129,
    255,
    256,
    300,
    -300,
    32767,
    32768,
    -32769,
    65519,
    65520,
    2**24 + 1,
    2**31 - 1,
    -(2**31),
    2**40 + 3,
    -(2**62),
    2**63 - 1,
]


def _cast_inputs(src: mm.DataType) -> np.ndarray:
    if src.is_float:
        return np.array(FLOAT_EDGES, np.float32)
    if src is BOOL:
        return np.array([True, False, True, True])
    return np.array(INT_EDGES, np.int64).astype(src.numpy_dtype)


def _check_cast(src: mm.DataType, dst: mm.DataType) -> None:
    x = _cast_inputs(src)
    case = one_node_step(lambda net, xs: net.add_i_cast_node(xs[0], dst), [(x.shape, src)], src)
    inputs = case.buffers([x])
    assert case.step.output_types == [dst]
    assert_ulps(case.run(inputs)[0], case.reference(inputs)[0], dst, ULPS["exact"][0])
    check_dispatchers(case.runner())


@pytest.mark.parametrize(
    "src,dst",
    [
        (F32, F16),
        (F16, F32),
        (F32, F32),
        (F16, F16),
        (F32, I8),
        (F16, I8),
        (F32, U8),
        (F32, I64),
        (F32, BOOL),
        (I32, F32),
        (I64, F16),
        (I32, I8),
        (BOOL, F32),
        (U8, BOOL),
    ],
)
def test_cast_matches_reference(src, dst) -> None:
    _check_cast(src, dst)


@pytest.mark.slow
@pytest.mark.parametrize("dst", ALL_TYPES)
@pytest.mark.parametrize("src", ALL_TYPES)
def test_cast_every_type_pair(src, dst) -> None:
    _check_cast(src, dst)


def test_cast_rules_by_hand() -> None:
    x = np.array([-2.7, 2.7, 300.0, np.nan, -300.0], np.float32)
    case = one_node_step(lambda net, xs: net.add_i_cast_node(xs[0], I8), [_spec((5,))], F32)
    assert case.run(case.buffers([x]))[0].tolist() == [-2, 2, 127, 0, -128]
    case = one_node_step(lambda net, xs: net.add_i_cast_node(xs[0], U8), [((2,), I32)], I32)
    assert case.run(case.buffers([np.array([300, -1], np.int32)]))[0].tolist() == [44, 255]
    h = np.array([65519.0, 65520.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11], np.float32)
    case = one_node_step(lambda net, xs: net.add_i_cast_node(xs[0], F16), [_spec((4,))], F32)
    got = case.run(case.buffers([h]))[0].view(np.float16)
    assert got.tolist() == [65504.0, np.inf, 1.0, 1.0 + 2 * 2**-10]  # ties to even


def test_fp16_round_trip_of_every_half() -> None:
    """Every fp16 bit pattern widens to float32 and narrows back unchanged (NaNs stay NaN)."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    up = one_node_step(lambda net, xs: net.add_i_cast_node(xs[0], F32), [_spec(bits.shape)], F16)
    wide = up.run([bits])[0]
    assert_ulps(wide, up.reference([bits])[0], F32, 0)
    down = one_node_step(lambda net, xs: net.add_i_cast_node(xs[0], F16), [_spec(bits.shape)], F32)
    back = down.run([wide])[0]
    nan = np.isnan(bits.view(np.float16))
    assert np.array_equal(back[~nan], bits[~nan]) and np.isnan(back.view(np.float16)[nan]).all()
