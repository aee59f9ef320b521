"""The layer report and the error report: rows, lookup, aligned tables, and the error metrics."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmbuild import report as report_module
from mmbuild.errors import Code, MMError
from mmbuild.ir.types import DataType
from mmbuild.kernels.table import Lowered, Step
from mmbuild.report import (
    ErrorReport,
    ErrorRow,
    ErrorStats,
    LayerReport,
    LayerRow,
    error_stats,
)

F32, F16, Q8 = DataType.FLOAT32, DataType.FLOAT16, DataType.QINT8


def sample_rows() -> list[LayerRow]:
    return [
        LayerRow("conv1", "IConvNode", [Q8, Q8, F32], [F16], "conv_qint8", [[2, 16, 16, 8]],
                 fused=["fused_batch_norm_0", "activation_0"], notes=["per-axis weights"]),
        LayerRow("pool", "IMaxPool2DNode", [F16], [F16], "maxpool_f16", [[2, 8, 8, 8]]),
        LayerRow("split_0", "ISplitNode", [F16], [F16, F16], "split", [[2, 4, 8, 8], [2, 4, 8, 8]],
                 notes=["a", "b"]),
    ]  # fmt: skip


def column_starts(header: str, names: list[str]) -> list[int]:
    return [header.index(n) for n in names]


def test_doctests() -> None:
    result = doctest.testmod(report_module)
    assert result.failed == 0 and result.attempted > 5


# -- layer report ------------------------------------------------------------------------------
def test_layer_report_is_a_sequence_of_rows() -> None:
    rows = sample_rows()
    report = LayerReport(rows, peak_activation_bytes=3 * 2**20, mode="qint8_mixed_float16")
    assert len(report) == 3 and list(report) == rows
    assert report[0] is rows[0] and report[-1] is rows[2] and report[1:] == rows[1:]
    assert report[0].input_precisions == [Q8, Q8, F32] and report[0].kernel == "conv_qint8"
    assert report.peak_activation_bytes == 3 * 2**20 and report.mode == "qint8_mixed_float16"


def test_find_by_name_or_by_a_fused_name() -> None:
    report = LayerReport(sample_rows())
    assert report.find("pool").kernel == "maxpool_f16"
    assert report.find("activation_0").name == "conv1"
    assert report.find("fused_batch_norm_0").name == "conv1"
    with pytest.raises(MMError, match="no node 'conv2'.*did you mean 'conv1'") as info:
        report.find("conv2")
    assert info.value.code is Code.NOT_FOUND


def test_layer_table_is_aligned_and_complete() -> None:
    report = LayerReport(sample_rows(), peak_activation_bytes=3 * 2**20 + 2**19, mode="force_x")
    lines = str(report).splitlines()
    assert lines[0] == "mode: force_x"
    assert lines[-1] == "peak activation memory: 3.5 MiB (3670016 bytes)"
    header, body = lines[1], lines[2:-1]
    names = ["name", "type", "in precisions", "out types", "kernel", "output shape", "notes"]
    starts = column_starts(header, names)
    assert starts == sorted(starts)
    expected = [
        ["conv1 (+fused_batch_norm_0, activation_0)", "IConvNode", "QINT8, QINT8, FLOAT32",
         "FLOAT16", "conv_qint8", "[2, 16, 16, 8]", "per-axis weights"],
        ["pool", "IMaxPool2DNode", "FLOAT16", "FLOAT16", "maxpool_f16", "[2, 8, 8, 8]", ""],
        ["split_0", "ISplitNode", "FLOAT16", "FLOAT16, FLOAT16", "split",
         "[2, 4, 8, 8] [2, 4, 8, 8]", "a; b"],
    ]  # fmt: skip
    assert len(body) == len(expected)
    for line, cells in zip(body, expected):
        for start, end, cell in zip(starts, [*starts[1:], None], cells):
            assert line[start:end].rstrip() == cell, (line, cell)
    assert all(line == line.rstrip() for line in lines)


def test_layer_table_without_peak_or_mode() -> None:
    lines = str(LayerReport(sample_rows()[1:2])).splitlines()
    assert lines[0].startswith("name") and len(lines) == 2
    assert "peak" not in str(LayerReport([]))


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (5 * 2**30, "5.0 GiB"),
        (2**42, "4096.0 GiB"),
    ],
)
def test_peak_memory_units(n: int, text: str) -> None:
    assert str(LayerReport([], peak_activation_bytes=n)).endswith(f": {text} ({n} bytes)")


def test_from_steps_takes_node_types_and_shapes() -> None:
    step = Step("fc", "inner_product", "ip_f32", {}, ["x", "w"], ["fc:0"], [F32, F32], [F32],
                Lowered(), notes=["n"], fused=["relu_0"])  # fmt: skip
    report = LayerReport.from_steps([step], {"fc:0": (-1, 10)}, 640, "force_float32")
    (row,) = report
    assert (row.name, row.type, row.kernel, row.shape) == ("fc", "IInnerProductNode", "ip_f32",
                                                          [[-1, 10]])  # fmt: skip
    assert row.fused == ["relu_0"] and row.notes == ["n"] and report.peak_activation_bytes == 640


# -- error metrics -----------------------------------------------------------------------------
def test_worked_example() -> None:
    s = error_stats(np.array([1, 2, 3, 4.5]), np.array([1, 2, 3, 4]))
    assert s.sqnr_db == pytest.approx(10 * math.log10(30 / 0.25), rel=1e-15)
    assert s.cosine == pytest.approx(32 / math.sqrt(30 * 34.25), rel=1e-15)
    assert s.max_abs == 0.5


@pytest.mark.parametrize(
    ("actual", "expected", "stats"),
    [
        ([1.0, -2.0], [1.0, -2.0], ErrorStats(math.inf, 1.0, 0.0)),
        ([0.0, 0.0], [0.0, 0.0], ErrorStats(math.inf, 1.0, 0.0)),
        ([], [], ErrorStats(math.inf, 1.0, 0.0)),
        ([0.5, 0.0], [0.0, 0.0], ErrorStats(-math.inf, 0.0, 0.5)),
        ([0.0, 0.0], [3.0, 4.0], ErrorStats(0.0, 0.0, 4.0)),
        ([-3.0, -4.0], [3.0, 4.0], ErrorStats(10 * math.log10(25 / 100), -1.0, 8.0)),
    ],
)
def test_edge_cases(actual: list[float], expected: list[float], stats: ErrorStats) -> None:
    assert error_stats(np.array(actual), np.array(expected)) == stats


def test_non_finite_values() -> None:
    nan, inf = math.nan, math.inf
    agree = error_stats(np.array([nan, inf, -inf, 1.0, 2.0]), np.array([nan, inf, -inf, 1.0, 2.5]))
    assert agree == error_stats(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    for a, e in [([nan, 1.0], [0.0, 1.0]), ([0.0], [nan]), ([inf], [1.0]), ([inf], [-inf])]:
        s = error_stats(np.array(a), np.array(e))
        assert s.sqnr_db == -inf and math.isnan(s.cosine) and s.max_abs == inf


def test_arithmetic_is_float64() -> None:
    # float32 would round 1e8 + 1 to 1e8 and call the result exact
    s = error_stats(np.array([1e8 + 1]), np.array([1e8]))
    assert s.sqnr_db == pytest.approx(160.0, rel=1e-12) and s.max_abs == 1.0
    # float16 and integer inputs are widened, not overflowed
    s = error_stats(np.array([60000, 60000], np.float16), np.array([60000, 59968], np.float16))
    assert s.max_abs == 32.0 and math.isfinite(s.sqnr_db)
    assert error_stats(np.array([100], np.int8), np.array([-100], np.int8)).max_abs == 200.0


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(MMError, match=r"shape \(2, 3\) and expected \(3, 2\)"):
        error_stats(np.zeros((2, 3)), np.zeros((3, 2)))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e3, 1e3, width=32)),
    hnp.arrays(np.float32, 40, elements=st.floats(-1, 1, width=32)),
    st.floats(1e-3, 1e3),
)
def test_metrics_agree_with_their_definitions(e: np.ndarray, noise: np.ndarray, c: float) -> None:
    a = e + noise[: e.size]
    s = error_stats(a, e)
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    err = np.linalg.norm(a64 - e64)
    if err > 0 and np.any(e64):
        assert s.sqnr_db == pytest.approx(20 * math.log10(np.linalg.norm(e64) / err), abs=1e-9)
    if np.any(a64) and np.any(e64):
        cos = a64 @ e64 / (np.linalg.norm(a64) * np.linalg.norm(e64))
        assert s.cosine == pytest.approx(cos, abs=1e-12)
    assert s.max_abs == np.abs(a64 - e64).max()
    assert -1.0 <= s.cosine <= 1.0
    # SQNR and cosine do not depend on the scale of the data (up to the float64 rounding of
    # a * c - e * c, which is relative to |a|, not to the much smaller error: hence 1e-6 dB)
    scaled = error_stats(a64 * c, e64 * c)
    assert scaled.sqnr_db == pytest.approx(s.sqnr_db, abs=1e-6)
    assert scaled.cosine == pytest.approx(s.cosine, abs=1e-12)


# -- error report ------------------------------------------------------------------------------
def test_error_report_sorts_worst_first() -> None:
    rows = [
        ErrorRow("good", "IConvNode", 45.0, 0.99999, 0.001),
        ErrorRow("exact", "IMaxPool2DNode", math.inf, 1.0, 0.0),
        ErrorRow("bad", "IInnerProductNode", 12.0, 0.97, 0.4),
        ErrorRow("tie_low_cos", "IMatMulNode", 45.0, 0.9999, 0.001),
        ErrorRow("broken", "ISoftmaxNode", -math.inf, math.nan, math.inf),
        ErrorRow("nan", "IConvNode", math.nan, 0.5, 1.0),
    ]
    report = ErrorReport(rows)
    order = [r.name for r in report]
    assert order[:2] == ["broken", "nan"] or order[:2] == ["nan", "broken"]
    assert order[2:] == ["bad", "tie_low_cos", "good", "exact"]
    assert report.worst is not None and report.worst.name in ("broken", "nan")
    assert len(report) == 6 and report[-1].name == "exact" and report.find("bad").max_abs == 0.4
    with pytest.raises(MMError, match="no step 'god'.*did you mean 'good'"):
        report.find("god")


def test_error_table_is_aligned() -> None:
    report = ErrorReport([ErrorRow("conv1", "IConvNode", 38.25, 0.9999, 0.0123),
                          ErrorRow("a_long_name", "IInnerProductNode", -math.inf, math.nan,
                                   math.inf)])  # fmt: skip
    lines = str(report).splitlines()
    assert lines[0].split() == ["name", "type", "SQNR", "(dB)", "cosine", "max", "abs"]
    assert len({len(line) for line in lines}) == 1  # numbers right-aligned to one edge
    assert lines[1].split() == ["a_long_name", "IInnerProductNode", "-inf", "nan", "inf"]
    assert lines[2].split() == ["conv1", "IConvNode", "38.25", "0.999900", "0.0123"]


def test_empty_error_report() -> None:
    report = ErrorReport([])
    assert report.worst is None and len(report) == 0
    assert str(report).split() == ["name", "type", "SQNR", "(dB)", "cosine", "max", "abs"]
