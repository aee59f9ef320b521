"""One self-contained HTML file of a model's reports: summary, per-layer error with an SQNR bar
chart, per-step time with a bar chart, and the layer table.

The file has no scripts and loads nothing: styles are inline and the charts are inline SVG, so it
opens offline and can be attached to a CI run. Bars are drawn to scale against the largest
finite value of the chart; an infinite SQNR (an exact step) draws a full bar labelled ``inf``,
a negative or ``-inf`` one an empty bar.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mmbuild._files import write_atomically
from mmbuild.report import ErrorReport, LayerReport, _types

if TYPE_CHECKING:
    from mmbuild.runtime.profile import ProfileReport

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
svg text { font: 12px system-ui, sans-serif; fill: #222; }
"""
_ROW = 20  # px per bar
_LABEL = 260  # px for the labels
_BAR = 420  # px for the longest bar


def bar_chart(labels: Sequence[str], values: Sequence[float], unit: str, colour: str) -> str:
    """Horizontal bars as an inline ``<svg>``, one per label, to scale (module docstring)."""
    finite = [v for v in values if math.isfinite(v) and v > 0]
    top = max(finite, default=1.0)
    height = _ROW * len(labels) + 4
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LABEL + _BAR + 120}" '
        f'height="{height}" role="img">'
    ]
    for i, (label, value) in enumerate(zip(labels, values)):
        y = i * _ROW + 2
        if math.isnan(value) or value <= 0:
            width = 0.0
        elif math.isinf(value):
            width = float(_BAR)
        else:
            width = _BAR * value / top
        text = "inf" if value == math.inf else ("-inf" if value == -math.inf else f"{value:.4g}")
        parts.append(
            f'<text x="{_LABEL - 6}" y="{y + 14}" text-anchor="end">{_short(label)}</text>'
            f'<rect class="bar" x="{_LABEL}" y="{y + 2}" width="{width:.1f}" height="{_ROW - 5}" '
            f'fill="{colour}"><title>{html.escape(label)}: {text} {unit}</title></rect>'
            f'<text x="{_LABEL + width + 4:.1f}" y="{y + 14}">{text} {html.escape(unit)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _short(label: str, n: int = 38) -> str:
    return html.escape(label if len(label) <= n else label[: n - 1] + "…")


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{html.escape(str(c))}</td>'
            if i in numeric
            else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _error_section(title: str, errors: ErrorReport) -> str:
    rows = [
        [r.name, r.type, f"{r.sqnr_db:.2f}", f"{r.cosine:.6f}", f"{r.max_abs:.4g}"] for r in errors
    ]
    chart = bar_chart([r.name for r in errors], [r.sqnr_db for r in errors], "dB", "#3b7dd8")
    return (
        f'<section class="errors"><h2>{html.escape(title)}</h2>'
        "<p>Worst first. SQNR = 10 log10(signal / noise); higher is better.</p>"
        f"{chart}{_table(['step', 'type', 'SQNR (dB)', 'cosine', 'max abs'], rows, (2, 3, 4))}"
        "</section>"
    )


def _profile_section(profile: ProfileReport) -> str:
    lat = profile.latency
    head = (
        f"batch {profile.batch}, {profile.runs} runs, {profile.threads} thread(s): mean "
        f"{lat.mean_ms:.3f} ms, p50 {lat.p50_ms:.3f} ms, p90 {lat.p90_ms:.3f} ms, p99 "
        f"{lat.p99_ms:.3f} ms, {lat.throughput:.1f} samples/s"
    )
    rows = [
        [
            r.name,
            r.type,
            r.kernel,
            _types(r.input_precisions),
            f"{r.mean_ms:.4f}",
            f"{100 * r.share:.1f}%",
        ]
        for r in profile
    ]
    chart = bar_chart([r.name for r in profile], [r.mean_ms for r in profile], "ms", "#d8843b")
    table = _table(["step", "type", "kernel", "in precisions", "mean ms", "share"], rows, (4, 5))
    return (
        f'<section class="profile"><h2>Per-step time, batch {profile.batch}</h2>'
        f"<p>{html.escape(head)}</p>{chart}{table}</section>"
    )


def _layer_section(layers: LayerReport) -> str:
    rows = [
        [
            r.label,
            r.type,
            _types(r.input_precisions),
            _types(r.output_types),
            r.kernel,
            " ".join(str(s) for s in r.shape),
            "; ".join(r.notes),
        ]
        for r in layers
    ]
    peak = layers.peak_activation_bytes
    note = f"<p>Peak activation memory: {peak} bytes.</p>" if peak is not None else ""
    table = _table(
        ["step", "type", "in precisions", "out types", "kernel", "output shape", "notes"], rows
    )
    return f'<section class="layers"><h2>Layers</h2>{note}{table}</section>'


def html_report(
    title: str,
    summary: Mapping[str, Any],
    layers: LayerReport | None = None,
    errors: ErrorReport | None = None,
    reference_errors: ErrorReport | None = None,
    profiles: Sequence[ProfileReport] = (),
) -> str:
    """The report page: ``summary`` (e.g. ``runtime.inspect.model_summary``) as a key/value
    table, then the sections of the reports given. ``reference_errors`` is the comparison
    with onnxruntime."""
    items = [[k, _summary_value(v)] for k, v in summary.items()]
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f'<section class="summary"><h2>Model</h2>{_table(["", ""], items)}</section>',
    ]
    if errors is not None:
        sections.append(_error_section("Error per layer against float32", errors))
    if reference_errors is not None:
        sections.append(_error_section("Error per layer against onnxruntime", reference_errors))
    sections += [_profile_section(p) for p in profiles]
    if layers is not None:
        sections.append(_layer_section(layers))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"{''.join(sections)}</body></html>\n"
    )


def _summary_value(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return "; ".join(f"{v.get('name')}: {v.get('dtype')} {v.get('dims')}" for v in value)
    if isinstance(value, list):
        return "; ".join(str(v) for v in value) or "none"
    return str(value)


def write_html_report(
    path: str | os.PathLike[str], title: str, summary: Mapping[str, Any], **reports: Any
) -> None:
    """Write :func:`html_report` to ``path``, whole or not at all."""
    page = html_report(title, summary, **reports)
    write_atomically(path, page.encode("utf-8"), f"HTML report {os.fspath(path)!r}")
