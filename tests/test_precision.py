"""The precision plan: modes, FOLLOW / NEVER / ALWAYS policies, overrides, ranges, fp16 guard."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ortcheck import const
from test_carry import built as carry_built
from test_carry import conv as carry_conv
from test_carry import relu as carry_relu
from test_carry import sample as carry_sample

import mmbuild as mm
from mmbuild.precision import plan_precision, split_mode
from mmbuild.runtime.inspect import validate

F32, F16, Q8, Q16 = mm.DataType.FLOAT32, mm.DataType.FLOAT16, mm.DataType.QINT8, mm.DataType.QINT16


def config(mode: str, **extra: object) -> mm.BuilderConfig:
    c = mm.BuilderConfig()
    c.parse_from_string(json.dumps({"precision_config": {"precision_mode": mode}, **extra}))
    return c


def conv_relu_add() -> mm.Network:
    """input -> conv(+bias) -> relu -> add(relu, input-sized const)."""
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([1, 6, 6, 2]))
    w = const(net, np.ones((3, 3, 3, 2), np.float32))
    b = const(net, np.zeros(3, np.float32))
    conv = net.add_i_conv_node(x, w, b)
    relu = net.add_i_activation_node(conv.get_output(0), mm.IActivation.RELU)
    other = const(net, np.ones((1, 4, 4, 3), np.float32))
    add = net.add_i_elementwise_node(relu.get_output(0), other, mm.IElementwise.ADD)
    net.mark_output(add.get_output(0))
    return net


@pytest.mark.parametrize(
    ("mode", "conv_inputs", "ftype"),
    [
        ("force_float32", (F32, F32, F32), F32),
        ("force_float16", (F16, F16, F16), F16),
        ("qint8_mixed_float16", (Q8, Q8, F16), F16),
        ("qint8_mixed_float32", (Q8, Q8, F32), F32),
        ("qint16_mixed_float16", (Q16, Q16, F16), F16),
        ("qint16_mixed_float32", (Q16, Q16, F32), F32),
    ],
)
def test_modes(mode: str, conv_inputs: tuple, ftype: mm.DataType) -> None:
    net = conv_relu_add()
    net.get_input(0).set_dynamic_range(mm.Range(-1.0, 1.0))
    plan = plan_precision(net, config(mode))
    assert plan["conv_0"].inputs == conv_inputs
    assert plan["conv_0"].outputs == (ftype,)
    assert plan["activation_0"].inputs == (ftype,) and plan["activation_0"].outputs == (ftype,)
    assert plan["elementwise_0"].outputs == (ftype,)
    assert split_mode(mode)[1] is ftype
    if conv_inputs[0].is_quantized:
        assert plan.ranges == {"input_0": mm.Range(-1.0, 1.0)}  # weights need no range
    else:
        assert plan.ranges == {}


def test_default_config_is_float32_and_inputs_keep_declared_type() -> None:
    net = conv_relu_add()
    plan = plan_precision(net)
    assert all(p.outputs == (F32,) for p in plan.nodes.values())
    net16 = mm.Network()
    x = net16.add_input(F32, mm.Dims([2, 3]))
    net16.mark_output(net16.add_i_activation_node(x, mm.IActivation.TANH).get_output(0))
    plan = plan_precision(net16, config("force_float16"))
    assert net16.get_input(0).get_data_type() is F32  # the input stays as declared
    assert plan["activation_0"].inputs == (F16,)  # the node converts it on the way in


def test_missing_range_names_tensor_and_three_remedies() -> None:
    with pytest.raises(mm.MMError) as info:
        plan_precision(conv_relu_add(), config("qint8_mixed_float16"))
    msg = str(info.value)
    assert "IConvNode 'conv_0'" in msg and "'input_0'" in msg and "QINT8" in msg
    assert "calibrate" in msg and "set_dynamic_range" in msg and "custom_ranges" in msg


def test_range_sources_in_order() -> None:
    net = conv_relu_add()
    x = net.get_input(0)
    fallback = {"custom_ranges": {"": {"min": [-9], "max": [9]}}}
    assert plan_precision(net, config("qint8_mixed_float32", **fallback)).ranges["input_0"] == (
        mm.Range(-9.0, 9.0)
    )
    x._set_calibrated_range(mm.Range(-2.0, 3.0))  # calibration outranks the "" fallback
    assert plan_precision(net, config("qint8_mixed_float32", **fallback)).ranges["input_0"] == (
        mm.Range(-2.0, 3.0)
    )
    named = {"custom_ranges": {"input_0": {"min": [-4], "max": [4]}}}  # the named entry outranks it
    assert plan_precision(net, config("qint8_mixed_float32", **named)).ranges["input_0"] == (
        mm.Range(-4.0, 4.0)
    )
    x.set_dynamic_range(mm.Range(-1.0, 1.0))  # and set_dynamic_range outranks everything
    assert plan_precision(net, config("qint8_mixed_float32", **named)).ranges["input_0"] == (
        mm.Range(-1.0, 1.0)
    )


def test_overrides_are_honoured() -> None:
    net = conv_relu_add()
    net.get_input(0).set_dynamic_range(mm.Range(-1.0, 1.0))
    conv = net.find_node_by_name("conv_0")
    conv.set_precision(0, Q8)  # in force_float32 the filter must follow into QINT8
    relu = net.find_node_by_name("activation_0")
    relu.set_output_type(0, F16)
    plan = plan_precision(net, config("force_float32"))
    assert plan["conv_0"].inputs == (Q8, Q8, F32)
    assert any("to match the set_precision" in n for n in plan["conv_0"].notes)
    assert plan["activation_0"].outputs == (F16,)
    conv.set_precision(1, F16)
    with pytest.raises(mm.MMError, match=r"conv_0.*run together"):
        plan_precision(net, config("force_float32"))


def test_float_override_takes_a_node_out_of_quantization() -> None:
    net = conv_relu_add()
    conv = net.find_node_by_name("conv_0")
    conv.set_precision(0, F32)
    plan = plan_precision(net, config("qint8_mixed_float16"))  # no range needed any more
    assert plan["conv_0"].inputs == (F32, F32, F16) and plan.ranges == {}


def test_invalid_overrides_refused_naming_node_and_slot() -> None:
    net = conv_relu_add()
    net.find_node_by_name("activation_0").set_precision(0, Q8)
    net.find_node_by_name("conv_0").set_precision(2, Q16)
    with pytest.raises(mm.MMError) as info:
        plan_precision(net, config("force_float32"))
    msg = str(info.value)  # both problems reported at once
    assert "IActivationNode 'activation_0'" in msg and "input 0 (input) cannot run quantized" in msg
    assert "IConvNode 'conv_0'" in msg and "input 2 (bias) cannot run quantized" in msg
    net2 = conv_relu_add()
    net2.find_node_by_name("conv_0").set_output_type(0, Q8)
    with pytest.raises(mm.MMError, match=r"set_output_type\(0, QINT8\)"):
        plan_precision(net2, config("force_float32"))


def test_float16_overflow_guard(caplog: pytest.LogCaptureFixture) -> None:
    net = conv_relu_add()
    net.get_input(0).set_dynamic_range(mm.Range(-1.0, 1.0))
    net.find_node_by_name("activation_0").get_output(0)._set_calibrated_range(mm.Range(0, 1e5))
    plan = plan_precision(net, config("qint8_mixed_float16"))
    assert plan["activation_0"].outputs == (F32,)
    assert plan["activation_0"].notes == (
        "fp16 overflow guard: activation_0:0 reaches 100000 > 65504, kept FLOAT32",
    )
    assert plan["conv_0"].outputs == (F16,)  # the conv does not touch that tensor
    assert plan["elementwise_0"].outputs == (F32,)
    assert "65504" in caplog.text
    # a user's explicit choice is not second-guessed
    net.find_node_by_name("activation_0").set_output_type(0, F16)
    assert plan_precision(net, config("qint8_mixed_float16"))["activation_0"].outputs == (F16,)


def _wide_batch_norm(net: mm.Network, t: mm.ITensor) -> mm.ITensor:
    """A batch norm on the 8 channels of ``t`` whose variance (up to 1e8, as in PP-OCRv4's
    head) float16 cannot hold, and whose output it can."""
    var = np.geomspace(1.0, 1e8, 8).astype(np.float32)
    params = [np.zeros(8), var, np.sqrt(var), np.full(8, 0.25)]
    consts = [const(net, np.asarray(p, np.float32)) for p in params]
    return net.add_i_fused_batch_norm_node(t, *consts, 3, 1e-5).get_output(0)


def test_the_guard_keeps_float16_outputs_of_a_node_whose_constant_alone_overflows() -> None:
    """The batch norm computes in FLOAT32 and stores FLOAT16: its readers see the value they
    used to get through a cast step, and the build has no cast step."""

    def body(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
        return carry_conv(net, _wide_batch_norm(net, x), 4, 1, 8)

    model, net = carry_built(body)
    plan = plan_precision(net, config("qint8_mixed_float16"))
    bn = next(n.get_node_name() for n in net.nodes if n.node_type == "IFusedBatchNormNode")
    assert plan[bn].inputs == (F32,) * 5 and plan[bn].outputs == (F16,)
    assert plan[bn].notes[0].endswith("computes in FLOAT32, output FLOAT16")
    assert [s.op for s in model.data.steps] == ["fused_batch_norm", "conv"]
    assert model.data.steps[0].output_types == [F16]
    report = validate(model, carry_sample(5))
    assert report.ok(), str(report)
    # without a range for its output, the node keeps FLOAT32 as before
    fresh = mm.Network()
    fresh.mark_output(body(fresh, fresh.add_input(F32, mm.Dims([2, 9, 9, 8]))))
    assert plan_precision(fresh, config("force_float16"))[bn].outputs == (F32,)


def test_a_folded_wide_batch_norm_leaves_its_conv_in_float16_and_carrying_int8() -> None:
    """conv -> wide batch norm -> relu -> conv: the batch norm folds, the relu joins the first
    conv (no cast step between them any more), and its output travels as QINT8."""

    def body(net: mm.Network, x: mm.ITensor) -> mm.ITensor:
        t = _wide_batch_norm(net, carry_conv(net, x, 8, 3, 8, pad=(1, 1, 1, 1)))
        return carry_conv(net, carry_relu(net, t), 4, 1, 8)

    model, _ = carry_built(body)
    first, last = model.data.steps
    assert (first.op, last.op) == ("conv", "conv")
    assert first.op_attrs["activation"] == {"function": "relu"}
    assert first.output_types == [Q8] and last.output_types == [F16]
    report = validate(model, carry_sample(5))
    assert report.ok(), str(report)
