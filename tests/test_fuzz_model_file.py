"""Fuzzing real model files whose checksums stay consistent: every mutated file is refused with
an MMError when loaded, or runs deterministically and exactly as its own per-step reference
(validate mode) says. Zip bombs are refused from the zip directory, allocating almost nothing.

Each case's outcome is counted and printed at the end of the run (tests/fuzzcount.py)."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzzcount import count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sample_cnn import ImageBatches, build_cnn, sample_images
from sample_transformer import build_transformer_block

import mmbuild as mm
from mmbuild.errors import MMError
from mmbuild.runtime import model_file
from mmbuild.runtime.model_file import MANIFEST, MANIFEST_SHA256, read_model_bytes

Manifest = dict[str, Any]


# -- the models ------------------------------------------------------------------------------
def _config(mode: str) -> mm.BuilderConfig:
    config = mm.BuilderConfig()
    config.parse_from_string(
        json.dumps(
            {"precision_config": {"precision_mode": mode, "weight_quant_granularity": "per_axis"}}
        )
    )
    return config


@cache
def model_blob(kind: str) -> bytes:
    """A real model file: the sample CNN in float32 or calibrated QINT8, or the transformer
    block in float16."""
    if kind == "transformer_f16":
        net, config = build_transformer_block(), _config("force_float16")
    else:
        mode = "qint8_mixed_float16" if kind == "cnn_qint8" else "force_float32"
        net, config = build_cnn(), _config(mode)
        if mode != "force_float32":
            calib = mm.Calibrator(
                [ImageBatches(list(sample_images(16, 1).reshape(2, 8, 16, 16, 3)))]
            )
            calib.set_progress(False)
            assert calib.calibrate(net, config).ok()
    model = mm.Builder().build_model(kind, net, config)
    return model_file.model_bytes(model.data)


def model_input(kind: str) -> np.ndarray:
    if kind == "transformer_f16":
        return np.random.default_rng(3).standard_normal((2, 16, 32)).astype(np.float32)
    return sample_images(2, 7)


KINDS = ("cnn_f32", "cnn_qint8", "transformer_f16")


# -- editing with consistent checksums -------------------------------------------------------
def members_of(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_npy(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def rewritten(blob: bytes, edit: Callable[[Manifest, dict[str, bytes]], None]) -> bytes:
    """``blob`` with its manifest and members edited by ``edit`` and every checksum and size
    recomputed, as an attacker who knows the format would."""
    files = members_of(blob)
    manifest = json.loads(files[MANIFEST])
    edit(manifest, files)
    for name in manifest["members"]:
        if name in files:
            data = files[name]
            manifest["members"][name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
    text = json.dumps(manifest).encode()
    files[MANIFEST] = text
    files[MANIFEST_SHA256] = (hashlib.sha256(text).hexdigest() + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def run_model(model: mm.Model, x: np.ndarray) -> list[np.ndarray]:
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(x)
    outputs: list[mm.IRTTensor] = []
    context.enqueue(inputs, outputs)
    return [o.asnumpy().copy() for o in outputs]


def outcome(blob: bytes, kind: str, tmp_path: Path) -> str:
    """How a mutated file ends: ``refused`` on load, ``refused at run``, ``same`` result as the
    original, or ``valid variant`` (different, deterministic and equal to its own reference).
    Anything else fails the test, naming what escaped."""
    path = tmp_path / "mutated.mm"
    path.write_bytes(blob)
    model = mm.Model()
    try:
        model.deserialize_from_file(str(path))
    except MMError:
        return "refused"
    x = model_input(kind)
    try:
        first, second = run_model(model, x), run_model(model, x)
        report = model.validate(x)
    except MMError:
        return "refused at run"
    original = mm.Model()
    (tmp_path / "original.mm").write_bytes(model_blob(kind))
    original.deserialize_from_file(str(tmp_path / "original.mm"))
    want = run_model(original, x)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, second)), "nondeterministic"
    if all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(first, want)):
        return "same"
    assert report.ok(), f"a mutated model ran unlike its own reference: {report}"
    return "valid variant"


def check(surface: str, blob: bytes, kind: str, tmp_path: Path) -> None:
    try:
        result = outcome(blob, kind, tmp_path)
    except AssertionError:
        count(surface, "WRONG RESULT")
        raise
    except Exception as e:
        count(surface, f"ESCAPED {type(e).__name__}")
        raise
    count(surface, result)


# -- targeted mutations: each is refused, naming the step and the field ----------------------
def _step(m: Manifest, kernel: str) -> Manifest:
    return next(s for s in m["steps"] if s["kernel"] == kernel)


def _set(kernel: str, section: str, key: str, value: Any) -> Callable[[Manifest, Any], None]:
    def edit(m: Manifest, _files: Any) -> None:
        _step(m, kernel)[section][key] = value

    return edit


def _drop(kernel: str, section: str, key: str) -> Callable[[Manifest, Any], None]:
    def edit(m: Manifest, _files: Any) -> None:
        del _step(m, kernel)[section][key]

    return edit


def _wider_conv_weight(m: Manifest, files: dict[str, bytes]) -> None:
    """The second conv's weight given one more input channel than its input has."""
    step = [s for s in m["steps"] if s["kernel"] == "conv.float"][1]
    member = step["arrays"]["weight"]
    w = load_npy(files[member])
    files[member] = npy_bytes(np.concatenate([w, w[..., :1]], axis=-1))


def _softmax_as_copy(m: Manifest, _files: Any) -> None:
    _step(m, "softmax")["kernel"] = "copy"


def _output_shape(m: Manifest, _files: Any) -> None:
    name = m["outputs"][0]["name"]
    m["tensors"][name]["dims"][-1] = 11
    m["outputs"][0]["dims"][-1] = 11


def _intermediate_dtype(m: Manifest, _files: Any) -> None:
    step = _step(m, "maxpool2d")
    m["tensors"][step["outputs"][0]]["dtype"] = "FLOAT16"


TARGETED = [
    ("cnn_f32", _wider_conv_weight, "step 'conv2' .*lowered array 'weight'"),
    ("cnn_f32", _softmax_as_copy, "step 'softmax_0' .*runs on kernel 'softmax', not 'copy'"),
    ("cnn_f32", _output_shape, "declared \\[-1, 11\\]; its op gives \\[-1, 10\\]"),
    ("cnn_f32", _intermediate_dtype, "maxpool2d_0:0.*FLOAT16"),
    ("cnn_f32", _drop("softmax", "op_attrs", "axis"), "op attribute 'axis' is missing"),
    ("cnn_f32", _set("maxpool2d", "op_attrs", "stride", [0, 2]), "'stride' is \\(0, 2\\)"),
    ("cnn_f32", _set("maxpool2d", "op_attrs", "kernel", 2), "'kernel' is 2; expected null or"),
    ("cnn_f32", _set("conv.float", "op_attrs", "group", 1.0), "'group' is 1.0"),
    ("cnn_qint8", _set("conv.qint", "lowered_attrs", "scale_a", {"float": "nan"}), "'scale_a'"),
    ("cnn_qint8", _set("conv.qint", "lowered_attrs", "scale_a", 0), "'scale_a' is 0"),
    ("cnn_qint8", _set("conv.qint", "lowered_attrs", "scale_a", None), "'scale_a' is None"),
    ("cnn_qint8", _set("conv.qint", "lowered_attrs", "za", 300), "'za' is 300"),
    ("cnn_qint8", _drop("conv.qint", "lowered_attrs", "path"), "'path' is missing"),
    ("cnn_f32", _set("conv.float", "lowered_attrs", "path", "depthwise"), "'path'"),
]


@pytest.mark.parametrize(("kind", "edit", "match"), TARGETED)
def test_consistent_but_false_manifests_are_refused_naming_step_and_field(
    kind: str, edit: Callable[[Manifest, dict[str, bytes]], None], match: str, tmp_path: Path
) -> None:
    path = tmp_path / "edited.mm"
    path.write_bytes(rewritten(model_blob(kind), edit))
    with pytest.raises(MMError, match=match) as info:
        mm.Model().deserialize_from_file(str(path))
    assert "edited.mm" in str(info.value)
    count("model file: targeted", "refused")


def test_every_built_model_passes_its_declarations() -> None:
    from mmbuild.runtime.validate_model import model_problems

    for kind in KINDS:
        assert model_problems(read_model_bytes(model_blob(kind))) == [], kind


def test_every_op_and_kernel_has_a_declaration() -> None:
    from mmbuild.kernels.table import KERNELS_BY_NAME, Kernel, load_kernels
    from mmbuild.ops.registry import OPS
    from mmbuild.runtime.declarations import KERNEL_STORES, OP_ATTRS

    load_kernels()
    assert set(OPS) - {"const"} <= set(OP_ATTRS), "ops without an attribute declaration"
    for name, kernel in KERNELS_BY_NAME.items():
        prepares = type(kernel).lower is not Kernel.lower
        assert not prepares or name in KERNEL_STORES, f"{name}: what it stores is undeclared"


# -- random mutations --------------------------------------------------------------------------
ODD = [
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    2**40,
    0.0,
    -0.5,
    1e-45,
    1e300,
    "",
    "x",
    "FLOAT16",
    "INT32",
    "QINT8",
    "copy",
    "softmax",
    "conv.qint",
    [],
    [0],
    [1, 1],
    [2, 0],
    [-1, 3, 3],
    {},
    {"float": "nan"},
    {"float": "inf"},
    {"enum": "Layout", "name": "NCHW"},
    {"enum": "IActivation", "name": "SIGMOID"},
    {"function": "relu"},
]
SECTIONS = (
    "op_attrs",
    "lowered_attrs",
    "kernel",
    "inputs",
    "outputs",
    "precisions",
    "output_types",
)


def _paths(v: Any, prefix: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    found = [prefix]
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else []
    for k, x in items:
        found += _paths(x, (*prefix, k))
    return found


def _edit_value(where: int, value: Any) -> Callable[[Manifest, Any], None]:
    def edit(m: Manifest, _files: Any) -> None:
        candidates = [
            p
            for i, s in enumerate(m["steps"])
            for section in SECTIONS
            for p in _paths(s[section], ("steps", i, section))
        ]
        candidates += [p for p in _paths(m["tensors"], ("tensors",)) if len(p) > 2]
        *parents, key = candidates[where % len(candidates)]
        target = m
        for k in parents:
            target = target[k]
        target[key] = value

    return edit


def _edit_array(where: int, how: int) -> Callable[[Manifest, dict[str, bytes]], None]:
    def edit(m: Manifest, files: dict[str, bytes]) -> None:
        names = sorted(m["members"])
        name = names[where % len(names)]
        a = load_npy(files[name])
        if how % 4 == 0 and a.ndim:  # one more along an axis
            axis = (how // 4) % a.ndim
            a = np.concatenate([a, np.take(a, [0], axis=axis)], axis=axis)
        elif how % 4 == 1:  # another dtype
            a = a.astype(np.float64 if a.dtype != np.float64 else np.float32)
        elif how % 4 == 2 and a.dtype.kind == "f":  # a NaN
            a = a.copy()
            a.reshape(-1)[0] = np.nan
        else:  # one dimension fewer
            a = a.reshape(-1)[:-1] if a.size > 1 else a.reshape(())
        files[name] = npy_bytes(a)

    return edit


SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(kind=st.sampled_from(KINDS), where=st.integers(0, 2**31), value=st.sampled_from(ODD))
def test_odd_values_in_consistent_manifests(
    kind: str, where: int, value: Any, tmp_path: Path
) -> None:
    check(
        "model file: odd manifest values",
        rewritten(model_blob(kind), _edit_value(where, value)),
        kind,
        tmp_path,
    )


@SETTINGS
@given(kind=st.sampled_from(KINDS), where=st.integers(0, 2**31), how=st.integers(0, 2**31))
def test_reshaped_or_retyped_arrays(kind: str, where: int, how: int, tmp_path: Path) -> None:
    check(
        "model file: changed arrays",
        rewritten(model_blob(kind), _edit_array(where, how)),
        kind,
        tmp_path,
    )


@pytest.mark.slow
@settings(
    max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(KINDS),
    where=st.integers(0, 2**31),
    value=st.sampled_from(ODD),
    how=st.integers(0, 2**31),
)
def test_campaign_of_mutated_model_files(
    kind: str, where: int, value: Any, how: int, tmp_path: Path
) -> None:
    edit = _edit_value(where, value) if how % 2 else _edit_array(where, how // 2)
    check("model file: slow campaign", rewritten(model_blob(kind), edit), kind, tmp_path)


# -- zip bombs -------------------------------------------------------------------------------
def bomb(member: str, size: int, manifest_first: bool = True) -> bytes:
    """A model file whose ``member`` inflates to ``size`` bytes of zeros (written in chunks)."""
    files = members_of(model_blob("cnn_f32"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            if name != member:
                zf.writestr(name, data)
        with zf.open(member, "w", force_zip64=True) as f:
            chunk = bytes(2**20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return out.getvalue()


@pytest.mark.parametrize("member", ["arrays/0000.npy", MANIFEST])
def test_zip_bombs_are_refused_before_decompressing(member: str) -> None:
    blob = bomb(member, 64 * 2**20)
    assert len(blob) < 2**20  # 64 MiB of zeros in well under 1 MiB
    tracemalloc.start()
    try:
        with pytest.raises(MMError, match="zip bomb|above the limit"):
            read_model_bytes(blob, "bomb.mm")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"refusing the bomb allocated {peak} bytes"
    count("model file: zip bombs", "refused")
