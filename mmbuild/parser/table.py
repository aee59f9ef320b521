"""The import table: ONNX op type -> the handler that adds its nodes, with what it honours.

Each handler module declares its ops with ``@imports(...)``; the table is the one place that
says which ONNX ops mmbuild imports, from which opset, what of each op is supported (``notes``)
and what is refused (``limits``: key -> reason). docs/onnx.md is generated from it
(``markdown_table``), and the backend conformance test skips exactly the cases refused with a
``limits`` reason. A handler refuses through ``NodeContext.refuse(key)``, which raises
``UnsupportedFeature`` carrying that reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmbuild.errors import Code, MMError

if TYPE_CHECKING:
    from mmbuild.parser.walk import NodeContext

Handler = Callable[["NodeContext"], list[Any]]

HANDLER_MODULES = ("ops_math", "ops_nn", "ops_shape", "ops_quant")


@dataclass(frozen=True)
class OpEntry:
    """One row of the import table."""

    op_type: str
    handler: Handler | None  # None: only folded at parse time (every input must be constant)
    notes: str
    since: int = 1  # the oldest opset of the op that the handler reads
    limits: dict[str, str] = field(default_factory=dict)


IMPORTS: dict[str, OpEntry] = {}


class UnsupportedFeature(MMError):
    """A known op used with an attribute or input that the import table lists as refused."""

    def __init__(self, message: str, op_type: str, limit: str) -> None:
        super().__init__(message, Code.UNAVAILABLE)
        self.op_type = op_type
        self.limit = limit


def imports(
    *op_types: str, notes: str, since: int = 1, limits: dict[str, str] | None = None
) -> Callable[[Handler], Handler]:
    """Declare ``handler`` as the importer of ``op_types`` (one table row each)."""

    def register(handler: Handler) -> Handler:
        for op in op_types:
            _add(OpEntry(op, handler, notes, since, dict(limits or {})))
        return handler

    return register


def folded_only(*op_types: str, notes: str = "folded at parse time") -> None:
    """Ops whose every input must be known at parse time (shape computations)."""
    for op in op_types:
        _add(OpEntry(op, None, notes))


def _add(entry: OpEntry) -> None:
    if entry.op_type in IMPORTS:
        raise MMError(f"ONNX op {entry.op_type} is in the import table twice", Code.INTERNAL)
    IMPORTS[entry.op_type] = entry


def load_table() -> dict[str, OpEntry]:
    """The import table, with every handler module loaded."""
    for name in HANDLER_MODULES:
        importlib.import_module(f"mmbuild.parser.{name}")
    return IMPORTS


def markdown_table() -> str:
    """The import table as the Markdown of docs/onnx.md."""
    rows = [
        "| ONNX op | from opset | supported | refused |",
        "| --- | --- | --- | --- |",
    ]
    for op in sorted(load_table()):
        e = IMPORTS[op]
        how = e.notes if e.handler else f"{e.notes} (inputs must be constants)"
        refused = "; ".join(e.limits.values()) or "-"
        rows.append(f"| {op} | {e.since} | {how} | {refused} |")
    return "\n".join(rows) + "\n"
