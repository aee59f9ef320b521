"""The JSON Schemas ship in the package (mmbuild.schemas), and a config may name its schema."""

from __future__ import annotations

import doctest
import json
import logging
from pathlib import Path

import jsonschema
import pytest

import mmbuild as mm
import mmbuild.schemas
from mmbuild.tools import write_schemas

ROOT = Path(__file__).resolve().parents[1]


def test_every_published_schema_is_package_data() -> None:
    assert {f"{name}.schema.json" for name in mmbuild.schemas.NAMES} == set(write_schemas.SCHEMAS)
    rendered = write_schemas.render_schemas()
    for name in mmbuild.schemas.NAMES:
        path = mmbuild.schemas.path(name)
        assert path.parent == Path(mmbuild.__file__).resolve().parent / "schemas"
        assert path.read_text(encoding="utf-8") == rendered[path.name]
        assert path.read_bytes() == (ROOT / "include" / path.name).read_bytes()
        assert mmbuild.schemas.load(name) == json.loads(rendered[path.name])
        assert mmbuild.schemas.path(path.name) == path  # the file name works too
    assert mmbuild.schemas.load("model_manifest")["$id"].endswith("/model_manifest.schema.json")


def test_unknown_schema_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(mm.MMError, match=r"'builder_confg' \(did you mean 'builder_config'\?\)"):
        mmbuild.schemas.path("builder_confg")
    with pytest.raises(mm.MMError, match="calibration_cache") as info:
        mmbuild.schemas.load("config")
    assert info.value.code == mm.Code.NOT_FOUND
    with pytest.raises(mm.MMError, match="must be a str, got int"):
        mmbuild.schemas.path(1)  # type: ignore[arg-type]


def test_write_schemas_writes_and_checks_both_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    include, package = tmp_path / "include", tmp_path / "package"
    monkeypatch.setattr(write_schemas, "OUT_DIRS", (include, package))
    assert write_schemas.main(["--check"]) == 1
    assert write_schemas.main([]) == 0
    assert write_schemas.main(["--check"]) == 0
    for name in write_schemas.SCHEMAS:
        assert (include / name).read_bytes() == (package / name).read_bytes()
    (package / "builder_config.schema.json").write_text("{}\n")
    assert write_schemas.main(["--check"]) == 1
    assert write_schemas.main(["--check", "--out", str(include)]) == 0
    assert write_schemas.stale_schemas(package) == ["builder_config.schema.json"]


_MODE = {"precision_config": {"precision_mode": "force_float16"}}


def test_config_accepts_and_ignores_a_top_level_schema_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    schema_path = str(mmbuild.schemas.path("builder_config"))
    text = json.dumps({"$schema": schema_path, **_MODE})
    (tmp_path / "build.json").write_text(text)
    plain = mm.BuilderConfig()
    plain.parse_from_string(json.dumps(_MODE))
    with caplog.at_level(logging.WARNING):
        from_text, from_file = mm.BuilderConfig(), mm.BuilderConfig()
        assert from_text.parse_from_string(text).ok()
        assert from_file.parse_from_file(tmp_path / "build.json").ok()
    assert caplog.records == []  # not even an "ignored key" warning
    for config in (from_text, from_file):
        assert config == plain and config.precision_mode == "force_float16"
        assert config.ignored_keys() == [] and "$schema" not in config.to_json()
    jsonschema.validate(json.loads(text), mmbuild.schemas.load("builder_config"))


def test_schema_key_must_be_a_string_and_only_at_the_top() -> None:
    config = mm.BuilderConfig()
    config.parse_from_string(json.dumps(_MODE))
    before = config.to_json()
    with pytest.raises(mm.MMError, match=r'"\$schema" must be a string'):
        config.parse_from_string('{"$schema": 3, "precision_config": {}}')
    nested = {"precision_config": {"$schema": "x", "precision_mode": "force_float32"}}
    with pytest.raises(mm.MMError, match=r"unknown key 'precision_config.\$schema'"):
        config.parse_from_string(json.dumps(nested))
    assert config.to_json() == before  # a refused parse changes nothing
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"$schema": 3}, mmbuild.schemas.load("builder_config"))


def test_docstring_examples() -> None:
    result = doctest.testmod(mmbuild.schemas)
    assert result.attempted > 0 and result.failed == 0
