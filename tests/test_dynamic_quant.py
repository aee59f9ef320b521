"""Dynamic quantization (``precision_config.activation_quant_mode: "dynamic"``): the largest
finite magnitude against numpy, the scale against ``choose_qparams``, every conv, deconv, inner
product and packed matmul kernel bit for bit its reference on each run of one prepared step
(the scale follows the input from run to run), within float32 rounding of the product of the
dynamically fake-quantized operands, and whole networks built without calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernelcheck import OneNode, assert_ulps, check_dispatchers
from sample_cnn import build_cnn, sample_images
from test_build_run import cosine, run
from test_kernels_conv import CASES as CONV_CASES
from test_kernels_conv import (
    Conv,
    activate,
    activated_bound,
    assert_float_within,
    input_buffers,
    output_buffers,
    relower,
)
from test_kernels_deconv import GEOMS, make_case, sample
from test_kernels_linear import CASES as LINEAR_CASES
from test_kernels_linear import Linear

import mmbuild as mm
from mmbuild.builder import DYNAMIC_NOTE
from mmbuild.errors import MMError
from mmbuild.kernels.cpu.dynamic import finite_abs_max, reference_abs_max
from mmbuild.kernels.table import from_float, to_numpy
from mmbuild.ops.deconv import deconv2d_nhwc
from mmbuild.quant.params import choose_qparams, dynamic_scale, fake_quantize

# every kernel test runs on each instruction-set level this CPU can run (the `isa` fixture)
F32, F16, Q8, Q16 = (mm.DataType.FLOAT32, mm.DataType.FLOAT16, mm.DataType.QINT8,
                     mm.DataType.QINT16)  # fmt: skip
BITS = {Q8: 8, Q16: 16}
# the node's output type and its input buffer's type
TYPES = [pytest.param((F32, F32), id="f32"), pytest.param((F16, F16), id="f16")]
# the inputs of the second and third runs of one prepared step: the scale must follow them
RESCALES = (7.5, 0.01)


def make_dynamic(case: OneNode) -> OneNode:
    case.graph.options["activation_quant_mode"] = "dynamic"
    relower(case)
    assert case.step.lowered.attrs["dynamic"] is True and "scale_a" not in case.step.lowered.attrs
    return case


def runs_match_reference(case: OneNode, inputs: list, out_type: mm.DataType, in_type) -> list:  # type: ignore[no-untyped-def]
    """Prepare the step once; run it on ``inputs`` and on the runtime input scaled by each of
    RESCALES (written into the same buffer), each output bit for bit the reference of that
    run's input. Returns the float inputs of the runs and their outputs."""
    runner = case.runner()
    check_dispatchers(runner)
    outs = output_buffers(case, inputs)
    call = runner.bound(inputs, outs)
    x0 = to_numpy(inputs[0], in_type).copy()
    runs = []
    for factor in (1.0, *RESCALES):
        inputs[0][...] = from_float(x0 * np.float32(factor), in_type)
        call()
        ref = case.reference(inputs)[0]
        assert_ulps(outs[0], ref, out_type, ulps=0)
        runs.append((to_numpy(inputs[0], in_type).copy(), outs[0].copy()))
    return runs


def dynamic_fake_quantize(x: np.ndarray, qtype: mm.DataType) -> np.ndarray:
    """``x`` through quantize and dequantize with the symmetric range of its own values."""
    amax = float(np.abs(x[np.isfinite(x)]).max())
    return fake_quantize(x, choose_qparams(-amax, amax, bits=BITS[qtype]))


def weight_fake_quantize(w: np.ndarray, qtype: mm.DataType) -> np.ndarray:
    return fake_quantize(w, choose_qparams(float(w.min()), float(w.max()), bits=BITS[qtype]))


# ---------------------------------------------------------------------------------------------
# The maximum and the scale
# ---------------------------------------------------------------------------------------------
_FLOATS = hnp.arrays(
    np.float32,
    st.integers(0, 300),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
)


@given(_FLOATS)
def test_finite_abs_max_is_numpy_s_on_float32_and_fp16_bits(x: np.ndarray) -> None:
    assert finite_abs_max(x) == reference_abs_max(x)
    with np.errstate(over="ignore"):  # beyond fp16's range: infinities, ignored as such
        bits = x.astype(np.float16).view(np.uint16)
    assert finite_abs_max(bits) == reference_abs_max(bits)


def test_finite_abs_max_ignores_nan_and_infinity() -> None:
    x = np.array([0.5, -2.5, np.nan, -np.inf, np.inf, -0.0], np.float32)
    assert finite_abs_max(x) == 2.5
    assert finite_abs_max(np.array([np.nan, np.inf], np.float32)) == 0.0
    assert finite_abs_max(np.array([-0.0], np.float32)) == 0.0
    tiny = np.array([-1e-45], np.float32)  # the smallest subnormal
    assert finite_abs_max(tiny) == float(np.abs(tiny[0]))


@given(st.floats(0, float(np.finfo(np.float32).max), width=32), st.sampled_from([8, 16]))
def test_dynamic_scale_is_the_scale_of_choose_qparams(amax: float, bits: int) -> None:
    a = np.float32(amax)
    assert dynamic_scale(float(a), bits) == choose_qparams(-a, a, bits=bits).scale


def test_module_docstring_worked_example() -> None:
    x = np.array([0.5, -2.54, np.nan, np.inf], np.float32)
    scale = dynamic_scale(finite_abs_max(x))
    assert scale == np.float32(0.02)
    q = mm.quant.quantize(x, mm.quant.QuantParams(scale, np.int32(0), bits=8))
    assert q.tolist() == [25, -127, 0, 127]
    assert np.float32(scale) * np.float32(0.01) == np.float32(2.0e-4)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("types", TYPES)
@pytest.mark.parametrize("qtype", [Q8, Q16])
@pytest.mark.parametrize("conv", [pytest.param(c, id=k) for k, c in CONV_CASES.items()])
def test_dynamic_conv(conv: Conv, qtype: mm.DataType, types: Any) -> None:
    """Every run bit for bit the reference; within float32 rounding of the conv of the
    dynamically fake-quantized input and the fake-quantized filter."""
    out_type, in_type = types
    case, x, w, b = conv.case(qtype, out_type)
    make_dynamic(case)
    runs = runs_match_reference(case, input_buffers(case, [x], in_type), out_type, in_type)
    if b is not None and out_type is F16:  # the bias is in the node's float precision
        b = b.astype(np.float16).astype(np.float32)
    for x_used, got in runs:
        xq, wq = dynamic_fake_quantize(x_used, qtype), weight_fake_quantize(w, qtype)
        exact, mag = conv.exact(xq, wq, b)
        bound = activated_bound(2.0**-20 * mag + (0 if b is None else 2.0**-23 * np.abs(b)),
                                exact, conv.act)  # fmt: skip
        assert_float_within(got, activate(exact, conv.act), bound, out_type)


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("types", TYPES)
@pytest.mark.parametrize("qtype", [Q8, Q16])
@pytest.mark.parametrize("geom", GEOMS)
def test_dynamic_deconv(geom: Any, qtype: mm.DataType, types: Any) -> None:
    out_type, in_type = types
    case = make_case(geom, qtype, out_type)
    make_dynamic(case.one)
    inputs = input_buffers(case.one, [sample(geom)], in_type)
    runs = runs_match_reference(case.one, inputs, out_type, in_type)
    g, w = case.geom, case.w
    decl = case.one.node.declaration()
    for x_used, got in runs:
        pads = decl.pads_for(x_used.shape[1], x_used.shape[2], *g.k)  # type: ignore[attr-defined]
        args = (g.stride, pads, g.dilation, g.group, g.output_padding)
        wq = weight_fake_quantize(w, qtype).astype(np.float64)
        xq = dynamic_fake_quantize(x_used, qtype).astype(np.float64)
        exact = deconv2d_nhwc(xq, wq, *args)
        mag = deconv2d_nhwc(np.abs(xq), np.abs(wq), *args)
        if case.b is not None:
            b = case.b.astype(np.float16) if out_type is F16 else case.b
            exact = exact + b.astype(np.float64)
        assert_float_within(got, activate(exact, g.act), 2.0**-20 * mag + 2.0**-20, out_type)


PACKED = {k: c for k, c in LINEAR_CASES.items() if k.startswith("ip-") or k in (
    "mm-const-b", "mm-const-b-transposed", "mm-const-vector-b", "mm-const-b-unit-batch",
    "mm-vector-a-const-b")}  # fmt: skip


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize("types", TYPES)
@pytest.mark.parametrize("qtype", [Q8, Q16])
@pytest.mark.parametrize("op", [pytest.param(c, id=k) for k, c in PACKED.items()])
def test_dynamic_inner_product_and_matmul(op: Linear, qtype: mm.DataType, types: Any) -> None:
    out_type, in_type = types
    case, values = op.case(qtype, out_type)
    make_dynamic(case)
    inputs = input_buffers(case, [values[0]], in_type)
    runs = runs_match_reference(case, inputs, out_type, in_type)
    for x_used, got in runs:
        used = dict(values)
        used[0] = dynamic_fake_quantize(x_used, qtype)
        used[1] = weight_fake_quantize(values[1], qtype)
        if 2 in used and out_type is F16:
            used[2] = used[2].astype(np.float16).astype(np.float32)
        exact, mag, _ = op.exact(used)
        bound = 2.0**-20 * mag + (2.0**-23 * np.abs(used[2]) if 2 in used else 0)
        assert_float_within(got, activate(exact, op.act), bound, out_type)


@pytest.mark.usefixtures("isa")
def test_an_all_zero_or_non_finite_input_quantizes_to_the_zero_point() -> None:
    case, _, _, _ = CONV_CASES["1x1-plain-relu"].case(Q8, F32)
    make_dynamic(case)
    shape = CONV_CASES["1x1-plain-relu"].shape
    for fill in (0.0, np.nan):
        inputs = input_buffers(case, [np.full(shape, fill, np.float32)], F32)
        runs = runs_match_reference(case, inputs, F32, F32)
        assert all(np.array_equal(got, np.zeros_like(got)) for _, got in runs)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def dynamic_config(mode: str, **extra: str) -> mm.BuilderConfig:
    options = {"precision_mode": mode, "activation_quant_mode": "dynamic", **extra}
    body = ", ".join(f'"{k}": "{v}"' for k, v in options.items())
    config = mm.BuilderConfig()
    assert config.parse_from_string(f'{{"precision_config": {{{body}}}}}').ok()
    return config


@pytest.mark.parametrize("mode", ["qint8_mixed_float16", "qint16_mixed_float32"])
def test_a_network_builds_without_calibration_and_survives_its_model_file(
    mode: str, tmp_path: Path
) -> None:
    net = build_cnn()
    model = mm.Builder().build_model("cnn", net, dynamic_config(mode))
    x = sample_images(5, seed=7)
    (y,) = run(model, x)
    assert cosine(y, mm.run_reference(net, [x])["probabilities"]) >= (
        0.999 if mode.startswith("qint8") else 0.99999
    )
    assert model.validate(x).ok(), str(model.validate(x))
    report = model.get_layer_report()
    dynamic = [r.name for r in report if DYNAMIC_NOTE in r.notes]
    assert dynamic == [r.name for r in report if r.type in ("IConvNode", "IInnerProductNode")]
    path = str(tmp_path / "cnn.mm")
    assert model.serialize_to_file(path).ok()
    loaded = mm.Model()
    assert loaded.deserialize_from_file(path).ok()
    assert np.array_equal(run(loaded, x)[0].view(np.uint8), y.view(np.uint8))


def test_static_inputs_of_a_dynamic_build_still_need_their_range() -> None:
    """A matmul of two computed tensors is not dynamic: the error names its tensor."""
    net = mm.Network()
    a = net.add_input(F32, mm.Dims([2, 3, 4]))
    b = net.add_input(F32, mm.Dims([2, 4, 5]))
    net.mark_output(net.add_i_matmul_node(a, b).get_output(0))
    with pytest.raises(MMError, match=r"tensor '.*' has no range"):
        mm.Builder().build_model("mm", net, dynamic_config("qint8_mixed_float32"))


def test_an_unknown_mode_names_the_key() -> None:
    with pytest.raises(MMError, match=r"precision_config\.activation_quant_mode"):
        mm.BuilderConfig().parse_from_string(
            '{"precision_config": {"activation_quant_mode": "per_batch"}}'
        )
    assert mm.BuilderConfig().activation_quant_mode == "static"
