"""CamelCase spellings of MagicMind's C++ API for every public class, from one mechanism.

A class that inherits ``CamelCaseAliases`` answers ``obj.AddIConvNode`` with
``obj.add_i_conv_node``: an attribute that starts with a capital letter and is not found the
ordinary way is matched, ignoring case and underscores, against the public attributes of the class.
So ``GetDimsNum`` finds ``get_dims_num`` and ``AddIMaxPool2DNode`` finds ``add_i_maxpool2d_node``.
No alias is written by hand, and methods added to a class later get their alias too.
"""

from __future__ import annotations

from typing import Any


def _fold(name: str) -> str:
    return name.replace("_", "").lower()


def snake_name(cls: type, camel: str) -> str | None:
    """The public attribute of ``cls`` that ``camel`` spells in CamelCase, or None."""
    if not camel[:1].isupper():
        return None
    key = _fold(camel)
    for attr in dir(cls):
        if not attr.startswith("_") and attr.islower() and _fold(attr) == key:
            return attr
    return None


class CamelCaseAliases:
    """Mixin: CamelCase spellings resolve to the snake_case methods of the class."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        target = snake_name(type(self), name)
        if target is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self, target)
