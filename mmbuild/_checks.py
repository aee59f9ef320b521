"""Argument type checks for the public API, by one mechanism: ``@checked`` reads the function's
own type hints and refuses, before the body runs, an argument that does not fit them.

``None`` where an ``ITensor`` is required, a numpy array or a float where an ``int`` is expected,
a string where an ``mm.DataType`` is: each is an ``MMError`` naming the call, the argument and
the expected type in words. The hints are resolved on the first call (the IR classes import each
other); an annotation this module cannot read is not checked, never guessed.

>>> @checked
... def set_axis(axis: int, keep: bool = False) -> int:
...     return axis
>>> set_axis(2)
2
>>> set_axis(2.0)
Traceback (most recent call last):
mmbuild.errors.MMError: set_axis: argument 'axis': expected an integer, got float (2.0)

What is accepted: ``int`` takes Python and numpy integers (not bools); ``float`` any real number
(not bools); ``bool`` Python and numpy bools; a class its instances; ``X | None`` also ``None``;
``Sequence[T]`` / ``list[T]`` / ``tuple[T, ...]`` a list, tuple or 1-D numpy array whose items
are ``T``; ``Literal[...]`` one of its values; ``Any`` and type variables anything.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import inspect
import logging
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from mmbuild.errors import MMError

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])
# (accepts(value), expected in words) per annotation
_Rule = tuple[Callable[[Any], bool], str]
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)


def checked(func: _F | None = None, *, name: str | None = None) -> Any:
    """Decorator: check each argument against ``func``'s type hints before calling it.

    ``name`` is the call as users write it (default: the function's name, ``Class.method`` for
    a method shows as the method's name)."""

    def wrap(f: _F) -> _F:
        call = name or f.__name__
        rules: dict[str, _Rule] | None = None
        signature = inspect.signature(f)

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal rules
            if rules is None:
                rules = _rules_of(f, signature)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:
                raise MMError(f"{call}: {e}") from None
            for arg, value in bound.arguments.items():
                rule = rules.get(arg)
                if rule is None:
                    continue
                kind = signature.parameters[arg].kind
                values = value.values() if kind is inspect.Parameter.VAR_KEYWORD else (
                    value if kind is inspect.Parameter.VAR_POSITIONAL else (value,)
                )  # fmt: skip
                for v in values:
                    if not rule[0](v) and v is None:
                        raise MMError(f"{call}: argument {arg!r} is missing (None); pass {rule[1]}")
                    if not rule[0](v):
                        raise MMError(
                            f"{call}: argument {arg!r}: expected {rule[1]}, got "
                            f"{type(v).__name__} ({_short(v)}){_hint(rule[1], v)}"
                        )
            return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return wrap(func) if func is not None else wrap


def _rules_of(f: Callable[..., Any], signature: inspect.Signature) -> dict[str, _Rule]:
    try:
        hints = typing.get_type_hints(f, localns=_ir_names())
    except Exception as e:  # an unresolvable hint: check nothing rather than guess
        logger.debug("%s: type hints not checked (%s)", f.__qualname__, e)
        return {}
    rules = {}
    for arg in signature.parameters:
        if arg in ("self", "cls") or arg not in hints:
            continue
        rule = _rule(hints[arg])
        if rule is not None:
            rules[arg] = rule
    return rules


def _ir_names() -> dict[str, Any]:
    """Names the IR's hints use under ``TYPE_CHECKING`` only."""
    from mmbuild.ir.network import Network
    from mmbuild.ir.node import INode
    from mmbuild.ir.tensor import ITensor
    from mmbuild.ir.types import DataType, Dims, Layout, Range

    return {"Network": Network, "INode": INode, "ITensor": ITensor, "DataType": DataType,
            "Dims": Dims, "Layout": Layout, "Range": Range}  # fmt: skip


def _rule(hint: Any) -> _Rule | None:
    """How to check one annotation, or None when anything goes."""
    if hint is Any or hint is object or isinstance(hint, TypeVar):
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_rule(a) for a in args if a is not type(None)]
        if any(p is None for p in parts):
            return None
        optional = type(None) in args
        words = " or ".join(p[1] for p in parts if p) + (" or None" if optional else "")
        tests = [p[0] for p in parts if p]
        return (lambda v: (optional and v is None) or any(t(v) for t in tests)), words
    if origin is typing.Literal:
        return (lambda v: any(v == a and type(v) is type(a) for a in args)), " or ".join(
            repr(a) for a in args
        )
    if origin in _SEQUENCES:
        item = _rule(args[0]) if args and args[0] is not Ellipsis else None
        words = f"a list of {_plural(item[1])}" if item else "a list or tuple"

        def seq(v: Any) -> bool:
            if isinstance(v, np.ndarray):
                if v.ndim != 1:
                    return False
            elif not isinstance(v, (list, tuple)):
                return False
            return item is None or all(item[0](x) for x in v)

        return seq, words
    if origin is not None:  # dict[...], Callable[...], ...: the container type only
        return _rule(origin)
    if hint is int:
        return _is_int, "an integer"
    if hint is float:
        return _is_real, "a number"
    if hint is bool:
        return (lambda v: isinstance(v, (bool, np.bool_))), "True or False"
    if hint is str:
        return (lambda v: isinstance(v, str)), "a string"
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            names = ", ".join(m.name for m in hint)
            names = names if len(names) <= 80 else names[:77] + "..."
            words = f"an mm.{hint.__name__} (one of {names})"
        else:
            words = f"{'an' if hint.__name__[0] in 'AEIOU' else 'a'} {hint.__name__}"
        return (lambda v: isinstance(v, hint)), words
    return None


def _hint(expected: str, v: Any) -> str:
    """How to get the expected value from the one given, where there is a usual way."""
    if "ITensor" in expected and isinstance(v, (np.ndarray, list, tuple, float, int)):
        return "; make a constant tensor of it with add_i_const_node"
    if "ITensor" not in expected and isinstance(v, (list, tuple)) and v:
        from mmbuild.ir.tensor import ITensor

        if isinstance(v[0], ITensor):
            return "; check the order of the arguments"
    if expected.startswith("an mm.") and isinstance(v, str):
        return f"; pass the enum member, e.g. {expected.split()[1]}.{v.upper()}"
    return ""


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def _plural(words: str) -> str:
    for article in ("an ", "a "):
        if words.startswith(article):
            return words[len(article) :] + "s"
    return words


def _short(v: Any) -> str:
    text = " ".join(repr(v).split())
    return text if len(text) <= 60 else text[:57] + "..."
