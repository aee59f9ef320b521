"""The model file: bit-exact round trip, and every kind of damaged or foreign file refused with an
MMError that says what is wrong (never another exception, never a pickle)."""

from __future__ import annotations

import contextlib
import doctest
import hashlib
import io
import json
import math
import pickle
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy_format

import mmbuild as mm
from mmbuild.errors import Code, MMError
from mmbuild.ir.types import DataType, Layout
from mmbuild.kernels.table import Lowered, Step
from mmbuild.ops import IActivation, IPaddingMode
from mmbuild.runtime import model_file
from mmbuild.runtime.manifest import DataTypeName, ModelData, TensorInfo
from mmbuild.runtime.model_file import (
    MANIFEST,
    MANIFEST_SHA256,
    model_bytes,
    read_model_bytes,
    read_model_file,
    write_model_file,
)

F32, F16, Q8, I8 = DataType.FLOAT32, DataType.FLOAT16, DataType.QINT8, DataType.INT8


def half_bits(values: list[float]) -> np.ndarray:
    return np.array(values, np.float16).view(np.uint16)


def make_data() -> ModelData:
    """A hand-made model touching every kind of value the file holds."""
    rng = np.random.default_rng(0)

    def t(name: str, dims: tuple[int, ...], dtype: DataType) -> TensorInfo:
        return TensorInfo(name, dims, dtype)

    tensors = [
        t("x", (-1, 5, 5, 3), F32),
        t("bias", (4,), F32),
        t("conv1:0", (-1, 5, 5, 4), F16),
        t("scale16", (2, 3), F16),
        t("step", (), DataType.INT32),
        t("none", (0, 3), F32),
        t("relu:0", (-1, 5, 5, 4), F16),
        t("y", (-1, 5, 5, 4), I8),
    ]
    conv_attrs = {
        "stride": (1, 2),
        "pad": (0, 1, 1, 0),
        "layout": (Layout.NHWC, Layout.HWCN, Layout.NHWC),
        "padding_mode": IPaddingMode.EXPLICIT,
        "group": 1,
        "activation": {"function": "clip", "lo": -0.0, "hi": math.inf},
        "eps": 0.1,
        "flag": True,
        "label": "ünïcode \ud800 name",
        "nothing": None,
    }
    conv = Step(
        name="conv1",
        op="conv",
        kernel="conv_qint8",
        op_attrs=conv_attrs,
        inputs=["x", "bias"],
        outputs=["conv1:0"],
        precisions=[Q8, Q8, F16],
        output_types=[F16],
        lowered=Lowered(
            {
                "scale_x": 0.0078125,
                "tiny": 5e-324,
                "big": 1.7976931348623157e308,
                "nan": math.nan,
                "neg": -math.inf,
                "nested": {"a": (1, 2.5, -math.inf)},
                "dtype": DataType.QINT16,
                "count": 2**62,
            },
            {
                "w": rng.integers(-128, 128, (4, 3, 3, 3), dtype=np.int8),
                "scales": rng.standard_normal(4).astype(np.float32),
                "half": half_bits([0.0, -0.0, 65504.0, 6e-8, np.inf, np.nan]),
                "packed": rng.integers(0, 2**31, 7, dtype=np.int64),
            },
        ),
        notes=["precision: QINT8 from the mode"],
        fused=["fused_batch_norm_0", "activation_0"],
    )
    relu = Step("relu", "activation", "activation_f16", {"mode": IActivation.RELU},
                ["conv1:0", "scale16"], ["relu:0"], [F16, F16], [F16], Lowered())  # fmt: skip
    cast = Step(
        "cast",
        "cast",
        "cast_f16_i8",
        {"dtype": I8},
        ["relu:0", "step", "none"],
        ["y"],
        [F16, DataType.INT32, F32],
        [I8],
        Lowered(
            {},
            {
                "zero_d": np.array(3, np.int16),
                "empty": np.zeros((0, 4), np.float32),
                "mask": np.array([True, False, True]),
                "u8": np.arange(256, dtype=np.uint8),
                "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
            },
        ),
    )
    return ModelData(
        name="tiny net",
        mode="qint8_mixed_float16",
        inputs=[tensors[0]],
        outputs=[tensors[-1]],
        tensors={x.name: x for x in tensors},
        constants={
            "bias": np.array([0.5, -1.25, 3e-7, 0.0], np.float32),
            "scale16": half_bits([1.0, 2.0, -3.5, 1e-4, 0.1, 65504.0]).reshape(2, 3),
            "step": np.array(7, np.int32),
            "none": np.zeros((0, 3), np.float32),
        },
        steps=[conv, relu, cast],
        warnings=["tensor 'y' was given an int8 output type"],
        fingerprint="ab" * 32,
    )


@cache
def sample_blob() -> bytes:
    return model_bytes(make_data())


# -- comparing ---------------------------------------------------------------------------------
def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type; floats bit for bit (NaN equals NaN, -0.0 differs from 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return same_array(a, b)
    return a == b


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same(a: ModelData, b: ModelData) -> None:
    assert (a.name, a.mode, a.fingerprint, a.warnings) == (
        b.name,
        b.mode,
        b.fingerprint,
        b.warnings,
    )
    assert [*map(vars, a.inputs)] == [*map(vars, b.inputs)]
    assert [*map(vars, a.outputs)] == [*map(vars, b.outputs)]
    assert a.tensors == b.tensors
    assert same_value(a.constants, b.constants)
    assert len(a.steps) == len(b.steps)
    for s, t in zip(a.steps, b.steps):
        for name in ("name", "op", "kernel", "inputs", "outputs", "precisions", "output_types",
                     "notes", "fused"):  # fmt: skip
            assert getattr(s, name) == getattr(t, name), name
        assert same_value(s.op_attrs, t.op_attrs), (s.op_attrs, t.op_attrs)
        assert same_value(s.lowered.attrs, t.lowered.attrs), (s.lowered.attrs, t.lowered.attrs)
        assert same_value(s.lowered.arrays, t.lowered.arrays)
        assert all(a.flags.c_contiguous for a in t.lowered.arrays.values())


# -- editing a file --------------------------------------------------------------------------
def unzip(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def rezip(members: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in items:
            zf.writestr(name, data)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def edited(
    edit_manifest: Callable[[dict[str, Any]], None] | None = None,
    members: dict[str, bytes | None] | None = None,
    fix_members: bool = True,
    fix_digest: bool = True,
    text: bytes | None = None,
) -> bytes:
    """The sample file with its manifest edited (or replaced by ``text``) and members replaced
    (None removes one). The manifest's entries for replaced members are updated unless
    ``fix_members`` is False, manifest.sha256 unless ``fix_digest`` is False."""
    files = unzip(sample_blob())
    manifest = json.loads(files[MANIFEST])
    for name, data in (members or {}).items():
        if data is None:
            del files[name]
            continue
        files[name] = data
        if fix_members:
            manifest["members"][name] = {"sha256": sha(data), "size": len(data)}
    if edit_manifest is not None:
        edit_manifest(manifest)
    if text is None:
        text = json.dumps(manifest).encode()
    files[MANIFEST] = text
    if fix_digest:
        files[MANIFEST_SHA256] = (sha(text) + "\n").encode()
    return rezip(files)


def refused(blob: bytes, match: str, code: Code = Code.INVALID_ARGUMENT) -> MMError:
    with pytest.raises(MMError, match=match) as info:
        read_model_bytes(blob)
    assert info.value.code is code, info.value
    return info.value


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


# -- round trip --------------------------------------------------------------------------------
def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    data = make_data()
    path = tmp_path / "tiny.mm"
    write_model_file(path, data)
    back = read_model_file(path)
    assert_same(data, back)
    assert back.steps[0].op_attrs["padding_mode"] is IPaddingMode.EXPLICIT
    assert back.steps[0].lowered.attrs["dtype"] is DataType.QINT16
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.mm"]  # no temporary file left


def test_the_same_model_gives_the_same_bytes() -> None:
    assert model_bytes(make_data()) == model_bytes(make_data()) == sample_blob()


def test_layout_of_the_archive() -> None:
    names = [i.filename for i in zipfile.ZipFile(io.BytesIO(sample_blob())).infolist()]
    assert names[:2] == [MANIFEST, MANIFEST_SHA256]
    assert names[2:] == [f"arrays/{i:04d}.npy" for i in range(len(names) - 2)]
    files = unzip(sample_blob())
    manifest = json.loads(files[MANIFEST])
    assert manifest["format"] == "mmbuild-model" and manifest["format_version"] == 1
    assert manifest["mmbuild_version"] == mm.__version__
    assert files[MANIFEST_SHA256] == (sha(files[MANIFEST]) + "\n").encode()
    assert manifest["steps"][0]["lowered_attrs"]["nan"] == {"float": "nan"}
    assert manifest["steps"][0]["op_attrs"]["layout"][1] == {"enum": "Layout", "name": "HWCN"}
    for name, entry in manifest["members"].items():
        assert entry == {"sha256": sha(files[name]), "size": len(files[name])}
    # standard JSON throughout: no NaN / Infinity tokens
    json.loads(files[MANIFEST], parse_constant=lambda token: pytest.fail(token))


def test_big_endian_arrays_are_stored_in_native_order() -> None:
    data = make_data()
    data.steps[1].lowered.arrays["be"] = np.arange(5, dtype=">i4")
    back = read_model_bytes(model_bytes(data)).steps[1].lowered.arrays["be"]
    assert back.dtype == np.dtype("int32") and back.tolist() == [0, 1, 2, 3, 4]


def test_data_type_names_are_the_data_types() -> None:
    assert set(get_args(DataTypeName)) == set(DataType.__members__)


def test_doctests() -> None:
    assert doctest.testmod(model_file).failed == 0


# -- writing refuses what it cannot store ------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.steps[0].lowered.arrays.update(o=np.array([None])), "conv1.*'o'.*object"),
        (lambda d: d.steps[0].lowered.arrays.update(c=np.zeros(2, complex)), "complex128"),
        (lambda d: d.steps[0].op_attrs.update(bad={1: 2}), "conv1.*op_attrs.*key 1"),
        (lambda d: d.steps[1].lowered.attrs.update(a=np.zeros(2)), "relu.*lowered"),
        (lambda d: d.steps[1].inputs.append("ghost"), "relu.*reads tensor 'ghost'"),
        (lambda d: d.constants.update(bias=np.zeros(4, np.float16)), "'bias' is float16"),
        (lambda d: d.constants.update(bias=np.zeros(5, np.float32)), "'bias' has shape"),
        (lambda d: setattr(d, "mode", "int4"), "mode"),
        (lambda d: setattr(d, "fingerprint", "xyz"), "fingerprint"),
        (lambda d: d.tensors.update(x=TensorInfo("x", (-2,), F32)), "dims"),
    ],
)
def test_writing_refuses_inconsistent_data(change: Callable[[ModelData], None], match: str) -> None:
    data = make_data()
    change(data)
    with pytest.raises(MMError, match=match) as info:
        model_bytes(data)
    assert info.value.code is Code.INTERNAL


def test_writing_to_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MMError, match="does not exist") as info:
        write_model_file(tmp_path / "nope" / "m.mm", make_data())
    assert info.value.code is Code.NOT_FOUND


# -- reading refuses damaged and foreign files -------------------------------------------------
@pytest.mark.parametrize("blob", [b"", b"hello world", b"\x89PNG\r\n\x1a\n" + bytes(100)])
def test_not_a_zip(blob: bytes) -> None:
    refused(blob, "not a zip archive, or truncated")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated(keep: float) -> None:
    blob = sample_blob()
    refused(blob[: int(len(blob) * keep)], "not a zip archive, or truncated")


def test_missing_manifest() -> None:
    files = unzip(sample_blob())
    del files[MANIFEST]
    refused(rezip(files), "has no manifest.json")


def test_foreign_format() -> None:
    refused(
        edited(lambda m: m.update(format="onnx")), "'format' is 'onnx', expected 'mmbuild-model'"
    )
    refused(edited(text=b"[1, 2]"), "not a JSON object")


def test_newer_format_version() -> None:
    def newer(m: dict[str, Any]) -> None:
        m.update(format_version=2, mmbuild_version="9.9", steps="changed")

    error = refused(
        edited(newer), "written by mmbuild 9.9 with format version 2", Code.OUT_OF_RANGE
    )
    assert "reads format versions up to 1; upgrade" in str(error)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b'{"format": "mmbuild-model",', "not valid JSON"),
        (b'{"format": "mmbuild-model", "x": NaN}', "NaN is not JSON"),
        (b'{"format": "mmbuild-model", "format": "mmbuild-model"}', "'format' appears twice"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_json(text: bytes, match: str) -> None:
    refused(edited(text=text), match)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(extra=1), "extra: Extra inputs are not permitted"),
        (lambda m: m.pop("steps"), "steps: Field required"),
        (lambda m: m["steps"][0].update(inputs=3), r"steps\[0\].inputs \(step 'conv1'\)"),
        (lambda m: m["tensors"]["x"].update(dims=[-2]), r"tensors.x.dims\[0\]: .*greater than"),
        (lambda m: m["tensors"]["x"].update(dims=[1.5]), r"tensors.x.dims\[0\]"),
        (lambda m: m["tensors"]["x"].update(dtype="FLOAT8"), "tensors.x.dtype"),
        (lambda m: m["steps"][2]["arrays"].update(u8="../../etc/passwd"), "should match pattern"),
        (lambda m: m.update(mode="int4"), "mode: Input should be"),
        (lambda m: m["members"]["arrays/0000.npy"].update(size=True), "size"),
    ],
)
def test_schema_errors_name_the_key_path(
    edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    refused(edited(edit), match)


def test_manifest_checksum() -> None:
    refused(edited(lambda m: m.update(name="other"), fix_digest=False),
            "checksum mismatch in manifest.json")  # fmt: skip
    files = unzip(sample_blob())
    del files[MANIFEST_SHA256]
    refused(rezip(files), "no manifest.sha256")


def test_member_checksum_names_the_member() -> None:
    files = unzip(sample_blob())
    name = "arrays/0001.npy"
    damaged = bytearray(files[name])
    damaged[-1] ^= 1
    refused(edited(members={name: bytes(damaged)}, fix_members=False),
            f"checksum mismatch in member '{name}'")  # fmt: skip


def test_member_size_must_match_the_manifest() -> None:
    def lie(m: dict[str, Any]) -> None:
        m["members"]["arrays/0002.npy"]["size"] += 1

    refused(edited(lie), "member 'arrays/0002.npy' holds .* bytes; the manifest says")


def test_missing_stray_and_unlisted_members() -> None:
    refused(edited(members={"arrays/0003.npy": None}, fix_members=False),
            "member 'arrays/0003.npy' is missing")  # fmt: skip
    refused(edited(members={"notes.txt": b"hi"}, fix_members=False), "'notes.txt' is not listed")

    def unlist(m: dict[str, Any]) -> None:
        m["steps"][0]["arrays"]["w"] = "arrays/9999.npy"

    refused(edited(unlist), r"step 'conv1' array 'w' is in 'arrays/9999.npy', which 'members'")


def test_duplicate_member_names() -> None:
    files = list(unzip(sample_blob()).items())
    with pytest.warns(UserWarning, match="Duplicate name"):
        blob = rezip([*files, files[-1]])
    refused(blob, "appears twice")


def test_pickles_are_never_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pickle(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a model file was unpickled")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    objects = npy(np.array([{"a": 1}, None], dtype=object))
    refused(edited(members={"arrays/0000.npy": objects}), "'arrays/0000.npy' holds dtype object")


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(3, [("a", "<f4"), ("b", "<i4")]), "holds dtype"),
        (np.zeros(3, ">f4"), "holds dtype >f4"),
        (np.zeros(3, np.complex64), "holds dtype complex64"),
        (np.array(["a", "b"]), "holds dtype <U1"),
    ],
)
def test_only_plain_numeric_arrays(array: np.ndarray, match: str) -> None:
    refused(edited(members={"arrays/0000.npy": npy(array)}), match)


def test_npy_header_must_fit_the_member() -> None:
    fp = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    npy_format.write_array_header_1_0(fp, header)
    bomb = fp.getvalue() + bytes(16)
    refused(edited(members={"arrays/0000.npy": bomb}), r"shape \(1000000000000,\) does not fit")
    refused(edited(members={"arrays/0000.npy": b"\x93NUMPY\x01\x00{"}), "not a valid .npy")
    refused(edited(members={"arrays/0000.npy": b"PK not npy"}), "not a valid .npy")


def test_steps_and_constants_must_fit_the_tensors() -> None:
    refused(edited(lambda m: m["steps"][1]["outputs"].append("ghost")),
            "step 'relu' writes tensor 'ghost', which 'tensors' does not declare")  # fmt: skip
    refused(edited(lambda m: m["tensors"].pop("step")), "constant 'step' is not declared")
    refused(edited(lambda m: m["tensors"]["bias"].update(dims=[5])), "'bias' has shape")
    refused(edited(lambda m: m["tensors"]["bias"].update(dtype="INT32")), "'bias' is float32")
    refused(edited(lambda m: m["inputs"][0].update(dtype="FLOAT16")), "input 'x' is")


@pytest.mark.parametrize(
    ("attr", "match"),
    [
        ({"enum": "Layout", "name": "NWHC"}, "step 'relu' op_attrs: unknown enum"),
        ({"enum": "Popen", "name": "x"}, "unknown enum"),
        ({"enum": ["list"], "name": "x"}, "cannot be read"),
        ({"enum": "Layout", "name": {"a": 1}}, "cannot be read"),
        ({"float": "huge"}, '"float" is one of'),
        ({"what": 1}, "unreadable attribute"),
    ],
)
def test_unreadable_attributes_name_the_step(attr: Any, match: str) -> None:
    refused(edited(lambda m: m["steps"][1]["op_attrs"].update(mode=attr)), match)


def test_limits_against_zip_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_file, "MAX_TOTAL_BYTES", 1000)
    refused(sample_blob(), "uncompressed, above the limit of 1000")
    monkeypatch.setattr(model_file, "MAX_TOTAL_BYTES", 4 * 2**30)
    monkeypatch.setattr(model_file, "MAX_MEMBERS", 3)
    refused(sample_blob(), "members is above the limit")
    monkeypatch.setattr(model_file, "MAX_MEMBERS", 100_000)
    monkeypatch.setattr(model_file, "MAX_MANIFEST_BYTES", 100)
    refused(sample_blob(), "manifest.json is above the limit")


def test_reading_a_missing_path_or_a_folder(tmp_path: Path) -> None:
    with pytest.raises(MMError, match="no such file") as info:
        read_model_file(tmp_path / "missing.mm")
    assert info.value.code is Code.NOT_FOUND
    with pytest.raises(MMError, match="is a directory") as info:
        read_model_file(tmp_path)
    assert info.value.code is Code.INVALID_ARGUMENT


# -- fuzz: any damage is refused with MMError, or changes nothing ------------------------------
def read_or_refuse(blob: bytes) -> None:
    try:
        back = read_model_bytes(blob)
    except MMError:
        return
    assert_same(make_data(), back)  # only bytes that carry nothing (timestamps, ...) changed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1, max_size=4))
def test_byte_flips_raise_only_mmerror(flips: list[tuple[int, int]]) -> None:
    blob = bytearray(sample_blob())
    for position, mask in flips:
        blob[position % len(blob)] ^= mask
    read_or_refuse(bytes(blob))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31))
def test_truncations_raise_only_mmerror(n: int) -> None:
    blob = sample_blob()
    read_or_refuse(blob[: n % len(blob)])


ODD_VALUES = [None, True, -2, 2**70, 1.5, "", "FLOAT16", "arrays/0099.npy", [], ["x"], [[[]]], {},
              {"enum": "Layout"}, {"float": "nan"}, {"dict": []},
              {"dims": [1], "dtype": "FLOAT32"}]  # fmt: skip


def value_paths(v: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else []
    for k, x in items:
        found += value_paths(x, (*prefix, k))
    return found


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(ODD_VALUES))
def test_crafted_manifests_raise_only_mmerror(where: int, value: Any) -> None:
    """A manifest with valid checksums but odd values anywhere is refused with MMError (or,
    where the value is allowed, such as a step's notes, read)."""

    def edit(m: dict[str, Any]) -> None:
        *parents, key = value_paths(m)[1:][where % (len(value_paths(m)) - 1)]
        target = m
        for k in parents:
            target = target[k]
        target[key] = value

    with contextlib.suppress(MMError):
        read_model_bytes(edited(edit))
