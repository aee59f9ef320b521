"""The op registry: one table from op name to its declaration (an INode subclass).

``register_op`` is the only way in: it checks the declaration, refuses a second registration of
the same op, and gives ``Network`` the op's ``add_i_<op>_node`` method.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

from mmbuild._checks import checked
from mmbuild.errors import Code, MMError
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy

OPS: dict[str, type[INode]] = {}

_Node = TypeVar("_Node", bound=type[INode])


def register_op(cls: _Node) -> _Node:
    """Class decorator: declare an op. Its ``op`` names the ``add_i_<op>_node`` method."""
    if not cls.op or not cls.node_type.startswith("I") or not cls.node_type.endswith("Node"):
        raise MMError(f"{cls.__qualname__}: an op declares `op` and a `node_type` like 'IConvNode'")
    if not isinstance(cls.policy, Policy):
        raise MMError(f"{cls.__qualname__}: `policy` must be a Policy")
    if cls.op in OPS:
        raise MMError(
            f"op {cls.op!r} is registered twice ({OPS[cls.op].__qualname__} and "
            f"{cls.__qualname__}); each op is declared once",
            Code.INTERNAL,
        )
    OPS[cls.op] = cls
    setattr(Network, adder_name(cls), _adder(cls))
    return cls


def adder_name(cls: type[INode]) -> str:
    return f"add_i_{cls.op}_node"


def get_op(name: str) -> type[INode]:
    """The declaration of op ``name``; an unknown name lists the known ones."""
    try:
        return OPS[name]
    except KeyError:
        raise MMError(
            f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}", Code.NOT_FOUND
        ) from None


def op_of_node_type(node_type: str) -> type[INode]:
    for cls in OPS.values():
        if cls.node_type == node_type:
            return cls
    known = ", ".join(sorted(c.node_type for c in OPS.values()))
    raise MMError(f"unknown node type {node_type!r}; known: {known}", Code.NOT_FOUND)


def _adder(cls: type[INode]) -> Any:
    create = checked(cls.create, name=adder_name(cls))  # argument types, from its hints

    @functools.wraps(create)
    def add(self: Network, *args: Any, **kwargs: Any) -> INode:
        return create(self, *args, **kwargs)

    params = list(inspect.signature(create).parameters.values())[1:]  # drop `network`
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    add.__signature__ = inspect.Signature([self_param, *params])  # type: ignore[attr-defined]
    add.__name__ = add.__qualname__ = adder_name(cls)
    add.__doc__ = f"Add an {cls.node_type}. {inspect.getdoc(cls) or ''}"
    return add
