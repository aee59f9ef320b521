"""The ONNX parser on small hand-made models: the API, errors, names, constants, shape folding,
dimensions set after parsing, and the builder defects that real models met."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mmbuild as mm
from mmbuild.config.schema import PRECISION_MODES
from mmbuild.parser.table import load_table, markdown_table

F = TensorProto.FLOAT


def save(
    tmp_path: Path,
    nodes: list[Any],
    inputs: list[Any],
    outputs: list[Any],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    name: str = "m.onnx",
) -> str:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        outputs,
        [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path)


def vi(name: str, dims: list[Any], elem: int = F) -> Any:
    return helper.make_tensor_value_info(name, elem, dims)


def parse(path: str) -> mm.Network:
    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, path).ok()
    return net


def run(net: mm.Network, *xs: np.ndarray, mode: str = "force_float32") -> list[np.ndarray]:
    config = mm.BuilderConfig()
    config.parse_from_string(json.dumps({"precision_config": {"precision_mode": mode}}))
    model = mm.Builder().build_model("m", net, config)
    ctx = model.create_i_engine().create_i_context()
    inputs = ctx.create_inputs()
    for t, x in zip(inputs, xs):
        t.from_numpy(x)
    outs: list[Any] = []
    assert ctx.enqueue(inputs, outs).ok()
    return [o.asnumpy() for o in outs]


def ort_run(path: str, *xs: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})


def conv_model(tmp_path: Path) -> str:
    """x [N, 3, 8, 8] -> Conv 3x3 pads 1 -> Relu -> Mul by a per-channel constant."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], "relu1"),
        helper.make_node(
            "Constant", [], ["k"], "k_node",
            value=numpy_helper.from_array(np.array([1, 2, 3, 4], np.float32).reshape(4, 1, 1)),
        ),
        helper.make_node("Mul", ["r", "k"], ["y"], "scale1"),
    ]  # fmt: skip
    return save(tmp_path, nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", None)], {"w": w, "b": b})


# -- API ----------------------------------------------------------------------------------------
def test_parser_is_reachable_by_every_documented_name() -> None:
    from mmbuild.parser import Parser

    assert mm.Parser is Parser is mm.parser.Parser
    assert {k.name for k in mm.ModelKind} == {"kOnnx", "kPytorch", "kCaffe", "kTensorflow"}


@pytest.mark.parametrize(
    "kind", [mm.ModelKind.kPytorch, mm.ModelKind.kCaffe, mm.ModelKind.kTensorflow]
)
def test_other_frameworks_are_refused_with_the_way_to_onnx(kind: mm.ModelKind) -> None:
    with pytest.raises(mm.MMError, match="export the model to ONNX") as info:
        mm.Parser(kind).parse(mm.Network(), "model.pt")
    assert info.value.status.code() is mm.Code.UNAVAILABLE


def test_names_constants_and_layout_follow_the_file(tmp_path: Path) -> None:
    net = parse(conv_model(tmp_path))
    assert net.get_input(0).get_tensor_name() == "x"
    assert net.get_input(0).get_dimension() == mm.Dims([-1, 3, 8, 8])
    assert net.get_output(0).get_tensor_name() == "y"
    conv = net.find_node_by_name("conv1")
    assert conv is not None and conv.get_node_type() == "IConvNode"
    assert conv.get_layout() == (mm.Layout.NCHW,) * 3  # type: ignore[attr-defined]
    assert conv.get_output(0).get_tensor_name() == "c"
    for const in ("w", "b", "k"):  # an initializer and a Constant node: const nodes
        node = net.find_node_by_name(const)
        assert node is not None and node.get_node_type() == "IConstNode"
        assert node.get_output(0).get_tensor_name() == const
    assert net.find_node_by_name("scale1").get_node_type() == "IElementwiseNode"


def test_parsed_model_matches_onnxruntime_at_any_batch(tmp_path: Path) -> None:
    path = conv_model(tmp_path)
    net = parse(path)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(run(net, x)[0], ort_run(path, x)[0], rtol=1e-5, atol=1e-5)


def test_set_dimension_after_parsing_reinfers_downstream(tmp_path: Path) -> None:
    net = parse(conv_model(tmp_path))
    assert net.get_input(0).set_dimension(mm.Dims([2, 3, 16, 12])).ok()
    assert net.get_output(0).get_dimension() == mm.Dims([2, 4, 16, 12])


def test_input_dtypes_param(tmp_path: Path) -> None:
    parser = mm.Parser(mm.ModelKind.kOnnx)
    assert parser.set_model_param("onnx-input-dtypes", [mm.DataType.FLOAT16]).ok()
    net = mm.Network()
    with pytest.raises(mm.MMError, match="FLOAT16"):  # a float16 input meets float32 weights
        parser.parse(net, conv_model(tmp_path))
    assert not net.nodes and not net.inputs
    with pytest.raises(mm.MMError, match="unknown key 'onnx-input-types'"):
        parser.set_model_param("onnx-input-types", [mm.DataType.FLOAT32])
    with pytest.raises(mm.MMError, match="one per model input"):
        parser.set_model_param("onnx-input-dtypes", ["float32"])


# -- errors -------------------------------------------------------------------------------------
def test_unknown_op_names_type_node_opset_and_leaves_the_network_empty(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], "first"),
        helper.make_node("Hardmax", ["r"], ["y"], "odd_one"),
    ]
    path = save(tmp_path, nodes, [vi("x", [1, 4])], [vi("y", None)], opset=13)
    net = mm.Network()
    with pytest.raises(mm.MMError) as info:
        mm.Parser(mm.ModelKind.kOnnx).parse(net, path)
    msg = str(info.value)
    assert "Hardmax" in msg and "'odd_one'" in msg and "opset 13" in msg
    assert "Conv" in msg and "Relu" in msg  # the ops it does import
    assert not net.nodes and not net.inputs and not net.outputs


def test_an_opset_too_old_or_an_unsupported_feature_is_named(tmp_path: Path) -> None:
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])],
                [vi("y", None)], opset=6)  # fmt: skip
    with pytest.raises(mm.MMError, match="opset 6; mmbuild imports opsets 7 to"):
        parse(path)
    nodes = [helper.make_node("Pad", ["x", "p"], ["y"], "wrap_pad", mode="wrap")]
    path = save(tmp_path, nodes, [vi("x", [2, 3])], [vi("y", None)],
                {"p": np.array([0, 1, 0, 1], np.int64)})  # fmt: skip
    with pytest.raises(mm.MMError, match=r"'wrap_pad' \(Pad, opset 17\): mode wrap"):
        parse(path)


def test_missing_file_and_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(mm.MMError, match="does not exist") as info:
        parse(str(tmp_path / "absent.onnx"))
    assert info.value.status.code() is mm.Code.NOT_FOUND
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(mm.MMError, match="bad.onnx"):
        parse(str(bad))


def test_missing_onnx_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmbuild.parser.model import onnx_module

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(mm.MMError, match=r"pip install 'mmbuild\[onnx\]'"):
        onnx_module()


def test_parse_fills_only_an_empty_network(tmp_path: Path) -> None:
    net = mm.Network()
    net.add_input(mm.DataType.FLOAT32, mm.Dims([1]))
    with pytest.raises(mm.MMError, match="parse into a new mm.Network"):
        mm.Parser(mm.ModelKind.kOnnx).parse(net, conv_model(tmp_path))


# -- shape folding ------------------------------------------------------------------------------
def flatten_by_shape_model(tmp_path: Path) -> str:
    """y = Reshape(x, Concat(Shape(x)[0:1], [-1])): the exporters' flatten of a free batch."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["s64"], to=TensorProto.INT64),
        helper.make_node("Slice", ["s64", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "minus_one"], ["shape"], axis=0),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["y"], "flat"),
    ]
    inits = {
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "minus_one": np.array([-1], np.int64),
    }
    return save(tmp_path, nodes, [vi("x", ["N", 2, 3, 4])], [vi("y", None)], inits)


def test_shape_computation_folds_and_keeps_the_batch_free(tmp_path: Path) -> None:
    path = flatten_by_shape_model(tmp_path)
    net = parse(path)
    types = [n.get_node_type() for n in net.get_all_nodes_in_network()]
    assert types == ["IActivationNode", "IReshapeNode"]  # no shape logic left
    flat = net.find_node_by_name("flat")
    assert flat.get_shape() == (0, -1)  # type: ignore[attr-defined]
    assert net.get_output(0).get_dimension() == mm.Dims([-1, 24])
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 2, 3, 4)).astype(np.float32)
        np.testing.assert_array_equal(run(net, x)[0], ort_run(path, x)[0])


def test_shape_of_known_dims_folds_to_a_plain_shape(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i"], ["c"], axis=0),
        helper.make_node("Unsqueeze", ["c", "ax"], ["c1"]),
        helper.make_node("Concat", ["minus_one", "c1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"], "flat"),
    ]
    inits = {
        "i": np.array(1, np.int64),
        "ax": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64),
    }
    net = parse(save(tmp_path, nodes, [vi("x", [2, 3, 4])], [vi("y", None)], inits))
    assert net.find_node_by_name("flat").get_shape() == (-1, 3)  # type: ignore[attr-defined]
    assert len(net.get_all_nodes_in_network()) == 1


def test_external_data_is_read_from_beside_the_file(tmp_path: Path) -> None:
    w = np.arange(4 * 6, dtype=np.float32).reshape(6, 4) / 10
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [vi("x", [2, 6])], [vi("y", None)],
                              [numpy_helper.from_array(w, "w")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="ext.data",
              size_threshold=0)  # fmt: skip
    assert (tmp_path / "ext.data").is_file()
    x = np.ones((2, 6), np.float32)
    np.testing.assert_allclose(run(parse(str(path)), x)[0], x @ w, rtol=1e-6)


# -- exact rewrites and fusions -----------------------------------------------------------------
@pytest.mark.parametrize(
    "gate,alpha,expect",
    [("Sigmoid", None, mm.IActivation.SILU), ("HardSigmoid", 1 / 6, mm.IActivation.HARD_SWISH)],
)
def test_mul_by_a_gate_of_itself_imports_as_one_activation(
    tmp_path: Path, gate: str, alpha: float | None, expect: mm.IActivation
) -> None:
    attrs = {} if alpha is None else {"alpha": alpha, "beta": 0.5}
    nodes = [
        helper.make_node(gate, ["x"], ["g"], **attrs),
        helper.make_node("Mul", ["x", "g"], ["y"], "act"),
    ]
    path = save(tmp_path, nodes, [vi("x", [2, 50])], [vi("y", None)])
    net = parse(path)
    assert net.find_node_by_name("act").attrs["mode"] is expect
    x = np.linspace(-8, 8, 100, dtype=np.float32).reshape(2, 50)
    np.testing.assert_allclose(run(net, x)[0], ort_run(path, x)[0], rtol=1e-6, atol=1e-6)


# -- ops against onnxruntime --------------------------------------------------------------------
OP_CASES: list[tuple[str, dict[str, Any], list[int], dict[str, np.ndarray]]] = [
    ("Conv", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, [1, 3, 7, 7],
     {"w": np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)}),
    ("Conv", {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, [1, 3, 6, 6],
     {"w": np.random.default_rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32)}),
    ("Conv", {"group": 3, "dilations": [2, 2], "pads": [2, 2, 2, 2]}, [1, 3, 2, 2],
     {"w": np.random.default_rng(2).standard_normal((6, 1, 3, 3)).astype(np.float32)}),
    ("Conv", {"pads": [1, 1]}, [2, 3, 9],
     {"w": np.random.default_rng(2).standard_normal((5, 3, 3)).astype(np.float32)}),
    ("ConvTranspose", {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
     [1, 4, 5, 5],
     {"w": np.random.default_rng(3).standard_normal((4, 2, 3, 3)).astype(np.float32)}),
    ("Gemm", {"transB": 1, "alpha": 0.5, "beta": 2.0}, [3, 6],
     {"b": np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32),
      "c": np.random.default_rng(5).standard_normal(5).astype(np.float32)}),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, [1, 2, 8, 8], {}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
     [1, 2, 5, 5], {}),
    ("Resize", {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 2, 4, 4],
     {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}),
    ("Softmax", {"axis": 1}, [2, 3, 4], {}),
    ("Clip", {}, [2, 8], {"lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)}),
    ("PRelu", {}, [1, 3, 2, 2], {"slope": np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)}),
]  # fmt: skip


@pytest.mark.parametrize(
    "op,attrs,shape,inits", OP_CASES, ids=lambda v: v if isinstance(v, str) else ""
)
def test_op_matches_onnxruntime(tmp_path: Path, op: str, attrs: dict[str, Any], shape: list[int],
                                inits: dict[str, np.ndarray]) -> None:  # fmt: skip
    opset = 11 if op == "Softmax" else 17  # Softmax before 13 flattens at the axis
    node = helper.make_node(op, ["x", *inits], ["y"], "node", **attrs)
    path = save(tmp_path, [node], [vi("x", shape)], [vi("y", None)], inits, opset=opset)
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    got, want = run(parse(path), x)[0], ort_run(path, x)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- builder defects met while converting real models -------------------------------------------
@pytest.mark.parametrize("mode", PRECISION_MODES)
def test_a_float32_constant_operand_builds_in_every_mode(tmp_path: Path, mode: str) -> None:
    """Mul of an NCHW conv output by a float32 constant: the constant takes the precision of
    its reader (float16 in *_float16 modes) in every pass, not only at the end."""
    net = parse(conv_model(tmp_path))
    net.get_input(0).set_dynamic_range(mm.Range(-4.0, 4.0))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = run(net, x)[0]
    got = run(net, x, mode=mode)[0]
    cos = float(got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want))
    assert got.dtype == (np.float16 if mode.endswith("float16") else np.float32)
    assert cos > (0.9999 if mode.startswith("force") else 0.99)


def test_a_window_that_fits_only_once_padded_is_added_then_padded(tmp_path: Path) -> None:
    w = np.ones((2, 1, 3, 3), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], "small", pads=[1, 1, 1, 1])]
    path = save(tmp_path, nodes, [vi("x", [1, 1, 2, 2])], [vi("y", None)], {"w": w})
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(run(parse(path), x)[0], ort_run(path, x)[0], rtol=1e-6)


# -- the import table ---------------------------------------------------------------------------
def test_docs_onnx_md_holds_the_generated_table() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "onnx.md").read_text()
    assert markdown_table() in doc, "regenerate with: python -m mmbuild.parser.table docs/onnx.md"


def test_import_table_covers_the_ops_of_the_issue() -> None:
    table = load_table()
    wanted = """Conv ConvTranspose BatchNormalization Gemm MatMul Add Sub Mul Div Pow Max Min Sqrt
    Erf Exp Log Abs Neg Reciprocal Relu LeakyRelu PRelu Clip Sigmoid HardSigmoid HardSwish Tanh
    Gelu Elu Softplus Mish Softmax MaxPool AveragePool GlobalAveragePool GlobalMaxPool ReduceMean
    ReduceSum ReduceMax ReduceMin Flatten Reshape Transpose Squeeze Unsqueeze Concat Split Slice
    Pad Resize Upsample Cast Identity Dropout LayerNormalization InstanceNormalization Expand
    Gather Where Equal Shape Range ConstantOfShape QuantizeLinear DequantizeLinear""".split()  # noqa: SIM905
    assert [op for op in wanted if op not in table] == []


@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_a_written_out_layer_norm_imports_as_one_node(tmp_path: Path, square: str) -> None:
    sq = (
        helper.make_node("Pow", ["d", "two"], ["d2"])
        if square == "Pow"
        else helper.make_node("Mul", ["d", "d"], ["d2"])
    )
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        sq,
        helper.make_node("ReduceMean", ["d2"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        helper.make_node("Div", ["d", "s"], ["n"], "norm"),
        helper.make_node("Mul", ["n", "gamma"], ["y"], "affine"),
    ]
    inits = {
        "two": np.array(2.0, np.float32),
        "eps": np.array(1e-5, np.float32),
        "gamma": np.linspace(0.5, 2, 16, dtype=np.float32),
    }
    path = save(tmp_path, nodes, [vi("x", [2, 3, 16])], [vi("y", None)], inits, opset=13)
    net = parse(path)
    types = [n.get_node_type() for n in net.get_all_nodes_in_network() if n.op != "const"]
    assert types == ["ILayerNormNode", "IElementwiseNode"]
    assert net.find_node_by_name("norm").get_node_type() == "ILayerNormNode"
    x = np.random.default_rng(3).standard_normal((2, 3, 16)).astype(np.float32) * 3 + 1
    np.testing.assert_allclose(run(net, x)[0], ort_run(path, x)[0], rtol=1e-5, atol=1e-5)
