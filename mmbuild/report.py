"""Reports on a built model: the layer report (what each step runs in) and the error report
(how far each step's output is from float32).

The layer report has one :class:`LayerRow` per step of the plan; ``str()`` is an aligned table
(see :class:`LayerReport`) that ends with the peak activation memory when it is known::

    name                    type       in precisions  out types  kernel      output shape  notes
    conv1 (+bn_0, relu_0)   IConvNode  QINT8, QINT8   FLOAT16    conv_qint8  [1, 8, 8, 16]
    peak activation memory: 48.0 KiB (49152 bytes)

The error metrics of one output against its float32 reference ``e``, in float64 arithmetic::

    SQNR    = 10 log10(sum e^2 / sum (a - e)^2)   dB; inf when a == e everywhere
    cosine  = sum a e / (|a| |e|)                 1.0 when both are all zero, 0.0 when one is
    max_abs = max |a - e|

Worked example: e = [1, 2, 3, 4], a = [1, 2, 3, 4.5]. The signal is 1 + 4 + 9 + 16 = 30, the
noise 0.5^2 = 0.25, so SQNR = 10 log10(120) = 20.79 dB; cosine = 32 / sqrt(30 * 34.25) = 0.99830;
max_abs = 0.5.

>>> s = error_stats(np.array([1, 2, 3, 4.5]), np.array([1, 2, 3, 4]))
>>> round(s.sqnr_db, 2), round(s.cosine, 5), s.max_abs
(20.79, 0.9983, 0.5)

The sums are float64, ample for float32 and float16 data (a float32 value squared stays below
1e77). Non-finite values: where both arrays hold NaN, or the same infinity, they agree and the
element is left out of the sums. Any other NaN or infinity (NaN against a number, inf against a
number or against -inf) is an unbounded error: SQNR -inf, cosine nan, max_abs inf, so that the
step sorts first in the error report.

>>> error_stats(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
ErrorStats(sqnr_db=inf, cosine=1.0, max_abs=0.0)
>>> error_stats(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
ErrorStats(sqnr_db=-inf, cosine=nan, max_abs=inf)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from mmbuild.errors import Code, MMError, did_you_mean
from mmbuild.ir.types import DataType
from mmbuild.kernels.table import Step


# -- the layer report --------------------------------------------------------------------------
@dataclass
class LayerRow:
    """One step of a built plan: what it is, what it computes in and which kernel runs it."""

    name: str
    type: str
    input_precisions: list[DataType]
    output_types: list[DataType]
    kernel: str
    shape: list[list[int]]
    fused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The name, with the names folded into the step: ``conv1 (+bn_0, activation_0)``."""
        return f"{self.name} (+{', '.join(self.fused)})" if self.fused else self.name


class LayerReport(Sequence[LayerRow]):
    """The rows of a built plan in run order, with its mode and peak activation memory.

    >>> q8, f16, f32 = DataType.QINT8, DataType.FLOAT16, DataType.FLOAT32
    >>> rows = [LayerRow("conv1", "IConvNode", [q8, q8], [f16], "conv_q8", [[1, 8, 8, 4]],
    ...                  fused=["relu_0"]),
    ...         LayerRow("softmax_0", "ISoftmaxNode", [f16], [f32], "softmax", [[1, 10]],
    ...                  notes=["user set"])]
    >>> report = LayerReport(rows, peak_activation_bytes=1536, mode="qint8_mixed_float16")
    >>> print(report)
    mode: qint8_mixed_float16
    name             type          in precisions  out types  kernel   output shape  notes
    conv1 (+relu_0)  IConvNode     QINT8, QINT8   FLOAT16    conv_q8  [1, 8, 8, 4]
    softmax_0        ISoftmaxNode  FLOAT16        FLOAT32    softmax  [1, 10]       user set
    peak activation memory: 1.5 KiB (1536 bytes)
    >>> report.find("relu_0").name  # a fused node finds the step it is folded into
    'conv1'
    """

    def __init__(
        self,
        rows: Iterable[LayerRow],
        peak_activation_bytes: int | None = None,
        mode: str = "",
    ) -> None:
        self._rows = list(rows)
        self.peak_activation_bytes = peak_activation_bytes
        self.mode = mode

    @classmethod
    def from_steps(
        cls,
        steps: Iterable[Step],
        shapes: Mapping[str, Sequence[int]],
        peak_activation_bytes: int | None = None,
        mode: str = "",
    ) -> LayerReport:
        """The report of ``steps``; ``shapes`` gives each output tensor's dims."""
        from mmbuild.ops.registry import get_op

        rows = [
            LayerRow(
                s.name,
                get_op(s.op).node_type,
                list(s.precisions),
                list(s.output_types),
                s.kernel,
                [list(shapes[t]) for t in s.outputs],
                list(s.fused),
                list(s.notes),
            )
            for s in steps
        ]
        return cls(rows, peak_activation_bytes, mode)

    @overload
    def __getitem__(self, i: int) -> LayerRow: ...
    @overload
    def __getitem__(self, i: slice) -> list[LayerRow]: ...
    def __getitem__(self, i: int | slice) -> LayerRow | list[LayerRow]:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self._rows)

    def find(self, name: str) -> LayerRow:
        """The row of node ``name``, or of the step it was folded into."""
        for row in self._rows:
            if row.name == name:
                return row
        for row in self._rows:
            if name in row.fused:
                return row
        names = [r.name for r in self._rows] + [f for r in self._rows for f in r.fused]
        raise MMError(
            f"the layer report has no node {name!r}{did_you_mean(name, names)}", Code.NOT_FOUND
        )

    def __str__(self) -> str:
        table = _table(
            ["name", "type", "in precisions", "out types", "kernel", "output shape", "notes"],
            [
                [
                    r.label,
                    r.type,
                    _types(r.input_precisions),
                    _types(r.output_types),
                    r.kernel,
                    " ".join(_dims(s) for s in r.shape),
                    "; ".join(r.notes),
                ]
                for r in self._rows
            ],
        )
        lines = [f"mode: {self.mode}"] if self.mode else []
        lines.append(table)
        if self.peak_activation_bytes is not None:
            n = self.peak_activation_bytes
            lines.append(f"peak activation memory: {_size(n)} ({n} bytes)")
        return "\n".join(lines)

    def to_json(self) -> str:
        """``{"report": "layers", "mode": ..., "peak_activation_bytes": ..., "rows": [...]}``,
        one object per row with the fields of :class:`LayerRow` (see :func:`rows_to_json`)."""
        summary = {"mode": self.mode, "peak_activation_bytes": self.peak_activation_bytes}
        return rows_to_json("layers", self._rows, summary)

    def to_csv(self) -> str:
        """One line per row, the fields of :class:`LayerRow` as columns (:func:`rows_to_csv`)."""
        return rows_to_csv(self._rows)

    def __repr__(self) -> str:
        return f"<LayerReport of {len(self)} steps, mode {self.mode or '?'}>"


# -- error metrics -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorStats:
    """How far an output is from its reference: SQNR (dB), cosine similarity, max abs error."""

    sqnr_db: float
    cosine: float
    max_abs: float


def error_stats(actual: np.ndarray, expected: np.ndarray) -> ErrorStats:
    """SQNR, cosine and max abs error of ``actual`` against ``expected`` (module docstring).

    >>> error_stats(np.zeros(3), np.zeros(3))
    ErrorStats(sqnr_db=inf, cosine=1.0, max_abs=0.0)
    >>> error_stats(np.array([0.5, 0.0]), np.zeros(2))  # noise on a zero signal
    ErrorStats(sqnr_db=-inf, cosine=0.0, max_abs=0.5)
    """
    if np.shape(actual) != np.shape(expected):
        raise MMError(
            f"error_stats: actual has shape {np.shape(actual)} and expected "
            f"{np.shape(expected)}; compare arrays of one shape"
        )
    a = np.asarray(actual, dtype=np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    finite = np.isfinite(a) & np.isfinite(e)
    if not finite.all():
        agree = (np.isnan(a) & np.isnan(e)) | (a == e)
        if not agree[~finite].all():
            return ErrorStats(-math.inf, math.nan, math.inf)
        a, e = a[finite], e[finite]
    diff = a - e
    noise, signal = float(np.dot(diff, diff)), float(np.dot(e, e))
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal else -math.inf)
    norms = math.sqrt(float(np.dot(a, a))) * math.sqrt(signal)
    if noise == 0:
        cosine = 1.0  # a == e, all zero or not
    elif norms == 0:
        cosine = 0.0  # exactly one of them is all zero
    else:
        cosine = min(1.0, max(-1.0, float(np.dot(a, e)) / norms))
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    return ErrorStats(sqnr, cosine, max_abs)


@dataclass(frozen=True)
class ErrorRow:
    """One step's output against float32."""

    name: str
    type: str
    sqnr_db: float
    cosine: float
    max_abs: float


class ErrorReport(Sequence[ErrorRow]):
    """Per-step errors against float32, worst first: lowest SQNR, then lowest cosine, then
    largest max abs error (a NaN metric counts as worst).

    >>> report = ErrorReport([ErrorRow("conv1", "IConvNode", 38.2, 0.99992, 0.0123),
    ...                       ErrorRow("fc", "IInnerProductNode", 21.5, 0.9965, 0.25),
    ...                       ErrorRow("pool", "IMaxPool2DNode", math.inf, 1.0, 0.0)])
    >>> report.worst.name
    'fc'
    >>> print(report)
    name   type               SQNR (dB)    cosine  max abs
    fc     IInnerProductNode      21.50  0.996500     0.25
    conv1  IConvNode              38.20  0.999920   0.0123
    pool   IMaxPool2DNode           inf  1.000000        0
    """

    def __init__(self, rows: Iterable[ErrorRow]) -> None:
        self._rows = sorted(rows, key=_badness)

    @property
    def worst(self) -> ErrorRow | None:
        """The row with the largest error, or None for an empty report."""
        return self._rows[0] if self._rows else None

    @overload
    def __getitem__(self, i: int) -> ErrorRow: ...
    @overload
    def __getitem__(self, i: slice) -> list[ErrorRow]: ...
    def __getitem__(self, i: int | slice) -> ErrorRow | list[ErrorRow]:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[ErrorRow]:
        return iter(self._rows)

    def find(self, name: str) -> ErrorRow:
        for row in self._rows:
            if row.name == name:
                return row
        names = [r.name for r in self._rows]
        raise MMError(
            f"the error report has no step {name!r}{did_you_mean(name, names)}", Code.NOT_FOUND
        )

    def __str__(self) -> str:
        return _table(
            ["name", "type", "SQNR (dB)", "cosine", "max abs"],
            [
                [r.name, r.type, f"{r.sqnr_db:.2f}", f"{r.cosine:.6f}", f"{r.max_abs:.4g}"]
                for r in self._rows
            ],
            right=(2, 3, 4),
        )

    def to_json(self) -> str:
        """``{"report": "errors", "rows": [...]}``, worst first (see :func:`rows_to_json`)."""
        return rows_to_json("errors", self._rows)

    def to_csv(self) -> str:
        """One line per step, worst first; columns name, type, sqnr_db, cosine, max_abs."""
        return rows_to_csv(self._rows)

    def __repr__(self) -> str:
        return f"<ErrorReport of {len(self)} steps>"


def _badness(row: ErrorRow) -> tuple[float, float, float]:
    """Sort key, ascending = worse first; NaN is treated as the worst value."""
    sqnr = -math.inf if math.isnan(row.sqnr_db) else row.sqnr_db
    cosine = -math.inf if math.isnan(row.cosine) else row.cosine
    max_abs = math.inf if math.isnan(row.max_abs) else row.max_abs
    return sqnr, cosine, -max_abs


# -- machine-readable forms -------------------------------------------------------------------
def plain(value: Any) -> Any:
    """``value`` as JSON data: a DataType by its name, a dataclass as a dict of its fields, a
    non-finite float as the string ``"inf"``, ``"-inf"`` or ``"nan"`` (JSON has no such
    numbers), tuples as lists.

    >>> plain([DataType.QINT8, math.inf, (1, 2)])
    ['QINT8', 'inf', [1, 2]]
    """
    if isinstance(value, DataType):
        return value.name
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return plain(value.item())
    return value


def rows_to_json(kind: str, rows: Iterable[Any], summary: Mapping[str, Any] | None = None) -> str:
    """The JSON document of a report: ``{"report": kind, **summary, "rows": [...]}`` with each
    row (a dataclass) as an object of its fields, through :func:`plain`.

    >>> print(rows_to_json("errors", [ErrorRow("fc", "IInnerProductNode", math.inf, 1.0, 0.0)]))
    {
      "report": "errors",
      "rows": [
        {
          "name": "fc",
          "type": "IInnerProductNode",
          "sqnr_db": "inf",
          "cosine": 1.0,
          "max_abs": 0.0
        }
      ]
    }
    """
    doc = {"report": kind, **plain(dict(summary or {})), "rows": [plain(r) for r in rows]}
    return json.dumps(doc, indent=2, allow_nan=False)


def rows_to_csv(rows: Sequence[Any]) -> str:
    """CSV of dataclass rows: a header of the field names, then one line per row. A list cell
    is joined with ``;`` and a list of dims with ``x`` (``[[1, 8, 8, 4]]`` -> ``1x8x8x4``), so
    each cell stays one value a spreadsheet can sort; floats keep full precision.

    >>> print(rows_to_csv([ErrorRow("fc", "IInnerProductNode", 21.5, 0.9965, 0.25)]), end="")
    name,type,sqnr_db,cosine,max_abs
    fc,IInnerProductNode,21.5,0.9965,0.25
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if rows:
        names = [f.name for f in dataclasses.fields(rows[0])]
        writer.writerow(names)
        for row in rows:
            writer.writerow([_csv_cell(plain(getattr(row, n))) for n in names])
    return out.getvalue()


def _csv_cell(value: Any) -> str:
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return "x".join(str(v) for v in value)
        return ";".join(_csv_cell(v) for v in value)
    return "" if value is None else str(value)


# -- text helpers ------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    """Columns padded to their widest cell (two spaces apart); ``right`` columns right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = []
    for cells in [header, *rows]:
        padded = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _types(types: Sequence[DataType]) -> str:
    return ", ".join(t.name for t in types)


def _dims(dims: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _size(n: int) -> str:
    """Bytes in binary units: 1536 -> '1.5 KiB'."""
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"
