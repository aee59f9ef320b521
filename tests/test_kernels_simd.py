"""The explicit-SIMD layer, the fp16 conversions, feature detection, the generated-module loader
and the whole-array conversion kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from mmbuild.errors import MMError
from mmbuild.kernels.cpu import codegen, convert, features, simd
from mmbuild.kernels.cpu.dot import (
    madd_bcast4,
    madd_cols,
    madd_dot,
    madd_weights,
    madd_zero,
    pair_bcast2,
    pair_cols,
    pair_dot,
    pair_single,
    pair_weights,
    pair_zero,
    small_dot,
    vnni_bcast4,
    vnni_cols,
    vnni_dot,
    vnni_weights,
    vnni_zero,
)
from mmbuild.kernels.cpu.simd import f2h, f2h_soft, h2f, h2f_soft, load_f32, load_u8_tail, store_f32
from mmbuild.kernels.cpu.vector import (
    vadd_f32,
    vadd_i32,
    vbcast_f32,
    vcvt_f32,
    vdiv_f32,
    vfma,
    vload_f32,
    vload_i32,
    vmul_f32,
    vrint_f32,
    vselect_lt,
    vsplat_f32,
    vsplat_i32,
    vstore_f32,
    vstore_i32,
    vstore_i64,
    vstore_n_f16,
    vstore_n_f32,
    vstore_n_i16,
    vstore_n_u8,
    vzero_f32,
    vzero_i32,
)

RUNNABLE = features.runnable_levels()
# Vector widths this CPU runs: 16 lanes with AVX-512, 8 with AVX2; each test runs at every one.
WIDTHS = [
    pytest.param(16, marks=pytest.mark.skipif("avx512" not in RUNNABLE, reason="needs AVX-512")),
    pytest.param(8, marks=pytest.mark.skipif("avx2" not in RUNNABLE, reason="needs AVX2")),
]

ALL_HALVES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# fp16 <-> fp32
# ---------------------------------------------------------------------------------------------
@njit
def _h2f_all(src, dst, soft):  # type: ignore[no-untyped-def]
    for i in range(src.size):
        dst[i] = h2f_soft(src[i]) if soft else h2f(src[i])


@njit
def _f2h_all(src, dst, soft):  # type: ignore[no-untyped-def]
    for i in range(src.size):
        dst[i] = f2h_soft(src[i]) if soft else f2h(src[i])


def float_patterns() -> np.ndarray:
    """Every float32 exponent and sign with the mantissa endings that decide half rounding
    (ties at bit 12, just above and below), plus a million random bit patterns."""
    high = np.arange(1 << 16, dtype=np.uint32) << 16
    low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0xFFFF], np.uint32)
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 1 << 32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([(high[:, None] | low[None, :]).ravel(), rand]).view(np.float32)


@pytest.mark.parametrize("soft", [False, True])
def test_h2f_matches_numpy_on_every_half(soft: bool) -> None:
    got = np.empty(ALL_HALVES.size, np.float32)
    _h2f_all(ALL_HALVES, got, soft)
    want = ALL_HALVES.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    # NaN: sign and payload kept, and made quiet (numpy keeps a signalling NaN signalling)
    assert np.all(np.isnan(got[nan]))
    quiet = np.uint32(0x400000)
    assert np.array_equal(got[nan].view(np.uint32) | quiet, want[nan].view(np.uint32) | quiet)
    assert np.all(got[nan].view(np.uint32) & quiet)


@pytest.mark.parametrize("soft", [False, True])
def test_f2h_matches_numpy_rounding(soft: bool) -> None:
    src = float_patterns()
    got = np.empty(src.size, np.uint16)
    _f2h_all(src, got, soft)
    with np.errstate(over="ignore"):
        want = src.astype(np.float16).view(np.uint16)
    nan = np.isnan(src)
    assert np.array_equal(got[~nan], want[~nan])
    # NaN: sign, quiet bit set, top nine payload bits of the float kept
    bits = src[nan].view(np.uint32)
    expect = ((bits >> 16) & 0x8000) | 0x7E00 | ((bits >> 13) & 0x1FF)
    assert np.array_equal(got[nan], expect.astype(np.uint16))


def test_hardware_and_integer_conversions_agree_on_every_bit() -> None:
    a, b = np.empty(ALL_HALVES.size, np.float32), np.empty(ALL_HALVES.size, np.float32)
    _h2f_all(ALL_HALVES, a, False)
    _h2f_all(ALL_HALVES, b, True)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    src = float_patterns()
    c, d = np.empty(src.size, np.uint16), np.empty(src.size, np.uint16)
    _f2h_all(src, c, False)
    _f2h_all(src, d, True)
    assert np.array_equal(c, d)


def test_f2h_worked_values() -> None:
    src = np.array([1.0, 65504.0, 65519.996, 65520.0, 2.0**-24, 2.0**-25, 1 + 2.0**-11], np.float32)
    got = np.empty(src.size, np.uint16)
    _f2h_all(src, got, True)
    # max half; still rounds down; the tie rounds to even (infinity); the smallest subnormal;
    # a tie to even zero; a tie to even 1.0
    assert [hex(x) for x in got] == ["0x3c00", "0x7bff", "0x7bff", "0x7c00", "0x1", "0x0", "0x3c00"]


# ---------------------------------------------------------------------------------------------
# Generic float32 / fp16-bits element access
# ---------------------------------------------------------------------------------------------
@njit
def _copy_through_f32(src, dst):  # type: ignore[no-untyped-def]
    for i in range(src.size):
        store_f32(dst, i, load_f32(src, i) * np.float32(2))


@pytest.mark.parametrize("src_dtype", [np.float32, np.uint16])
@pytest.mark.parametrize("dst_dtype", [np.float32, np.uint16])
def test_load_store_f32_serve_float32_and_half_bits(src_dtype, dst_dtype) -> None:  # type: ignore[no-untyped-def]
    values = np.array([0.5, -3.25, 1000.0, 7e-5], np.float32)
    src = values.astype(np.float16).view(np.uint16) if src_dtype == np.uint16 else values
    dst = np.zeros(4, dst_dtype)
    _copy_through_f32(src, dst)
    widened = src.view(np.float16).astype(np.float32) if src_dtype == np.uint16 else src
    doubled = widened * np.float32(2)
    want = doubled.astype(np.float16).view(np.uint16) if dst_dtype == np.uint16 else doubled
    assert np.array_equal(dst, want)
    # the Python stubs behave the same way
    dst2 = np.zeros(4, dst_dtype)
    for i in range(4):
        store_f32(dst2, i, load_f32(src, i) * np.float32(2))
    assert np.array_equal(dst2, want)


@njit
def _tail(arr, i, n):  # type: ignore[no-untyped-def]
    return load_u8_tail(arr, i, n)


def test_load_u8_tail_reads_whole_words_inside_and_n_bytes_at_the_end() -> None:
    arr = np.array([1, 2, 3, 0xFF, 7, 9], np.uint8)
    # inside the array: four bytes in one load (the ones past n meet zero weights)
    assert _tail(arr, 0, 3) == 0xFF030201 and _tail(arr, 2, 1) == 0x0907FF03
    # at its end: only the n bytes, never past them
    assert _tail(arr, 4, 2) == 0x0907 and _tail(arr, 3, 2) == 0x07FF
    assert _tail(arr[:3], 1, 2) == 0x0302 and _tail(arr[:0], 0, 0) == 0


# ---------------------------------------------------------------------------------------------
# Vector intrinsics
# ---------------------------------------------------------------------------------------------
def _dot_kernel(zero, bcast4, weights, dot, cols, lanes):  # type: ignore[no-untyped-def]
    @njit
    def run(a, b, out):  # type: ignore[no-untyped-def]
        acc = zero(lanes)
        for g in range(a.size // 4):
            acc = dot(acc, bcast4(a, 4 * g, lanes), weights(b, 4 * lanes * g, lanes))
        vstore_i32(out, 0, cols(acc))

    return run


DOTS = {
    "vnni": ((vnni_zero, vnni_bcast4, vnni_weights, vnni_dot, vnni_cols), "avx512_vnni", 16),
    "madd16": ((madd_zero, madd_bcast4, madd_weights, madd_dot, madd_cols), "avx512", 16),
    "madd8": ((madd_zero, madd_bcast4, madd_weights, madd_dot, madd_cols), "avx2", 8),
    # vpmaddubsw for weights within [-64, 64], on the VNNI operand layout
    "small16": ((vnni_zero, vnni_bcast4, vnni_weights, small_dot, vnni_cols), "avx512", 16),
    "small8": ((vnni_zero, vnni_bcast4, vnni_weights, small_dot, vnni_cols), "avx2", 8),
}


@pytest.mark.parametrize("form", list(DOTS))
def test_int8_dot_products_are_exact_and_wrap(form: str) -> None:
    fns, level, lanes = DOTS[form]
    if level not in RUNNABLE:
        pytest.skip(f"the {form} dot product needs the {level} level")
    run = _dot_kernel(*fns, lanes)
    rng = np.random.default_rng(1)
    for groups in (1, 3, 20000):  # 20000 groups of extremes wrap int32 (80000 * 255 * 128)
        a = rng.integers(0, 256, 4 * groups, dtype=np.uint8)
        small = form.startswith("small")
        b = rng.integers(-64 if small else -128, 65 if small else 128, (groups, lanes, 4),
                         dtype=np.int8)  # fmt: skip
        if groups > 100:
            a[:] = 255
            b[:] = -64 if small else -128
        out = np.empty(lanes, np.int32)
        run(a, b.reshape(-1), out)
        sums = (a.reshape(groups, 1, 4).astype(np.int64) * b).sum(axis=(0, 2))
        want = ((sums + 2**31) % 2**32 - 2**31).astype(np.int32)
        assert np.array_equal(out, want)


def test_madd_worked_example() -> None:
    """The column of the module docstring: (200, 3, 0, 255) . (-128, 5, 7, -1) = -25840."""
    if "avx2" not in RUNNABLE:
        pytest.skip("needs AVX2")
    a = np.array([200, 3, 0, 255], np.uint8)
    b = np.zeros((1, 8, 4), np.int8)
    b[0, 0] = [-128, 5, 7, -1]
    out = np.empty(8, np.int32)
    _dot_kernel(*DOTS["madd8"][0], 8)(a, b.reshape(-1), out)
    assert out[0] == -25840 and not out[1:].any()


def _pair_kernel(lanes: int):  # type: ignore[no-untyped-def]
    @njit
    def run(a, b, out):  # type: ignore[no-untyped-def]
        acc = pair_zero(lanes)
        pairs = a.size // 2
        for g in range(pairs):
            acc = pair_dot(acc, pair_bcast2(a, 2 * g, lanes), pair_weights(b, 2 * lanes * g, lanes))
        if a.size % 2:
            acc = pair_dot(acc, pair_single(a[2 * pairs], lanes),
                           pair_weights(b, 2 * lanes * pairs, lanes))  # fmt: skip
        vstore_i64(out, 0, pair_cols(acc))

    return run


@pytest.mark.parametrize("lanes", WIDTHS)
@pytest.mark.parametrize("fill", ["random", "largest", "smallest", "odd"])
def test_int16_pair_sums_are_exact_in_int64(lanes: int, fill: str) -> None:
    """``pair_cols`` recovers the exact sums of ``pair_dot``, up to 65535 extreme pair steps."""
    rng = np.random.default_rng(5)
    k = {"random": 2000, "largest": 131070, "smallest": 131070, "odd": 7}[fill]
    a = rng.integers(-32768, 32768, k, dtype=np.int16)
    w = rng.integers(-32767, 32768, (k + k % 2, lanes), dtype=np.int16)
    w[k:] = 0  # the zero partner of an odd K's last row
    if fill == "largest":  # each pair sum 2 * 32768 * 32767, over 2**46 in all
        a[:], w[:] = -32768, -32767
    elif fill == "smallest":
        a[:], w[:] = -32768, 32767
    packed = w.reshape(-1, 2, lanes).transpose(0, 2, 1).reshape(-1)  # [K/2][lanes][2]
    out = np.empty(lanes, np.int64)
    _pair_kernel(lanes)(a, np.ascontiguousarray(packed), out)
    assert np.array_equal(out, a.astype(np.int64) @ w[:k].astype(np.int64))


def _lane_kernels(lanes: int):  # type: ignore[no-untyped-def]
    @njit
    def bcast_add(x, out):  # type: ignore[no-untyped-def]
        vstore_i32(out, 0, vadd_i32(vsplat_i32(x, lanes), vzero_i32(lanes)))

    @njit
    def fma(acc, a, i, b, out):  # type: ignore[no-untyped-def]
        vstore_f32(out, 0, vfma(vload_f32(acc, 0, lanes), vbcast_f32(a, i, lanes),
                                vload_f32(b, 0, lanes)))  # fmt: skip

    @njit
    def splat(x, out):  # type: ignore[no-untyped-def]
        z = vzero_f32(lanes)
        vstore_f32(out, 0, vfma(z, vsplat_f32(x, z), vsplat_f32(2.0, lanes)))

    @njit
    def epilogue_ops(x, y, ints, n, out_f, out_h, out_b, out_s, out_c):  # type: ignore[no-untyped-def]
        a = vload_f32(x, 0, lanes)
        b = vload_f32(y, 0, lanes)
        vstore_n_f32(out_f, 0, vselect_lt(a, b, vadd_f32(a, b), vdiv_f32(vmul_f32(a, b), b)), n)
        vstore_n_f16(out_h, 0, a, n)
        q = vrint_f32(a)
        vstore_n_u8(out_b, 0, q, n)
        vstore_n_i16(out_s, 0, q, n)
        vstore_n_f32(out_c, 0, vcvt_f32(vload_i32(ints, 0, lanes)), lanes)

    return bcast_add, fma, splat, epilogue_ops


@pytest.mark.parametrize("lanes", WIDTHS)
def test_integer_splat_and_add(lanes: int) -> None:
    out = np.empty(lanes, np.int32)
    _lane_kernels(lanes)[0](-5, out)
    assert np.all(out == -5)


@pytest.mark.parametrize("lanes", WIDTHS)
def test_float_splat_and_zero(lanes: int) -> None:
    out = np.empty(lanes, np.float32)
    _lane_kernels(lanes)[2](1.25, out)
    assert np.all(out == 2.5)


@pytest.mark.parametrize("lanes", WIDTHS)
@pytest.mark.parametrize("half", [False, True])
def test_vfma_rounds_once_and_loads_widen_halves(lanes: int, half: bool) -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal(3).astype(np.float32)
    b = rng.standard_normal(lanes).astype(np.float32)
    if half:  # exercise the fp16 loads: values that are exact halves
        a, b = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
    # acc = -fl(a * b): a fused multiply-add leaves exactly the rounding error of the product,
    # which a separate multiply and add would lose
    acc = -(a[1] * b)
    out = np.empty(lanes, np.float32)
    a_arg = a.astype(np.float16).view(np.uint16) if half else a
    b_arg = b.astype(np.float16).view(np.uint16) if half else b
    _lane_kernels(lanes)[1](acc, a_arg, 1, b_arg, out)
    want = (np.float64(a[1]) * b.astype(np.float64) + acc.astype(np.float64)).astype(np.float32)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))
    if not half:
        assert np.any(out != 0)


@pytest.mark.parametrize("lanes", WIDTHS)
@pytest.mark.parametrize("n", ["all", 5, 0])
def test_epilogue_vector_ops_round_like_scalar_float32(lanes: int, n) -> None:  # type: ignore[no-untyped-def]
    n = lanes if n == "all" else n
    a = np.array([0.5, 1.5, 2.5, -0.5, 3.7, 100.2, 254.5, 7.0, 0.1, 9.5, 1e-3, 12.5,
                  -0.0, 200.0, 33.3, 65.5], np.float32)[:lanes]  # fmt: skip
    b = np.array([1.0, -2.0, 3.0, np.nan, 0.3, 7.0, 255.0, 0.5, 2.0, 9.0, 1.0, 3.0, 1.0, 1.0,
                  np.inf, 2.0], np.float32)[:lanes]  # fmt: skip
    ints = np.array([2**24 + 1, 2**24 + 3, -(2**31), 2**31 - 1, *range(12)], np.int32)[:lanes]
    outs = [np.full(64 + 8, 0xEE, np.uint8) for _ in range(5)]
    with np.errstate(invalid="ignore"):
        _lane_kernels(lanes)[3](a, b, ints, n, *outs)
        want_f = np.where(a < b, a + b, (a * b) / b)  # NaN compares false, as in numpy
    sentinel = np.full(64, 0xEE, np.uint8)
    assert np.array_equal(outs[0][: 4 * n], want_f.view(np.uint8)[: 4 * n])
    assert np.array_equal(outs[0][4 * n :], np.full(72 - 4 * n, 0xEE, np.uint8))
    assert np.array_equal(outs[1][: 2 * n], a.astype(np.float16).view(np.uint8)[: 2 * n])
    assert np.array_equal(outs[1][2 * n : 32], sentinel[: 32 - 2 * n])
    assert np.array_equal(outs[2][:n], np.rint(a).astype(np.uint8)[:n] if n else [])
    assert np.array_equal(outs[2][n:16], sentinel[: 16 - n])
    assert np.array_equal(outs[3][: 2 * n], np.rint(a).astype(np.int16).view(np.uint8)[: 2 * n])
    assert np.array_equal(outs[4][: 4 * lanes].view(np.float32), ints.astype(np.float32))


def test_vector_intrinsics_refuse_wrong_types() -> None:
    @njit
    def bad(x):  # type: ignore[no-untyped-def]
        return vload_f32(x, 0, 8)

    with pytest.raises(Exception, match="vload_f32"):
        bad(np.zeros(16, np.int64))


# ---------------------------------------------------------------------------------------------
# Feature detection
# ---------------------------------------------------------------------------------------------
def test_feature_string_parsing() -> None:
    assert features._parse_feature_string("+avx2,-avx512f, +fma") == {"avx2", "fma"}


def test_feature_answers_are_consistent() -> None:
    assert RUNNABLE[-1] == "portable"
    assert features.level().name in RUNNABLE
    order = [lv.name for lv in features.LEVELS]
    assert list(RUNNABLE) == sorted(RUNNABLE, key=order.index)
    for name in RUNNABLE:
        assert features.get_level(name).needs <= features.target_features()
    assert f"isa={features.level().name}" in features.describe()


def _run_python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_portable_variable_and_generic_cpu_turn_the_simd_paths_off() -> None:
    code = "from mmbuild.kernels.cpu import features as f\nprint(f.level().name)"
    assert _run_python(code, MMBUILD_PORTABLE="1") == "portable"
    generic = (
        "from mmbuild.kernels.cpu import features as f, simd\n"
        "import numpy as np\nfrom numba import njit\n"
        "@njit\ndef r(x): return simd.f2h(simd.h2f(x))\n"
        "print(f.level().name, f.has_hw_half(), r(np.uint16(0x3c01)))"
    )
    # a feature-less target must neither choose a SIMD level nor crash on half conversions
    assert _run_python(generic, NUMBA_CPU_NAME="generic") == "portable False 15361"


# ---------------------------------------------------------------------------------------------
# Generated modules
# ---------------------------------------------------------------------------------------------
def test_load_module_writes_once_and_rewrites_a_changed_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(codegen.CACHE_ENV, str(tmp_path))
    source = "VALUE = 41\n"
    mod = codegen.load_module("probe", source, dependencies=(simd,))
    assert mod.VALUE == 41
    (path,) = tmp_path.glob("*/probe.py")
    assert path.read_text() == source
    assert codegen.load_module("probe", source, dependencies=(simd,)) is mod
    path.write_text("VALUE = 0\n")  # a damaged file is rewritten on the next process's load
    codegen._loaded.clear()
    assert codegen.load_module("probe", source, dependencies=(simd,)).VALUE == 41
    assert codegen.load_module("probe", "VALUE = 42\n").VALUE == 42
    assert len(list(tmp_path.glob("*/probe.py"))) == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_micro_kernel_sources_name_their_accumulators() -> None:
    text = codegen.int_tile_source("u8s8", 4, 2, "epi")
    assert "def u8s8_tile_4x2(A, ao0, ao1, ao2, ao3," in text
    assert text.count("vdot4(") == 2 * 4 * 2  # the K loop and the K tail
    # row 3, second vector: columns n0 + LANES.., stored only if the tile has 4 rows
    assert "    if mr > 3:\n" in text
    assert ("epi(vcols(c3_1), n0 + 1 * LANES, out, o_off + 3 * ldo + 1 * LANES, nn - 1 * LANES, "
            "comp, ep_args)") in text  # fmt: skip
    ftext = codegen.float_tile_source(6, 1, "epf")
    assert ftext.count("vfma(") == 6
    want = "epf(c5_0, n0 + 0 * LANES, out, o_off + 5 * ldo + 0 * LANES, nn - 0 * LANES, ep_args)"
    assert want in ftext
    stext = codegen.int_tile_source("s16", 1, 2, "eps")
    assert "def s16_tile_1x2(A, ao0, nseg," in stext
    assert "pair_bcast2(A, p0 + 2 * kk, LANES)" in stext and "pair_single(A[p0 + 2 * kg]" in stext
    assert "eps(pair_cols(c0_1), n0 + 1 * LANES" in stext
    compile(text + ftext + stext, "<tiles>", "exec")


# ---------------------------------------------------------------------------------------------
# Whole-array conversions
# ---------------------------------------------------------------------------------------------
def test_fp16_array_conversions_match_numpy() -> None:
    src = ALL_HALVES.view(np.float16)
    wide = np.empty(src.size, np.float32)
    convert.f16_to_f32(src, wide)
    finite = ~np.isnan(src)
    assert np.array_equal(wide[finite], src[finite].astype(np.float32))
    back = np.empty(src.size, np.float16)
    convert.f32_to_f16(wide, back)
    assert np.array_equal(back.view(np.uint16)[finite], ALL_HALVES[finite])


@pytest.mark.parametrize("out_dtype", [np.uint8, np.int16])
@pytest.mark.parametrize("half", [False, True])
def test_quantize_matches_reference(out_dtype, half: bool) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(5000) * 4).astype(np.float32)
    x[:7] = [0.5, 1.5, 2.5, -0.5, 1e9, -1e9, np.nan]  # ties to even, saturation, NaN -> zp
    with np.errstate(over="ignore"):  # +-1e9 become +-inf in fp16, and still saturate
        src = x.astype(np.float16) if half else x
    scale, zp = (0.05, 128) if out_dtype == np.uint8 else (0.001, -100)
    out = np.empty(x.size, out_dtype)
    convert.quantize(src, scale, zp, out)
    lo, hi = (0, 255) if out_dtype == np.uint8 else (-32768, 32767)
    xs = src.astype(np.float32)
    q = np.nan_to_num(np.rint(xs / np.float32(scale)), nan=0.0)  # as quant.params.quantize
    want = np.clip(q + np.float32(zp), lo, hi).astype(out_dtype)
    assert np.array_equal(out, want) and out[6] == zp


@pytest.mark.parametrize("src_dtype", [np.uint8, np.int8, np.int16])
def test_dequantize_matches_reference(src_dtype) -> None:  # type: ignore[no-untyped-def]
    info = np.iinfo(src_dtype)
    q = np.arange(info.min, info.max + 1, dtype=np.int64).astype(src_dtype)
    out = np.empty(q.size, np.float32)
    convert.dequantize(q, 0.0123, 7, out)
    want = (q.astype(np.int64) - 7).astype(np.float32) * np.float32(0.0123)
    assert np.array_equal(out, want)
    out16 = np.empty(q.size, np.float16)
    convert.dequantize(q, 0.0123, 7, out16)
    assert np.array_equal(out16, want.astype(np.float16))


def test_large_arrays_take_the_parallel_loop() -> None:
    x = np.random.default_rng(4).standard_normal(convert.PARALLEL_MIN_SIZE + 17).astype(np.float32)
    q = np.empty(x.size, np.uint8)
    convert.quantize(x, 0.02, 128, q)
    want = np.clip(np.rint(x / np.float32(0.02)) + 128, 0, 255).astype(np.uint8)
    assert np.array_equal(q, want)
    back = np.empty(x.size, np.float32)
    convert.dequantize(q, 0.02, 128, back)
    assert np.array_equal(back, (q.astype(np.int64) - 128).astype(np.float32) * np.float32(0.02))


def test_conversions_refuse_bad_arguments() -> None:
    with pytest.raises(MMError, match="float32"):
        convert.f16_to_f32(np.zeros(3, np.float16), np.zeros(3, np.float64))
    with pytest.raises(MMError, match="elements"):
        convert.f32_to_f16(np.zeros(3, np.float32), np.zeros(4, np.uint16))
    with pytest.raises(MMError, match="zero point"):
        convert.quantize(np.zeros(3, np.float32), 0.1, 300, np.zeros(3, np.uint8))
    with pytest.raises(MMError, match="scale"):
        convert.quantize(np.zeros(3, np.float32), 0.0, 0, np.zeros(3, np.uint8))
    with pytest.raises(MMError, match="contiguous"):
        convert.dequantize(np.zeros((4, 4), np.uint8)[:, ::2], 1.0, 0, np.zeros(8, np.float32))
