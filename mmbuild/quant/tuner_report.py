"""The report of :class:`mmbuild.quant.tuner.AccuracyTuner`: what it moved to float and why.

One :class:`TunerRow` per node the tuner changed, in the order it moved them (most sensitive
first), plus the outcome: the target, the metric of the full int8 build and of the returned
model, the number of trial builds, and the share of conv / deconv / inner-product / matmul
multiply-accumulates (MACs) still computed in int8::

    int8 MAC share = sum of MACs of the quantized nodes / sum of MACs of all such nodes

Worked example: a conv of 1,000,000 MACs and an inner product of 10,000 MACs; moving the inner
product to FLOAT16 keeps 1,000,000 / 1,010,000 = 99.0% of the MACs in int8.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mmbuild.ir.types import DataType
from mmbuild.report import _table, plain, rows_to_json


@dataclass(frozen=True)
class TunerRow:
    """One node moved out of int8: from which precision to which, why, and the metric of the
    whole model before any move (the int8 build) and with the returned moves
    (``error_before`` / ``error_after``)."""

    node: str
    type: str
    from_precision: DataType
    to_precision: DataType
    why: str
    error_before: float
    error_after: float
    macs: int = 0


@dataclass
class TunerReport:
    """The outcome of a tuning run (``str()`` is a table, ``to_json()`` the same as JSON).

    >>> q8, f16 = DataType.QINT8, DataType.FLOAT16
    >>> r = TunerReport("output cosine >= 0.999", 0.9950, 0.9993, True, 3, 12,
    ...                 [TunerRow("fc", "IInnerProductNode", q8, f16, "rank 1: adds 41% of the "
    ...                           "noise", 0.9950, 0.9993, 10000)], 0.990)
    >>> print(r)
    target: output cosine >= 0.999: met (int8 0.995, now 0.9993) after 3 trial builds
    int8 MAC share: 99.0%; 1 of 12 quantized nodes moved to float
    node  type               from   to       why                            before   after
    fc    IInnerProductNode  QINT8  FLOAT16  rank 1: adds 41% of the noise   0.995  0.9993
    """

    target: str
    int8_metric: float
    final_metric: float
    met: bool
    trials: int
    quantized_nodes: int
    rows: list[TunerRow] = field(default_factory=list)
    int8_mac_share: float = 1.0
    ranking: list[tuple[str, float]] = field(default_factory=list)
    kept_by_user: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[TunerRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def moved(self) -> list[str]:
        """The names of the nodes moved to float, most sensitive first."""
        return [r.node for r in self.rows]

    def __str__(self) -> str:
        outcome = "met" if self.met else "NOT met (the best model tried is returned)"
        lines = [
            f"target: {self.target}: {outcome} (int8 {self.int8_metric:.6g}, now "
            f"{self.final_metric:.6g}) after {self.trials} trial builds",
            f"int8 MAC share: {self.int8_mac_share:.1%}; {len(self.rows)} of "
            f"{self.quantized_nodes} quantized nodes moved to float",
        ]
        if self.kept_by_user:
            lines.append("left as the user set them: " + ", ".join(self.kept_by_user))
        if self.rows:
            lines.append(
                _table(
                    ["node", "type", "from", "to", "why", "before", "after"],
                    [
                        [
                            r.node,
                            r.type,
                            r.from_precision.name,
                            r.to_precision.name,
                            r.why,
                            f"{r.error_before:.6g}",
                            f"{r.error_after:.6g}",
                        ]
                        for r in self.rows
                    ],
                    right=(5, 6),
                )
            )
        return "\n".join(lines)

    def to_json(self) -> str:
        """``{"report": "tuner", <summary>, "rows": [...]}`` (see :func:`rows_to_json`)."""
        summary: dict[str, Any] = {
            "target": self.target,
            "met": self.met,
            "int8_metric": self.int8_metric,
            "final_metric": self.final_metric,
            "trials": self.trials,
            "quantized_nodes": self.quantized_nodes,
            "int8_mac_share": self.int8_mac_share,
            "kept_by_user": list(self.kept_by_user),
            "ranking": plain([list(r) for r in self.ranking]),
        }
        return rows_to_json("tuner", self.rows, summary)

    def __repr__(self) -> str:
        return f"<TunerReport: {len(self.rows)} node(s) moved, target {self.target}>"
