"""``mmbuild run`` (run a model file on arrays) and ``mmbuild inspect`` (what it holds)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from mmbuild.cli._common import HelpFormatter, emit, load_model, read_inputs, usage, write_npz
from mmbuild.runtime.inspect import model_summary


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """``--input``, ``--random``, ``--input-shape`` and ``--seed``, shared by run, compare
    and profile."""
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=file.npy",
        help="an input array (repeatable), or one .npz with an array per input "
        "name; a lone file.npy serves a one-input model",
    )
    p.add_argument(
        "--random", action="store_true", help="draw the inputs not given from N(0, 1) (seeded)"
    )
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:DIMS",
        help="dims of a --random input, e.g. input:8x3x224x224 (default: -1 -> 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run a model file on input arrays",
        description="Run MODEL.mm once and print (or save) its outputs.",
        epilog="example:\n  mmbuild run model.mm --input images=batch.npy -o outputs.npz\n"
        "  mmbuild run model.mm --random --input-shape images:8x3x224x224",
        formatter_class=HelpFormatter,
        parents=parents,
    )
    p.add_argument("model", metavar="MODEL.mm")
    add_input_arguments(p)
    p.add_argument(
        "-o", "--output", metavar="outputs.npz", help="save the outputs, one array per output name"
    )
    p.set_defaults(func=run_run)

    p = sub.add_parser(
        "inspect",
        help="show a model file's inputs, outputs, mode and steps",
        description="Show what MODEL.mm holds: inputs, outputs, precision mode, every step with "
        "its precisions, kernel, output shape, fused nodes and notes, the peak activation memory "
        "and the kernels' instruction-set level on this machine.",
        epilog="example:\n  mmbuild inspect model.mm\n"
        "  mmbuild inspect model.mm --json | jq .layers.rows[0]\n"
        "  mmbuild inspect model.mm --input-shape images:8x3x224x224   # shapes at batch 8",
        formatter_class=HelpFormatter,
        parents=parents,
    )
    p.add_argument("model", metavar="MODEL.mm")
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:DIMS",
        help="input dims for the shapes and peak memory (default: the model's)",
    )
    p.add_argument("--json", action="store_true", help="print JSON: {model: ..., layers: ...}")
    p.add_argument("--csv", action="store_true", help="print the layer table as CSV")
    p.set_defaults(func=run_inspect)


def run_run(args: argparse.Namespace) -> int:
    model = load_model(args.model)  # a missing file is a usage error, a bad one a failure
    with usage():
        arrays = read_inputs(model, args.input, args.random, args.input_shape, args.seed)
        context = model.create_i_engine().create_i_context()
        inputs = context.create_inputs()
        for tensor, array in zip(inputs, arrays):
            tensor.from_numpy(array)
    results: list[Any] = []
    context.enqueue(inputs, results)
    outputs = {t.get_tensor_name(): np.array(t.asnumpy()) for t in results}
    if args.output:
        write_npz(args.output, outputs)
    lines = [f"{'output':<24} {'dtype':<8} {'shape':<20} {'min':>12} {'max':>12} {'mean':>12}"]
    for name, a in outputs.items():
        stats = (a.min(), a.max(), a.mean()) if a.size else (np.nan,) * 3
        lines.append(
            f"{name:<24} {a.dtype.name:<8} {list(a.shape)!s:<20} "
            + " ".join(f"{float(v):>12.6g}" for v in stats)
        )
    if args.output:
        lines.append(f"wrote {args.output}")
    emit("\n".join(lines))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    model = load_model(args.model)  # a missing file is a usage error, a bad one a failure
    with usage():
        # shapes and peak memory need every dimension: a -1 is taken as 1 unless given
        dynamic = any(d < 0 for t in model.data.inputs for d in t.dims)
        arrays = (
            read_inputs(model, [], True, args.input_shape) if dynamic or args.input_shape else None
        )
        report = model.get_layer_report(arrays)
    summary = model_summary(model)
    if args.json:
        emit(json.dumps({"model": summary, "layers": json.loads(report.to_json())}, indent=2))
        return 0
    if args.csv:
        emit(report.to_csv())
        return 0

    def tensors(kind: str) -> list[str]:
        return [f"{kind:<8} {t['name']}: {t['dtype']} {t['dims']}" for t in summary[kind + "s"]]

    lines = [
        f"model    {summary['name']} ({summary['steps']} steps)",
        *tensors("input"),
        *tensors("output"),
        f"isa      {summary['isa']} (kernels compiled for this CPU)",
    ]
    if arrays is not None:
        shapes = ", ".join(f"{t.name} {list(a.shape)}" for t, a in zip(model.data.inputs, arrays))
        lines.append(f"shapes   at {shapes} (set with --input-shape; -1 is taken as 1)")
    lines += [f"warning  {w}" for w in summary["warnings"]]
    emit("\n".join([*lines, str(report)]))
    return 0
