"""``mmbuild compare`` (per-layer error, a CI gate) and ``mmbuild profile`` (where time goes)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from mmbuild.cli._common import (
    HelpFormatter,
    UsageError,
    emit,
    existing_file,
    load_model,
    read_inputs,
    usage,
)
from mmbuild.cli.run import add_input_arguments
from mmbuild.errors import Code, MMError
from mmbuild.report import ErrorReport, ErrorRow
from mmbuild.runtime.engine import Model
from mmbuild.runtime.inspect import model_summary
from mmbuild.tools.html_report import write_html_report

COMPARE_EXAMPLE = """example:
  mmbuild compare model.mm --input images=batch.npy --onnx model.onnx --html report.html
  mmbuild compare model.mm --random --min-cosine 0.999 --max-abs 0.05   # exit 1 if not met

The bounds apply to the steps that produce the network's outputs (--all-steps: to every step),
against float32 and, with --onnx, against onnxruntime.
"""

PROFILE_EXAMPLE = """example:
  mmbuild profile model.mm --batch 1,8 --runs 200 --threads 2
  mmbuild profile model.mm --input images=batch.npy --json > profile.json
"""


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="per-layer error against float32 (and onnxruntime); a CI gate",
        description="Run MODEL.mm and a float32 run of the same steps on the same inputs and "
        "report each step's SQNR, cosine and max abs error, worst first.",
        epilog=COMPARE_EXAMPLE,
        formatter_class=HelpFormatter,
        parents=parents,
    )
    p.add_argument("model", metavar="MODEL.mm")
    add_input_arguments(p)
    p.add_argument("--onnx", metavar="model.onnx", help="also compare with onnxruntime")
    p.add_argument("--min-cosine", type=float, help="fail (exit 1) below this cosine")
    p.add_argument("--max-abs", type=float, help="fail (exit 1) above this max abs error")
    p.add_argument("--min-sqnr", type=float, help="fail (exit 1) below this SQNR (dB)")
    p.add_argument("--all-steps", action="store_true", help="apply the bounds to every step")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument("--csv", action="store_true", help="print the float32 error table as CSV")
    p.add_argument("--html", metavar="report.html", help="write a self-contained HTML report")
    p.set_defaults(func=run_compare)

    p = sub.add_parser(
        "profile",
        help="latency percentiles, throughput and per-step time",
        description="Time MODEL.mm: latency p50 / p90 / p99 and throughput over --runs runs, "
        "and each step's time, share, precisions and kernel, slowest first.",
        epilog=PROFILE_EXAMPLE,
        formatter_class=HelpFormatter,
        parents=parents,
    )
    p.add_argument("model", metavar="MODEL.mm")
    add_input_arguments(p)
    p.add_argument(
        "--batch", metavar="B[,B...]", help="batch sizes to profile with random inputs, e.g. 1,8"
    )
    p.add_argument("--runs", type=int, default=100, help="timed runs (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=int, help="numba threads (default: numba's)")
    p.add_argument("--json", action="store_true", help="print the profiles as JSON")
    p.add_argument("--csv", action="store_true", help="print the step tables as CSV")
    p.add_argument("--html", metavar="report.html", help="write a self-contained HTML report")
    p.set_defaults(func=run_profile)


def run_compare(args: argparse.Namespace) -> int:
    model = load_model(args.model)  # a missing file is a usage error, a bad one a failure
    with usage():
        arrays = read_inputs(model, args.input, args.random, args.input_shape, args.seed)
        if args.onnx:
            existing_file(args.onnx, "--onnx file")
        errors = model.get_error_report(arrays)
    reference = None
    if args.onnx:
        from mmbuild.tools.onnx_compare import onnxruntime_error_report

        reference = onnxruntime_error_report(model, arrays, args.onnx)
    if args.html:
        write_html_report(
            args.html,
            f"mmbuild compare: {model.get_name()}",
            model_summary(model),
            layers=model.get_layer_report(arrays),
            errors=errors,
            reference_errors=reference,
        )
    failures = _bound_failures(args, model, errors, "float32")
    if reference is not None:
        failures += _bound_failures(args, model, reference, "onnxruntime")
    if args.json:
        doc: dict[str, Any] = {"float32": json.loads(errors.to_json())}
        if reference is not None:
            doc["onnxruntime"] = json.loads(reference.to_json())
        doc["failures"] = failures
        emit(json.dumps(doc, indent=2))
    elif args.csv:
        emit(errors.to_csv())
    else:
        text = f"against float32 (worst first):\n{errors}"
        if reference is not None:
            text += f"\n\nagainst onnxruntime (worst first):\n{reference}"
        emit(text)
    if failures:
        raise BoundNotMetError(
            f"{len(failures)} bound(s) not met: " + "; ".join(failures), Code.OUT_OF_RANGE
        )
    return 0


class BoundNotMetError(MMError):
    """A --min-cosine / --max-abs / --min-sqnr bound of compare failed (exit status 1)."""


def _bound_failures(
    args: argparse.Namespace, model: Model, report: ErrorReport, against: str
) -> list[str]:
    outputs = set(model.get_output_names())
    producers = {s.name for s in model.data.steps if set(s.outputs) & outputs}
    rows: list[ErrorRow] = [r for r in report if args.all_steps or r.name in producers]
    failures = []
    for r in rows:
        if args.min_cosine is not None and not r.cosine >= args.min_cosine:
            failures.append(f"{r.name} vs {against}: cosine {r.cosine:.6f} < {args.min_cosine}")
        if args.max_abs is not None and not r.max_abs <= args.max_abs:
            failures.append(f"{r.name} vs {against}: max abs {r.max_abs:.4g} > {args.max_abs}")
        if args.min_sqnr is not None and not r.sqnr_db >= args.min_sqnr:
            failures.append(f"{r.name} vs {against}: SQNR {r.sqnr_db:.2f} dB < {args.min_sqnr}")
    return failures


def run_profile(args: argparse.Namespace) -> int:
    model = load_model(args.model)  # a missing file is a usage error, a bad one a failure
    with usage():
        if args.runs < 1 or args.warmup < 0:
            raise UsageError("--runs must be >= 1 and --warmup >= 0")
        if args.threads is not None:
            _set_threads(args.threads)
        batches = _batches(args.batch) if args.batch else [None]
        if args.batch and args.input:
            raise UsageError("--batch draws random inputs; leave out --input, or --batch")
        feeds = [_inputs_at_batch(model, args, b) for b in batches]
    context = model.create_i_engine().create_i_context()
    reports = [
        context.profile(f, runs=args.runs, warmup=args.warmup, progress=not args.quiet)
        for f in feeds
    ]
    if args.html:
        write_html_report(
            args.html,
            f"mmbuild profile: {model.get_name()}",
            model_summary(model),
            layers=model.get_layer_report(feeds[0]),
            profiles=reports,
        )
    if args.json:
        emit(
            json.dumps(
                {
                    "model": model_summary(model),
                    "profiles": [json.loads(r.to_json()) for r in reports],
                },
                indent=2,
            )
        )
    elif args.csv:
        emit("".join(r.to_csv() for r in reports))
    else:
        emit("\n\n".join(str(r) for r in reports))
    return 0


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--batch {text!r}: write positive batch sizes, e.g. 1,8")
    return values


def _inputs_at_batch(model: Model, args: argparse.Namespace, batch: int | None) -> list[np.ndarray]:
    """The profiled inputs: files or --random as given, else random; with ``batch`` every
    input's first dimension is ``batch``."""
    shapes = list(args.input_shape)
    if batch is not None:
        given = {s.rpartition(":")[0] for s in shapes}
        for t in model.data.inputs:
            if t.name not in given and t.dims:
                dims = [batch, *(1 if d < 0 else d for d in t.dims[1:])]
                shapes.append(f"{t.name}:{'x'.join(str(d) for d in dims)}")
    return read_inputs(model, args.input, not args.input or args.random, shapes, args.seed)


def _set_threads(n: int) -> None:
    import numba

    most = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if not 1 <= n <= most:
        raise UsageError(f"--threads {n}: numba runs 1 to {most} threads here")
    numba.set_num_threads(n)
