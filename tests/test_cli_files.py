"""Calibration data from files: the image readers, the preprocessing and the data sources."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pngs import png_bytes

import mmbuild as mm
from mmbuild.calib import files
from mmbuild.calib.files import (
    ArrayData,
    ImageFolderData,
    Preprocess,
    calibration_sources,
    read_image,
    resize_bilinear,
)
from mmbuild.errors import Code, MMError


def test_doctests() -> None:
    result = doctest.testmod(files)
    assert result.failed == 0 and result.attempted >= 3


@settings(max_examples=30)
@given(
    image=hnp.arrays(
        np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 2, 3, 4]))
    ),
    filters=st.lists(st.integers(0, 4), min_size=1, max_size=5).map(tuple),
)
def test_png_reader_undoes_every_row_filter(image: np.ndarray, filters: tuple[int, ...]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.png"
        path.write_bytes(png_bytes(image, filters))
        got = read_image(path)
    want = image[:, :, 0] if image.shape[2] == 1 and got.ndim == 2 else image
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_ppm_pgm_and_npy_images(tmp_path: Path) -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    (tmp_path / "a.ppm").write_bytes(b"P6\n# a comment\n3 2\n255\n" + rgb.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "a.ppm"), rgb)
    grey = np.array([[0, 1000], [65535, 7]], ">u2")
    (tmp_path / "b.pgm").write_bytes(b"P5 2 2 65535\n" + grey.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "b.pgm")[:, :, 0], grey)
    np.save(tmp_path / "c.npy", rgb.astype(np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "c.npy"), rgb)


def test_unreadable_images_are_named(tmp_path: Path) -> None:
    (tmp_path / "cut.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8))[:40])
    with pytest.raises(MMError, match="cut.png.*cannot be read"):
        read_image(tmp_path / "cut.png")
    np.save(tmp_path / "vec.npy", np.zeros(5))
    with pytest.raises(MMError, match="vec.npy.*1-d float64 array is not an image"):
        read_image(tmp_path / "vec.npy")


def test_jpeg_needs_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    if importlib.util.find_spec("PIL") is not None:  # Pillow reads it, and names a bad file
        with pytest.raises(MMError, match="a.jpg.*cannot be read"):
            read_image(tmp_path / "a.jpg")
    monkeypatch.setitem(sys.modules, "PIL", None)  # as on a machine without Pillow
    with pytest.raises(MMError, match=r"reading .jpg files needs Pillow.*mmbuild\[images\]") as e:
        read_image(tmp_path / "a.jpg")
    assert e.value.code is Code.UNAVAILABLE


def test_resize_is_half_pixel_bilinear() -> None:
    # 2x2 -> 4x4: source coordinates -0.25, 0.25, 0.75, 1.25 clamp to 0, 0.25, 0.75, 1
    x = np.array([[0.0, 4.0], [8.0, 12.0]])[:, :, None]
    got = resize_bilinear(x, (4, 4))[:, :, 0]
    row = [0.0, 1.0, 3.0, 4.0]
    np.testing.assert_allclose(got, [[r + 8 * t for r in row] for t in (0, 0.25, 0.75, 1)])
    np.testing.assert_array_equal(resize_bilinear(x, (2, 2)), x)  # same size: unchanged


def test_preprocess_defaults_follow_the_input_and_options_override() -> None:
    nchw = Preprocess.parse([], [-1, 3, 224, 200])
    assert nchw.layout == "NCHW" and nchw.size == (224, 200)
    nhwc = Preprocess.parse(["mean=0.5", "std=0.5,0.25,1"], [1, 32, 32, 3])
    assert nhwc.layout == "NHWC" and nhwc.size == (32, 32) and nhwc.std == (0.5, 0.25, 1.0)
    dynamic = Preprocess.parse(["layout=nchw", "scale=1"], [-1, 3, -1, -1])
    assert dynamic.size is None and dynamic.layout == "NCHW" and dynamic.scale == 1.0
    assert Preprocess.parse(["resize=8x6"], [-1, 3, 224, 224]).size == (8, 6)
    for bad, message in [
        ("resize=8", "resize=224x224"),
        ("std=0", "std cannot be 0"),
        ("layout=CHW", "NHWC or NCHW"),
        ("mean", "no '='"),
    ]:
        with pytest.raises(MMError, match=message):
            Preprocess.parse([bad])


def test_preprocess_channels_and_layout() -> None:
    grey = np.array([[0, 255]], np.uint8)  # (1, 2)
    out = Preprocess(layout="NCHW").apply(grey, channels=3)
    assert out.shape == (3, 1, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[0.0, 1.0]]] * 3)
    rgba = np.array([[[255, 0, 0, 9]]], np.uint8)
    np.testing.assert_allclose(Preprocess().apply(rgba, channels=1), [[[0.299]]], rtol=1e-6)


def test_image_folder_batches_in_name_order(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(np.full((4, 4, 3), 10 * i, np.uint8)))
    (tmp_path / "readme.txt").write_text("not an image")
    data = ImageFolderData(tmp_path, batch_size=2, preprocess=Preprocess(size=(2, 2), scale=10))
    assert len(data) == 3 and data.reset().ok()
    firsts = []
    while data.next().ok():
        assert data.get_data_type() is mm.DataType.FLOAT32
        firsts.append(data.get_sample()[:, 0, 0, 0].tolist())
    assert firsts == [[0.0, 1.0], [2.0, 3.0], [4.0]]
    assert data.next().code() is Code.OUT_OF_RANGE


def test_images_of_different_sizes_need_resize(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    (tmp_path / "b.png").write_bytes(png_bytes(np.zeros((5, 4, 3), np.uint8)))
    data = ImageFolderData(tmp_path, batch_size=2)
    data.reset()
    with pytest.raises(MMError, match=r"b.png.*\[5, 4, 3\].*resize=HxW"):
        data.next()


def test_sources_from_npz_npy_and_folders(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", b=np.ones((6, 2), np.float32), a=np.zeros((6, 3), np.float32))
    a, b = calibration_sources([str(tmp_path / "d.npz")], [("a", [-1, 3]), ("b", [-1, 2])], 4)
    assert isinstance(a, ArrayData) and a.array.shape == (6, 3) and len(a) == 2
    assert b.array.shape == (6, 2)  # type: ignore[attr-defined]
    np.savez(tmp_path / "p.npz", np.ones((3, 2), np.float32))
    (only,) = calibration_sources([str(tmp_path / "p.npz")], [("x", [3, 2])])
    assert only.batch_size == 3  # type: ignore[attr-defined]  # the fixed batch
    np.save(tmp_path / "x.npy", np.ones((7, 2), np.float32))
    (fixed,) = calibration_sources([str(tmp_path / "x.npy")], [("x", [2, 2])])
    assert len(fixed) == 3  # type: ignore[arg-type]  # 7 rows in whole batches of 2: one left out
    with pytest.raises(MMError, match="2 input"):
        calibration_sources([str(tmp_path / "x.npy")], [("a", [-1, 2]), ("b", [-1, 2])])
    with pytest.raises(MMError, match=r"no array for input 'c'.*\['a', 'b'\]"):
        calibration_sources([str(tmp_path / "d.npz")], [("a", [-1]), ("c", [-1])])
    with pytest.raises(MMError, match="fixed batch of 2"):
        calibration_sources([str(tmp_path / "x.npy")], [("x", [2, 2])], batch_size=4)
