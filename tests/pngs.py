"""A small PNG writer for tests: every row filter type, so the reader's unfiltering is checked."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_COLOUR = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> colour type


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter(kind: int, line: bytes, prev: bytes, bpp: int) -> bytes:
    out = bytearray(len(line))
    for i, x in enumerate(line):
        left = line[i - bpp] if i >= bpp else 0
        up = prev[i]
        upleft = prev[i - bpp] if i >= bpp else 0
        pred = [0, left, up, (left + up) // 2, _paeth(left, up, upleft)][kind]
        out[i] = (x - pred) & 0xFF
    return bytes(out)


def png_bytes(image: np.ndarray, filters: tuple[int, ...] = (0, 1, 2, 3, 4)) -> bytes:
    """An 8-bit PNG of ``image`` (H, W) or (H, W, C); row y uses filter ``filters[y % n]``."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    h, w, c = image.shape
    prev = bytes(w * c)
    raw = bytearray()
    for y in range(h):
        line = image[y].tobytes()
        kind = filters[y % len(filters)]
        raw += bytes([kind]) + _filter(kind, line, prev, c)
        prev = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, _COLOUR[c], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_png(path: Path, image: np.ndarray) -> Path:
    path.write_bytes(png_bytes(image))
    return path
