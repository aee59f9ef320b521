"""A built model against onnxruntime running the ONNX file it came from, step by step.

Every step output whose tensor name is also a value of the ONNX graph is made a graph output of
a copy of the ONNX model, and onnxruntime's value is compared with the plan's (metrics of
:func:`mmbuild.report.error_stats`). A tensor the layout pass carries in NHWC while the file has
NCHW is compared after transposing onnxruntime's value to NHWC; a tensor whose shape fits
neither layout, or that the graph does not name (a fused node's inner values), is left out.
Where a shape fits both (``[1, 8, 8, 8]``) the file's layout is assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmbuild.errors import Code, MMError
from mmbuild.ops.registry import get_op
from mmbuild.report import ErrorReport, ErrorRow, error_stats
from mmbuild.runtime.inspect import _input_buffers, float_values

if TYPE_CHECKING:
    from mmbuild.runtime.engine import Model

_NCHW_TO_NHWC = (0, 2, 3, 1)


def onnxruntime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def onnxruntime_error_report(
    model: Model, inputs: Sequence[np.ndarray], onnx_path: str | Path
) -> ErrorReport:
    """Per step, the plan's output against onnxruntime's value of the same ONNX tensor, worst
    first (module docstring for which steps are compared)."""
    if not onnxruntime_available():
        raise MMError(
            "comparing with onnxruntime needs the onnx and onnxruntime packages; install them "
            "with pip install onnx onnxruntime",
            Code.UNAVAILABLE,
        )
    import onnx
    import onnxruntime as ort

    try:
        proto = onnx.load(str(onnx_path))
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise MMError(f"{str(onnx_path)!r} is not a readable ONNX file: {e}") from None
    graph_values = {o for n in proto.graph.node for o in n.output} | {
        o.name for o in proto.graph.output
    }
    wanted = [s.outputs[0] for s in model.data.steps if s.outputs[0] in graph_values]
    present = {o.name for o in proto.graph.output}
    for name in wanted:
        if name not in present:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        feeds = {t.name: np.asarray(a) for t, a in zip(model.data.inputs, inputs)}
        expected = dict(zip(wanted, session.run(wanted, feeds)))
    except Exception as e:  # onnxruntime's errors have no common base class
        raise MMError(f"onnxruntime cannot run {str(onnx_path)!r}: {e}", Code.INTERNAL) from None
    context = model.create_i_engine().create_i_context()
    actual = context.run(_input_buffers(model, list(inputs)), keep_all=True)
    rows = []
    for step in model.data.steps:
        name = step.outputs[0]
        if name not in expected:
            continue
        got = float_values(model.data, name, actual[name])
        ref = _in_layout(np.asarray(expected[name], np.float32), got.shape)
        if ref is None:
            continue
        stats = error_stats(got, ref)
        rows.append(
            ErrorRow(
                step.name, get_op(step.op).node_type, stats.sqnr_db, stats.cosine, stats.max_abs
            )
        )
    return ErrorReport(rows)


def _in_layout(ref: np.ndarray, shape: tuple[int, ...]) -> Any:
    if ref.shape == shape:
        return ref
    if ref.ndim == 4 and tuple(ref.shape[i] for i in _NCHW_TO_NHWC) == shape:
        return ref.transpose(_NCHW_TO_NHWC)
    return None
