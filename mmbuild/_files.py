"""Every file mmbuild reads or writes goes through here: one guarded reader, one atomic writer.

Reading refuses, with an ``MMError`` naming the file and what is wrong, before anything can hang
or exhaust memory: a path that is not a ``str`` / ``os.PathLike`` or holds a NUL byte; anything
but a regular file (a FIFO nobody writes to, ``/dev/zero``, ``/dev/urandom``, a directory); a
file above the caller's size limit (checked with ``fstat`` and again while reading, so a file
that grows is cut off). JSON is then parsed by :func:`parse_json`, which refuses nesting deeper
than ``MAX_JSON_DEPTH`` (checked on the text, before the recursive parser runs), integers of more
than ``MAX_INT_DIGITS`` digits, a key that appears twice in one object and, unless allowed,
``NaN`` / ``Infinity``.

>>> parse_json('{"a": [1, 2.5]}', "config")
{'a': [1, 2.5]}
>>> parse_json('[' * 100 + ']' * 100, "config")
Traceback (most recent call last):
mmbuild.errors.MMError: config: JSON nested 100 levels deep; at most 64 levels are read
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Final

from mmbuild.errors import Code, MMError

MAX_JSON_DEPTH: Final = 64
#: Integers longer than this are refused with a message (Python's own limit for converting a
#: string to an int, which otherwise fails with an error that names no file).
MAX_INT_DIGITS: Final = 4300
_CHUNK = 1 << 20
# Strings (skipped whole, so brackets inside them do not count) and brackets.
_JSON_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def checked_path(path: Any, what: str) -> str:
    """``path`` as a ``str``, or an ``MMError`` when it cannot name a file.

    ``what`` is the kind of file for the message, e.g. ``"builder config"``.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise MMError(
            f"{what}: the path must be a str or pathlib.Path, got {type(path).__name__} "
            f"({_short(repr(path))})"
        )
    if "\0" in path:
        raise MMError(f"{what} {_short(repr(path))}: a path cannot hold a NUL character")
    if not path:
        raise MMError(f"{what}: the path is empty; give the file's path")
    return path


def read_bytes(path: Any, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them."""
    name = checked_path(path, what)
    where = f"{what} {_short(repr(name))}"
    try:
        info = os.stat(name)  # never opens: a FIFO would block open() itself
    except FileNotFoundError:
        raise MMError(f"{where}: no such file", Code.NOT_FOUND) from None
    except (OSError, ValueError) as e:
        raise MMError(f"{where}: cannot be read ({_reason(e)})", Code.UNAVAILABLE) from None
    _require_regular(info.st_mode, where)
    if info.st_size > max_bytes:
        raise MMError(f"{where}: {info.st_size} bytes is above the limit of {max_bytes} bytes")
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise MMError(f"{where}: no such file", Code.NOT_FOUND) from None
    except OSError as e:
        raise MMError(f"{where}: cannot be read ({_reason(e)})", Code.UNAVAILABLE) from None
    try:
        _require_regular(os.fstat(fd).st_mode, where)  # the file opened is the file checked
        parts, total = [], 0
        while True:
            part = os.read(fd, _CHUNK)
            if not part:
                break
            total += len(part)
            if total > max_bytes:
                raise MMError(f"{where}: grew above the limit of {max_bytes} bytes while read")
            parts.append(part)
        return b"".join(parts)
    except OSError as e:
        raise MMError(f"{where}: cannot be read ({_reason(e)})", Code.UNAVAILABLE) from None
    finally:
        os.close(fd)


def read_json_file(
    path: Any, what: str, max_bytes: int, allow_non_finite: bool = False
) -> tuple[Any, str]:
    """The JSON value in the file at ``path`` and the ``where`` that names it in messages."""
    name = checked_path(path, what)
    where = f"{what} {_short(repr(name))}"
    return parse_json(read_bytes(name, what, max_bytes), where, allow_non_finite), where


def parse_json(text: str | bytes, where: str, allow_non_finite: bool = False) -> Any:
    """The JSON value of ``text`` (UTF-8 when bytes); see the module docstring for what is
    refused. ``allow_non_finite`` lets ``NaN`` and ``Infinity`` through for a caller that
    names them better itself."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MMError(
                f"{where}: not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})"
            ) from None
    depth = json_depth(text.encode("utf-8", "surrogatepass"))
    if depth > MAX_JSON_DEPTH:
        raise MMError(
            f"{where}: JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} levels are read"
        )

    def refuse_constant(token: str) -> Any:
        raise _RefusedError(f"{token} is not JSON; use finite numbers only")

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_INT_DIGITS:
            raise _RefusedError(
                f"the integer {_short(digits, 24)} has {len(digits.lstrip('-'))} digits; "
                f"numbers of at most {MAX_INT_DIGITS} digits are read"
            )
        return int(digits)

    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=parse_int,
            parse_constant=float if allow_non_finite else refuse_constant,
        )
    except json.JSONDecodeError as e:
        raise MMError(
            f"{where}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    except _RefusedError as e:
        raise MMError(f"{where}: {e}") from None
    except (ValueError, RecursionError) as e:  # defensive: the depth check comes first
        raise MMError(f"{where}: not valid JSON ({_short(str(e))})") from None


def json_depth(text: bytes) -> int:
    """How deeply the arrays and objects of JSON ``text`` nest (0 for a scalar).

    >>> json_depth(b'{"a": [1, {"b": "[["}]}')
    3
    """
    depth = deepest = 0
    for m in _JSON_NESTING.finditer(text):
        token = m.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def write_atomically(path: str | os.PathLike[str], payload: bytes, what: str) -> None:
    """Write ``payload`` to ``path`` whole or not at all: a temporary file beside it is renamed
    over it. ``what`` names the file in errors, e.g. ``"model file 'net.mm'"``."""
    target = Path(checked_path(path, what))
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


class _RefusedError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Within one document a repeated key is a mistake (json.loads would silently keep the last).
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RefusedError(f"key {_short(repr(key))} appears twice in one JSON object")
        out[key] = value
    return out


def _require_regular(mode: int, where: str) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    raise MMError(f"{where}: is {kind}, not a regular file; give the path of a file")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
