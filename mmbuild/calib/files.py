"""Calibration data read from files: a folder of images, or arrays in ``.npy`` / ``.npz`` files.

* :class:`ImageFolderData` reads the images of a folder in file-name order, in batches, and
  preprocesses each: resized (bilinear, half-pixel centres), divided by ``scale``, normalised by
  ``(x - mean) / std`` per channel and laid out as the network input wants (NHWC or NCHW).
  PNG (8-bit, non-interlaced), PPM/PGM and ``.npy`` images are read with numpy alone; JPEG needs
  Pillow (``pip install "mmbuild[images]"``), which, when installed, reads PNG too.
* :class:`ArrayData` splits one array ``[N, ...]`` into batches along axis 0.
* :func:`calibration_sources` turns command-line specs into one data source per network input.

Worked example of the preprocessing: a pixel (255, 128, 0) with ``scale=255``, ``mean=0.5`` and
``std=0.25`` becomes ((1.0 - 0.5) / 0.25, (0.50196 - 0.5) / 0.25, (0 - 0.5) / 0.25) =
(2.0, 0.00784, -2.0).

>>> pre = Preprocess(mean=(0.5,), std=(0.25,))
>>> [round(float(v), 5) for v in pre.apply(np.array([[[255, 128, 0]]], np.uint8), 3).ravel()]
[2.0, 0.00784, -2.0]
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmbuild.calib.data import CalibDataInterface
from mmbuild.errors import Code, MMError, Status
from mmbuild.ir.types import DataType, Dims

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".ppm", ".pgm", ".pnm", ".jpg", ".jpeg", ".npy")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a network input: ``size`` (H, W) to resize to (None: keep),
    ``scale`` (pixel divisor), per-channel ``mean`` and ``std`` (one value applies to every
    channel), and ``layout`` ``"NHWC"`` or ``"NCHW"``."""

    size: tuple[int, int] | None = None
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NHWC"

    @classmethod
    def parse(cls, items: Sequence[str], dims: Sequence[int] = ()) -> Preprocess:
        """Options ``KEY=VALUE`` (``resize=224x224``, ``scale=255``, ``mean=0.485,0.456,0.406``,
        ``std=...``, ``layout=NCHW``); size and layout default to what the input ``dims``
        imply (a 4-d input whose dimension 1 is 1, 3 or 4 and whose last is not is NCHW)."""
        pre = cls()
        if len(dims) == 4:
            nchw = dims[1] in (1, 3, 4) and dims[3] not in (1, 3, 4)
            hw = (dims[2], dims[3]) if nchw else (dims[1], dims[2])
            pre = replace(pre, layout="NCHW" if nchw else "NHWC", size=hw if min(hw) > 0 else None)
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            try:
                if not sep:
                    raise ValueError("no '='")
                if key == "resize":
                    h, w = (int(v) for v in value.lower().split("x"))
                    if h < 1 or w < 1:
                        raise ValueError("sizes must be >= 1")
                    pre = replace(pre, size=(h, w))
                elif key == "scale":
                    pre = replace(pre, scale=float(value))
                elif key in ("mean", "std"):
                    values = tuple(float(v) for v in value.split(","))
                    if key == "std" and any(v == 0 for v in values):
                        raise ValueError("std cannot be 0")
                    pre = replace(pre, mean=values) if key == "mean" else replace(pre, std=values)
                elif key == "layout":
                    if value.upper() not in ("NHWC", "NCHW"):
                        raise ValueError("layout is NHWC or NCHW")
                    pre = replace(pre, layout=value.upper())
                else:
                    raise MMError(
                        f"--preprocess {item!r}: unknown option {key!r}; the options are resize, "
                        "scale, mean, std and layout",
                        Code.INVALID_ARGUMENT,
                    )
            except ValueError as e:
                if isinstance(e, MMError):
                    raise
                raise MMError(
                    f"--preprocess {item!r}: {e}; write e.g. resize=224x224, scale=255, "
                    "mean=0.485,0.456,0.406, std=0.229,0.224,0.225 or layout=NCHW"
                ) from None
        return pre

    def apply(self, image: np.ndarray, channels: int) -> np.ndarray:
        """One image (H, W) or (H, W, C) of any numeric dtype -> float32 in ``layout`` order
        without the batch axis, with ``channels`` channels (grey is repeated, alpha dropped,
        colour made grey by ITU-R 601 luma when one channel is wanted)."""
        x = np.asarray(image, np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if x.shape[2] in (2, 4):  # drop alpha
            x = x[:, :, : x.shape[2] - 1]
        if x.shape[2] == 1 and channels > 1:
            x = np.repeat(x, channels, axis=2)
        elif x.shape[2] == 3 and channels == 1:
            x = np.asarray(x @ np.array([[0.299], [0.587], [0.114]], np.float32), np.float32)
        if self.size is not None and x.shape[:2] != self.size:
            x = resize_bilinear(x, self.size)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        x = ((x / np.float32(self.scale) - mean) / std).astype(np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)) if self.layout == "NCHW" else x


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) -> (h, w, C), bilinear with half-pixel centres (source coordinate
    ``(i + 0.5) * H / h - 0.5`` clamped to [0, H - 1]), as ONNX Resize and OpenCV compute it.

    >>> resize_bilinear(np.array([[[0.0], [10.0]]]), (1, 4))[0, :, 0].tolist()
    [0.0, 2.5, 7.5, 10.0]
    """
    out = np.asarray(image, np.float32)
    for axis, n in ((0, size[0]), (1, size[1])):
        length = out.shape[axis]
        c = np.clip((np.arange(n) + 0.5) * length / n - 0.5, 0, length - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, length - 1)
        frac = (c - lo).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = n
        frac = frac.reshape(shape)
        out = np.take(out, lo, axis) * (1 - frac) + np.take(out, hi, axis) * frac
    return out


def read_image(path: str | Path) -> np.ndarray:
    """The pixels of an image file as (H, W) or (H, W, C); ``.npy`` as stored. PNG and PPM/PGM
    are decoded here (the same pixels with or without Pillow); other formats, and PNG variants
    beyond 8-bit non-interlaced, go to Pillow."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            image = np.load(path, allow_pickle=False)
            if image.ndim not in (2, 3) or not np.issubdtype(image.dtype, np.number):
                raise ValueError(f"a {image.ndim}-d {image.dtype} array is not an image")
            return image
        blob = path.read_bytes()
        needs = f"reading {suffix or 'suffix-less'} files"
        try:
            if suffix == ".png":
                return _read_png(blob)
            if suffix in (".ppm", ".pgm", ".pnm"):
                return _read_pnm(blob)
        except _NeedsPillowError as e:
            needs = str(e)
        try:
            from PIL import Image
        except ImportError:
            raise MMError(
                f"image {str(path)!r}: {needs} needs Pillow; install it with pip install "
                "'mmbuild[images]' (or pip install pillow), or convert the images to PNG",
                Code.UNAVAILABLE,
            ) from None
        import io

        with Image.open(io.BytesIO(blob)) as im:
            return np.asarray(im)
    except MMError:
        raise
    except Exception as e:  # numpy, zlib, struct and Pillow's errors on a damaged file
        raise MMError(f"image {str(path)!r} cannot be read: {e}", Code.INVALID_ARGUMENT) from None


class _NeedsPillowError(ValueError):
    """A valid file this module does not decode (Pillow does)."""


def _read_pnm(blob: bytes) -> np.ndarray:
    """Binary PGM (P5) and PPM (P6), 8 or 16 bits."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(blob) and blob[pos : pos + 1].isspace():
            pos += 1
        if blob[pos : pos + 1] == b"#":
            pos = blob.index(b"\n", pos) + 1
            continue
        end = pos
        while end < len(blob) and not blob[end : end + 1].isspace():
            end += 1
        fields.append(blob[pos:end])
        pos = end
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic not in (b"P5", b"P6"):
        raise ValueError(f"not a binary PGM/PPM (magic {magic!r}; P5 or P6 expected)")
    channels = 3 if magic == b"P6" else 1
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
    count = width * height * channels
    pixels = np.frombuffer(blob, dtype, count=count, offset=pos + 1)
    return pixels.reshape(height, width, channels).astype(np.uint16 if maxval > 255 else np.uint8)


def _read_png(blob: bytes) -> np.ndarray:
    """8-bit, non-interlaced PNG of any colour type (grey, RGB, palette, grey+alpha, RGBA)."""
    if not blob.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    pos, idat, palette = 8, [], None
    header: tuple[int, ...] = ()
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind, body = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if not header or not idat:
        raise ValueError("truncated PNG (no IHDR or IDAT chunk)")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or interlace or colour not in _PNG_CHANNELS:
        raise _NeedsPillowError(
            f"reading PNG with bit depth {depth}, colour type {colour}, interlace {interlace}"
        )
    bpp = _PNG_CHANNELS[colour]
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows = np.zeros((height, stride), np.uint8)
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        line_filter = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        if len(line) != stride:
            raise ValueError("truncated PNG image data")
        _unfilter(line_filter, line, prev, bpp)
        rows[y] = np.frombuffer(bytes(line), np.uint8)
        prev = line
    image = rows.reshape(height, width, bpp)
    if colour == 3:
        if palette is None:
            raise ValueError("palette PNG without a PLTE chunk")
        image = palette[image[:, :, 0]]
    return image


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    """Undo one PNG row filter in place (None, Sub, Up, Average, Paeth)."""
    if kind == 0:
        return
    if kind == 2:
        line[:] = (
            (
                (np.frombuffer(line, np.uint8).astype(np.uint16) + np.frombuffer(prev, np.uint8))
                & 0xFF
            )
            .astype(np.uint8)
            .tobytes()
        )
        return
    if kind not in (1, 3, 4):
        raise ValueError(f"bad PNG filter type {kind}")
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 1:
            pred = left
        elif kind == 3:
            pred = (left + up) // 2
        else:
            upleft = prev[i - bpp] if i >= bpp else 0
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
        line[i] = (line[i] + pred) & 0xFF


class _BatchedData(CalibDataInterface):
    """Shared batch cursor: subclasses give ``_count`` items and ``_load(start, stop)``."""

    def __init__(self, batch_size: int, dtype: DataType) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MMError(f"calibration batch size must be an integer >= 1, not {batch_size!r}")
        self.batch_size = batch_size
        self.dtype = dtype
        self._count = 0
        self._start = -batch_size
        self._batch: np.ndarray | None = None

    def _load(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        """The number of batches."""
        return -(-self._count // self.batch_size)

    def reset(self) -> Status:
        self._start, self._batch = -self.batch_size, None
        return Status.OK()

    def next(self) -> Status:
        self._start += self.batch_size
        if self._start >= self._count:
            return Status(Code.OUT_OF_RANGE, "end of data")
        stop = min(self._start + self.batch_size, self._count)
        self._batch = np.ascontiguousarray(self._load(self._start, stop), self.dtype.numpy_dtype)
        return Status.OK()

    def get_sample(self) -> np.ndarray:
        if self._batch is None:
            raise MMError("no current batch: call reset() and next() first")
        return self._batch

    def get_shape(self) -> Dims:
        return Dims(self.get_sample().shape)

    def get_data_type(self) -> DataType:
        return self.dtype


class ImageFolderData(_BatchedData):
    """The images of ``folder`` (suffixes ``IMAGE_SUFFIXES``), sorted by name, in batches of
    ``batch_size`` (the last may be smaller), preprocessed by ``preprocess`` to ``channels``
    channels."""

    def __init__(
        self,
        folder: str | Path,
        batch_size: int = 8,
        preprocess: Preprocess | None = None,
        channels: int = 3,
        dtype: DataType = DataType.FLOAT32,
    ) -> None:
        super().__init__(batch_size, dtype)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MMError(f"calibration folder {str(folder)!r} does not exist", Code.NOT_FOUND)
        self.files = sorted(
            p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise MMError(
                f"calibration folder {str(folder)!r} holds no images; put files ending in "
                f"{', '.join(IMAGE_SUFFIXES)} there",
                Code.NOT_FOUND,
            )
        self.preprocess = preprocess or Preprocess()
        self.channels = channels
        self._count = len(self.files)

    def _load(self, start: int, stop: int) -> np.ndarray:
        images: list[np.ndarray] = []
        for path in self.files[start:stop]:
            image = self.preprocess.apply(read_image(path), self.channels)
            if images and image.shape != images[0].shape:
                raise MMError(
                    f"image {str(path)!r} is {list(image.shape)} after preprocessing, but "
                    f"{str(self.files[start])!r} is {list(images[0].shape)}; give "
                    "--preprocess resize=HxW so that every image has one size"
                )
            images.append(image)
        return np.stack(images)

    def __repr__(self) -> str:
        return f"ImageFolderData({str(self.folder)!r}, {len(self.files)} images)"


class ArrayData(_BatchedData):
    """One array ``[N, ...]`` in batches of ``batch_size`` along axis 0."""

    def __init__(self, array: np.ndarray, batch_size: int = 8, name: str = "array") -> None:
        array = np.asarray(array)
        super().__init__(batch_size, DataType.from_numpy(array.dtype))
        if array.ndim == 0 or array.shape[0] == 0:
            raise MMError(f"calibration data {name}: an array [N, ...] with N >= 1 is needed")
        self.array = array
        self.name = name
        self._count = int(array.shape[0])

    def _load(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def __repr__(self) -> str:
        return f"ArrayData({self.name}, {list(self.array.shape)})"


def calibration_sources(
    specs: Sequence[str],
    inputs: Sequence[tuple[str, Sequence[int]]],
    batch_size: int | None = None,
    preprocess: Sequence[str] = (),
) -> list[CalibDataInterface]:
    """One data source per network input from ``specs``: one ``.npz`` holding an array per
    input (by input name, or ``arr_0``, ``arr_1``, ... in input order), or one folder of images
    or ``.npy`` file per input, in input order. ``inputs`` are the network's (name, dims).

    The batch size is ``batch_size``, else the input's fixed batch dimension, else 8; with a
    fixed batch dimension the images that do not fill a last whole batch are left out."""
    if len(specs) == 1 and specs[0].lower().endswith(".npz"):
        arrays = _read_npz(specs[0], [name for name, _ in inputs])
    elif len(specs) != len(inputs):
        raise MMError(
            f"--calib: {len(specs)} data source(s) given; the network has {len(inputs)} "
            f"input(s) {[n for n, _ in inputs]}: give one folder or .npy per input, in order, "
            "or one .npz with an array per input"
        )
    else:
        arrays = [None] * len(inputs)
    sources: list[CalibDataInterface] = []
    for i, ((name, dims), array) in enumerate(zip(inputs, arrays)):
        fixed = dims[0] if dims and dims[0] > 0 else None
        if batch_size is not None and fixed is not None and batch_size != fixed:
            raise MMError(
                f"--calib-batch {batch_size}: input {name!r} has a fixed batch of {fixed} "
                f"({list(dims)}); leave --calib-batch out or set the input shape"
            )
        size = batch_size or fixed or 8
        source: _BatchedData
        if array is None:
            path = Path(specs[i])
            if path.is_dir():
                pre = Preprocess.parse(preprocess, dims)
                source = ImageFolderData(path, size, pre, _channels(dims, pre.layout))
            elif path.suffix.lower() == ".npy" and path.is_file():
                source = ArrayData(_load_npy(path), size, repr(str(path)))
            else:
                raise MMError(f"--calib {specs[i]!r}: no such folder or .npy file", Code.NOT_FOUND)
        else:
            source = ArrayData(array, size, f"{specs[0]!r}[{name!r}]")
        if fixed is not None and source._count % fixed:
            kept = source._count - source._count % fixed
            log.warning(
                "calibration data for %r: %d item(s) left out to fill whole batches of %d",
                name,
                source._count - kept,
                fixed,
            )
            source._count = kept
        sources.append(source)
    return sources


def _channels(dims: Sequence[int], layout: str) -> int:
    if len(dims) != 4:
        return 3
    c = dims[1] if layout == "NCHW" else dims[3]
    return c if c > 0 else 3


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MMError(f"{str(path)!r} is not a readable .npy file: {e}") from None


def _read_npz(path: str, names: list[str]) -> list[Any]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise MMError(f"--calib {path!r}: no such file", Code.NOT_FOUND) from None
    except (OSError, ValueError) as e:
        raise MMError(f"--calib {path!r} is not a readable .npz file: {e}") from None
    out = []
    for i, name in enumerate(names):
        key = name if name in stored else f"arr_{i}"
        if key not in stored:
            raise MMError(
                f"--calib {path!r} has no array for input {name!r}; it holds "
                f"{sorted(stored)}; save one array per input under the input's name"
            )
        out.append(stored[key])
    return out
