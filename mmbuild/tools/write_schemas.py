"""Write the published JSON Schemas from the pydantic models that define them.

The same text goes to two places: ``include/`` of the source tree (the language-neutral copy) and
``mmbuild/schemas/``, the package data an installed mmbuild reads (``mmbuild.schemas.path``).
``python -m mmbuild.tools.write_schemas`` rewrites both; ``--check`` only compares and exits 1
when a file is stale, for CI; ``--out DIR`` writes or checks that one directory instead. A test
compares ``render_schemas()`` with both copies too, so a model change without regenerated schemas
fails.

To publish another schema, add one entry to ``SCHEMAS``: the file name and the model, as
``"module:Class"``, imported only when rendered.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mmbuild import schemas

logger = logging.getLogger(__name__)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URL = "https://mmbuild.dev/schemas/"

# file name -> "module:Class" of the pydantic model it is generated from.
SCHEMAS: dict[str, str] = {
    "builder_config.schema.json": "mmbuild.config.schema:BuilderConfigModel",
    "calibration_cache.schema.json": "mmbuild.calib.cache:CalibrationCacheModel",
    "model_manifest.schema.json": "mmbuild.runtime.manifest:ManifestModel",
}

# include/ of the source tree (the package is installed editable, so this is the repository's).
DEFAULT_OUT_DIR = Path(__file__).resolve().parents[2] / "include"
# the package data of mmbuild.schemas
PACKAGE_DIR = schemas.DIRECTORY
OUT_DIRS: tuple[Path, ...] = (DEFAULT_OUT_DIR, PACKAGE_DIR)


def _load_model(target: str) -> type[BaseModel]:
    module_name, _, class_name = target.partition(":")
    model = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{target} is not a pydantic model")
    return model


def render_schema(filename: str, model: type[BaseModel]) -> str:
    """The schema text for ``model``, published as ``filename``: sorted keys, trailing newline.

    >>> from mmbuild.config.schema import BuilderConfigModel
    >>> text = render_schema("builder_config.schema.json", BuilderConfigModel)
    >>> json.loads(text)["$id"]
    'https://mmbuild.dev/schemas/builder_config.schema.json'
    """
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_BASE_URL + filename,
        **model.model_json_schema(),
    }
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_schemas() -> dict[str, str]:
    """Every published schema: file name -> text, as ``write_schemas`` writes it."""
    return {name: render_schema(name, _load_model(target)) for name, target in SCHEMAS.items()}


def stale_schemas(out_dir: Path = DEFAULT_OUT_DIR) -> list[str]:
    """The file names under ``out_dir`` that are missing or differ from ``render_schemas()``."""
    stale = []
    for name, text in render_schemas().items():
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def write_schemas(out_dir: Path = DEFAULT_OUT_DIR) -> list[Path]:
    """Write every schema under ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        logger.info("wrote %s", path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmbuild.tools.write_schemas", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, help="this output directory only (default: include/ and the package)"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a schema file is stale"
    )
    args = parser.parse_args(argv)
    out_dirs = (args.out,) if args.out is not None else OUT_DIRS
    if args.check:
        stale = [out_dir / name for out_dir in out_dirs for name in stale_schemas(out_dir)]
        for path in stale:
            print(f"stale: {path} (run python -m mmbuild.tools.write_schemas)")
        return 1 if stale else 0
    for out_dir in out_dirs:
        for path in write_schemas(out_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
