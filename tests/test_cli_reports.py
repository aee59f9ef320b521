"""The reports' machine-readable forms (to_json, to_csv), per-step profiling through the run
loop's hook, and the self-contained HTML report."""

from __future__ import annotations

import csv
import doctest
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_models import mlp
from html_check import parse_report
from sample_cnn import build_cnn

import mmbuild as mm
from mmbuild.errors import MMError
from mmbuild.report import ErrorReport, ErrorRow, LayerReport, LayerRow
from mmbuild.runtime import profile as profile_module
from mmbuild.runtime.engine import VIEW_OPS
from mmbuild.runtime.inspect import model_summary
from mmbuild.tools.html_report import bar_chart, write_html_report

F32, Q8 = mm.DataType.FLOAT32, mm.DataType.QINT8


@pytest.fixture(scope="module")
def cnn() -> mm.Model:
    return mm.Builder().build_model("cnn", build_cnn())


def x_batch(n: int = 2) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(n, 16, 16, 3)).astype(np.float32)


def test_doctests() -> None:
    from mmbuild import report

    for module in (report, profile_module):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted >= 1


def test_layer_report_json_and_csv() -> None:
    rows = [
        LayerRow(
            "conv1",
            "IConvNode",
            [Q8, Q8],
            [F32],
            "conv.qint",
            [[1, 8, 8, 4]],
            fused=["bn", "relu"],
            notes=["a, b"],
        ),
        LayerRow("split", "ISplitNode", [F32], [F32, F32], "split", [[1, 2], [1, 3]]),
    ]
    report = LayerReport(rows, peak_activation_bytes=4096, mode="qint8_mixed_float32")
    doc = json.loads(report.to_json())
    assert doc["report"] == "layers" and doc["mode"] == "qint8_mixed_float32"
    assert doc["peak_activation_bytes"] == 4096
    assert doc["rows"][0] == {
        "name": "conv1",
        "type": "IConvNode",
        "input_precisions": ["QINT8", "QINT8"],
        "output_types": ["FLOAT32"],
        "kernel": "conv.qint",
        "shape": [[1, 8, 8, 4]],
        "fused": ["bn", "relu"],
        "notes": ["a, b"],
    }
    table = list(csv.reader(io.StringIO(report.to_csv())))
    assert table[0] == [
        "name",
        "type",
        "input_precisions",
        "output_types",
        "kernel",
        "shape",
        "fused",
        "notes",
    ]
    assert table[1] == [
        "conv1",
        "IConvNode",
        "QINT8;QINT8",
        "FLOAT32",
        "conv.qint",
        "1x8x8x4",
        "bn;relu",
        "a, b",
    ]
    assert table[2][5] == "1x2;1x3" and len(table) == 3


def test_error_report_json_keeps_non_finite_values_as_strings() -> None:
    report = ErrorReport(
        [
            ErrorRow("a", "IConvNode", 30.0, 0.999, 0.01),
            ErrorRow("b", "IPad", math.inf, 1.0, 0.0),
            ErrorRow("c", "IX", -math.inf, math.nan, math.inf),
        ]
    )
    text = report.to_json()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    rows = json.loads(text)["rows"]
    assert [r["name"] for r in rows] == ["c", "a", "b"]  # worst first, as str() sorts
    assert rows[0] == {
        "name": "c",
        "type": "IX",
        "sqnr_db": "-inf",
        "cosine": "nan",
        "max_abs": "inf",
    }
    lines = report.to_csv().splitlines()
    assert lines[0] == "name,type,sqnr_db,cosine,max_abs" and lines[1] == "c,IX,-inf,nan,inf"


def test_reports_of_a_built_model_round_trip(cnn: mm.Model) -> None:
    layers = cnn.get_layer_report([x_batch()])
    doc = json.loads(layers.to_json())
    assert [r["name"] for r in doc["rows"]] == [r.name for r in layers]
    assert [r["shape"] for r in doc["rows"]] == [r.shape for r in layers]
    assert doc["peak_activation_bytes"] == layers.peak_activation_bytes > 0
    errors = cnn.get_error_report([x_batch()])
    assert [r["name"] for r in json.loads(errors.to_json())["rows"]] == [r.name for r in errors]
    check = cnn.validate([x_batch()])
    vdoc = json.loads(check.to_json())
    assert vdoc["ok"] is True and vdoc["first_mismatch"] is None
    assert [r["name"] for r in vdoc["rows"]] == [s.name for s in cnn.data.steps]
    assert check.to_csv().splitlines()[0] == "name,kernel,max_abs,tolerance,exact"


def test_profile_times_every_step_through_the_hook(cnn: mm.Model) -> None:
    context = cnn.create_i_engine().create_i_context()
    calls: list[str] = []
    context.set_step_hook(lambda step, seconds: calls.append(step.name))
    context.run([x_batch()])
    context.set_step_hook(None)
    ran = [s.name for s in cnn.data.steps if s.op not in VIEW_OPS]
    assert calls == ran and ran
    inputs = context.create_inputs()
    inputs[0].from_numpy(x_batch(4))
    report = context.profile(inputs, runs=7, warmup=1)
    assert report.batch == 4 and report.runs == 7 and len(report) == len(ran)
    assert [r.mean_ms for r in report] == sorted((r.mean_ms for r in report), reverse=True)
    assert all(r.mean_ms > 0 for r in report) and math.isclose(
        sum(r.share for r in report), 1.0, abs_tol=1e-4
    )
    assert {r.name for r in report} == set(ran)
    assert report.rows == list(report) and report[0] is next(iter(report))
    text = str(report)
    assert text.startswith("batch 4, 7 runs") and "p99" in text and "share" in text
    doc = json.loads(report.to_json())
    assert doc["report"] == "profile" and doc["latency"]["p50_ms"] == report.latency.p50_ms
    assert [r["name"] for r in doc["rows"]] == [r.name for r in report]
    # the hook leaves the results alone: a profiled context still computes the same outputs
    plain = cnn.create_i_engine().create_i_context().run([x_batch()])
    again = context.run([x_batch()])
    np.testing.assert_array_equal(plain["probabilities"], again["probabilities"])
    with pytest.raises(MMError, match="runs must be a positive integer"):
        context.profile([x_batch()], runs=0)
    with pytest.raises(MMError, match="takes 1"):
        context.profile([x_batch(), x_batch()])


def test_bar_chart_is_to_scale() -> None:
    svg = bar_chart(["a", "b<", "c", "d"], [10.0, 5.0, math.inf, -3.0], "dB", "#000")
    widths = [float(w) for w in re.findall(r'class="bar" x="\d+" y="\d+" width="([\d.]+)"', svg)]
    assert widths == [420.0, 210.0, 420.0, 0.0]
    assert "b&lt;" in svg and ">inf dB<" in svg


def test_html_report_is_self_contained(cnn: mm.Model, tmp_path: Path) -> None:
    x = [x_batch()]
    context = cnn.create_i_engine().create_i_context()
    profiles = [context.profile(x, runs=3, warmup=0)]
    errors = cnn.get_error_report(x)
    path = tmp_path / "report.html"
    write_html_report(
        path,
        "cnn <report>",
        model_summary(cnn),
        layers=cnn.get_layer_report(x),
        errors=errors,
        profiles=profiles,
    )
    page = parse_report(path)
    assert page.sections == ["summary", "errors", "profile", "layers"]
    assert page.bars == len(errors) + len(profiles[0])
    assert "script" not in page.tags and page.urls == []
    text = path.read_text()
    assert "cnn &lt;report&gt;" in text and "http" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    for step in cnn.data.steps:
        assert step.name in page.cells
    assert "force_float32" in page.cells  # the model's summary


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium(cnn: mm.Model, tmp_path: Path) -> None:
    browser = next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        pytest.skip("no Chromium on this machine")
    x = [x_batch()]
    path = tmp_path / "report.html"
    write_html_report(path, "cnn", model_summary(cnn), errors=cnn.get_error_report(x))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--screenshot={shot}",
            "--window-size=900,700",
            path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from mmbuild.calib.files import read_image

    pixels = read_image(shot)
    assert pixels.std() > 5  # not a blank page


def test_mlp_summary_names_its_io() -> None:
    model = mm.Builder().build_model("mlp", mlp())
    summary = model_summary(model)
    assert summary["inputs"] == [{"name": "x", "dims": [-1, 8], "dtype": "FLOAT32"}]
    assert summary["outputs"] == [{"name": "probs", "dims": [-1, 4], "dtype": "FLOAT32"}]
    assert summary["steps"] == len(model.data.steps) and summary["mode"] == "force_float32"
