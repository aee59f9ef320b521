"""The JSON Schemas of mmbuild's files, shipped inside the installed package.

- ``builder_config``: a builder configuration (``BuilderConfig.parse_from_file``);
- ``calibration_cache``: a calibration cache (``Calibrator`` with a cache path);
- ``model_manifest``: the ``manifest.json`` inside a model file.

``path(name)`` gives the file, ``load(name)`` its parsed JSON:

>>> import mmbuild.schemas
>>> mmbuild.schemas.path("builder_config").name
'builder_config.schema.json'
>>> mmbuild.schemas.load("builder_config")["title"]
'mmbuild builder configuration'

A builder config file may name its schema so that an editor completes and checks its keys;
mmbuild accepts and ignores that key at the top level:
``{"$schema": "<mmbuild.schemas.path('builder_config')>", "precision_config": {...}}``.

The files are generated from the pydantic models by ``python -m mmbuild.tools.write_schemas``,
which writes the same text here and under ``include/`` of the source tree (the language-neutral
copy); a test checks that both are current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmbuild.errors import Code, MMError, did_you_mean

__all__ = ["DIRECTORY", "NAMES", "SUFFIX", "load", "path"]

#: The directory that holds the schema files (inside the installed package).
DIRECTORY = Path(__file__).resolve().parent
SUFFIX = ".schema.json"
#: Every schema name, as ``path`` and ``load`` take it.
NAMES: tuple[str, ...] = tuple(sorted(p.name[: -len(SUFFIX)] for p in DIRECTORY.glob("*" + SUFFIX)))


def path(name: str) -> Path:
    """The file of the schema ``name`` (``"builder_config"``, or its file name
    ``"builder_config.schema.json"``); an unknown name raises ``MMError`` (``NOT_FOUND``)."""
    if not isinstance(name, str):
        raise MMError(f"mmbuild.schemas.path: the name must be a str, got {type(name).__name__}")
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if stem not in NAMES:
        raise MMError(
            f"mmbuild.schemas: no schema named {name!r}{did_you_mean(stem, NAMES)}; "
            f"the schemas are {', '.join(NAMES)}",
            Code.NOT_FOUND,
        )
    return DIRECTORY / f"{stem}{SUFFIX}"


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` parsed from its file, as a dict (see ``path``)."""
    schema: dict[str, Any] = json.loads(path(name).read_text(encoding="utf-8"))
    return schema
