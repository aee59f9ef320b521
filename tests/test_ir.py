"""The IR: types, Dims, Range, Status, aliases, network construction and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ortcheck import const

import mmbuild as mm


def small_cnn() -> tuple[mm.Network, mm.INode]:
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 8, 8, 3]))
    w = const(net, np.ones((4, 3, 3, 3), np.float32))
    conv = net.add_i_conv_node(x, w, None)
    relu = net.add_i_activation_node(conv.get_output(0), mm.IActivation.RELU)
    net.mark_output(relu.get_output(0))
    return net, conv


def test_datatype_numpy_dtypes() -> None:
    assert mm.DataType.FLOAT16.numpy_dtype == np.float16
    assert mm.DataType.QINT8.numpy_dtype == np.int8
    assert mm.DataType.from_numpy(np.int32) is mm.DataType.INT32
    with pytest.raises(mm.MMError, match="complex128"):
        mm.DataType.from_numpy(np.complex128)


def test_dims_api() -> None:
    d = mm.Dims([1, 224, 224, 3])
    assert d.GetDims() == d.get_dims() == [1, 224, 224, 3]
    assert (d.GetDimValue(1), d.GetDimsNum(), d.GetElementCount()) == (224, 4, 150528)
    assert len(d) == 4 and list(d) == [1, 224, 224, 3] and d == mm.Dims([1, 224, 224, 3])
    assert mm.Dims([-1, 3]).get_element_count() == -1
    with pytest.raises(mm.MMError, match="dimension 1 is -2"):
        mm.Dims([1, -2])
    with pytest.raises(mm.MMError, match="integer"):
        mm.Dims([1.5])


def test_range_and_status() -> None:
    r = mm.Range(-3.5, 10.2)
    assert (r.min, r.max) == (-3.5, 10.2)
    assert mm.Range([0, 1], [2, 3]).per_axis
    with pytest.raises(mm.MMError, match="above max"):
        mm.Range(1.0, 0.0)
    with pytest.raises(mm.MMError, match="finite"):
        mm.Range(float("nan"), 1.0)
    s = mm.Status(mm.Code.OUT_OF_RANGE, "end of data")
    assert not s.ok() and s.code() is mm.Code.OUT_OF_RANGE and s.error_message() == "end of data"
    assert str(s) == "OUT_OF_RANGE: end of data" and mm.Status.OK().ok() and s.ErrorMessage()
    err = mm.MMError("bad", mm.Code.NOT_FOUND)
    assert isinstance(err, ValueError) and err.status.code() is mm.Code.NOT_FOUND


def test_camelcase_aliases_resolve_to_snake_case_methods() -> None:
    net = mm.Network()
    x = net.AddInput(mm.DataType.FLOAT32, mm.Dims([2, 4, 4, 3]))
    node = net.AddIActivationNode(x, mm.IActivation.RELU)
    assert net.MarkOutput(node.GetOutput(0)).ok()
    assert node.GetNodeType() == "IActivationNode" and x.GetTensorName() == x.get_tensor_name()
    with pytest.raises(AttributeError, match="NoSuchMethod"):
        net.NoSuchMethod  # noqa: B018


def test_shapes_inferred_on_add_with_runtime_dims() -> None:
    net, conv = small_cnn()
    assert conv.get_output(0).get_dimension() == mm.Dims([-1, 6, 6, 4])
    conv.set_pad(1, 1, 1, 1)  # a setter re-infers the node and everything downstream
    assert net.get_output(0).get_dimension() == mm.Dims([-1, 8, 8, 4])
    net.get_input(0).set_dimension(mm.Dims([2, 16, 16, 3]))
    assert net.get_output(0).get_dimension() == mm.Dims([2, 16, 16, 4])


def test_refused_setter_leaves_network_unchanged() -> None:
    net, conv = small_cnn()
    before = (conv.attrs.copy(), net.get_output(0).get_dimension())
    with pytest.raises(mm.MMError, match="IConvNode 'conv_0'"):
        conv.set_group(2)  # 3 input channels do not make 2 groups of the filter's 3
    assert (conv.attrs, net.get_output(0).get_dimension()) == before
    with pytest.raises(mm.MMError, match="below 1"):
        conv.set_stride(0, 1)


def test_refused_add_adds_nothing() -> None:
    net, _ = small_cnn()
    nodes, tensors = len(net.get_all_nodes_in_network()), len(net.tensors())
    w_bad = const(net, np.ones((4, 3, 3, 5), np.float32))
    with pytest.raises(mm.MMError, match=r"3 channels.*\[-1, 8, 8, 3\].*\[4, 3, 3, 5\]"):
        net.add_i_conv_node(net.get_input(0), w_bad)
    assert len(net.get_all_nodes_in_network()) == nodes + 1  # only the const
    assert len(net.tensors()) == tensors + 1
    with pytest.raises(mm.MMError, match="numpy array|ndarray.*add_i_const_node"):
        net.add_i_conv_node(net.get_input(0), np.ones((4, 3, 3, 3)))
    other = mm.Network()
    y = other.add_input(mm.DataType.FLOAT32, mm.Dims([1, 8, 8, 3]))
    with pytest.raises(mm.MMError, match="another network"):
        net.add_i_activation_node(y, mm.IActivation.RELU)


def test_const_checks_size_and_range() -> None:
    net = mm.Network()
    with pytest.raises(mm.MMError, match="6 elements.*need 4"):
        net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([2, 2]), np.zeros(6))
    with pytest.raises(mm.MMError, match="too large for FLOAT16"):
        net.add_i_const_node(mm.DataType.FLOAT16, mm.Dims([1]), [1e6])
    c = net.add_i_const_node(mm.DataType.FLOAT16, mm.Dims([2]), [1.0, 2.0])
    assert c.get_output(0).get_data_type() is mm.DataType.FLOAT16
    assert net.get_all_nodes_in_network() == [c]


def test_outputs_marking() -> None:
    net, _ = small_cnn()
    out = net.get_output(0)
    with pytest.raises(mm.MMError, match="already output 0"):
        net.mark_output(out)
    assert net.unmark_output(out).ok() and net.get_output_count() == 0
    with pytest.raises(mm.MMError, match="not an output") as info:
        net.unmark_output(out)
    assert info.value.status.code() is mm.Code.NOT_FOUND
    with pytest.raises(mm.MMError, match="out of range"):
        net.get_output(0)


def test_names_are_deterministic_unique_and_renamable() -> None:
    names = [[n.get_node_name() for n in small_cnn()[0].get_all_nodes_in_network()] for _ in "ab"]
    assert names[0] == names[1] == ["const_0", "conv_0", "activation_0"]
    net, conv = small_cnn()
    assert conv.get_output(0).get_tensor_name() == "conv_0:0"
    conv.set_node_name("stem")
    assert net.find_node_by_name("stem") is conv and net.find_node_by_name("conv_0") is None
    with pytest.raises(mm.MMError, match="taken"):
        conv.set_node_name("activation_0")


def test_update_input_rewires_and_refuses_cycles() -> None:
    net, conv = small_cnn()
    relu = net.find_node_by_name("activation_0")
    relu2 = net.add_i_activation_node(relu.get_output(0), mm.IActivation.SIGMOID)
    with pytest.raises(mm.MMError, match="cycle"):
        relu.update_input(0, relu2.get_output(0))
    assert relu.get_input(0) is conv.get_output(0)
    relu2.update_input(0, conv.get_output(0))
    assert relu2.get_input(0) is conv.get_output(0)
    assert relu2 in conv.get_output(0).get_consumers()
    assert relu2 not in relu.get_output(0).get_consumers()
    with pytest.raises(mm.MMError, match="out of range"):
        relu.update_input(3, conv.get_output(0))


def test_precision_overrides_recorded() -> None:
    _, conv = small_cnn()
    assert conv.set_precision(0, mm.DataType.QINT8).ok()
    assert conv.get_precision(0) is mm.DataType.QINT8
    assert conv.get_precision(1) is mm.DataType.FLOAT32
    conv.set_output_type(0, mm.DataType.FLOAT16)
    assert conv.get_output(0).get_data_type() is mm.DataType.FLOAT16
    with pytest.raises(mm.MMError, match="not a precision"):
        conv.set_precision(0, mm.DataType.INT32)
    with pytest.raises(mm.MMError, match="input index 5"):
        conv.set_precision(5, mm.DataType.QINT8)


def test_reference_evaluator_runs_and_checks_inputs() -> None:
    net, _ = small_cnn()
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    out = mm.run_reference(net, [x])["activation_0:0"]
    assert out.shape == (2, 6, 6, 4) and out.dtype == np.float32
    # ones filter: every output channel is the 3x3x3 window sum, relu'd
    win = sum(x[:, i : i + 6, j : j + 6].sum(-1) for i in range(3) for j in range(3))
    np.testing.assert_allclose(out[..., 0], np.maximum(win, 0), rtol=1e-5, atol=1e-5)
    every = mm.run_reference(net, {"input_0": x}, keep_all=True)
    assert set(every) == {"input_0", "const_0:0", "conv_0:0", "activation_0:0"}
    with pytest.raises(mm.MMError, match=r"\[2, 9, 8, 3\] does not fit.*\[-1, 8, 8, 3\]"):
        mm.run_reference(net, [np.zeros((2, 9, 8, 3), np.float32)])
    with pytest.raises(mm.MMError, match="1 inputs"):
        mm.run_reference(net, [x, x])


def test_registry_refuses_second_registration_and_lists_known_ops() -> None:
    from mmbuild.ops import get_op, register_op

    with pytest.raises(mm.MMError, match="registered twice"):
        register_op(type("Again", (mm.IConvNode,), {}))
    with pytest.raises(mm.MMError, match="known ops: .*conv"):
        get_op("convolution")


@given(st.lists(st.integers(-1, 64), min_size=0, max_size=6))
def test_dims_roundtrip_property(values: list[int]) -> None:
    d = mm.Dims(values)
    assert d.get_dims() == values and mm.Dims(d) == d
    count = d.get_element_count()
    assert count == (-1 if -1 in values else int(np.prod(values, dtype=np.int64)))
