"""Bad command lines and bad files, through ``mmbuild.cli.main`` in this process: the exit
status, one line on stderr that names what is wrong, and nothing written at the output path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_models import mlp

import mmbuild as mm
from mmbuild.cli import main

TESTS = Path(__file__).parent
MLP = f"{TESTS / 'cli_models.py'}:mlp"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_errors") / "mlp.mm"
    assert mm.Builder().build_model("mlp", mlp()).serialize_to_file(str(path)).ok()
    return path


def fails(capsys: pytest.CaptureFixture[str], status: int, *args: str | Path) -> str:
    """Run the command line; assert ``status`` and a single stderr line; return that line."""
    assert main([str(a) for a in args]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_usage_errors_of_argparse_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build"]) == 2  # MODEL and -o missing
    assert "required" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main([]) == 0 and "COMMAND" in capsys.readouterr().out


def test_missing_and_foreign_model_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails(capsys, 2, "inspect", tmp_path / "nope.mm")
    assert "model file" in err and "does not exist" in err
    junk = tmp_path / "junk.mm"
    junk.write_bytes(b"not a zip at all")
    err = fails(capsys, 1, "inspect", junk)  # it exists, but is not a model: the work fails
    assert "junk.mm" in err


def test_input_names_and_shapes(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 8), np.float32))
    err = fails(capsys, 2, "run", model_file, "--input", f"y={x}")
    assert "no input 'y'" in err and "['x']" in err
    err = fails(capsys, 2, "run", model_file, "--input", f"x={tmp_path / 'missing.npy'}")
    assert "missing.npy" in err and "does not exist" in err
    np.save(x, np.zeros((2, 5), np.float32))
    err = fails(capsys, 2, "run", model_file, "--input", f"x={x}")
    assert "[2, 5]" in err and "[-1, 8]" in err
    err = fails(capsys, 2, "run", model_file)
    assert "no data for input 'x'" in err and "--random" in err
    err = fails(capsys, 2, "run", model_file, "--random", "--input-shape", "x:2by8")
    assert "not a shape" in err
    err = fails(capsys, 2, "run", model_file, "--random", "--input-shape", "x:-1x8")
    assert "has a -1" in err
    err = fails(capsys, 2, "run", model_file, "--random", "--input-shape", "x:2x9")
    assert "[2, 9]" in err and "[-1, 8]" in err  # a shape that does not fit the input


def test_config_keys_and_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mm"
    err = fails(capsys, 2, "build", MLP, "-o", out, "--set", "precision_config.nope=1")
    assert "nope" in err
    err = fails(capsys, 2, "build", MLP, "-o", out, "--config", tmp_path / "build.json")
    assert "build.json" in err and "does not exist" in err
    err = fails(capsys, 2, "build", MLP, "-o", out, "--node-precision", "fc9:0=FLOAT16")
    assert "no node 'fc9' (did you mean 'fc2'?)" in err
    err = fails(capsys, 2, "build", MLP, "-o", out, "--node-precision", "fc1:0=FLOAT12")
    assert "FLOAT12" in err and "FLOAT16" in err
    err = fails(capsys, 2, "build", f"{TESTS / 'cli_models.py'}:mpl", "-o", out)
    assert "no function 'mpl'" in err and "'mlp'" in err
    err = fails(capsys, 1, "build", f"{TESTS / 'cli_models.py'}:not_a_network", "-o", out)
    assert "must return an mm.Network" in err
    assert not out.exists()


def test_a_failed_build_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mm"
    out.write_bytes(b"old")  # an earlier file stays as it was
    err = fails(capsys, 1, "build", MLP, "-o", out, "--precision", "qint8_mixed_float32")
    assert "range" in err  # no calibration: the missing range is named
    assert out.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*tmp"))


def test_calibration_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mm"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    q8 = ["build", MLP, "-o", out, "--precision", "qint8_mixed_float32"]
    err = fails(capsys, 2, *q8, "--calib", empty)
    assert "holds no images" in err and ".png" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    err = fails(capsys, 1, *q8, "--calib", bad, "--preprocess", "layout=NHWC")
    assert "a.png" in err and "cannot be read" in err
    err = fails(capsys, 2, *q8, "--calib", tmp_path / "data.npz")
    assert "data.npz" in err
    err = fails(capsys, 2, *q8, "--calib", bad, "--preprocess", "blur=3")
    assert "unknown option 'blur'" in err
    assert not out.exists()


def test_verbose_prints_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "-v", str(tmp_path / "nope.mm")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("does not exist")


def test_compare_bound_fails_with_status_1(
    model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a float32 model is exact against float32; a bound of max abs < 0 cannot be met
    assert main(["compare", str(model_file), "--random", "--max-abs", "0"]) == 0
    capsys.readouterr()
    err = fails(capsys, 1, "compare", model_file, "--random", "--max-abs", "-1")
    assert "softmax vs float32: max abs 0 > -1.0" in err


def test_onnx_models_build_through_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_models import write_mlp_onnx

    onnx_file = write_mlp_onnx(tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.mm"
    assert main(["build", str(onnx_file), "-o", str(out)]) == 0
    model = mm.Model()
    model.deserialize_from_file(str(out))
    assert model.get_input_names() == ["x"] and model.get_output_names() == ["probs"]
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    err = fails(capsys, 1, "build", tmp_path / "broken.onnx", "-o", out)
    assert "broken.onnx" in err
    err = fails(capsys, 2, "build", tmp_path / "missing.onnx", "-o", out)
    assert "ONNX file" in err and "does not exist" in err
