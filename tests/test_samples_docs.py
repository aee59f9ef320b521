"""The samples run as written, and the generated docs and schemas are current."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import mmbuild as mm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))


def test_sample_cnn_runs_and_gives_probabilities(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(ROOT / "samples" / "sample_cnn.py"))
    module["main"](runs=2)
    out = capsys.readouterr().out
    assert "built in qint8_mixed_float16" in out and "QINT8" in out and "conv.qint" in out
    cosine = float(re.search(r"cosine (\d\.\d+)", out).group(1))  # type: ignore[union-attr]
    assert cosine >= 0.99
    assert "time per inference (batch 16)" in out and "SQNR" in out
    from sample_cnn import build_cnn

    net = build_cnn()
    x = np.random.default_rng(3).standard_normal((3, 16, 16, 3)).astype(np.float32)
    probs = mm.run_reference(net, [x])["probabilities"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert {n.get_node_type() for n in net.get_all_nodes_in_network()} >= {
        "IConvNode",
        "IFusedBatchNormNode",
        "IMaxPool2DNode",
        "IAvgPool2DNode",
        "IInnerProductNode",
        "ISoftmaxNode",
    }


def test_sample_transformer_runs_and_matches_numpy(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "samples" / "sample_transformer.py"), run_name="__main__")
    assert "output [2, 16, 32]" in capsys.readouterr().out
    from sample_transformer import build_transformer_block

    net = build_transformer_block()
    types = {n.get_node_type() for n in net.get_all_nodes_in_network()}
    assert types >= {
        "IMatMulNode",
        "ILayerNormNode",
        "ISoftmaxNode",
        "IReshapeNode",
        "IPermuteNode",
    }
    # the attention rows of the softmax each sum to one
    x = np.random.default_rng(4).standard_normal((1, 16, 32)).astype(np.float32)
    every = mm.run_reference(net, [x], keep_all=True)
    attn = every[net.find_node_by_name("softmax_0").get_output(0).get_tensor_name()]
    np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-5)


def test_ops_doc_is_current() -> None:
    from mmbuild.tools import op_table

    assert (ROOT / "docs" / "ops.md").read_text() == op_table.render(), (
        "docs/ops.md is stale: run python -m mmbuild.tools.op_table"
    )
    for cls in mm.ops.OPS.values():
        assert cls.node_type in op_table.render()


def test_schemas_are_current() -> None:
    from mmbuild.tools.write_schemas import render_schemas

    for folder in ("include", "mmbuild/schemas"):  # the language-neutral copy, the package data
        for name, text in render_schemas().items():
            assert (ROOT / folder / name).read_text() == text, f"{folder}/{name} is stale"


@pytest.mark.parametrize("doc", ["README.md", "docs/getting_started.md", "docs/build_and_run.md"])
def test_python_blocks_of_the_docs_run(doc: str) -> None:
    """Every ```python block of these pages runs, in order, in one namespace."""
    text = (ROOT / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict = {}
    for block in blocks:
        if "net.mm" in block or "build.json" in block or "x_np" in block:
            continue  # fragments that need files or arrays of the reader's own
        exec(compile(block, doc, "exec"), namespace)
