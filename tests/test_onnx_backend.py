"""ONNX's backend node tests (shipped in the onnx 1.22.0 wheel) through the parser, in fp32.

Every case whose ops are all in the import table runs (see ``onnx_backend``); a case is skipped
only when the parser refuses it with a reason the import table lists (or it folds entirely at
parse time, or its opset is older than 7). ``python tests/onnx_backend.py`` prints the counts
per op that docs/onnx.md reports.
"""

from __future__ import annotations

import pytest
from onnx_backend import cases, run_case


@pytest.mark.parametrize("case", sorted(cases()))
def test_backend_node_case(case: str) -> None:
    outcome, reason = run_case(case)
    if outcome == "skip":
        pytest.skip(reason)


def test_the_import_table_selects_cases_of_every_family() -> None:
    ops = set().union(*cases().values())
    assert {"Conv", "MaxPool", "Gemm", "Resize", "Reshape", "Softmax", "LayerNormalization"} <= ops
    assert len(cases()) > 500
