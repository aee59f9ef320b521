"""File writing shared by the calibration cache and the model file."""

from __future__ import annotations

import os
from pathlib import Path

from mmbuild.errors import Code, MMError


def write_atomically(path: str | os.PathLike[str], payload: bytes, what: str) -> None:
    """Write ``payload`` to ``path`` whole or not at all: a temporary file beside it is renamed
    over it. ``what`` names the file in errors, e.g. ``"model file 'net.mm'"``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, target)
    except FileNotFoundError:
        raise MMError(
            f"{what}: the folder {str(target.parent)!r} does not exist; create it first",
            Code.NOT_FOUND,
        ) from None
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MMError(f"{what}: cannot be written ({e.strerror})", Code.UNAVAILABLE) from None
