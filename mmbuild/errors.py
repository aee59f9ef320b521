"""Status codes, the Status value and MMError, the one exception type of mmbuild.

MagicMind calls that return a Status return ``Status.OK()`` on success; on failure mmbuild raises
``MMError`` (a ``ValueError``) whose ``.status`` carries the code, so nothing fails silently.
"""

from __future__ import annotations

import enum

from mmbuild._aliases import CamelCaseAliases


class Code(enum.IntEnum):
    """Status codes, as MagicMind's ``magicmind.Code``."""

    OK = 0
    INVALID_ARGUMENT = 1
    OUT_OF_RANGE = 2
    INTERNAL = 3
    UNAVAILABLE = 4
    NOT_FOUND = 5


class Status(CamelCaseAliases):
    """A code and a message: ``Status(Code.OUT_OF_RANGE, "end of data")``.

    >>> Status.OK().ok()
    True
    >>> str(Status(Code.NOT_FOUND, "no tensor x"))
    'NOT_FOUND: no tensor x'
    """

    __slots__ = ("_code", "_message")

    def __init__(self, code: Code = Code.OK, message: str = "") -> None:
        self._code = Code(code)
        self._message = str(message)

    @classmethod
    def OK(cls) -> Status:
        return cls(Code.OK, "")

    def ok(self) -> bool:
        return self._code == Code.OK

    def code(self) -> Code:
        return self._code

    def error_message(self) -> str:
        return self._message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return self._code == other._code and self._message == other._message

    def __hash__(self) -> int:
        return hash((self._code, self._message))

    def __str__(self) -> str:
        return "OK" if self.ok() else f"{self._code.name}: {self._message}"

    def __repr__(self) -> str:
        return f"Status({self._code.name}, {self._message!r})"


class MMError(ValueError):
    """The error mmbuild raises for every refused input; ``.status`` holds code and message.

    The message names the node, tensor, input index or config key at fault and says how to fix it.
    """

    def __init__(self, message: str, code: Code = Code.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.status = Status(code, message)

    @property
    def code(self) -> Code:
        return self.status.code()


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' (did you mean 'x'?)' suffix naming the closest choice, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
