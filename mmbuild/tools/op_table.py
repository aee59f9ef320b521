"""Write docs/ops.md, the table of every op, from the op declarations.

``python -m mmbuild.tools.op_table`` rewrites the file; ``--check`` exits 1 when it is stale (a
test runs the same check).
"""

from __future__ import annotations

import argparse
import enum
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

from mmbuild.ir.node import INode
from mmbuild.ops import OPS
from mmbuild.ops.registry import adder_name

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "ops.md"

_HEADER = """# Ops

Generated from the op declarations in `mmbuild/ops` by `python -m mmbuild.tools.op_table`; do
not edit by hand. *Policy* says how an op takes part in mixed precision: **always** (its
quantizable inputs run in QINT8 / QINT16 under a `qint*` mode), **follow** (moves data; runs in the
type its input arrives in), **never** (computes in float16 or float32).

| method | node type | inputs | policy | quantizable inputs | attributes (defaults) |
|---|---|---|---|---|---|
"""


def render() -> str:
    rows = [_row(cls) for _, cls in sorted(OPS.items())]
    details = [_details(cls) for _, cls in sorted(OPS.items())]
    return _HEADER + "\n".join(rows) + "\n\n" + "\n".join(details)


def _row(cls: type[INode]) -> str:
    params = list(inspect.signature(cls.create).parameters)[1:]
    quant = ", ".join(cls.input_names[i] for i in cls.quantizable_inputs) or "-"
    attrs = ", ".join(f"{k}={_show(v)}" for k, v in cls.defaults.items()) or "-"
    inputs = ", ".join(cls.input_names) or "-"
    call = f"`{adder_name(cls)}({', '.join(params)})`"
    return f"| {call} | {cls.node_type} | {inputs} | {cls.policy.value} | {quant} | {attrs} |"


def _details(cls: type[INode]) -> str:
    doc = inspect.getdoc(cls) or ""
    setters = sorted(n for n, v in vars_all(cls).items() if n.startswith("set_") and callable(v))
    extra = f"\n\nSetters: {', '.join(f'`{s}`' for s in setters)}." if setters else ""
    return f"## {cls.node_type}\n\n{doc}{extra}\n"


def vars_all(cls: type) -> dict[str, object]:
    """The attributes a class defines itself or inherits from its op bases (not INode's)."""
    out: dict[str, object] = {}
    for base in reversed(cls.__mro__):
        if base is INode or not issubclass(base, INode):
            continue
        out.update(vars(base))
    return out


def _show(value: object) -> str:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return repr(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale; run python -m mmbuild.tools.op_table", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
