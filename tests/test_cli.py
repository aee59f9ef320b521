"""The command line, run as a user runs it: every subcommand in a subprocess on small models,
its output checked against the Python API's reports."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_models import write_mlp_onnx
from pngs import write_png
from sample_cnn import build_cnn

import mmbuild as mm
from mmbuild.calib.files import ImageFolderData, Preprocess
from mmbuild.kernels.cpu import features
from mmbuild.runtime.engine import VIEW_OPS
from mmbuild.runtime.inspect import model_summary

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent


def _env() -> dict[str, str]:
    # PYTHONPATH: the console script then imports this checkout, wherever the venv points
    return {**os.environ, "MMBUILD_PROGRESS": "0", "PYTHONPATH": str(ROOT)}


def mmbuild(*args: str | Path, status: int = 0) -> subprocess.CompletedProcess[str]:
    """``python -m mmbuild ARGS`` from the checkout; asserts the exit status."""
    done = subprocess.run(
        [sys.executable, "-m", "mmbuild", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=900,
    )
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    return done


def console_script() -> Path | None:
    found = Path(sys.executable).parent / "mmbuild"
    if found.is_file():
        return found
    which = shutil.which("mmbuild")
    return Path(which) if which else None


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 12 PNG images (20x20 RGB), an input batch and the MLP's ONNX twin."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(1)
    (d / "images").mkdir()
    for i in range(12):
        write_png(d / "images" / f"{i:02d}.png", rng.integers(0, 256, (20, 20, 3), np.uint8))
    np.save(d / "x.npy", rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32))
    np.save(d / "feat.npy", rng.normal(size=(5, 8)).astype(np.float32))
    np.savez(d / "calib_mlp.npz", x=rng.normal(size=(40, 8)).astype(np.float32))
    write_mlp_onnx(d / "mlp.onnx")
    return d


@pytest.fixture(scope="module")
def cnn_q8(work: Path) -> Path:
    """The sample CNN in qint8, calibrated from the PNG folder through the console script
    (or python -m mmbuild when the script is not installed)."""
    out = work / "cnn_q8.mm"
    args = [
        "build",
        "samples/sample_cnn.py:build_cnn",
        "-o",
        out,
        "--precision",
        "qint8_mixed_float16",
        "--calib",
        work / "images",
        "--calib-batch",
        "5",
        "--calib-cache",
        work / "cnn.calib.json",
        "--set",
        "precision_config.weight_quant_granularity=per_axis",
    ]
    script = console_script()
    if script is None:
        mmbuild(*args)
    else:
        done = subprocess.run(
            [str(script), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_env(),
            timeout=900,
        )
        assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def mlp_q8(work: Path) -> Path:
    out = work / "mlp_q8.mm"
    mmbuild(
        "build",
        TESTS / "cli_models.py:mlp",
        "-o",
        out,
        "--precision",
        "qint8_mixed_float32",
        "--calib",
        work / "calib_mlp.npz",
    )
    return out


def test_console_script_version_and_help() -> None:
    script = console_script()
    if script is None:
        pytest.skip("the mmbuild console script is not installed (pip install -e .)")
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == f"mmbuild {mm.__version__}"
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode == 0
    for command in ("build", "run", "inspect", "compare", "profile"):
        assert f"    {command} " in done.stdout


def test_python_m_and_the_help_of_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert mmbuild("--version").stdout.strip() == f"mmbuild {mm.__version__}"
    from mmbuild.cli import main

    for command in ("build", "run", "inspect", "compare", "profile"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert f"usage: mmbuild {command}" in text
        assert "example:" in text and f"mmbuild {command} " in text.split("example:")[1]


def test_build_calibrates_from_images_like_the_python_api(work: Path, cnn_q8: Path) -> None:
    """The CLI's model file is byte for byte the model the Python API builds from the same
    folder, preprocessing and settings."""
    net = build_cnn()
    config = mm.BuilderConfig()
    config.parse_from_string(
        '{"precision_config": {"precision_mode": "qint8_mixed_float16", '
        '"weight_quant_granularity": "per_axis"}}'
    )
    data = ImageFolderData(work / "images", 5, Preprocess(size=(16, 16)), channels=3)
    assert len(data) == 3  # 12 images in batches of 5: 5, 5, 2
    calib = mm.Calibrator([data])
    calib.set_progress(False)
    assert calib.calibrate(net, config).ok()
    model = mm.Builder().build_model("build_cnn", net, config)
    assert (work / "cnn.calib.json").is_file()
    built = mm.Model()
    built.deserialize_from_file(str(cnn_q8))
    assert built.data.mode == "qint8_mixed_float16"
    from mmbuild.runtime.model_file import model_bytes

    assert model_bytes(built.data) == model_bytes(model.data)


def test_build_from_the_calibration_cache_alone(work: Path, cnn_q8: Path) -> None:
    out = work / "from_cache.mm"
    mmbuild(
        "build",
        "samples/sample_cnn.py:build_cnn",
        "-o",
        out,
        "--precision",
        "qint8_mixed_float16",
        "--calib-cache",
        work / "cnn.calib.json",
        "--set",
        "precision_config.weight_quant_granularity=per_axis",
    )
    assert out.read_bytes() == cnn_q8.read_bytes()


def test_inspect_json_is_the_python_report(cnn_q8: Path) -> None:
    doc = json.loads(mmbuild("inspect", cnn_q8, "--json").stdout)
    model = mm.Model()
    model.deserialize_from_file(str(cnn_q8))
    assert doc["model"] == model_summary(model)
    at_batch_1 = model.get_layer_report([np.zeros((1, 16, 16, 3), np.float32)])
    assert doc["layers"] == json.loads(at_batch_1.to_json())  # -1 is taken as 1
    assert doc["layers"]["peak_activation_bytes"] > 0
    first = doc["layers"]["rows"][0]
    assert first["name"] == "conv1" and first["input_precisions"][:2] == ["QINT8", "QINT8"]
    assert first["fused"] == ["fused_batch_norm_0", "activation_0"]
    assert doc["model"]["isa"] == features.level().name
    text = mmbuild("inspect", cnn_q8, "--input-shape", "input_0:4x16x16x3").stdout
    assert "mode: qint8_mixed_float16" in text and "[4, 16, 16, 16]" in text
    assert "peak activation memory" in text


def test_run_writes_the_outputs_of_enqueue(work: Path, cnn_q8: Path) -> None:
    out = work / "outputs.npz"
    text = mmbuild("run", cnn_q8, "--input", f"input_0={work / 'x.npy'}", "-o", out).stdout
    assert "probabilities" in text and f"wrote {out}" in text
    model = mm.Model()
    model.deserialize_from_file(str(cnn_q8))
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(np.load(work / "x.npy"))
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    with np.load(out) as saved:
        assert list(saved.files) == ["probabilities"]
        np.testing.assert_array_equal(saved["probabilities"], outputs[0].asnumpy())
        probs = saved["probabilities"]
        assert probs.dtype == np.float16 and probs.shape == (3, 10)


def test_compare_json_is_the_error_report_and_gates(work: Path, cnn_q8: Path) -> None:
    x = work / "x.npy"
    doc = json.loads(mmbuild("compare", cnn_q8, "--input", x, "--json").stdout)
    model = mm.Model()
    model.deserialize_from_file(str(cnn_q8))
    expected = json.loads(model.get_error_report([np.load(x)]).to_json())
    assert [r["name"] for r in doc["float32"]["rows"]] == [r["name"] for r in expected["rows"]]
    for got, want in zip(doc["float32"]["rows"], expected["rows"]):
        assert got["sqnr_db"] == pytest.approx(want["sqnr_db"], rel=1e-9)
        assert got["cosine"] == pytest.approx(want["cosine"], rel=1e-12)
    assert doc["failures"] == []
    softmax = next(r for r in expected["rows"] if r["name"] == "softmax_0")
    # a bound just above what the output step reaches fails with status 1, just below passes
    failed = mmbuild(
        "compare",
        cnn_q8,
        "--input",
        x,
        "--min-cosine",
        str(min(1.0, softmax["cosine"] + 1e-4)),
        status=1,
    )
    assert failed.stderr.count("\n") == 1 and "softmax_0 vs float32: cosine" in failed.stderr
    mmbuild("compare", cnn_q8, "--input", x, "--min-cosine", str(softmax["cosine"] - 1e-4))


def test_compare_against_onnxruntime_with_an_html_report(work: Path, mlp_q8: Path) -> None:
    pytest.importorskip("onnxruntime")
    html_path = work / "compare.html"
    feat = work / "feat.npy"
    doc = json.loads(
        mmbuild(
            "compare",
            mlp_q8,
            "--input",
            f"x={feat}",
            "--onnx",
            work / "mlp.onnx",
            "--html",
            html_path,
            "--json",
        ).stdout
    )
    rows = {r["name"]: r for r in doc["onnxruntime"]["rows"]}
    # the fused fc1 + relu step is compared on the relu's ONNX value "hr"; all four are named
    assert set(rows) == {r["name"] for r in doc["float32"]["rows"]}
    assert 15 < rows["softmax"]["sqnr_db"] < 80 and rows["softmax"]["cosine"] > 0.99
    # the float32 model matches onnxruntime closely: the comparison itself is sound
    f32 = work / "mlp_f32.mm"
    mmbuild("build", TESTS / "cli_models.py:mlp", "-o", f32)
    doc32 = json.loads(
        mmbuild(
            "compare",
            f32,
            "--input",
            feat,
            "--onnx",
            work / "mlp.onnx",
            "--json",
            "--max-abs",
            "1e-5",
        ).stdout
    )
    assert all(r["max_abs"] < 1e-5 for r in doc32["onnxruntime"]["rows"])
    from html_check import parse_report

    page = parse_report(html_path)
    assert page.sections == ["summary", "errors", "errors", "layers"]
    assert page.bars == 2 * len(rows)  # one SQNR chart per comparison


def test_profile_json(cnn_q8: Path) -> None:
    doc = json.loads(
        mmbuild(
            "profile", cnn_q8, "--batch", "1,3", "--runs", "5", "--threads", "1", "--json"
        ).stdout
    )
    model = mm.Model()
    model.deserialize_from_file(str(cnn_q8))
    names = {s.name for s in model.data.steps if s.op not in VIEW_OPS}  # views run nothing
    assert [p["batch"] for p in doc["profiles"]] == [1, 3]
    for p in doc["profiles"]:
        assert p["runs"] == 5 and p["threads"] == 1
        lat = p["latency"]
        assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["throughput"] == pytest.approx(p["batch"] / lat["mean_ms"] * 1e3, rel=1e-3)
        rows = p["rows"]
        assert {r["name"] for r in rows} == names
        assert [r["mean_ms"] for r in rows] == sorted((r["mean_ms"] for r in rows), reverse=True)
        assert math.isclose(sum(r["share"] for r in rows), 1.0, abs_tol=1e-4)
        conv1 = next(r for r in rows if r["name"] == "conv1")
        assert conv1["kernel"] == "conv.qint" and conv1["input_precisions"][0] == "QINT8"


def test_bad_input_is_one_line_with_status_2_and_writes_nothing(work: Path) -> None:
    out = work / "never.mm"
    done = mmbuild(
        "build",
        "samples/sample_cnn.py:build_cnn",
        "-o",
        out,
        "--set",
        "precision_config.precison_mode=force_float16",
        status=2,
    )
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("mmbuild build: error: ")
    assert "precison_mode" in done.stderr and "precision_mode" in done.stderr  # did you mean
    assert "Traceback" not in done.stderr and not out.exists()
    verbose = mmbuild("-v", "inspect", work / "missing.mm", status=2)
    assert "Traceback" in verbose.stderr and "model file" in verbose.stderr


@pytest.mark.slow
def test_the_worked_example_of_docs_cli_md_runs_as_written(tmp_path: Path) -> None:
    """The image-folder example of docs/cli.md: its Python block, then each ``$ mmbuild``
    command, whose output must be what the page shows (timings and the ISA line aside)."""
    text = (ROOT / "docs" / "cli.md").read_text()
    example = text.split("## A worked example")[1].split("### From an ONNX file")[0]
    script = example.split("python - <<'EOF'\n")[1].split("\nEOF\n")[0]
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=120)
    blocks = [b.split("```")[0] for b in example.split("```console\n")[1:]]
    for block in blocks:
        command, _, shown = block.partition("\n")
        while command.endswith("\\"):
            more, _, shown = shown.partition("\n")
            command = command[:-1] + " " + more.strip()
        if not command.startswith("$ mmbuild "):
            continue
        args = command.removeprefix("$ mmbuild ").split()
        done = subprocess.run(
            [sys.executable, "-m", "mmbuild", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_env(),
            timeout=900,
        )
        assert done.returncode == 0, done.stderr
        want = shown.split("$ echo")[0].splitlines()
        got = done.stdout.splitlines()
        if args[0] == "profile":  # times vary: compare the step names of the first table
            steps_got = got[2 : got.index("")] if "" in got else got[2:]
            steps_want = want[2 : want.index("")]
            assert {line.split()[0] for line in steps_got} == {w.split()[0] for w in steps_want}
            continue
        assert [g for g in got if not g.startswith("isa")] == [
            w for w in want if not w.startswith("isa")
        ]
