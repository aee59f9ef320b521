"""Tests of BuilderConfig (parse, merge, errors, ignored keys) and of its published JSON Schema."""

from __future__ import annotations

import doctest
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import mmbuild.config.builder_config as builder_config_module
import mmbuild.tools.write_schemas as write_schemas_module
from mmbuild.config import (
    ACTIVATION_QUANT_ALGOS,
    IGNORED_KEYS,
    PRECISION_MODES,
    WEIGHT_QUANT_GRANULARITIES,
    BuilderConfig,
    BuilderConfigModel,
)
from mmbuild.errors import Code, MMError
from mmbuild.tools.write_schemas import DEFAULT_OUT_DIR, main, render_schemas, stale_schemas

SCHEMA_FILE = DEFAULT_OUT_DIR / "builder_config.schema.json"
LOGGER = "mmbuild.config.builder_config"


def parsed(*texts: str) -> BuilderConfig:
    config = BuilderConfig()
    for text in texts:
        assert config.parse_from_string(text).ok()
    return config


def mode(value: str) -> str:
    return json.dumps({"precision_config": {"precision_mode": value}})


# -- defaults and values -------------------------------------------------------------------------


def test_defaults() -> None:
    config = BuilderConfig()
    assert config.precision_mode == "force_float32"
    assert config.weight_quant_granularity == "per_tensor"
    assert config.weight_quant_range == "full"
    assert config.activation_quant_algo == "symmetric"
    assert config.activation_quant_mode == "static"
    assert config.custom_ranges == {}
    assert config.ignored_keys() == []
    assert isinstance(config.model, BuilderConfigModel)
    assert json.loads(config.to_json()) == {
        "precision_config": {
            "precision_mode": "force_float32",
            "weight_quant_granularity": "per_tensor",
            "weight_quant_range": "full",
            "activation_quant_algo": "symmetric",
            "activation_quant_mode": "static",
            "cross_layer_equalization": False,
            "bias_correction": False,
        },
        "custom_ranges": {},
    }


def test_allowed_values_are_the_documented_ones() -> None:
    assert PRECISION_MODES == (
        "force_float32",
        "force_float16",
        "qint8_mixed_float16",
        "qint8_mixed_float32",
        "qint16_mixed_float16",
        "qint16_mixed_float32",
    )
    assert WEIGHT_QUANT_GRANULARITIES == ("per_tensor", "per_axis")
    assert ACTIVATION_QUANT_ALGOS == ("symmetric", "asymmetric")


@pytest.mark.parametrize("value", PRECISION_MODES)
def test_each_precision_mode_parses(value: str) -> None:
    config = parsed(mode(value))
    assert config.precision_mode == value
    assert config.model.precision_config.precision_mode == value
    # the other keys keep their defaults
    assert config.weight_quant_granularity == "per_tensor"
    assert config.activation_quant_algo == "symmetric"


@pytest.mark.parametrize("value", WEIGHT_QUANT_GRANULARITIES)
def test_each_granularity_parses(value: str) -> None:
    config = parsed(json.dumps({"precision_config": {"weight_quant_granularity": value}}))
    assert config.weight_quant_granularity == value


@pytest.mark.parametrize("value", ACTIVATION_QUANT_ALGOS)
def test_each_activation_algo_parses(value: str) -> None:
    config = parsed(json.dumps({"precision_config": {"activation_quant_algo": value}}))
    assert config.activation_quant_algo == value


def test_parse_returns_ok_status() -> None:
    status = BuilderConfig().parse_from_string("{}")
    assert status.ok()
    assert status.code() == Code.OK


def test_custom_ranges_bare_numbers_become_lists_of_floats() -> None:
    config = parsed(
        '{"custom_ranges": {"x": {"min": -2, "max": 3}, "w": {"min": [0, -1], "max": [1.5, 1]}}}'
    )
    assert config.custom_ranges == {"x": ([-2.0], [3.0]), "w": ([0.0, -1.0], [1.5, 1.0])}
    assert all(isinstance(v, float) for lo, hi in config.custom_ranges.values() for v in lo + hi)


def test_custom_range_equal_bounds_allowed() -> None:
    assert parsed('{"custom_ranges": {"x": {"min": 1, "max": 1}}}').custom_ranges == {
        "x": ([1.0], [1.0])
    }


def test_custom_ranges_is_a_copy() -> None:
    config = parsed('{"custom_ranges": {"x": {"min": -1, "max": 1}}}')
    config.custom_ranges["x"][0][0] = 100.0
    config.custom_ranges["y"] = ([0.0], [1.0])
    assert config.custom_ranges == {"x": ([-1.0], [1.0])}


def test_custom_range_for_falls_back_to_the_empty_name() -> None:
    config = parsed('{"custom_ranges": {"x": {"min": -1, "max": 1}}}')
    assert config.custom_range_for("x") == ([-1.0], [1.0])
    assert config.custom_range_for("y") is None
    config.parse_from_string('{"custom_ranges": {"": {"min": -6, "max": 6}}}')
    assert config.custom_range_for("y") == ([-6.0], [6.0])
    assert config.custom_range_for("x") == ([-1.0], [1.0])


def test_model_is_read_only() -> None:
    config = BuilderConfig()
    with pytest.raises(ValidationError):
        config.model.precision_config.precision_mode = "force_float16"  # type: ignore[misc]
    assert config.precision_mode == "force_float32"


# -- merge semantics -----------------------------------------------------------------------------


def test_later_parse_wins() -> None:
    config = parsed(mode("force_float16"), mode("qint8_mixed_float32"))
    assert config.precision_mode == "qint8_mixed_float32"


def test_nested_objects_merge_key_by_key() -> None:
    config = parsed(
        mode("qint16_mixed_float16"),
        '{"precision_config": {"weight_quant_granularity": "per_axis"}}',
        '{"precision_config": {"activation_quant_algo": "asymmetric"}}',
    )
    assert config.precision_mode == "qint16_mixed_float16"
    assert config.weight_quant_granularity == "per_axis"
    assert config.activation_quant_algo == "asymmetric"


def test_custom_ranges_merge_per_tensor_name() -> None:
    config = parsed(
        '{"custom_ranges": {"x": {"min": -1, "max": 1}, "y": {"min": 0, "max": 2}}}',
        '{"custom_ranges": {"x": {"min": [-3, -4], "max": [3, 4]}, "": {"min": -5, "max": 5}}}',
    )
    assert config.custom_ranges == {
        "x": ([-3.0, -4.0], [3.0, 4.0]),  # replaced as a whole
        "y": ([0.0], [2.0]),  # kept
        "": ([-5.0], [5.0]),  # added
    }


def test_custom_range_entry_is_replaced_not_merged() -> None:
    # A later entry that gives only "min" is refused; it does not borrow the earlier "max".
    config = parsed('{"custom_ranges": {"x": {"min": -1, "max": 1}}}')
    with pytest.raises(MMError, match=r'custom_ranges\["x"\]\.max: required key is missing'):
        config.parse_from_string('{"custom_ranges": {"x": {"min": -2}}}')
    assert config.custom_ranges == {"x": ([-1.0], [1.0])}


def test_ignored_objects_merge_key_by_key() -> None:
    config = parsed(
        '{"opt_config": {"type64to32_conversion": true}}',
        '{"opt_config": {"conv_scale_fold": true}}',
    )
    assert json.loads(config.to_json())["opt_config"] == {
        "type64to32_conversion": True,
        "conv_scale_fold": True,
    }


def test_a_parse_merges_into_defaults_not_replacing_them() -> None:
    config = parsed('{"custom_ranges": {"x": {"min": 0, "max": 1}}}')
    assert config.precision_mode == "force_float32"


@settings(max_examples=60, deadline=None)
@given(
    first=st.fixed_dictionaries(
        {},
        optional={
            "precision_mode": st.sampled_from(PRECISION_MODES),
            "weight_quant_granularity": st.sampled_from(WEIGHT_QUANT_GRANULARITIES),
            "activation_quant_algo": st.sampled_from(ACTIVATION_QUANT_ALGOS),
        },
    ),
    second=st.fixed_dictionaries(
        {},
        optional={
            "precision_mode": st.sampled_from(PRECISION_MODES),
            "weight_quant_granularity": st.sampled_from(WEIGHT_QUANT_GRANULARITIES),
            "activation_quant_algo": st.sampled_from(ACTIVATION_QUANT_ALGOS),
        },
    ),
)
def test_merge_of_precision_keys(first: dict[str, str], second: dict[str, str]) -> None:
    config = parsed(
        json.dumps({"precision_config": first}), json.dumps({"precision_config": second})
    )
    defaults = BuilderConfigModel().precision_config.model_dump()
    expected = {**defaults, **first, **second}
    assert config.model.precision_config.model_dump() == expected


# -- to_json -------------------------------------------------------------------------------------


def test_to_json_round_trips() -> None:
    config = parsed(
        mode("qint8_mixed_float16"),
        '{"precision_config": {"weight_quant_granularity": "per_axis"}}',
        '{"custom_ranges": {"": {"min": -1, "max": 1}, "a.b": {"min": [0, 1], "max": [2, 3]}}}',
        '{"archs": [{"mtp_372": [6, 8]}], "graph_shape_mutable": false}',
    )
    text = config.to_json()
    again = parsed(text)
    assert again == config
    assert again.to_json() == text
    assert again.ignored_keys() == ["archs"] and again.graph_shape_mutable is False
    assert "\n  " in text  # pretty, not one line


def test_equality_sees_differences() -> None:
    assert BuilderConfig() == BuilderConfig()
    assert BuilderConfig() != parsed(mode("force_float16"))
    assert BuilderConfig() != parsed('{"device_id": 0}')
    assert BuilderConfig() != "not a config"


_finite = st.floats(allow_nan=False, allow_infinity=False)
_json_leaf = st.none() | st.booleans() | st.integers() | _finite | st.text(max_size=8)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _custom_range(draw: st.DrawFn) -> dict[str, Any]:
    pairs = draw(st.lists(st.tuples(_finite, _finite), min_size=1, max_size=4))
    lo = [min(a, b) for a, b in pairs]
    hi = [max(a, b) for a, b in pairs]
    if len(pairs) == 1 and draw(st.booleans()):
        return {"min": lo[0], "max": hi[0]}  # the bare-number spelling
    return {"min": lo, "max": hi}


_valid_config = st.fixed_dictionaries(
    {},
    optional={
        "precision_config": st.fixed_dictionaries(
            {},
            optional={
                "precision_mode": st.sampled_from(PRECISION_MODES),
                "weight_quant_granularity": st.sampled_from(WEIGHT_QUANT_GRANULARITIES),
                "activation_quant_algo": st.sampled_from(ACTIVATION_QUANT_ALGOS),
            },
        ),
        "custom_ranges": st.dictionaries(st.text(max_size=6), _custom_range(), max_size=4),
        **{key: _json_value for key in IGNORED_KEYS},
    },
)


@settings(max_examples=150, deadline=None)
@given(_valid_config)
def test_to_json_round_trips_for_any_valid_config(data: dict[str, Any]) -> None:
    config = parsed(json.dumps(data))
    text = config.to_json()
    again = parsed(text)
    assert again == config
    assert again.model == config.model
    assert again.to_json() == text
    # what was given is what is read back
    assert sorted(k for k in data if k in IGNORED_KEYS) == config.ignored_keys()
    for name, entry in data.get("custom_ranges", {}).items():
        lo, hi = entry["min"], entry["max"]
        assert config.custom_ranges[name] == (
            lo if isinstance(lo, list) else [lo],
            hi if isinstance(hi, list) else [hi],
        )
    for key, value in data.get("precision_config", {}).items():
        assert getattr(config, key) == value


# -- errors --------------------------------------------------------------------------------------

ALL_MODES = [repr(m) for m in PRECISION_MODES]

BAD_INPUTS = [
    pytest.param(
        '{"precision_config": {"precison_mode": "force_float16"}}',
        [
            "precision_config.precison_mode",
            "did you mean 'precision_mode'",
            "precision_mode, weight_quant_granularity, weight_quant_range, activation_quant_algo",
        ],
        id="misspelt-nested-key",
    ),
    pytest.param(
        mode("qint8_mixed_fp16"),
        [
            "precision_config.precision_mode",
            "'qint8_mixed_fp16'",
            "did you mean 'qint8_mixed_float16'",
            *ALL_MODES,
        ],
        id="misspelt-mode",
    ),
    pytest.param(
        '{"precision_config": {"weight_quant_granularity": "per_channel"}}',
        [
            "precision_config.weight_quant_granularity",
            "'per_channel'",
            "'per_tensor', 'per_axis'",
        ],
        id="bad-granularity",
    ),
    pytest.param(
        '{"precision_config": {"activation_quant_algo": "symetric"}}',
        ["precision_config.activation_quant_algo", "did you mean 'symmetric'", "'asymmetric'"],
        id="misspelt-algo",
    ),
    pytest.param(
        '{"precison_config": {}}',
        ["'precison_config'", "did you mean 'precision_config'", "custom_ranges", "archs"],
        id="misspelt-top-key",
    ),
    pytest.param(
        '{"arch": ["mtp_372"]}',
        ["'arch'", "did you mean 'archs'"],
        id="misspelt-ignored-key",
    ),
    pytest.param(
        '{"precision_config": {"precision_mode": 8}}',
        ["precision_config.precision_mode", "8 is not an allowed value", *ALL_MODES],
        id="mode-not-a-string",
    ),
    pytest.param(
        '{"precision_config": "force_float16"}',
        ["precision_config: expected a JSON object", "precision_mode", "'force_float16'"],
        id="precision-config-not-object",
    ),
    pytest.param(
        '{"precision_config": {"precision_mode": "force_float16", "op_precision": {}}}',
        ["precision_config.op_precision", "precision_mode, weight_quant_granularity"],
        id="other-magicmind-precision-key",
    ),
    pytest.param(
        '{"custom_ranges": {"x": {"min": [0, 1], "max": [1]}}}',
        ['custom_ranges["x"]', "min has 2 values and max has 1"],
        id="range-lengths",
    ),
    pytest.param(
        '{"custom_ranges": {"": {"min": [0, 5], "max": [1, 4]}}}',
        ['custom_ranges[""]', "min[1] = 5.0 is greater than max[1] = 4.0"],
        id="range-order",
    ),
    pytest.param(
        '{"custom_ranges": {"x": {"min": -1e999, "max": 1}}}',
        ['custom_ranges["x"].min', "-Infinity is not a finite number"],
        id="range-infinite",
    ),
    pytest.param(
        '{"custom_ranges": {"x": {"min": NaN, "max": 1}}}',
        ['custom_ranges["x"].min', "NaN is not a finite number"],
        id="range-nan",
    ),
    pytest.param(
        '{"custom_ranges": {"x": {"min": [true], "max": [1]}}}',
        ['custom_ranges["x"].min[0]', "expected a number", "true"],
        id="range-bool",
    ),
    pytest.param(
        '{"custom_ranges": {"x": {"min": "-1", "max": 1}}}',
        ['custom_ranges["x"].min', "expected a number or a list of numbers", "'-1'"],
        id="range-string",
    ),
    pytest.param(
        '{"custom_ranges": {"x": {"min": [], "max": []}}}',
        ['custom_ranges["x"].min', "must not be empty"],
        id="range-empty",
    ),
    pytest.param(
        '{"custom_ranges": {"x": {"max": 1}}}',
        ['custom_ranges["x"].min', "required key is missing", "'min' and 'max'"],
        id="range-missing-min",
    ),
    pytest.param(
        '{"custom_ranges": {"x": {"min": 0, "max": 1, "mx": 2}}}',
        ['custom_ranges["x"].mx', "did you mean 'max'", "min, max"],
        id="range-unknown-key",
    ),
    pytest.param(
        '{"custom_ranges": {"x": [0, 1]}}',
        ['custom_ranges["x"]', "expected a JSON object with keys min, max", "[0, 1]"],
        id="range-not-object",
    ),
    pytest.param(
        '{"custom_ranges": [{"min": 0, "max": 1}]}',
        ["custom_ranges: expected a JSON object", "a list"],
        id="ranges-not-object",
    ),
    pytest.param(
        '{"insert_bn_before_firstnode": {"0": {"mean": [0, 1], "var": [1]}}}',
        ['insert_bn_before_firstnode["0"]', "mean has 2 values and var has 1"],
        id="bn-mean-var-lengths",
    ),
    pytest.param(
        '{"dim_range": {"0": {"min": [1, 9], "max": [4, 8]}}}',
        ['dim_range["0"]', "min[1] = 9 exceeds max[1] = 8"],
        id="dim-range-min-above-max",
    ),
    pytest.param(
        '{"convert_input_layout": {"first": {"src": "NCHW", "dst": "NHWC"}}}',
        ["convert_input_layout", "'first' is not an index"],
        id="layout-key-not-an-index",
    ),
    pytest.param(
        '[{"precision_config": {}}]',
        ["top level must be a JSON object", "a list"],
        id="top-level-list",
    ),
    pytest.param('"force_float16"', ["top level must be a JSON object", "a string"], id="str"),
    pytest.param(
        '{\n  "precision_config": {"precision_mode": "force_float16",}\n}',
        ["not valid JSON", "line 2", "column"],
        id="bad-json",
    ),
    pytest.param("", ["not valid JSON", "line 1, column 1"], id="empty-text"),
    pytest.param(
        '{"precision_config": {}, "precision_config": {}}',
        ["'precision_config' appears twice"],
        id="duplicate-key",
    ),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_INPUTS)
def test_bad_input_raises_mmerror_naming_path_and_choices(text: str, fragments: list[str]) -> None:
    config = BuilderConfig()
    with pytest.raises(MMError) as info:
        config.parse_from_string(text)
    error = info.value
    assert isinstance(error, ValueError)
    assert not isinstance(error, (ValidationError, KeyError))
    assert error.code == Code.INVALID_ARGUMENT
    assert error.status.error_message() == str(error)
    # no ValidationError or JSONDecodeError shown behind the MMError
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    for fragment in fragments:
        assert fragment in str(error), f"{fragment!r} not in {str(error)!r}"


def test_several_problems_are_all_reported() -> None:
    text = '{"precision_config": {"precision_mode": "fp16", "weight_quant_granularity": "axis"}}'
    with pytest.raises(MMError) as info:
        BuilderConfig().parse_from_string(text)
    message = str(info.value)
    assert "2 problems" in message
    assert "precision_config.precision_mode" in message
    assert "precision_config.weight_quant_granularity" in message


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=30).filter(lambda s: s not in PRECISION_MODES))
def test_any_unknown_mode_is_refused_with_the_allowed_list(value: str) -> None:
    with pytest.raises(MMError) as info:
        BuilderConfig().parse_from_string(mode(value))
    assert "precision_config.precision_mode" in str(info.value)
    assert all(m in str(info.value) for m in ALL_MODES)


def test_non_string_argument_is_refused() -> None:
    with pytest.raises(MMError, match="expects a str of JSON, got dict"):
        BuilderConfig().parse_from_string({"precision_config": {}})  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [row.values[0] for row in BAD_INPUTS])
def test_failed_parse_leaves_config_unchanged(text: str) -> None:
    config = parsed(
        mode("qint8_mixed_float16"),
        '{"custom_ranges": {"x": {"min": -1, "max": 1}}, "archs": ["mtp_372"]}',
    )
    before = config.to_json()
    with pytest.raises(MMError):
        config.parse_from_string(text)
    assert config.to_json() == before
    assert config.precision_mode == "qint8_mixed_float16"
    assert config.ignored_keys() == ["archs"]


def test_failed_parse_applies_none_of_its_valid_keys() -> None:
    config = parsed(mode("force_float16"))
    bad = (
        '{"precision_config": {"precision_mode": "qint8_mixed_float16", '
        '"weight_quant_granularity": "per_axis"}, '
        '"custom_ranges": {"y": {"min": 0, "max": 1}, "z": {"min": 2, "max": 1}}, '
        '"opt_config": {}}'
    )
    with pytest.raises(MMError):
        config.parse_from_string(bad)
    assert config == parsed(mode("force_float16"))
    # nor does any of it surface in a later, valid parse
    config.parse_from_string('{"custom_ranges": {"x": {"min": 0, "max": 1}}}')
    assert config == parsed(mode("force_float16"), '{"custom_ranges": {"x": {"min": 0, "max": 1}}}')
    assert config.ignored_keys() == []


def test_failed_parse_does_not_report_ignored_keys(caplog: pytest.LogCaptureFixture) -> None:
    config = BuilderConfig()
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(MMError):
        config.parse_from_string('{"archs": ["mtp_372"], "precision_config": {"x": 1}}')
    assert caplog.records == []
    assert config.ignored_keys() == []


# -- ignored MagicMind keys ----------------------------------------------------------------------


def test_required_magicmind_keys_are_ignored() -> None:
    required = {
        "archs",
        "opt_config",
        "debug_config",
        "cross_compile_toolchain_path",
        "dynamic_shape",
        "computation_preference",
        "device_id",
        "bit_width",
        "max_workspace_size",
        "enable_fusion_pass",
    }
    assert required <= set(IGNORED_KEYS)


def test_ignored_keys_are_accepted_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    text = json.dumps(
        {
            "archs": [{"mtp_372": [6, 8]}],
            "opt_config": {"type64to32_conversion": True},
            "cross_compile_toolchain_path": "/tmp/gcc/",
            "precision_config": {"precision_mode": "force_float16"},
        }
    )
    config = BuilderConfig()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert config.parse_from_string(text).ok()
    assert config.precision_mode == "force_float16"
    assert config.ignored_keys() == ["archs", "cross_compile_toolchain_path", "opt_config"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    for key in ("archs", "opt_config", "cross_compile_toolchain_path"):
        assert key in message
    assert "precision_config" not in message


@pytest.mark.parametrize("key", IGNORED_KEYS)
def test_every_ignored_key_accepts_any_json(key: str, caplog: pytest.LogCaptureFixture) -> None:
    config = BuilderConfig()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        config.parse_from_string(json.dumps({key: {"anything": [1, "two", None]}}))
    assert config.ignored_keys() == [key]
    assert key in caplog.text
    assert config.model == parsed(json.dumps({key: {"anything": [1, "two", None]}})).model
    assert config.precision_mode == "force_float32"


def test_ignored_key_given_as_null_is_still_listed() -> None:
    config = parsed('{"device_id": null}')
    assert config.ignored_keys() == ["device_id"]
    assert parsed(config.to_json()).ignored_keys() == ["device_id"]


def test_no_warning_without_ignored_keys(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        parsed(mode("force_float16"))
    assert caplog.records == []


# -- files ---------------------------------------------------------------------------------------


def test_parse_from_file(tmp_path: Path) -> None:
    path = tmp_path / "build.json"
    path.write_text(
        '{"precision_config": {"precision_mode": "qint16_mixed_float32"}, '
        '"custom_ranges": {"in": {"min": 0, "max": 255}}}',
        encoding="utf-8",
    )
    config = parsed('{"precision_config": {"activation_quant_algo": "asymmetric"}}')
    assert config.parse_from_file(path).ok()
    assert config.parse_from_file(str(path)).ok()
    assert config.precision_mode == "qint16_mixed_float32"
    assert config.activation_quant_algo == "asymmetric"  # merged with the earlier parse
    assert config.custom_ranges == {"in": ([0.0], [255.0])}


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    config = parsed(mode("force_float16"))
    with pytest.raises(MMError) as info:
        config.parse_from_file(missing)
    assert info.value.code == Code.NOT_FOUND
    assert str(missing) in str(info.value)
    assert config.precision_mode == "force_float16"


def test_bad_file_names_the_path_and_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "precision_config": {\n    "precision_mode": force_float16\n  }\n}')
    with pytest.raises(MMError) as info:
        BuilderConfig().parse_from_file(path)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert str(path) in str(info.value)
    assert "line 3, column 23" in str(info.value)


def test_invalid_value_in_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(mode("fp16"))
    with pytest.raises(MMError) as info:
        BuilderConfig().parse_from_file(path)
    assert str(path) in str(info.value)
    assert "precision_config.precision_mode" in str(info.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MMError, match="is a directory") as info:
        BuilderConfig().parse_from_file(tmp_path)
    assert info.value.code == Code.INVALID_ARGUMENT


# -- CamelCase spellings -------------------------------------------------------------------------


def test_camel_case_aliases(tmp_path: Path) -> None:
    path = tmp_path / "build.json"
    path.write_text('{"precision_config": {"weight_quant_granularity": "per_axis"}}')
    config = BuilderConfig()
    assert config.ParseFromString(mode("qint8_mixed_float16")).ok()
    assert config.ParseFromFile(str(path)).ok()
    assert config.precision_mode == "qint8_mixed_float16"
    assert config.weight_quant_granularity == "per_axis"
    assert config.ToJson() == config.to_json()
    with pytest.raises(AttributeError):
        config.ParseFromStrin  # noqa: B018


# -- JSON Schema ---------------------------------------------------------------------------------


def test_schema_file_is_up_to_date() -> None:
    rendered = render_schemas()
    assert "builder_config.schema.json" in rendered
    assert SCHEMA_FILE.read_text(encoding="utf-8") == rendered["builder_config.schema.json"], (
        "include/builder_config.schema.json is stale: run python -m mmbuild.tools.write_schemas"
    )
    assert stale_schemas() == []
    assert main(["--check"]) == 0


def test_stale_or_missing_schema_is_detected(tmp_path: Path) -> None:
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "builder_config.schema.json").read_text() == SCHEMA_FILE.read_text()
    assert main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "builder_config.schema.json").write_text("{}\n")
    assert stale_schemas(tmp_path) == ["builder_config.schema.json"]


def test_schema_text_is_stable() -> None:
    text = SCHEMA_FILE.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    schema = json.loads(text)
    assert json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [("", schema)]
    found += [(name, d) for name, d in schema.get("$defs", {}).items()]
    return [(f"{owner}.{p}", spec) for owner, s in found for p, spec in s["properties"].items()]


def test_schema_structure() -> None:
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://mmbuild.dev/schemas/builder_config.schema.json"
    assert schema["title"] == "mmbuild builder configuration"
    assert schema["additionalProperties"] is False
    precision = schema["$defs"]["PrecisionConfig"]
    assert precision["additionalProperties"] is False
    assert precision["properties"]["precision_mode"]["enum"] == list(PRECISION_MODES)
    assert precision["properties"]["precision_mode"]["default"] == "force_float32"
    assert precision["properties"]["weight_quant_granularity"]["enum"] == list(
        WEIGHT_QUANT_GRANULARITIES
    )
    assert precision["properties"]["activation_quant_algo"]["enum"] == list(ACTIVATION_QUANT_ALGOS)
    assert precision["properties"]["weight_quant_range"]["enum"] == ["full", "reduced"]
    ranges = schema["properties"]["custom_ranges"]
    assert ranges["additionalProperties"] == {"$ref": "#/$defs/CustomRange"}
    assert schema["$defs"]["CustomRange"]["required"] == ["min", "max"]
    ignored = sorted(k for k, v in schema["properties"].items() if v.get("x-mmbuild-ignored"))
    assert ignored == sorted(IGNORED_KEYS)


def test_every_schema_field_has_a_description() -> None:
    properties = _properties(_schema())
    # precision_config, CustomRange, the top level's own keys, "$schema" and the MagicMind keys
    magicmind = 5 + 2 + 2 + 2  # the honoured keys; LayoutConversion, InputNormalization, DimRange
    assert len(properties) == 7 + 2 + 2 + 1 + magicmind + len(IGNORED_KEYS)
    missing = [name for name, spec in properties if not spec.get("description")]
    assert missing == []


def test_schema_validates_configs() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(_schema())
    good = {
        "precision_config": {"precision_mode": "qint8_mixed_float16"},
        "custom_ranges": {"": {"min": -1, "max": [1]}, "x": {"min": [0, 1], "max": [2, 3]}},
        "archs": ["mtp_372"],
    }
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(json.loads(parsed(json.dumps(good)).to_json()))) == []
    bad_configs: list[dict[str, Any]] = [
        {"precision_config": {"precision_mode": "fp16"}},
        {"precision_config": {"precison_mode": "force_float16"}},
        {"custom_ranges": {"x": {"min": 0}}},
        {"custom_ranges": {"x": {"min": [], "max": []}}},
        {"unknown": 1},
    ]
    for bad in bad_configs:
        assert list(validator.iter_errors(bad)) != [], bad


@settings(max_examples=50, deadline=None)
@given(_valid_config)
def test_schema_accepts_every_valid_config(data: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, _schema(), cls=jsonschema.Draft202012Validator)


# -- docstring examples --------------------------------------------------------------------------


@pytest.mark.parametrize("module", [builder_config_module, write_schemas_module])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
