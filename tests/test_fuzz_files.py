"""Fuzzing every file mmbuild reads: the builder config (string and file), the calibration cache
and the model file. Whatever the text or the path, the outcome is OK or an MMError naming the
file, never another exception and never a hang; an accepted config's ``to_json()`` parses back to
the same config; a cache cut short, of a foreign version or with odd field types is refused.

Each case's outcome is counted and printed at the end of the run (tests/fuzzcount.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzzcount import count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmbuild as mm
from mmbuild._files import MAX_JSON_DEPTH
from mmbuild.calib import cache as cache_file
from mmbuild.errors import MMError


@contextlib.contextmanager
def no_hang(seconds: int = 20) -> Iterator[None]:
    """Fail instead of hanging: a blocked open() or read() is interrupted by SIGALRM."""

    def fail(*_: object) -> None:
        raise TimeoutError(f"hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def outcome(surface: str, call: Callable[[], Any]) -> str:
    try:
        with no_hang():
            call()
    except MMError:
        count(surface, "MMError")
        return "MMError"
    except Exception as e:
        count(surface, f"ESCAPED {type(e).__name__}")
        raise
    count(surface, "ok")
    return "ok"


READERS: dict[str, Callable[[Any], Any]] = {
    "builder config file": lambda p: mm.BuilderConfig().parse_from_file(p),
    "calibration cache": lambda p: mm.Calibrator([]).read_cache(p),
    "model file": lambda p: mm.Model().deserialize_from_file(p),
}


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo"
    os.mkfifo(path)  # nobody ever writes to it
    return str(path)


SPECIAL = [
    "fifo",
    "/dev/urandom",
    "/dev/zero",
    "/dev/null",
    "folder",
    "a\0b",
    None,
    7,
    b"x.json",
    "",
    "missing.json",
    3.5,
    ["x"],
]


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("special", SPECIAL, ids=repr)
def test_special_paths_are_refused_without_hanging(
    reader: str, special: Any, fifo: str, tmp_path: Path
) -> None:
    path = (
        {"fifo": fifo, "folder": str(tmp_path)}.get(special, special)
        if isinstance(special, str)
        else special
    )
    if isinstance(path, str) and path.startswith("/dev/") and not os.path.exists(path):
        pytest.skip(f"{path} is not on this machine")
    if path == "missing.json":
        path = str(tmp_path / "missing.json")
    with pytest.raises(MMError) as info, no_hang():
        READERS[reader](path)
    message = str(info.value)
    assert reader.split()[0] in message or "model" in message, message
    assert len(message) < 500
    count("special paths", "MMError")


@pytest.mark.parametrize("reader", sorted(READERS))
def test_deep_nesting_and_long_numbers_are_refused_by_name(reader: str, tmp_path: Path) -> None:
    for text, says in [
        ("[" * 100_000 + "]" * 100_000, f"at most {MAX_JSON_DEPTH} levels"),
        ('{"a": ' + "9" * 5000 + "}", "has 5000 digits"),
        ('{"a": 1, "a": 2}', "appears twice"),
    ]:
        path = tmp_path / "odd.json"
        path.write_text(text)
        if reader == "model file":
            continue  # a model file is a zip; its manifest goes through the same parser below
        with pytest.raises(MMError, match=says):
            READERS[reader](str(path))
    for text, says in [
        ("[" * 100_000 + "]" * 100_000, f"at most {MAX_JSON_DEPTH} levels"),
        ('{"a": ' + "9" * 5000 + "}", "has 5000 digits"),
    ]:
        with pytest.raises(MMError, match=says):
            mm.BuilderConfig().parse_from_string(text)


# -- the builder config ---------------------------------------------------------------------------
_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.integers(10**300, 10**302)
)
_value = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
_KEYS = [
    "precision_config",
    "precision_mode",
    "weight_quant_granularity",
    "activation_quant_algo",
    "custom_ranges",
    "min",
    "max",
    "",
    "x",
    "archs",
    "opt_config",
    "device_id",
    "graph_shape_mutable",
    "debug_config",
]
_MODES = [
    "force_float32",
    "force_float16",
    "qint8_mixed_float16",
    "per_axis",
    "symmetric",
    "asymmetric",
    "per_tensor",
]
_config_value = st.recursive(
    _leaf | st.sampled_from(_MODES),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)


def _parse_and_round_trip(texts: list[str]) -> None:
    config = mm.BuilderConfig()
    for text in texts:
        with contextlib.suppress(MMError):
            config.parse_from_string(text)
    again = mm.BuilderConfig()
    again.parse_from_string(config.to_json())
    assert again == config, config.to_json()


@settings(deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(_KEYS), _config_value, max_size=4).map(
            lambda d: json.dumps(d, allow_nan=True)
        )
        | st.text(max_size=40),
        min_size=1,
        max_size=3,
    )
)
def test_config_texts_give_ok_or_mmerror_and_to_json_round_trips(texts: list[str]) -> None:
    for text in texts:
        outcome("builder config text", lambda t=text: mm.BuilderConfig().parse_from_string(t))
    _parse_and_round_trip(texts)


@pytest.mark.slow
@settings(deadline=None, max_examples=20_000)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(_KEYS), _config_value, max_size=5).map(
            lambda d: json.dumps(d, allow_nan=True)
        ),
        min_size=1,
        max_size=3,
    )
)
def test_campaign_of_config_texts(texts: list[str]) -> None:
    test_config_texts_give_ok_or_mmerror_and_to_json_round_trips.hypothesis.inner_test(texts)  # type: ignore[attr-defined]


def test_config_errors_are_bounded() -> None:
    ranges = {f"t{i}": {"min": "low", "max": "high"} for i in range(20_000)}  # 40,000 problems
    with pytest.raises(MMError) as info:
        mm.BuilderConfig().parse_from_string(json.dumps({"custom_ranges": ranges}))
    message = str(info.value)
    assert len(message) < 2000 and "40000 problems" in message and "more)" in message


def test_a_huge_integer_is_named_as_too_large_not_as_a_number() -> None:
    with pytest.raises(MMError, match="too large for a float") as info:
        mm.BuilderConfig().parse_from_string(
            '{"custom_ranges": {"x": {"min": 1' + "0" * 400 + ', "max": 1}}}'
        )
    assert "expected a number, got a number" not in str(info.value)


# -- the calibration cache --------------------------------------------------------------------
def _cache(tmp_path: Path) -> Path:
    model = cache_file.CalibrationCacheModel(
        format="mmbuild-calibration-cache",
        version=1,
        algorithm="linear",
        activation_quant_algo="symmetric",
        bits=8,
        fingerprint="0" * 64,
        tensors={
            "input_0": mm.config.CustomRange(min=[-1.0], max=[1.0]),
            "conv_0:0": mm.config.CustomRange(min=[0.0], max=[6.5]),
        },
    )
    path = tmp_path / "cache.json"
    cache_file.write_cache(path, model)
    return path


def test_every_truncation_of_a_cache_is_refused(tmp_path: Path) -> None:
    path = _cache(tmp_path)
    whole = path.read_bytes()
    assert cache_file.read_cache(path).tensors["conv_0:0"].max == [6.5]
    for n in range(len(whole)):
        path.write_bytes(whole[:n])
        with pytest.raises(MMError):
            cache_file.read_cache(path)
        count("calibration cache: truncations", "MMError")


@pytest.mark.parametrize(
    ("version", "says"),
    [
        ("1.0", r"'version' is a number \(1.0\)"),
        ("true", "'version' is a boolean"),
        ('"1"', "'version' is a string"),
        ("null", "missing or null"),
        ("0", "version 0 is not one"),
        ("2", "newer than this mmbuild reads"),
    ],
)
def test_cache_versions_other_than_1_are_refused(version: str, says: str, tmp_path: Path) -> None:
    path = _cache(tmp_path)
    path.write_text(path.read_text().replace('"version": 1', f'"version": {version}'))
    with pytest.raises(MMError, match=says):
        cache_file.read_cache(path)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.integers(0, 10**6), value=_value)
def test_odd_values_in_a_cache_are_refused_naming_what_was_found(
    where: int, value: Any, tmp_path: Path
) -> None:
    path = _cache(tmp_path)
    data = json.loads(path.read_text())
    keys = [
        "format",
        "version",
        "algorithm",
        "activation_quant_algo",
        "bits",
        "fingerprint",
        "tensors",
    ]
    key = keys[where % len(keys)]
    if data[key] == value:
        return
    data[key] = value
    path.write_text(json.dumps(data, allow_nan=True) + "\n")
    assert outcome("calibration cache: odd values", lambda: cache_file.read_cache(path)) in (
        "MMError",
        "ok",
    )
