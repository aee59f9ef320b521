"""Test-wide settings: one numba cache for the whole run, hypothesis profiles."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "mmbuild" / "numba"))
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "samples"))

import pytest
from hypothesis import settings


def _runnable_levels() -> tuple[str, ...]:
    from mmbuild.kernels.cpu import features

    return features.runnable_levels()


settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(params=_runnable_levels())
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test once per instruction-set level this CPU can run (``portable`` always): the
    kernels bound during the test take that level instead of the process's best."""
    from mmbuild.kernels.cpu import features

    with features.using_level(request.param):
        yield str(request.param)


def pytest_terminal_summary(terminalreporter: object) -> None:
    """The fuzz tests' outcome counts (what ran, and how each case ended)."""
    from fuzzcount import report

    lines = report()
    if lines:
        write = terminalreporter.write_line  # type: ignore[attr-defined]
        write("fuzz outcome counts (cases run this session):")
        for line in lines:
            write(f"  {line}")
