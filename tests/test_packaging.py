"""pyproject.toml declares what the repository imports, and its entry points exist.

Every top-level module imported by tests/, samples/ and benchmarks/ is the standard library,
mmbuild, a module of those folders, or provided by a distribution that pyproject.toml declares.
A package that only happens to be installed on the machine (as a dependency of a dependency, or
by hand) fails here, naming the file, the line and the module:

- tests/ run after ``pip install -e ".[test]"`` (the README's command), so what they import must be
  installed and declared in ``dependencies`` or the ``test`` extra;
- samples/ and benchmarks/ may import what another extra declares (``bench``, ``samples``). That
  extra need not be installed here; a module that is not installed must then be named like the
  distribution declared for it (or be listed in ``IMPORT_NAMES``). CI installs ``bench`` too, so an
  undeclared benchmark import is missing there and fails.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "samples", "benchmarks")
FIRST_PARTY = frozenset({"mmbuild"})
# Import names that differ from the name of the distribution that provides them, for modules of
# an extra that may not be installed (packages_distributions() knows installed ones only).
IMPORT_NAMES = {"sklearn": "scikit-learn"}
# What the tests may import: the runtime dependencies and this extra.
TEST_EXTRA = "test"


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it: ``Scikit_Learn`` -> ``scikit-learn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(
    pyproject: Mapping[str, Any], extras: Iterable[str] | None = None
) -> set[str]:
    """Normalized names of ``dependencies`` and of the given extras (default: all of them):
    ``"onnx==1.22.0"`` -> ``onnx``."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    requirements = list(project.get("dependencies", []))
    for extra in optional if extras is None else extras:
        requirements += optional.get(extra, [])
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if match is None:
            raise ValueError(f"pyproject.toml: cannot read the requirement {requirement!r}")
        names.add(normalize(match.group(1)))
    return names


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.partition(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.partition(".")[0]))
    return sorted(found)


def local_modules(folders: Iterable[Path]) -> set[str]:
    """Modules the folders hold themselves (conftest puts tests/ and samples/ on sys.path)."""
    names = set()
    for folder in folders:
        names |= {p.stem for p in folder.glob("*.py")}
        names |= {p.parent.name for p in folder.glob("*/__init__.py")}
    return names


def undeclared_imports(
    files: Sequence[Path],
    pyproject: Mapping[str, Any],
    provided: Mapping[str, Sequence[str]],
    local: set[str],
) -> list[str]:
    """One message per import of a third-party module that no allowed distribution provides.

    A file in a folder named ``tests`` may use ``dependencies`` and the test extra; any other file
    every extra. ``provided`` maps a top-level module to the distributions that provide it, as
    ``importlib.metadata.packages_distributions()`` does.
    """
    everything = declared_distributions(pyproject)
    for_tests = declared_distributions(pyproject, [TEST_EXTRA])
    problems = []
    for path in files:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        is_test = path.parent.name == "tests"
        allowed, where = (
            (for_tests, f"dependencies or the {TEST_EXTRA} extra (tests run with .[{TEST_EXTRA}])")
            if is_test
            else (everything, "dependencies or an extra (test, bench, samples)")
        )
        for line, module in imported_modules(path):
            if module in sys.stdlib_module_names or module in FIRST_PARTY or module in local:
                continue
            dists = sorted(set(provided.get(module, ())))
            if not dists and not is_test and normalize(IMPORT_NAMES.get(module, module)) in allowed:
                continue  # declared in an extra that is not installed here
            if not dists:
                problems.append(
                    f"{shown}:{line}: imports {module!r}, which no installed distribution "
                    f"provides; declare the distribution in {where} and install it"
                )
            elif not any(normalize(d) in allowed for d in dists):
                problems.append(
                    f"{shown}:{line}: imports {module!r} (from {', '.join(dists)}), which "
                    f"pyproject.toml does not declare in {where}; add it there"
                )
    return problems


def _scanned_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))


def test_every_import_of_tests_samples_benchmarks_is_declared() -> None:
    files = _scanned_files()
    assert len(files) > 20 and ROOT / "tests" / "test_packaging.py" in files
    problems = undeclared_imports(
        files,
        _pyproject(),
        importlib.metadata.packages_distributions(),
        local_modules(ROOT / folder for folder in SCANNED),
    )
    assert problems == [], "\n".join(problems)


def test_an_undeclared_import_fails_naming_file_and_module(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "benchmarks").mkdir()
    fake_test = tmp_path / "tests" / "test_fake.py"
    fake_test.write_text(
        "import os\nimport numpy as np\nimport helper\n\n"
        "def f():\n    from pluggy import HookspecMarker\n    import yaml.loader\n"
        "    import not_a_module_anywhere\n    import threadpoolctl\n"
    )
    (tmp_path / "tests" / "helper.py").write_text("")
    fake_bench = tmp_path / "benchmarks" / "bench_fake.py"
    fake_bench.write_text("import threadpoolctl\nimport sklearn.datasets\nimport not_declared\n")
    provided = {
        **importlib.metadata.packages_distributions(),
        "yaml": ["PyYAML"],
        "numpy": ["numpy"],
    }
    assert "pluggy" in provided  # installed with pytest, declared by nobody here
    provided.pop("threadpoolctl", None)  # as after pip install -e ".[test]"
    provided.pop("sklearn", None)
    problems = undeclared_imports(
        [fake_test, fake_bench], _pyproject(), provided, local_modules([tmp_path / "tests"])
    )
    assert len(problems) == 5, "\n".join(problems)
    test_only = "in dependencies or the test extra (tests run with .[test])"
    assert problems[0] == (
        f"{fake_test}:6: imports 'pluggy' (from pluggy), which pyproject.toml does not declare "
        f"{test_only}; add it there"
    )
    assert problems[1].startswith(f"{fake_test}:7: imports 'yaml' (from PyYAML), which pyproject")
    assert problems[2].startswith(f"{fake_test}:8: imports 'not_a_module_anywhere', which no ")
    assert problems[3].startswith(f"{fake_test}:9: imports 'threadpoolctl', which no installed")
    assert test_only in problems[3]  # declared, but in the bench extra only
    assert problems[4].startswith(f"{fake_bench}:3: imports 'not_declared', which no installed")


def test_declared_distributions_reads_every_requirement_form() -> None:
    pyproject = {
        "project": {
            "dependencies": ["numpy>=1.26", "Typing_Extensions; python_version < '3.12'"],
            "optional-dependencies": {
                "test": ["onnx==1.22.0", "scikit-learn[alldeps] >=1"],
                "bench": ["threadpoolctl"],
            },
        }
    }
    assert declared_distributions(pyproject) == {
        "numpy",
        "typing-extensions",
        "onnx",
        "scikit-learn",
        "threadpoolctl",
    }
    assert "threadpoolctl" not in declared_distributions(pyproject, ["test"])
    declared = declared_distributions(_pyproject(), [TEST_EXTRA])
    assert {"numpy", "numba", "pytest", "jsonschema", "onnx", "onnxruntime"} <= declared
    assert {"threadpoolctl", "scikit-learn"} <= declared_distributions(_pyproject())


# -- entry points ---------------------------------------------------------------------------------


def _entry_points() -> list[tuple[str, str]]:
    project = _pyproject()["project"]
    groups = {"scripts": project.get("scripts", {}), "gui-scripts": project.get("gui-scripts", {})}
    groups.update(project.get("entry-points", {}))
    return [
        (f"{group}:{name}", target) for group, eps in groups.items() for name, target in eps.items()
    ]


@pytest.mark.parametrize(("entry_point", "target"), _entry_points())
def test_entry_point_names_a_function_that_exists(entry_point: str, target: str) -> None:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        assert hasattr(obj, part), f"entry point {entry_point} = {target!r}: no {part!r} there"
        obj = getattr(obj, part)
    assert callable(obj), f"entry point {entry_point} = {target!r} is not callable"


def test_pyproject_declares_the_console_script() -> None:
    assert ("scripts:mmbuild", "mmbuild.cli:main") in _entry_points()


def _installed_from_this_tree() -> bool:
    # every mmbuild distribution on the path: the source tree's own mmbuild.egg-info (found
    # first, as the tree is on sys.path) has no direct_url.json; the installed one has
    for dist in importlib.metadata.distributions(name="mmbuild"):
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.removeprefix("file://") == str(ROOT):
            return True
    return False


def test_installed_console_script_runs() -> None:
    if not _installed_from_this_tree():
        pytest.skip(f"the mmbuild installed in {sys.prefix} is not this checkout ({ROOT})")
    import mmbuild

    script = Path(sysconfig.get_path("scripts")) / "mmbuild"
    commands = {
        "version": [str(script), "--version"],
        "help": [str(script), "--help"],
        "module help": [sys.executable, "-m", "mmbuild", "--help"],
    }
    printed = {}
    for what, command in commands.items():
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, f"{what}: {command} failed:\n{run.stderr}"
        assert run.stdout.strip(), f"{what}: {command} printed nothing"
        printed[what] = run.stdout
    assert mmbuild.__version__ in printed["version"]


# -- the wheel ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_holds_the_schemas_and_nothing_of_the_repository(tmp_path: Path) -> None:
    # build from a copy: setuptools leaves build/ and *.egg-info in the tree it builds
    source = tmp_path / "src"
    caches = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(ROOT / "mmbuild", source / "mmbuild", ignore=caches)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("mmbuild-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for schema in ("builder_config", "calibration_cache", "model_manifest"):
        assert f"mmbuild/schemas/{schema}.schema.json" in names
    assert not [n for n in names if n.startswith(("tests/", "samples/", "benchmarks/"))]
    assert not [n for n in names if n.endswith((".nbi", ".nbc", ".pyc"))]
