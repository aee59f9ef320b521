"""Runs the ONNX backend node tests shipped with the onnx wheel through the parser.

``cases()`` lists every case under ``onnx/backend/test/data/node`` whose ops are all in the
import table; ``run_case(path)`` parses it (input 0 fed at run time when it is a float tensor,
the other inputs as initializers, as weights are in real models), builds it in force_float32,
runs it and compares every output with the expected one. It returns ``("pass", "")``,
``("skip", reason)`` for a feature the import table lists as refused (or a case that folds
entirely at parse time), or raises AssertionError / MMError. ``python tests/onnx_backend.py``
prints the pass counts per op.
"""

from __future__ import annotations

import collections
import sys
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

# fp32 kernels against expected outputs computed by numpy, often in float64
RTOL, ATOL = 1e-4, 1e-5
# (rtol, atol, reason) by output dtype or case name
TOLERANCES: dict[str, tuple[float, float, str]] = {
    "float16": (2e-3, 1e-3, "float16 outputs: one or two fp16 roundings apart (2^-11)"),
    "test_averagepool_2d_ceil_last_window_starts_on_pad": (
        1e-3, 1e-4, "the expected outputs are written to four digits"
    ),
}  # fmt: skip


def node_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"


@cache
def cases() -> dict[str, frozenset[str]]:
    """case name -> its op types, for the cases whose ops are all in the import table."""
    import onnx

    from mmbuild.parser.table import load_table

    table = load_table()
    out = {}
    for d in sorted(node_dir().iterdir()):
        f = d / "model.onnx"
        if not f.is_file():
            continue
        model = onnx.load(str(f), load_external_data=False)
        ops = frozenset(n.op_type for n in model.graph.node)
        tensors = all(
            v.type.HasField("tensor_type") for v in [*model.graph.input, *model.graph.output]
        )
        if ops and tensors and all(op in table for op in ops):
            out[d.name] = ops
    return out


def _load(path: Path) -> tuple[object, list[np.ndarray], list[np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path / "model.onnx"))
    data = path / "test_data_set_0"

    def read(kind: str) -> list[np.ndarray]:
        arrays = []
        for f in sorted(data.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1])):
            t = onnx.TensorProto()
            t.ParseFromString(f.read_bytes())
            arrays.append(numpy_helper.to_array(t))
        return arrays

    return model, read("input"), read("output")


def run_case(name: str) -> tuple[str, str]:
    import onnx
    from onnx import numpy_helper

    import mmbuild as mm
    from mmbuild.parser.table import UnsupportedFeatureError

    model, inputs, expected = _load(node_dir() / name)
    graph = model.graph  # type: ignore[attr-defined]
    live = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    run_time = 1 if inputs and inputs[0].dtype in (np.float32, np.float16) else 0
    for info, arr in list(zip(live, inputs))[run_time:]:
        graph.initializer.append(numpy_helper.from_array(arr, info.name))
        graph.input.remove(info)
    net = mm.Network()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        onnx.save(model, str(path))
        try:
            mm.Parser(mm.ModelKind.kOnnx).parse(net, str(path))
        except UnsupportedFeatureError as exc:
            return "skip", f"{exc.op_type}: {exc.limit}: {exc}"
        except mm.MMError as exc:
            if "mmbuild imports opsets" in str(exc):
                return "skip", f"opset: {exc}"
            raise
    model_ = mm.Builder().build_model(name, net)
    ctx = model_.create_i_engine().create_i_context()
    feeds = ctx.create_inputs()
    for t, a in zip(feeds, inputs[:run_time]):
        t.from_numpy(a)
    outs: list[object] = []
    assert ctx.enqueue(feeds, outs).ok()
    assert len(outs) == len(expected)
    for k, (got, want) in enumerate(zip(outs, expected)):
        y = got.asnumpy()  # type: ignore[attr-defined]
        assert y.shape == want.shape, f"output {k}: shape {y.shape}, expected {want.shape}"
        if want.dtype.kind == "f":
            rtol, atol, _ = TOLERANCES.get(name, TOLERANCES.get(str(want.dtype), (RTOL, ATOL, "")))
            np.testing.assert_allclose(y, want, rtol=rtol, atol=atol, err_msg=f"output {k}")
        else:
            np.testing.assert_array_equal(y, want, err_msg=f"output {k}")
    return "pass", ""


def summary() -> tuple[dict[str, collections.Counter[str]], collections.Counter[str]]:
    """op -> Counter of outcomes over the cases that use it, and the skip reasons counted by
    (op, limit)."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    reasons: collections.Counter[str] = collections.Counter()
    for name, ops in cases().items():
        try:
            outcome, reason = run_case(name)
        except Exception as exc:  # a failure, counted and reported
            outcome, reason = "fail", ""
            print(
                f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", file=sys.stderr
            )
        if outcome == "skip":
            reasons[": ".join(reason.split(": ")[:2])] += 1
        for op in ops:
            counts[op][outcome] += 1
    return counts, reasons


if __name__ == "__main__":
    table, skips = summary()
    print("| op | cases passed | skipped | failed |\n| --- | --- | --- | --- |")
    for op in sorted(table):
        c = table[op]
        print(f"| {op} | {c['pass']} | {c['skip']} | {c['fail']} |")
    print("\n| skipped because (op: reason key) | cases |\n| --- | --- |")
    for reason, n in skips.most_common():
        print(f"| {reason} | {n} |")
