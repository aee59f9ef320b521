"""The deconv kernels: QINT8 and QINT16 bit-exact against the reference of their precision;
FLOAT32 and FLOAT16 within the float32 summation bound of the exact transposed convolution;
the quantized results within the quantization error of the exact one. Over groups (depthwise
too), strides, pads, dilations, output padding, SAME and VALID, filter layouts, fused
activations, batch 1 and more, and runs sharing one runner from several threads.

Float tolerance, and its reason: the kernel sums each output's ``K <= KH * KW * Cg`` products
in float32, one rounding per multiply and add, so against the exact sum its error is at most
``K * 2**-23 * sum |x * w|`` (a standard bound, doubled for the multiply's rounding); the bias
add, the activation and the store add their own rounding, which ``assert_float_within`` allows
(a few float32 ulps, or an fp16 ulp and the smallest fp16 subnormal). The helpers shared with
the conv tests come from ``test_kernels_conv``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from kernelcheck import OneNode, one_node_step
from ortcheck import const
from test_kernels_conv import activate, assert_float_within, input_buffers, quant_case, run_both

import mmbuild as mm
from mmbuild.errors import Code, MMError
from mmbuild.kernels.cpu import deconv_ops
from mmbuild.ops.conv import IPaddingMode
from mmbuild.ops.deconv import deconv2d_nhwc

F32, F16, Q8, Q16 = (mm.DataType.FLOAT32, mm.DataType.FLOAT16, mm.DataType.QINT8,
                     mm.DataType.QINT16)  # fmt: skip
NHWC, NCHW, HWCN = mm.Layout.NHWC, mm.Layout.NCHW, mm.Layout.HWCN
RELU = {"function": "relu"}
CLIP = {"function": "clip", "lo": -0.5, "hi": 1.0}
LEAKY = {"function": "leaky_relu", "alpha": 0.1}
# [Cin, Kh, Kw, Cout/g] -> the filter layout the node is given
TO_LAYOUT = {NHWC: (0, 1, 2, 3), NCHW: (0, 3, 1, 2), HWCN: (1, 2, 3, 0)}
X_RANGE = (-2.0, 2.5)


@dataclass(frozen=True)
class Geom:
    x: tuple[int, int, int, int]  # NHWC input
    k: tuple[int, int]
    cout_g: int
    group: int = 1
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    output_padding: tuple[int, int] = (0, 0)
    mode: IPaddingMode = IPaddingMode.EXPLICIT
    filter_layout: mm.Layout = NHWC
    act: dict[str, Any] | None = None


RELU_AFFINE = {**RELU, "mul": -0.5, "add": 0.25}  # an affine of negative slope after it
GEOMS = [
    pytest.param(Geom((1, 4, 5, 3), (3, 3), 4), id="plain"),
    pytest.param(Geom((2, 5, 4, 4), (3, 3), 3, 2, (2, 2), (1, 0, 1, 1), output_padding=(1, 1),
                      act=RELU), id="groups-stride-pads-outpad-relu"),
    pytest.param(Geom((2, 3, 7, 5), (2, 3), 3, 1, (3, 2), (0, 2, 1, 0), (2, 3), (2, 0),
                      filter_layout=NCHW, act=LEAKY), id="dilated-odd-nchw-filter-leaky"),
    pytest.param(Geom((1, 6, 6, 6), (4, 4), 1, 6, (2, 2), (1, 1, 1, 1), act=CLIP),
                 id="depthwise-clip"),
    pytest.param(Geom((2, 3, 4, 2), (2, 1), 2, stride=(2, 2), mode=IPaddingMode.SAME,
                      filter_layout=HWCN), id="same-kernel-shorter-than-stride-hwcn-filter"),
    pytest.param(Geom((1, 4, 3, 3), (5, 3), 2, 3, (2, 1), dilation=(1, 2), mode=IPaddingMode.SAME,
                      act=RELU), id="same-dilated-grouped-relu"),
    pytest.param(Geom((3, 2, 3, 8), (2, 2), 3, 4, (2, 2), mode=IPaddingMode.VALID),
                 id="valid-batch3"),
    # stride = kernel, no pads: one GEMM of patches, laid out by a copy
    pytest.param(Geom((2, 3, 5, 6), (2, 2), 5, stride=(2, 2), act=RELU), id="patches-2x2-relu"),
    pytest.param(Geom((1, 3, 4, 5), (2, 2), 3, stride=(2, 2), act=RELU_AFFINE),
                 id="patches-2x2-relu-affine"),
    pytest.param(Geom((1, 4, 5, 3), (3, 3), 4, act=RELU_AFFINE), id="plain-relu-affine"),
    pytest.param(Geom((1, 4, 3, 7), (2, 3), 1, stride=(2, 3), mode=IPaddingMode.SAME),
                 id="patches-2x3-same-one-channel"),
]  # fmt: skip

# weight granularity, activation algorithm, the node's output type, the input buffer's type
QUANT_OPTIONS = [
    pytest.param(("per_tensor", "symmetric", F32, F32), id="tensor-sym-f32"),
    pytest.param(("per_axis", "asymmetric", F16, F16), id="axis-asym-f16"),
]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
@dataclass
class Case:
    one: OneNode
    geom: Geom
    w: np.ndarray  # [Cin, Kh, Kw, Cout/g] float32, as given to the node (before its layout)
    b: np.ndarray | None


def make_case(
    g: Geom,
    precision: mm.DataType,
    out_type: mm.DataType,
    options: tuple[str, str] = ("per_tensor", "symmetric"),
    *,
    bias: bool = True,
    w: np.ndarray | None = None,
    b: np.ndarray | None = None,
    x_range: tuple[float, float] = X_RANGE,
) -> Case:
    """A lowered one-node deconv step (input batch -1, range ``x_range``); the filter
    ``[Cin, Kh, Kw, Cout/g]`` and bias are random unless given."""
    rng = np.random.default_rng(0)
    if w is None:
        w = (rng.standard_normal((g.x[3], *g.k, g.cout_g)) * 0.5).astype(np.float32)
    if b is None and bias:
        b = rng.standard_normal(g.cout_g * g.group).astype(np.float32)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        xs[0].set_dynamic_range(mm.Range(*x_range))
        bt = const(net, b) if b is not None else None
        node = net.add_i_deconv_node(xs[0], const(net, w.transpose(TO_LAYOUT[g.filter_layout])), bt)
        node.set_layout(NHWC, g.filter_layout, NHWC)
        node.set_group(g.group)
        node.set_stride(*g.stride)
        node.set_pad(*g.pad)
        node.set_dilation(*g.dilation)
        node.set_output_padding(*g.output_padding)
        node.set_padding_mode(g.mode)
        return node

    one = quant_case(build, [((-1, *g.x[1:]), F32)], precision, out_type, g.act, options)
    return Case(one, g, w, b)


def sample(g: Geom, seed: int = 1, batch: int | None = None) -> np.ndarray:
    """An input slightly wider than X_RANGE, so that quantization clips some values."""
    rng = np.random.default_rng(seed)
    shape = (g.x[0] if batch is None else batch, *g.x[1:])
    return rng.uniform(X_RANGE[0] - 0.3, X_RANGE[1] + 0.3, shape).astype(np.float32)


def run(case: Case, x: np.ndarray, in_type: mm.DataType) -> tuple[np.ndarray, np.ndarray]:
    """(kernel output, reference of the precision) for the float input ``x`` carried as
    ``in_type``; the output buffer has the op's inferred shape and starts as poison."""
    return run_both(case.one, input_buffers(case.one, [x], in_type))


def exact(case: Case, x: np.ndarray, half: bool) -> tuple[np.ndarray, np.ndarray]:
    """(the exact float64 deconv + bias of the values the kernel sees, sum |x * w| of each
    output) from the op's reference arithmetic on the filter as the test made it."""
    g = case.geom
    xv, wv = x.astype(np.float64), case.w.astype(np.float64)
    b = np.zeros(g.cout_g * g.group) if case.b is None else case.b.astype(np.float64)
    if half:
        xv, wv, b = (a.astype(np.float16).astype(np.float64) for a in (xv, wv, b))
    return deconv(case, xv, wv) + b, deconv(case, np.abs(xv), np.abs(wv))


def deconv(case: Case, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The op's transposed convolution of ``x`` with ``w [Cin, Kh, Kw, Cout/g]`` under the
    case's attributes (pads and output padding as the node resolves them)."""
    g, decl = case.geom, case.one.node.declaration()
    pads = decl.pads_for(x.shape[1], x.shape[2], *g.k)  # type: ignore[attr-defined]
    op = decl.output_padding()  # type: ignore[attr-defined]
    return deconv2d_nhwc(x, w, g.stride, pads, g.dilation, g.group, op)


def n_terms(g: Geom) -> int:
    return g.k[0] * g.k[1] * g.x[3] // g.group


# ---------------------------------------------------------------------------------------------
# Float: within the float32 summation bound of the exact result
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", [F32, F16])
@pytest.mark.parametrize("geom", GEOMS)
def test_float_within_summation_bound(geom: Geom, precision: mm.DataType) -> None:
    case = make_case(geom, precision, precision, bias=geom.group != 4)
    assert case.one.kernel.name == "deconv.float"
    x = sample(geom)
    got, want = run(case, x, precision)
    y, mag = exact(case, x, half=precision is F16)
    assert_float_within(got, activate(y, geom.act), n_terms(geom) * 2.0**-23 * mag, precision)
    # the reference of the precision obeys the bound too (it rounds the exact sum once)
    assert_float_within(want, activate(y, geom.act), 2.0**-24 * mag, precision)


def test_hand_computed_example() -> None:
    """The op's docstring: [[1, 2], [3, 4]] with a 2x2 filter of ones, stride 1."""
    case = make_case(Geom((1, 2, 2, 1), (2, 2), 1), F32, F32, bias=False,
                     w=np.ones((1, 2, 2, 1), np.float32))  # fmt: skip
    got, _ = run(case, np.array([1, 2, 3, 4], np.float32).reshape(1, 2, 2, 1), F32)
    assert got[0, :, :, 0].tolist() == [[1, 3, 2], [4, 10, 6], [3, 7, 4]]


def test_nan_and_inf_pass_through() -> None:
    geom = Geom((1, 3, 3, 2), (2, 2), 2, stride=(2, 2))
    case = make_case(geom, F32, F32)
    x = sample(geom)
    x[0, 1, 1, 0], x[0, 0, 2, 1] = np.nan, np.inf
    got, _ = run(case, x, F32)
    y, _ = exact(case, x, half=False)
    assert np.array_equal(np.isnan(got), np.isnan(y))
    assert np.array_equal(np.isinf(got), np.isinf(y)) and np.isnan(got).any()


# ---------------------------------------------------------------------------------------------
# Quantized: bit-exact against the reference, close to the exact result
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", QUANT_OPTIONS)
@pytest.mark.parametrize("precision", [Q8, Q16])
@pytest.mark.parametrize("geom", GEOMS)
def test_quantized_bit_exact(geom: Geom, precision: mm.DataType, options: tuple) -> None:
    granularity, algo, out_type, in_type = options
    case = make_case(geom, precision, out_type, (granularity, algo))
    assert case.one.kernel.name == "deconv.qint"
    got, want = run(case, sample(geom), in_type)
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("options", QUANT_OPTIONS)
@pytest.mark.parametrize("precision", [Q8, Q16])
def test_quantized_within_quantization_error(precision: mm.DataType, options: tuple) -> None:
    """Inside the range, ``x = q_x * s_x + e_x`` and ``w = q_w * s_w + e_w`` with
    ``|e| <= s / 2``, so each product is off by at most ``|x| s_w / 2 + |w| s_x / 2 +
    s_x s_w / 4``; summed over the taps, that bounds the error of the dequantized result."""
    granularity, algo, out_type, in_type = options
    geom = Geom((2, 4, 5, 6), (3, 3), 4, 2, (2, 2), (1, 1, 0, 1), output_padding=(1, 0))
    case = make_case(geom, precision, out_type, (granularity, algo))
    x = np.clip(sample(geom), *X_RANGE)
    if in_type is F16:
        x = x.astype(np.float16).astype(np.float32)
    got, _ = run(case, x, in_type)
    y, mag = exact(case, x, half=False)
    lowered = case.one.step.lowered
    sx, sw = lowered.attrs["scale_a"], lowered.arrays["scale_w"].astype(np.float64)
    ones_x, ones_w = np.ones_like(x, np.float64), np.ones_like(case.w, np.float64)
    sum_x = deconv(case, np.abs(x).astype(np.float64), ones_w)
    sum_w = deconv(case, ones_x, np.abs(case.w).astype(np.float64))
    taps = deconv(case, ones_x, ones_w)
    bound = sum_x * sw / 2 + sum_w * sx / 2 + taps * sx * sw / 4 + 2.0**-20 * mag
    if case.b is not None and out_type is F16:
        bound = bound + 2.0**-11 * np.abs(case.b)  # the bias is rounded to fp16
    assert_float_within(got, y, bound, out_type)


def test_docstring_worked_example() -> None:
    """QINT8, range [-1, 1], a 1x1 filter 0.5, stride 2, x = 0.5: acc 8128, y = 8128 * mult;
    ``output_padding`` adds elements that hold the bias only."""
    geom = Geom((1, 1, 1, 1), (1, 1), 1, stride=(2, 2), output_padding=(1, 1))
    case = make_case(geom, Q8, F32, w=np.full((1, 1, 1, 1), 0.5, np.float32),
                     b=np.array([0.125], np.float32), x_range=(-1.0, 1.0))  # fmt: skip
    got, want = run(case, np.full((1, 1, 1, 1), 0.5, np.float32), F32)
    mult = np.float32(1 / 127) * np.float32(0.5 / 127)
    assert np.array_equal(got, want)
    assert got[0, 0, 0, 0] == np.float32(8128) * mult + np.float32(0.125)
    assert got[0, :, :, 0].ravel().tolist()[1:] == [0.125] * 3


# ---------------------------------------------------------------------------------------------
# Run time: batch from the input, threads, the parallel split
# ---------------------------------------------------------------------------------------------
def test_batch_is_read_at_run_time() -> None:
    geom = Geom((1, 3, 4, 4), (3, 2), 3, 2, (2, 1), (0, 1, 1, 0))
    case = make_case(geom, Q8, F32)
    for batch in (1, 3, 0):
        got, want = run(case, sample(geom, batch=batch), F32)
        assert got.shape == (batch, 6, 4, 6) and np.array_equal(got, want)


@pytest.mark.parametrize("precision", [F32, Q16])
def test_parallel_split_matches(precision: mm.DataType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large steps split the output rows over the threads: each output is still summed in
    the same order, so the bits do not change."""
    geom = Geom((2, 5, 6, 4), (3, 3), 4, 1, (2, 2), (1, 1, 1, 1), output_padding=(1, 1), act=LEAKY)
    case = make_case(geom, precision, F32)
    x = sample(geom)
    serial, want = run(case, x, F32)
    monkeypatch.setattr(deconv_ops, "PARALLEL_MIN_MACS", 0)
    parallel, _ = run(case, x, F32)
    assert np.array_equal(parallel, serial)
    if precision.is_quantized:
        assert np.array_equal(parallel, want)


@pytest.mark.parametrize("cout", [1, 3])
@pytest.mark.parametrize("kernel", [(2, 2), (1, 3)])
@pytest.mark.parametrize("out_type", [F32, F16])
def test_patch_layout_in_whole_units_and_on_all_threads(
    cout: int, kernel: tuple[int, int], out_type: mm.DataType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patch GEMM's result is laid out in the widest unit that a run of KW * Cout values
    makes (2x2 and one fp16 channel: one uint32 per run; 1x3 and one fp16 channel: three
    uint16; 1x3 and three float32 channels: nine uint32), on one thread or split over all:
    the reference's bits either way."""
    geom = Geom((2, 3, 5, 4), kernel, cout, 1, kernel, (0, 0, 0, 0))
    case = make_case(geom, Q8, out_type)
    x = sample(geom)
    serial, want = run(case, x, F32)
    assert np.array_equal(serial, want)
    monkeypatch.setattr(deconv_ops, "LAY_OUT_PARALLEL_MIN_BYTES", 0)
    parallel, _ = run(case, x, F32)
    assert np.array_equal(parallel, want)


def test_one_runner_serves_many_threads() -> None:
    geom = Geom((2, 4, 4, 4), (3, 3), 2, 2, (2, 2), (1, 1, 1, 1), act=CLIP)
    case = make_case(geom, Q8, F16)
    runner = case.one.runner()
    xs = [sample(geom, seed=s, batch=1 + s % 3) for s in range(8)]
    expected = [run(case, x, F32)[1] for x in xs]
    results: list[Any] = [None] * len(xs)

    def work(i: int) -> None:
        inputs = input_buffers(case.one, [xs[i]], F32)
        out = np.empty_like(expected[i])
        for _ in range(5):
            runner(inputs, [out])
        results[i] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert np.array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------
def test_nchw_is_left_to_the_layout_pass() -> None:
    def build(net: mm.Network, xs: Sequence[mm.ITensor]) -> mm.INode:
        w = const(net, np.ones((3, 2, 2, 2), np.float32))
        node = net.add_i_deconv_node(xs[0], w)
        node.set_layout(NCHW, NCHW, NCHW)
        return node

    with pytest.raises(MMError, match="NHWC") as info:
        one_node_step(build, [((1, 3, 4, 4), F32)], F32)
    assert info.value.status.code() is Code.INTERNAL


def test_qint8_refuses_sums_past_int32() -> None:
    """K = 3 * 3 * 8192 products of up to 255 * 128 could overflow int32: QINT16 runs it."""
    geom = Geom((1, 1, 1, 8192), (3, 3), 1)
    with pytest.raises(MMError, match="QINT16"):
        make_case(geom, Q8, F32)
    assert make_case(geom, Q16, F32).one.kernel.name == "deconv.qint"
