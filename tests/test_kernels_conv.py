"""The conv kernels against the reference of their precision: bit-exact for QINT8 and QINT16,
within the float GEMM's documented bound for FLOAT32 and FLOAT16, over the three paths (one
implicit GEMM, depthwise loop, one GEMM per group), paddings, strides, dilations, fused
activations and quantization options. ``quant_case`` and ``input_buffers`` serve the linear
kernel tests too."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from kernelcheck import OneNode, assert_ulps, check_dispatchers, one_node_step
from ortcheck import const

import mmbuild as mm
from mmbuild.errors import Code, MMError
from mmbuild.graph import Graph
from mmbuild.ir.node import TensorSpec
from mmbuild.kernels.cpu import features
from mmbuild.kernels.table import Lowered, buffer_dtype, from_float, to_numpy
from mmbuild.ops._common import same_pads
from mmbuild.ops.conv import IPaddingMode, conv2d_nhwc
from mmbuild.quant.params import choose_qparams, fake_quantize

# every test runs on each instruction-set level this CPU can run (the `isa` fixture)
pytestmark = pytest.mark.usefixtures("isa")

F32, F16, Q8, Q16 = (mm.DataType.FLOAT32, mm.DataType.FLOAT16, mm.DataType.QINT8,
                     mm.DataType.QINT16)  # fmt: skip
RELU = {"function": "relu"}
CLIP = {"function": "clip", "lo": -0.5, "hi": 1.0}
LEAKY = {"function": "leaky_relu", "alpha": 0.1}
LEAKY_FLOOR = {"function": "leaky_relu", "alpha": 0.2, "lo": -0.05}
HSIGMOID = {"function": "hard_sigmoid", "alpha": 0.4, "beta": 0.5}
HSWISH = {"function": "hard_swish"}
HSWISH_AFFINE = {"function": "hard_swish", "mul": 0.75, "add": -0.125}  # PPLCNetV3's block end

# quantization options x the QINT node's output type x its input buffer's type
QUANT_OPTIONS = [
    pytest.param(("per_tensor", "symmetric", F32, F32), id="tensor-sym-f32"),
    pytest.param(("per_axis", "asymmetric", F16, F16), id="axis-asym-f16"),
]


# ---------------------------------------------------------------------------------------------
# Helpers (the linear kernel tests import them)
# ---------------------------------------------------------------------------------------------
def quant_case(
    build: Callable[[mm.Network, list[mm.ITensor]], mm.INode],
    specs: Sequence[tuple[Sequence[int], mm.DataType]],
    precision: mm.DataType,
    out_type: mm.DataType,
    activation: dict[str, Any] | None = None,
    options: tuple[str, str] = ("per_tensor", "symmetric"),
) -> OneNode:
    """``kernelcheck.one_node_step`` lowered under the config's quantization ``options``
    (weight granularity, activation algorithm); lowered data round-trips through JSON."""
    case = one_node_step(build, specs, precision, output_types=[out_type], activation=activation)
    graph: Graph = case.graph
    graph.options.update(weight_quant_granularity=options[0], activation_quant_algo=options[1])
    relower(case)
    return case


def relower(case: OneNode) -> None:
    """Lower the case's node again (after its graph or attributes changed)."""
    lowered = case.kernel.lower(case.node, case.graph)
    case.step.lowered = Lowered(json.loads(json.dumps(lowered.attrs)), dict(lowered.arrays))


def input_buffers(case: OneNode, arrays: Sequence[np.ndarray], ftype: mm.DataType) -> list:
    """Buffers for every input of the step: ``arrays`` (as ``ftype`` buffers: float32 or fp16
    bits) feed the runtime inputs in order, constants are their float32 values."""
    feed = iter(arrays)
    out = []
    for name in case.step.inputs:
        value = case.graph.tensors[name].value
        out.append(
            np.asarray(value, np.float32) if value is not None else from_float(next(feed), ftype)
        )
    return out


def output_buffers(case: OneNode, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Output buffers of the shapes the op infers, filled with poison bytes (0x5A)."""
    specs = [TensorSpec(a.shape, F32) for a in inputs]
    outs = []
    for spec, t in zip(case.node.declaration().infer(specs), case.step.output_types):
        dtype = buffer_dtype(t)
        n = int(np.prod(spec.dims, dtype=np.int64)) * dtype.itemsize
        outs.append(np.full(n, 0x5A, np.uint8).view(dtype).reshape(spec.dims))
    return outs


def run_both(case: OneNode, inputs: list) -> tuple[np.ndarray, np.ndarray]:
    """(kernel output, reference output); the runner lists numba dispatchers only."""
    runner = case.runner()
    check_dispatchers(runner)
    outs = output_buffers(case, inputs)
    runner(inputs, outs)
    return outs[0], case.reference(inputs)[0]


def assert_float_within(got: np.ndarray, exact: np.ndarray, bound: np.ndarray, out_type) -> None:  # type: ignore[no-untyped-def]
    """``got`` within ``bound`` (float64) of ``exact``, plus the output's own rounding: a few
    float32 ulps, or one fp16 ulp (and the smallest fp16 subnormal)."""
    g = to_numpy(got, out_type).astype(np.float64)
    tol = bound + 2.0**-21 * np.abs(exact) + 1e-30
    if out_type is F16:
        tol = tol + 2.0**-10 * np.abs(exact) + 2.0**-24
    err = np.abs(g - exact)
    assert np.all(err <= tol), f"max error / tolerance = {np.max(err / tol):.3g}"


def activate(y: np.ndarray, act: dict[str, Any] | None) -> np.ndarray:
    """A fused activation in float64 (all but hard swish are monotone with slope <= 1, so an
    error bound on its input bounds its output; see :func:`activated_bound`), then the affine
    ``* mul + add`` after it where it has one."""
    if act is None:
        return y
    return _activation(y, act) * act.get("mul", 1.0) + act.get("add", 0.0)


def _activation(y: np.ndarray, act: dict[str, Any]) -> np.ndarray:
    if act["function"] == "relu":
        return np.maximum(y, 0)
    if act["function"] == "clip":
        return np.clip(y, act["lo"], act["hi"])
    if act["function"] == "hard_sigmoid":
        return np.clip(y * act["alpha"] + act["beta"], 0, 1)
    if act["function"] == "hard_swish":
        return y * np.clip(y / 6 + 0.5, 0, 1)
    y = np.where(y < 0, y * act["alpha"], y)
    return np.maximum(y, act["lo"]) if "lo" in act else y


def activated_bound(bound: np.ndarray, exact: np.ndarray, act: dict[str, Any] | None) -> Any:
    """An error bound on the activation's input carried to its output: hard swish has slopes up
    to 1.5, and its float32 gate ``y / 6 + 1/2`` adds a few ulps of 1/2 times ``|y|``."""
    mul = 1.0 if act is None else abs(act.get("mul", 1.0))
    if act is not None and act["function"] == "hard_swish":
        bound = 1.5 * bound + 2.0**-22 * np.abs(exact)
    if act is not None and "mul" in act:  # the affine scales the error and rounds twice more
        return mul * bound + 2.0**-23 * (mul * np.abs(activate(exact, {**act, "mul": 1.0})))
    return bound


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------
class Conv:
    """One convolution: input [N, H, W, C] (the network takes any batch), Cout, kernel, ..."""

    def __init__(self, shape, cout, kernel, *, stride=(1, 1), dilation=(1, 1), pads=(0, 0, 0, 0),  # type: ignore[no-untyped-def]
                 mode=IPaddingMode.EXPLICIT, group=1, bias=True, act=None) -> None:  # fmt: skip
        self.shape, self.cout, self.kernel = shape, cout, kernel
        self.stride, self.dilation, self.pads, self.mode = stride, dilation, pads, mode
        self.group, self.bias, self.act = group, bias, act

    def weights(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        rng = np.random.default_rng(seed)
        cin_g = self.shape[3] // self.group
        w = (0.3 * rng.standard_normal((self.cout, *self.kernel, cin_g))).astype(np.float32)
        b = rng.standard_normal(self.cout).astype(np.float32) if self.bias else None
        return w, b

    def build(self, w: np.ndarray, b: np.ndarray | None, x_range=(-2.5, 2.0)):  # type: ignore[no-untyped-def]
        def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
            xs[0].set_dynamic_range(mm.Range(*x_range))
            node = net.add_i_conv_node(xs[0], const(net, w), None if b is None else const(net, b))
            node.set_stride(*self.stride)
            node.set_dilation(*self.dilation)
            node.set_pad(*self.pads)
            node.set_padding_mode(self.mode)
            node.set_group(self.group)
            return node

        return build

    def case(self, precision, out_type, options=("per_tensor", "symmetric"), seed=0):  # type: ignore[no-untyped-def]
        """(OneNode, float32 input, filter, bias) for this conv in ``precision``."""
        w, b = self.weights(seed)
        _, h, wd, c = self.shape
        in_type = F16 if precision is F16 else F32
        case = quant_case(self.build(w, b), [((-1, h, wd, c), in_type)], precision, out_type,
                          self.act, options)  # fmt: skip
        x = np.random.default_rng(seed + 1).standard_normal(self.shape).astype(np.float32)
        return case, x, w, b

    def exact(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple:
        """(float64 result before the activation, sum of |x| |w| per output) of the conv."""
        decl_pads = self.pads_for(x.shape)
        args = (self.stride, decl_pads, self.dilation, self.group)
        w_ohwi = w.astype(np.float64)
        y = conv2d_nhwc(x.astype(np.float64), w_ohwi, *args)
        mag = conv2d_nhwc(np.abs(x.astype(np.float64)), np.abs(w_ohwi), *args)
        return (y if b is None else y + b.astype(np.float64)), mag

    def pads_for(self, shape: Sequence[int]) -> tuple[int, int, int, int]:
        if self.mode is IPaddingMode.VALID:
            return (0, 0, 0, 0)
        if self.mode is IPaddingMode.EXPLICIT:
            return self.pads
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        return (*same_pads(shape[1], kh, sh, dh), *same_pads(shape[2], kw, sw, dw))

    @property
    def k(self) -> int:
        return self.kernel[0] * self.kernel[1] * self.shape[3] // self.group


CASES = {
    "1x1-plain-relu": Conv((1, 5, 7, 8), 16, (1, 1), bias=False, act=RELU),
    "3x3-pad1-clip-b3": Conv((3, 6, 5, 3), 10, (3, 3), pads=(1, 1, 1, 1), act=CLIP),
    "5x5-s2-same-leaky": Conv(
        (1, 11, 9, 4), 7, (5, 5), stride=(2, 2), mode=IPaddingMode.SAME, act=LEAKY
    ),
    "3x3-d2-valid": Conv((2, 9, 10, 5), 6, (3, 3), dilation=(2, 2), mode=IPaddingMode.VALID),
    "3x2-asym-pads": Conv(
        (1, 7, 8, 3), 5, (3, 2), stride=(2, 1), dilation=(2, 1), pads=(2, 0, 1, 3), bias=False
    ),
    "1x1-s2-leaky-floor": Conv((2, 7, 7, 3), 4, (1, 1), stride=(2, 2), act=LEAKY_FLOOR),
    "1x1-hard-swish": Conv((2, 4, 5, 24), 40, (1, 1), act=HSWISH),
    "1x1-hard-swish-affine": Conv((2, 4, 5, 24), 40, (1, 1), act=HSWISH_AFFINE),
    "3x3-s2-hard-sigmoid": Conv(
        (1, 9, 8, 5), 12, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1), act=HSIGMOID
    ),
    "wide-70": Conv((1, 5, 6, 9), 70, (3, 3), pads=(1, 1, 1, 1), act=RELU),
    "groups2": Conv((3, 6, 6, 6), 8, (3, 3), pads=(1, 1, 1, 1), group=2, act=RELU),
    "groups3-dilated-w": Conv((1, 6, 9, 6), 6, (2, 3), dilation=(1, 2), pads=(0, 1, 2, 2), group=3),
    "depthwise-s2-same": Conv(
        (2, 7, 9, 5), 5, (3, 3), stride=(2, 2), mode=IPaddingMode.SAME, group=5, act=CLIP
    ),
    "depthwise-x2-dilated": Conv(
        (1, 8, 7, 4),
        8,
        (3, 3),
        dilation=(2, 2),
        pads=(1, 2, 2, 1),
        group=4,
        bias=False,
        act=LEAKY_FLOOR,
    ),
    "depthwise-unpadded": Conv((1, 5, 5, 3), 3, (2, 2), group=3, act=LEAKY),
    "depthwise-hard-swish": Conv(
        (2, 6, 7, 16), 16, (3, 3), pads=(1, 1, 1, 1), group=16, act=HSWISH
    ),
    "depthwise-hard-swish-affine": Conv(
        (2, 6, 7, 16), 16, (3, 3), pads=(1, 1, 1, 1), group=16, act=HSWISH_AFFINE
    ),
    # a 5x5 dilated along W, whose pads leave one pixel with every column inside
    "depthwise-dilated-s21": Conv(
        (2, 6, 9, 48), 48, (5, 5), stride=(2, 1), dilation=(1, 2), pads=(2, 4, 2, 4), group=48
    ),
    "depthwise-wide-200": Conv(
        (1, 3, 4, 200), 200, (3, 3), pads=(1, 1, 1, 1), group=200, act=LEAKY_FLOOR
    ),
    # strips of 8 pixels (1..8, 9..16; 0 and 17..20 alone), channels in every vector width:
    # 16 + 8 + 3 lanes on AVX-512, 3 x 8 + 3 on AVX2
    "depthwise-strips-27": Conv((2, 5, 21, 27), 27, (3, 3), pads=(1, 1, 1, 1), group=27, act=RELU),
    # strips at stride 2 and dilation 2 along W, asymmetric pads: output columns 2..17 in two
    "depthwise-strips-s2-d2": Conv(
        (1, 9, 40, 24), 24, (3, 5), stride=(2, 2), dilation=(1, 2), pads=(1, 0, 4, 3), group=24
    ),
}
CASE_PARAMS = [pytest.param(c, id=k) for k, c in CASES.items()]


# ---------------------------------------------------------------------------------------------
# Float
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ftype", [F32, F16])
@pytest.mark.parametrize("conv", CASE_PARAMS)
def test_float_conv(conv: Conv, ftype: mm.DataType) -> None:
    """Kernel and reference within ``K * 2**-24 * sum|x||w|`` (the float GEMM's bound) of the
    exact conv of the values they read, and within the fp16 rounding of x, w and b (for
    FLOAT16) of the fp32 op reference."""
    case, x, w, b = conv.case(ftype, ftype)
    inputs = case.buffers([x])
    got, ref = run_both(case, inputs)
    assert got.shape == (conv.shape[0], *got.shape[1:]) and got.dtype == ref.dtype
    used = [to_numpy(a, ftype) for a in inputs]
    exact, mag = conv.exact(used[0], used[1], used[2] if conv.bias else None)
    bound = conv.k * 2.0**-24 * mag
    for out in (got, ref):
        assert_float_within(
            out, activate(exact, conv.act), activated_bound(bound, exact, conv.act), ftype
        )
    exact32, mag32 = conv.exact(x, w, b)
    if ftype is F16:
        bound = bound + 2.0**-10 * mag32 + (0 if b is None else 2.0**-11 * np.abs(b))
    bound = activated_bound(bound, exact32, conv.act)
    assert_float_within(got, activate(exact32, conv.act), bound, ftype)


# ---------------------------------------------------------------------------------------------
# Quantized
# ---------------------------------------------------------------------------------------------
def fake_quantized_conv(conv: Conv, qtype, options, x, w, b):  # type: ignore[no-untyped-def]
    """The conv of quant.params' dequantized input and filter, in float64, and its magnitude:
    an oracle that shares no code with the kernel or its reference."""
    bits = 8 if qtype is Q8 else 16
    qx = choose_qparams(-2.5, 2.0, bits=bits, symmetric=options[1] == "symmetric")
    if options[0] == "per_axis":
        qw = choose_qparams(w.min(axis=(1, 2, 3)), w.max(axis=(1, 2, 3)), bits=bits, axis=0)
    else:
        qw = choose_qparams(float(w.min()), float(w.max()), bits=bits)
    return conv.exact(fake_quantize(x, qx), fake_quantize(w, qw), b)


@pytest.mark.parametrize("options", QUANT_OPTIONS)
@pytest.mark.parametrize("qtype", [Q8, Q16])
@pytest.mark.parametrize("conv", CASE_PARAMS)
def test_quantized_conv(conv: Conv, qtype: mm.DataType, options) -> None:  # type: ignore[no-untyped-def]
    """Bit for bit the reference; and within float32 rounding of the fake-quantized conv."""
    gran, algo, out_type, in_type = options
    case, x, w, b = conv.case(qtype, out_type, (gran, algo))
    inputs = input_buffers(case, [x], in_type)
    got, ref = run_both(case, inputs)
    assert_ulps(got, ref, out_type, ulps=0)
    x_used = to_numpy(inputs[0], in_type)
    if b is not None and out_type is F16:  # the bias is in the node's float precision
        b = b.astype(np.float16).astype(np.float32)
    exact, mag = fake_quantized_conv(conv, qtype, (gran, algo), x_used, w, b)
    bound = 2.0**-20 * mag + (0 if b is None else 2.0**-23 * np.abs(b))
    bound = activated_bound(bound, exact, conv.act)
    assert_float_within(got, activate(exact, conv.act), bound, out_type)


@pytest.mark.parametrize("qtype", [Q8, Q16])
def test_quantized_conv_saturates_inf_and_sends_nan_to_the_zero_point(qtype) -> None:  # type: ignore[no-untyped-def]
    conv = CASES["3x3-pad1-clip-b3"]
    case, x, _, _ = conv.case(qtype, F32, ("per_tensor", "asymmetric"))
    x[0, 1, 1, :] = [np.nan, np.inf, -np.inf]
    got, ref = run_both(case, input_buffers(case, [x], F32))
    assert np.all(np.isfinite(got))
    assert_ulps(got, ref, F32, ulps=0)


@pytest.mark.parametrize("layout", [mm.Layout.HWCN, mm.Layout.NCHW])
def test_any_filter_layout_gives_the_same_bits(layout: mm.Layout) -> None:
    """A filter in [Kh, Kw, Cin, Cout] or [Cout, Cin, Kh, Kw] with NHWC data (as the layout pass
    leaves an NCHW network) is converted when lowered."""
    conv = CASES["3x2-asym-pads"]
    case, x, w, _ = conv.case(Q8, F32, ("per_axis", "asymmetric"))
    want, _ = run_both(case, input_buffers(case, [x], F32))
    perm = {mm.Layout.HWCN: (1, 2, 3, 0), mm.Layout.NCHW: (0, 3, 1, 2)}[layout]
    case.graph.tensors[case.node.inputs[1]].value = np.ascontiguousarray(w.transpose(perm))
    case.node.attrs["layout"] = (mm.Layout.NHWC, layout, mm.Layout.NHWC)
    case.step.op_attrs = dict(case.node.attrs)
    relower(case)
    got, ref = run_both(case, input_buffers(case, [x], F32))
    assert_ulps(got, want, F32, ulps=0)
    assert_ulps(ref, want, F32, ulps=0)


@pytest.mark.parametrize("precision", [F32, Q8])
def test_large_depthwise_runs_on_all_threads(precision: mm.DataType) -> None:
    conv = Conv((2, 24, 24, 32), 32, (3, 3), pads=(1, 1, 1, 1), group=32, act=RELU)
    case, x, _, _ = conv.case(precision, F32)
    got, ref = run_both(case, input_buffers(case, [x], F32))
    if precision is Q8:
        assert_ulps(got, ref, F32, ulps=0)
    else:
        exact, mag = conv.exact(x, *conv.weights()[:2])
        assert_float_within(got, activate(exact, RELU), conv.k * 2.0**-24 * mag, F32)


@pytest.mark.slow
def test_large_input_is_quantized_on_all_threads() -> None:
    conv = Conv((1, 128, 128, 64), 24, (1, 1))
    case, x, _, _ = conv.case(Q8, F16, ("per_tensor", "asymmetric"))
    got, ref = run_both(case, input_buffers(case, [x], F32))
    assert_ulps(got, ref, F16, ulps=0)


def test_quantized_runner_takes_any_batch_and_threads() -> None:
    """One runner, batches 1 and 3, from two threads at once: every result equals the serial
    one (runners keep no buffers between calls)."""
    conv = CASES["groups2"]
    case, x3, _, _ = conv.case(Q8, F16, ("per_axis", "asymmetric"))
    runner = case.runner()
    batches = [input_buffers(case, [x3[:1]], F32), input_buffers(case, [x3], F32)]
    want = [case.reference(inp)[0] for inp in batches]
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(20):
            outs = output_buffers(case, batches[i])
            runner(batches[i], outs)
            if not np.array_equal(outs[0], want[i]):
                errors.append(f"batch {i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_every_level_gives_the_same_int8_bits() -> None:
    conv = CASES["wide-70"]
    case, x, _, _ = conv.case(Q8, F32, ("per_axis", "asymmetric"))
    inputs = input_buffers(case, [x], F32)
    results = {}
    for name in features.runnable_levels():
        with features.using_level(name):
            results[name], ref = run_both(case, inputs)
        assert np.array_equal(results[name].view(np.uint32), ref.view(np.uint32)), name


def test_worked_example_of_the_module_docstring() -> None:
    w = np.array([[[[0.5]]]], np.float32)
    conv = Conv((1, 1, 1, 1), 1, (1, 1), bias=False)
    case = quant_case(conv.build(w, None, (-2.0, 2.0)), [((-1, 1, 1, 1), F32)], Q8, F32)
    assert case.step.lowered.attrs["za"] == 128
    got, _ = run_both(case, input_buffers(case, [np.ones((1, 1, 1, 1), np.float32)], F32))
    assert got.item() == np.float32(8128) * (np.float32(2 / 127) * np.float32(0.5 / 127))
    assert got.item() == pytest.approx(0.503937, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------
def test_a_computed_filter_is_refused() -> None:
    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        return net.add_i_conv_node(xs[0], xs[1], None)

    with pytest.raises(MMError, match="must be a constant; use add_i_matmul_node"):
        one_node_step(build, [((1, 4, 4, 2), F32), ((3, 1, 1, 2), F32)], F32)


def test_an_nchw_conv_is_refused_as_internal() -> None:
    w = np.zeros((3, 2, 1, 1), np.float32)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        node = net.add_i_conv_node(xs[0], const(net, w), None)
        node.set_layout(mm.Layout.NCHW, mm.Layout.NCHW, mm.Layout.NCHW)
        return node

    with pytest.raises(MMError, match="NHWC") as info:
        one_node_step(build, [((1, 2, 4, 4), F32)], F32)
    assert info.value.code is Code.INTERNAL


def test_a_quantized_input_needs_a_per_tensor_range() -> None:
    w = np.ones((3, 1, 1, 2), np.float32)

    def build(ranged: str) -> Callable[[mm.Network, list[mm.ITensor]], mm.INode]:
        def add(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
            if ranged == "per_axis":
                xs[0].set_dynamic_range_per_axis([mm.Range(-1, 1), mm.Range(-2, 2)])
            return net.add_i_conv_node(xs[0], const(net, w), None)

        return add

    with pytest.raises(MMError, match="has no range; calibrate") as info:
        one_node_step(build("none"), [((1, 4, 4, 2), F32)], Q8, output_types=[F32])
    assert "input_0" in str(info.value)
    with pytest.raises(MMError, match="per-axis range"):
        one_node_step(build("per_axis"), [((1, 4, 4, 2), F32)], Q8, output_types=[F32])
