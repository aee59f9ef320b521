"""The first real kernel compile of a process is announced once; a cache load is not."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from numba.core import event

from mmbuild.calib import calibrator
from mmbuild.kernels import compile_notice
from mmbuild.kernels.compile_notice import CompileNotice

ROOT = Path(__file__).resolve().parents[1]
LINE = "mmbuild: compiling kernels for this CPU (first run only; cached in "


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _compile_event(module: str) -> event.Event:
    def kernel() -> None: ...

    kernel.__module__ = module
    dispatcher = SimpleNamespace(
        py_func=kernel, _cache=SimpleNamespace(cache_path="/c/__pycache__")
    )
    return event.Event("numba:compile", event.EventStatus.START, data={"dispatcher": dispatcher})


def _announce(
    notice: CompileNotice, module: str, monkeypatch: pytest.MonkeyPatch, stderr: io.StringIO
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr)
    notice.on_start(_compile_event(module))


def test_first_compile_logs_once_and_tells_a_terminal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MMBUILD_PROGRESS", raising=False)
    monkeypatch.setattr(compile_notice.numba_config, "CACHE_DIR", "/numba/cache")
    notice, terminal = CompileNotice(), _Terminal()
    with caplog.at_level(logging.INFO, logger="mmbuild"):
        _announce(notice, "mmbuild.kernels.cpu.gemm", monkeypatch, terminal)
        _announce(notice, "_mmbuild_generated_tiles_0123", monkeypatch, terminal)
    assert notice.announced
    assert terminal.getvalue() == LINE + "/numba/cache)\n"
    records = [r for r in caplog.records if r.name.startswith("mmbuild")]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "compiling kernels for this CPU (first run only; cached in /numba/cache)" in (
        records[0].getMessage()
    )
    assert "mmbuild.kernels.cpu.gemm" in records[0].getMessage()


def test_without_numba_cache_dir_the_kernels_own_cache_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MMBUILD_PROGRESS", raising=False)
    monkeypatch.setattr(compile_notice.numba_config, "CACHE_DIR", "")
    terminal = _Terminal()
    _announce(CompileNotice(), "mmbuild.kernels.cpu.gemm", monkeypatch, terminal)
    assert terminal.getvalue() == LINE + "/c/__pycache__)\n"


@pytest.mark.parametrize(
    ("progress", "terminal", "shown"),
    [("0", True, False), ("1", False, False), ("1", True, True)],
    ids=["MMBUILD_PROGRESS=0", "not a terminal", "terminal"],
)
def test_stderr_line_switches_off_like_the_calibration_bar(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    progress: str,
    terminal: bool,
    shown: bool,
) -> None:
    assert compile_notice.PROGRESS_ENV == calibrator.PROGRESS_ENV
    monkeypatch.setenv("MMBUILD_PROGRESS", progress)
    stderr = _Terminal() if terminal else io.StringIO()
    with caplog.at_level(logging.INFO, logger="mmbuild"):
        _announce(CompileNotice(), "mmbuild.kernels.cpu.gemm", monkeypatch, stderr)
    assert stderr.getvalue().startswith(LINE) is shown
    assert len([r for r in caplog.records if r.name.startswith("mmbuild")]) == 1  # log regardless


def test_other_numba_code_is_not_announced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MMBUILD_PROGRESS", raising=False)
    notice, terminal = CompileNotice(), _Terminal()
    with caplog.at_level(logging.INFO):
        _announce(notice, "my_own_numba_code", monkeypatch, terminal)
        notice.on_start(event.Event("numba:compile", event.EventStatus.START, data=None))
    assert not notice.announced
    assert terminal.getvalue() == "" and caplog.records == []


def test_listener_is_registered_by_importing_the_kernels() -> None:
    listeners: Any = event._registered["numba:compile"]
    assert compile_notice.notice in listeners


_CHILD = textwrap.dedent(
    """
    import logging
    logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(message)s")
    import numpy as np
    import mmbuild as mm
    from mmbuild.kernels import compile_notice

    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 8]))
    relu = net.add_i_activation_node(x, mm.IActivation.RELU)
    assert net.mark_output(relu.get_output(0)).ok()
    context = mm.Builder().build_model("n", net, mm.BuilderConfig()).create_i_engine()
    context = context.create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(np.array([[-1, 2, -3, 4, -5, 6, -7, 8]] * 2, np.float32))
    outputs = []
    assert context.enqueue(inputs, outputs).ok()
    assert outputs[0].asnumpy().tolist()[0] == [0, 2, 0, 4, 0, 6, 0, 8]
    print("announced", compile_notice.notice.announced)
    """
)


def test_a_real_compile_is_announced_and_a_cache_load_is_not(tmp_path: Path) -> None:
    """Two processes on one empty cache: the first compiles (numba fires "numba:compile"), the
    second loads every kernel from the cache (numba fires nothing)."""
    env = dict(
        os.environ,
        NUMBA_CACHE_DIR=str(tmp_path / "numba"),
        MMBUILD_CACHE_DIR=str(tmp_path / "kernels"),
        MMBUILD_PROGRESS="1",  # the line is still not written: stderr is a pipe
        PYTHONPATH=str(ROOT),
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", _CHILD],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = runs
    notices = [line for line in first.stderr.splitlines() if "compiling kernels" in line]
    assert len(notices) == 1, first.stderr
    assert notices[0].startswith("LOG mmbuild.kernels.compile_notice compiling kernels")
    assert f"cached in {tmp_path / 'numba'})" in notices[0]
    assert "announced True" in first.stdout
    assert "compiling kernels" not in second.stderr
    assert "announced False" in second.stdout
    assert LINE not in first.stderr + second.stderr
