"""The GEMM kernels against numpy references: bit-exact on the integer paths, within a stated
bound on the float path, on the SIMD kernels (where the CPU has them) and the portable ones."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbuild.errors import MMError
from mmbuild.kernels.cpu import features
from mmbuild.kernels.cpu.gemm import (
    Activation,
    Epilogue,
    ImplicitRows,
    OutKind,
    bind_gemm_s16,
    bind_gemm_u8s8,
    gemm_f32,
    gemm_u8s8,
    pack_float_weights,
    pack_int8_weights,
    pack_int16_weights,
)

# Every test runs on every instruction-set level this CPU can run (portable always).
LEVELS = features.runnable_levels()

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


# ---------------------------------------------------------------------------------------------
# The numpy reference: the same float32 operations, in the same order
# ---------------------------------------------------------------------------------------------
def reference_epilogue(acc: np.ndarray, ep: Epilogue) -> np.ndarray:
    """``acc`` (exact integers or float sums) through the contract's epilogue."""
    y = acc.astype(np.float32) * ep.mult
    y = y + ep.bias
    a, b = np.float32(ep.act_a), np.float32(ep.act_b)
    if ep.act is Activation.RELU:
        y = np.where(y < 0, np.float32(0), y)
    elif ep.act is Activation.CLIP:
        y = np.where(y < a, a, np.where(y > b, b, y))
    elif ep.act is Activation.LEAKY_RELU:
        y = np.where(y < 0, y * a, y)
    elif ep.act is Activation.LEAKY_RELU_FLOOR:
        y = np.where(y < 0, y * a, y)
        y = np.where(y < b, b, y)
    elif ep.act is Activation.HARD_SIGMOID:  # the node's float32 formula
        y = np.clip(y * a + b, 0, 1)
    elif ep.act is Activation.HARD_SWISH:
        y = y * np.clip(y * np.float32(1 / 6) + np.float32(0.5), 0, 1)
    mul, add = np.float32(ep.act_then[0]), np.float32(ep.act_then[1])
    if mul != 1 or add != 0:  # the affine after the activation
        y = y * mul + add
    if ep.out_kind is OutKind.F32:
        return y
    if ep.out_kind is OutKind.F16:
        return y.astype(np.float16).view(np.uint16)
    q = np.rint(y / np.float32(ep.out_scale)) + np.float32(ep.out_zp)
    lo, hi = (0, 255) if ep.out_kind is OutKind.U8 else (-32768, 32767)
    return np.clip(q, lo, hi).astype(ep.out_kind.dtype)


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == np.float32:
        got, want = got.view(np.uint32), want.view(np.uint32)
    bad = np.argwhere(got != want)
    if bad.size:
        at = tuple(bad[0])
        pytest.fail(f"{len(bad)} elements differ, first at {at}: {got[at]} vs {want[at]}")


@st.composite
def epilogues(draw: st.DrawFn, n: int, acc_scale: float, kinds=tuple(OutKind)) -> Epilogue:  # type: ignore[no-untyped-def]
    """An epilogue whose output range suits accumulators of magnitude about ``acc_scale``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale_a = draw(st.sampled_from([1.0, 0.02, 0.0037]))
    per_column = draw(st.booleans())
    scale_w = rng.uniform(0.2, 2.0, n) / acc_scale if per_column else 1.0 / acc_scale
    bias = rng.standard_normal(n).astype(np.float32) if draw(st.booleans()) else None
    act = draw(st.sampled_from(list(Activation)))
    act_a, act_b = {
        Activation.CLIP: (-0.5 * scale_a, 0.75 * scale_a),
        Activation.LEAKY_RELU: (0.125, 0.0),
        Activation.LEAKY_RELU_FLOOR: (0.125, -0.05 * scale_a),  # a floor the leaky part crosses
        Activation.HARD_SIGMOID: (0.5 / scale_a, 0.5),  # the whole of [0, 1] in use
    }.get(act, (0.0, 0.0))
    kind = draw(st.sampled_from(kinds))
    act_then = draw(st.sampled_from([(1.0, -0.0), (0.75, -0.25 * scale_a), (-1.5, 0.0)]))
    return Epilogue.create(
        n, scale_a=scale_a, scale_w=scale_w, bias=bias, act=act, act_a=act_a, act_b=act_b,
        act_then=act_then, out_kind=kind, out_scale=scale_a / 50,
        out_zp=draw(st.sampled_from([0, 3, 128])) if kind is OutKind.U8 else -7,
    )  # fmt: skip


def output_for(ep: Epilogue, m: int, *, col_pad: int = 0) -> np.ndarray:
    """``out`` for ``ep``, as a view with a row stride when ``col_pad``."""
    buf = np.full((m, ep.n + col_pad), 77, ep.out_kind.dtype)
    return buf[:, col_pad : col_pad + ep.n] if col_pad else buf


# ---------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------
@st.composite
def int8_problems(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    m = draw(st.integers(1, 40))
    k = draw(st.integers(1, 70))
    n = draw(st.integers(1, 140))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fill = draw(st.sampled_from(["random", "extreme", "small", "small extreme"]))
    lda = k + draw(st.sampled_from([0, 0, 3]))
    a_buf = rng.integers(0, 256, (m, lda), dtype=np.uint8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    if fill.startswith("small"):  # within [-64, 64]: vpmaddubsw on the levels without VNNI
        w = rng.integers(-64, 65, (k, n), dtype=np.int8)
    if fill.endswith("extreme"):  # the largest pair sums: 255 * 64 * 2 = 32640 for small
        a_buf[:] = 255
        w[:] = rng.choice(np.array([-64, 64] if fill == "small extreme" else [-128, 127], np.int8),
                          (k, n))  # fmt: skip
    za = draw(st.sampled_from([0, 128, 255]) | st.integers(0, 255))
    ep = draw(epilogues(n, acc_scale=float(40 * 128 * np.sqrt(k))))
    return a_buf[:, :k], za, w, ep, draw(st.sampled_from([0, 0, 5]))


@pytest.mark.parametrize("isa", LEVELS)
@SETTINGS
@given(problem=int8_problems())
def test_u8s8_matches_reference(isa: str, problem) -> None:  # type: ignore[no-untyped-def]
    a, za, w, ep, col_pad = problem
    out = output_for(ep, a.shape[0], col_pad=col_pad)
    packed = pack_int8_weights(w)
    run = bind_gemm_u8s8(a, za, packed, ep, out, isa=isa)
    run()
    acc = (a.astype(np.int64) - za) @ w.astype(np.int64)
    assert_same_bits(out, reference_epilogue(acc, ep))
    small = bool(np.abs(w.astype(np.int16)).max() <= 64)
    assert packed.small == small
    madd = features.get_level(isa).int8_dot == "madd"
    assert run.kernel.split("/")[:2] == [f"gemm_{'u8s7' if small and madd else 'u8s8'}", isa]


@pytest.mark.parametrize("m", [7, 8, 9, 65, 130])
@pytest.mark.parametrize("n", [8, 24, 32, 40, 72])
def test_u8s8_narrow_blocks_in_tall_tiles(isa: str, m: int, n: int) -> None:
    # blocks of at most two vectors run 8 rows at a time on avx512_vnni (TALL_TILES): rows
    # left over at the end of a tile and of a 64-row work item, and a wide panel beside them
    rng = np.random.default_rng(m * 1000 + n)
    a = rng.integers(0, 256, (m, 37), dtype=np.uint8)
    w = rng.integers(-128, 128, (37, n), dtype=np.int8)
    ep = Epilogue.create(n, scale_a=0.02, scale_w=0.001, bias=rng.standard_normal(n),
                         act=Activation.HARD_SWISH, out_kind=OutKind.U8, out_scale=0.05,
                         out_zp=128)  # fmt: skip
    out = output_for(ep, m)
    gemm_u8s8(a, 131, pack_int8_weights(w), ep, out, isa=isa)
    acc = (a.astype(np.int64) - 131) @ w.astype(np.int64)
    assert_same_bits(out, reference_epilogue(acc, ep))


def test_u8s8_worked_example() -> None:
    """acc = (130 - 128) * 1 + (126 - 128) * 2 = -2; y = -2 * 0.125 + 1 = 0.75; u8 = 3 + 10."""
    a = np.array([[130, 126]], np.uint8)
    w = pack_int8_weights(np.array([[1], [2]], np.int8))
    ep = Epilogue.create(1, scale_a=0.5, scale_w=0.25, bias=np.array([1.0]), act=Activation.RELU,
                         out_kind=OutKind.U8, out_scale=0.25, out_zp=10)  # fmt: skip
    out = np.zeros((1, 1), np.uint8)
    gemm_u8s8(a, 128, w, ep, out)
    assert out[0, 0] == 13


@pytest.mark.parametrize("isa", LEVELS)
def test_u8s8_largest_k_is_exact(isa: str) -> None:
    k = 65793  # 255 * 128 * k is just below 2**31
    a = np.full((2, k), 255, np.uint8)
    w = np.full((k, 3), -128, np.int8)
    w[:, 1] = 127
    ep = Epilogue.create(3)
    out = np.zeros((2, 3), np.float32)
    gemm_u8s8(a, 0, pack_int8_weights(w), ep, out, isa=isa)
    assert_same_bits(out, reference_epilogue(a.astype(np.int64) @ w.astype(np.int64), ep))
    with pytest.raises(MMError, match="int32 accumulator"):
        pack_int8_weights(np.zeros((k + 1, 1), np.int8))


@pytest.mark.parametrize("isa", LEVELS)
def test_u8s8_large_problem_runs_parallel_and_exact(isa: str) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (300, 301), dtype=np.uint8)
    w = rng.integers(-128, 128, (301, 150), dtype=np.int8)
    ep = Epilogue.create(150, scale_a=0.01, scale_w=rng.uniform(1e-4, 1e-3, 150),
                         bias=rng.standard_normal(150), out_kind=OutKind.U8, out_scale=0.05,
                         out_zp=100)  # fmt: skip
    out = np.zeros((300, 150), np.uint8)
    gemm_u8s8(a, 119, pack_int8_weights(w), ep, out, isa=isa)
    acc = (a.astype(np.int64) - 119) @ w.astype(np.int64)
    assert_same_bits(out, reference_epilogue(acc, ep))


def test_every_level_gives_the_same_bits() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (37, 203), dtype=np.uint8)
    w = pack_int8_weights(rng.integers(-128, 128, (203, 77), dtype=np.int8))
    ep = Epilogue.create(77, scale_a=0.003, scale_w=0.01, act=Activation.LEAKY_RELU, act_a=0.1,
                         out_kind=OutKind.F16)  # fmt: skip
    outs = {isa: np.zeros((37, 77), np.uint16) for isa in LEVELS}
    for isa, out in outs.items():
        gemm_u8s8(a, 7, w, ep, out, isa=isa)
    for out in outs.values():
        assert_same_bits(out, outs["portable"])


def test_a_level_the_cpu_cannot_run_is_refused() -> None:
    missing = [lv.name for lv in features.LEVELS if lv.name not in LEVELS]
    if not missing:
        pytest.skip("this CPU runs every level")
    w = pack_int8_weights(np.ones((4, 4), np.int8))
    out = np.zeros((1, 4), np.float32)
    with pytest.raises(MMError, match="cannot run on this CPU"):
        gemm_u8s8(np.ones((1, 4), np.uint8), 0, w, Epilogue.create(4), out, isa=missing[0])
    with pytest.raises(MMError, match="unknown instruction-set level"):
        gemm_u8s8(np.ones((1, 4), np.uint8), 0, w, Epilogue.create(4), out, isa="sse9")


def test_portable_environment_variable_forces_portable_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = textwrap.dedent(
        """
        import numpy as np
        from mmbuild.kernels.cpu import features
        from mmbuild.kernels.cpu.gemm import Epilogue, gemm_u8s8, pack_int8_weights
        assert features.level().name == "portable"
        rng = np.random.default_rng(3)
        a = rng.integers(0, 256, (9, 30), dtype=np.uint8)
        w = rng.integers(-128, 128, (30, 20), dtype=np.int8)
        out = np.zeros((9, 20), np.float32)
        gemm_u8s8(a, 128, pack_int8_weights(w), Epilogue.create(20), out)
        want = ((a.astype(np.int64) - 128) @ w.astype(np.int64)).astype(np.float32)
        assert np.array_equal(out, want)
        print("portable ok")
        """
    )
    env = dict(os.environ, MMBUILD_PORTABLE="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "portable ok" in done.stdout


@pytest.mark.parametrize("isa", [*LEVELS, "sse9"])
def test_isa_environment_variable_chooses_the_level(isa: str) -> None:
    code = "from mmbuild.kernels.cpu import features; print(features.level().name)"
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, MMBUILD_ISA=isa),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if isa in LEVELS:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == isa
    else:
        assert "MMBUILD_ISA=sse9: unknown instruction-set level" in done.stderr


# ---------------------------------------------------------------------------------------------
# int16
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("isa", LEVELS)
@SETTINGS
@given(
    m=st.integers(1, 20),
    k=st.integers(1, 50),
    n=st.integers(1, 90),
    seed=st.integers(0, 2**32 - 1),
    fill=st.sampled_from(["random", "random", "with -32768", "largest pairs", "largest zp"]),
    data=st.data(),
)
def test_s16_matches_reference(isa, m, k, n, seed, fill, data) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    a = rng.integers(-32768, 32768, (m, k), dtype=np.int16)
    w = rng.integers(-32767, 32768, (k, n), dtype=np.int16)
    za = data.draw(st.integers(-32768, 32767))
    if fill == "with -32768":  # outside the symmetric range: the portable kernel, still exact
        w.flat[rng.integers(0, w.size)] = -32768
    elif fill == "largest pairs":  # every vpmaddwd pair sum is 2 * 32768 * 32767
        a[:], w[:] = -32768, -32767
    elif fill == "largest zp":  # every product is 65535 * -32767, far outside int32
        a[:], w[:], za = 32767, -32767, -32768
    ep = data.draw(epilogues(n, acc_scale=float(2**30 * np.sqrt(k))))
    out = output_for(ep, m)
    packed = pack_int16_weights(w)
    run = bind_gemm_s16(a, za, packed, ep, out, isa=isa)
    run()
    acc = (a.astype(np.int64) - za) @ w.astype(np.int64)
    assert_same_bits(out, reference_epilogue(acc, ep))
    want = "portable" if fill == "with -32768" else isa
    assert run.kernel.split("/")[1] == want


@pytest.mark.parametrize("isa", LEVELS)
def test_s16_pair_sums_exact_up_to_the_largest_k(isa: str) -> None:
    """K = 131070 (65535 pairs, the most the SIMD accumulator recovers exactly) of the largest
    pair sums; one pair more runs on the portable kernel, as exactly."""
    for k, level in ((131070, isa), (131072, "portable")):
        a = np.full((2, k), -32768, np.int16)
        a[1, ::3] = 32767
        w = np.full((k, 3), -32767, np.int16)
        w[::5, 1] = 32767
        ep = Epilogue.create(3, scale_w=2.0**-40)
        out = np.zeros((2, 3), np.float32)
        run = bind_gemm_s16(a, 0, pack_int16_weights(w), ep, out, isa=isa)
        run()
        acc = a.astype(np.int64) @ w.astype(np.int64)
        assert_same_bits(out, reference_epilogue(acc, ep))
        assert run.kernel.split("/")[1] == level


def test_s16_packing_pairs_k_rows() -> None:
    w = np.arange(1, 16, dtype=np.int16).reshape(3, 5)  # K = 3, N = 5
    packed = pack_int16_weights(w)
    panel = packed.data.reshape(2, 16, 2)  # [K/2][16 columns][2], K row 3 and columns 5.. zero
    assert panel[0, :5].tolist() == [[1, 6], [2, 7], [3, 8], [4, 9], [5, 10]]
    assert panel[1, :5].tolist() == [[11, 0], [12, 0], [13, 0], [14, 0], [15, 0]]
    assert not panel[:, 5:].any()
    assert packed.colsum.tolist() == [18, 21, 24, 27, 30] and packed.pairs_exact


@pytest.mark.parametrize("isa", LEVELS)
def test_s16_parallel_and_strided(isa: str) -> None:
    rng = np.random.default_rng(4)
    buf = rng.integers(-32768, 32768, (70, 90), dtype=np.int16)
    a = buf[:, :80]
    w = rng.integers(-32767, 32768, (80, 100), dtype=np.int16)
    ep = Epilogue.create(100, scale_w=1e-9, out_kind=OutKind.I16, out_scale=0.5, out_zp=-3)
    out = np.zeros((70, 100), np.int16)
    run = bind_gemm_s16(a, 1000, pack_int16_weights(w), ep, out, isa=isa)
    run()
    acc = (a.astype(np.int64) - 1000) @ w.astype(np.int64)
    assert_same_bits(out, reference_epilogue(acc, ep))
    assert run.kernel == f"gemm_s16/{isa}" + ("/mt" if numba.get_num_threads() > 1 else "")


# ---------------------------------------------------------------------------------------------
# float
# ---------------------------------------------------------------------------------------------
def assert_float_close(
    out: np.ndarray, a64: np.ndarray, b64: np.ndarray, ep: Epilogue, kind: OutKind
) -> None:
    """Within ``K * 2**-24 * sum|a||b|`` of the exact product (times the epilogue's scale),
    a few float32 ulps for the epilogue, and one fp16 ulp where the output is fp16."""
    k = a64.shape[1]
    exact = a64 @ b64
    bound = k * 2.0**-24 * (np.abs(a64) @ np.abs(b64))
    t = exact * ep.mult.astype(np.float64) + ep.bias.astype(np.float64)
    # the activation's steepest slope carries the error of its input; its own operations add a
    # few float32 ulps
    slope = 1.0
    y = t
    if ep.act is Activation.RELU:
        y = np.maximum(t, 0)
    elif ep.act is Activation.LEAKY_RELU:
        y = np.where(t < 0, t * np.float32(ep.act_a), t)
    elif ep.act is Activation.LEAKY_RELU_FLOOR:
        y = np.maximum(np.where(t < 0, t * np.float32(ep.act_a), t), np.float32(ep.act_b))
    elif ep.act is Activation.CLIP:
        y = np.clip(t, np.float32(ep.act_a), np.float32(ep.act_b))
    elif ep.act is Activation.HARD_SIGMOID:
        slope = abs(float(np.float32(ep.act_a)))
        y = np.clip(t * np.float32(ep.act_a) + np.float32(ep.act_b), 0, 1)
    elif ep.act is Activation.HARD_SWISH:
        slope = 1.5
        y = t * np.clip(t / 6 + 0.5, 0, 1)
    mul, add = ep.act_then
    if mul != 1 or add != 0:  # the affine after the activation scales the error by |mul|
        slope, y = slope * abs(mul), y * mul + add
    tol = (bound * np.abs(ep.mult) + 2.0**-22 * (np.abs(t) + np.abs(ep.bias))) * slope
    tol = tol + 2.0**-22 * (np.abs(y) + (slope != 1.0)) + 1e-30
    got = out.view(np.float16).astype(np.float64) if kind is OutKind.F16 else out
    if kind is OutKind.F16:
        tol = tol + 2.0**-10 * np.abs(y) + 2.0**-24
    err = np.abs(got - y)
    assert np.all(err <= tol), f"max error / tolerance = {np.max(err / tol):.3g}"


@pytest.mark.parametrize("isa", LEVELS)
@SETTINGS
@given(
    m=st.integers(1, 30),
    k=st.integers(1, 60),
    n=st.integers(1, 140),
    half_a=st.booleans(),
    half_w=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_f32_within_tolerance(isa, m, k, n, half_a, half_w, seed, data) -> None:  # type: ignore[no-untyped-def]
    if isa == "portable":  # one generic loop serves every dtype pair: two pairs cover its loads
        half_w = half_a
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k + 2)).astype(np.float16 if half_a else np.float32)[:, :k]
    w = rng.standard_normal((k, n)).astype(np.float32)
    ep = data.draw(epilogues(n, acc_scale=float(np.sqrt(k)), kinds=(OutKind.F32, OutKind.F16)))
    out = output_for(ep, m)
    packed = pack_float_weights(w, half=half_w)
    gemm_f32(a, packed, ep, out, isa=isa)
    w_used = w.astype(np.float16) if half_w else w
    assert_float_close(out, a.astype(np.float64), w_used.astype(np.float64), ep, ep.out_kind)


@pytest.mark.parametrize("isa", LEVELS)
def test_f32_large_problem_runs_parallel(isa: str) -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((130, 120)).astype(np.float32)
    w = rng.standard_normal((120, 70)).astype(np.float32)
    ep = Epilogue.create(70, bias=rng.standard_normal(70), act=Activation.CLIP, act_a=-1, act_b=2)
    out = np.zeros((130, 70), np.float32)
    gemm_f32(a, pack_float_weights(w), ep, out, isa=isa)
    assert_float_close(out, a.astype(np.float64), w.astype(np.float64), ep, OutKind.F32)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize(("k", "n"), [(1024, 1000), (37, 5), (300, 130)])
def test_f32_lone_row_has_the_bits_of_a_tile_row(isa: str, k: int, n: int) -> None:
    """M = 1 (and the last row of M = 49) runs the whole-panel single-row kernel; every column
    still sums in k order, so each row's bits do not depend on M."""
    rng = np.random.default_rng(k)
    a = rng.standard_normal((49, k)).astype(np.float32)
    packed = pack_float_weights(rng.standard_normal((k, n)).astype(np.float32))
    ep = Epilogue.create(n, bias=rng.standard_normal(n), act=Activation.RELU)
    rows = {m: np.zeros((m, n), np.float32) for m in (1, 6, 49)}
    for m, out in rows.items():
        gemm_f32(a[-m:], packed, ep, out, isa=isa)
    assert_same_bits(rows[1], rows[49][-1:])
    assert_same_bits(rows[6], rows[49][-6:])
    assert rows[1].any()


def test_f32_quantized_output_is_the_rounded_float_result() -> None:
    a = np.array([[1.0, 2.0]], np.float32)
    w = pack_float_weights(np.array([[0.5], [0.25]], np.float32))
    ep = Epilogue.create(1, bias=np.array([0.1]), out_kind=OutKind.U8, out_scale=0.01, out_zp=5)
    out = np.zeros((1, 1), np.uint8)
    gemm_f32(a, w, ep, out)
    assert out[0, 0] == np.rint(np.float32(1.1) / np.float32(0.01)) + 5


@pytest.mark.parametrize("kind", [OutKind.U8, OutKind.I16])
def test_quantized_output_of_nan_and_infinities_is_the_zero_point_and_the_bounds(
    isa: str, kind: OutKind
) -> None:
    # rows of a tile (SIMD stores) and a lone row; NaN goes to the zero point as quant.params
    # sends it, +-inf and overflow to the type's bounds
    specials = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.5], np.float32)
    a = np.stack([specials, np.zeros(6, np.float32)], axis=1)  # [6, 2]
    w = pack_float_weights(np.array([[1.0] * 20, [0.0] * 20], np.float32))  # y = a[:, 0]
    zp = 17 if kind is OutKind.U8 else -300
    lo, hi = (0, 255) if kind is OutKind.U8 else (-32768, 32767)
    ep = Epilogue.create(20, out_kind=kind, out_scale=0.25, out_zp=zp)
    for rows in (a, a[:1]):
        out = np.zeros((rows.shape[0], 20), kind.dtype)
        gemm_f32(rows, w, ep, out, isa=isa)
        want = np.array([zp, hi, lo, hi, lo, zp + 2], kind.dtype)[: rows.shape[0]]
        assert_same_bits(out, np.repeat(want[:, None], 20, axis=1))


# ---------------------------------------------------------------------------------------------
# Packing, epilogue and argument checks
# ---------------------------------------------------------------------------------------------
def test_int8_packing_layout() -> None:
    w = np.arange(6 * 70, dtype=np.int64).reshape(6, 70).astype(np.int8)
    p = pack_int8_weights(w)
    assert (p.k, p.n, p.k_pad, p.n_pad, p.n_panels, p.nrv_last) == (6, 70, 8, 80, 2, 1)
    first = p.data[: p.kgroups * 64 * 4].reshape(p.kgroups, 64, 4)
    assert first[0, 5].tolist() == w[0:4, 5].tolist()
    assert first[1, 5].tolist() == [w[4, 5], w[5, 5], 0, 0]
    last = p.data[p.kgroups * 64 * 4 :].reshape(p.kgroups, 16, 4)
    assert last[0, 69 - 64].tolist() == w[0:4, 69].tolist()
    assert np.all(last[:, 6:] == 0)
    assert p.colsum.tolist() == w.astype(np.int32).sum(0).tolist()


def test_epilogue_create_computes_mult_in_float32() -> None:
    scale_w = np.array([0.005, 0.3], np.float64)
    ep = Epilogue.create(2, scale_a=0.02, scale_w=scale_w)
    assert ep.mult.dtype == np.float32
    assert_same_bits(ep.mult, np.float32(0.02) * scale_w.astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"act": Activation.CLIP, "act_a": 1.0, "act_b": 0.0}, "lo <= hi"),
        ({"out_kind": OutKind.U8, "out_zp": 256}, "out_zp"),
        ({"out_kind": OutKind.I16, "out_scale": 0.0}, "out_scale"),
        ({"bias": np.zeros(3)}, "shape"),
    ],
)
def test_epilogue_refuses_bad_parameters(kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MMError, match=match):
        Epilogue.create(2, **kwargs)


def test_gemm_refuses_mismatched_arguments() -> None:
    w = pack_int8_weights(np.ones((5, 3), np.int8))
    ep = Epilogue.create(3)
    a = np.zeros((2, 5), np.uint8)
    out = np.zeros((2, 3), np.float32)
    with pytest.raises(MMError, match="shape"):
        gemm_u8s8(np.zeros((2, 4), np.uint8), 0, w, ep, out)
    with pytest.raises(MMError, match="uint8"):
        gemm_u8s8(a.astype(np.int8), 0, w, ep, out)
    with pytest.raises(MMError, match="zero point"):
        gemm_u8s8(a, 256, w, ep, out)
    with pytest.raises(MMError, match="F16"):
        gemm_u8s8(a, 0, w, Epilogue.create(3, out_kind=OutKind.F16), out)
    with pytest.raises(MMError, match="columns"):
        gemm_u8s8(a, 0, w, Epilogue.create(4), np.zeros((2, 4), np.float32))
    with pytest.raises(MMError, match="PackedInt8Weights"):
        gemm_u8s8(a, 0, pack_int16_weights(np.ones((5, 3), np.int16)), ep, out)  # type: ignore[arg-type]
    with pytest.raises(MMError, match="segments"):
        pack_int8_weights(np.ones((5, 3), np.int8), segments=2)
    rows = ImplicitRows(offsets=np.array([0, 10], np.int64), seg_stride=0)
    with pytest.raises(MMError, match="reach"):
        gemm_u8s8(np.zeros(12, np.uint8), 0, w, ep, out, rows=rows)


def test_bound_gemm_runs_again_on_new_contents() -> None:
    rng = np.random.default_rng(8)
    a = np.zeros((5, 9), np.uint8)
    w = rng.integers(-128, 128, (9, 4), dtype=np.int8)
    ep = Epilogue.create(4)
    out = np.zeros((5, 4), np.float32)
    run = bind_gemm_u8s8(a, 100, pack_int8_weights(w), ep, out)
    assert run.kernel.startswith("gemm_u8s8/")
    for _ in range(2):
        a[:] = rng.integers(0, 256, a.shape, dtype=np.uint8)
        run()
        assert_same_bits(out, reference_epilogue((a.astype(np.int64) - 100) @ w, ep))


def test_empty_m_is_a_no_op() -> None:
    w = pack_float_weights(np.ones((4, 3), np.float32))
    out = np.zeros((0, 3), np.float32)
    gemm_f32(np.zeros((0, 4), np.float32), w, Epilogue.create(3), out)


# ---------------------------------------------------------------------------------------------
# Levels this CPU cannot run: compiled (not run) for a CPU that has them
# ---------------------------------------------------------------------------------------------
_COMPILE_ONLY = """
import numba, numpy as np
from mmbuild.kernels.cpu import features, gemm as G
products = {
    "u8s8": (G.bind_gemm_u8s8, np.uint8, G.pack_int8_weights(np.full((41, 70), 99, np.int8)), (3,)),
    "u8s7": (G.bind_gemm_u8s8, np.uint8, G.pack_int8_weights(np.ones((41, 70), np.int8)), (3,)),
    "s16": (G.bind_gemm_s16, np.int16, G.pack_int16_weights(np.ones((41, 70), np.int16)), (3,)),
    "f32": (G.bind_gemm_f32, np.float32, G.pack_float_weights(np.ones((41, 70), np.float32)), ()),
}
for level in LEVELS:
    for kind, (bind, dtype, w, za) in products.items():
        out = np.zeros((5, 70), np.float32)
        bound = bind(np.zeros((5, 41), dtype), *za, w, G.Epilogue.create(70), out, isa=level)
        sig = tuple(numba.typeof(x) for x in bound._args)
        bound._fn.compile(sig)  # compiled for the CPU named below, never run here
        asm = bound._fn.inspect_asm(sig)
        words = [w for w in ("zmm", "vpdpbusd", "vpmaddubsw", "vpmaddwd", "vfmadd") if w in asm]
        print(level, kind, bound.kernel, *words)
"""

_BASE_FEATURES = "+avx2,+avx,+fma,+f16c,+sse4.2,+sse4.1,+ssse3,+sse3,+sse2,+popcnt,+bmi,+bmi2"
_FOREIGN_CPUS = {
    # NUMBA_CPU_NAME: (features beyond _BASE_FEATURES, the levels to compile for it)
    "sapphirerapids": (
        "+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd,+avx512vnni,+avxvnni",
        ("avx512_vnni", "avx512"),
    ),
    "alderlake": ("+avxvnni", ("avx_vnni",)),
}


@pytest.mark.slow
@pytest.mark.parametrize("cpu", list(_FOREIGN_CPUS))
def test_levels_this_cpu_lacks_compile_to_their_instructions(cpu: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every GEMM of the AVX-512 and AVX-VNNI levels compiles for a CPU that has them (numba
    told to target it) and uses the level's instructions: vpdpbusd for VNNI int8, vpmaddwd for
    int16 and for int8 without VNNI, FMA for float, zmm registers on AVX-512. Compiled in a
    subprocess and never run: this CPU may lack them."""
    extra, levels = _FOREIGN_CPUS[cpu]
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=f"{_BASE_FEATURES},{extra}")
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba"), MMBUILD_CACHE_DIR=str(tmp_path / "k"))
    code = f"LEVELS = {levels!r}\n" + _COMPILE_ONLY
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in done.stdout.splitlines()}
    for level in levels:
        vnni, wide = level.endswith("vnni"), level.startswith("avx512")
        for kind, needs in (("u8s8", "vpdpbusd" if vnni else "vpmaddwd"),
                            ("u8s7", "vpdpbusd" if vnni else "vpmaddubsw"), ("s16", "vpmaddwd"),
                            ("f32", "vfmadd")):  # fmt: skip
            kernel, *words = lines[level, kind]
            assert kernel == f"gemm_{'u8s8' if vnni and kind == 'u8s7' else kind}/{level}"
            assert needs in words, (level, kind, words)
            assert "zmm" in words or not wide, (level, kind, words)
