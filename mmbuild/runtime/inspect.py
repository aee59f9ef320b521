"""What a built model does, node by node: the layer report, the validate mode and the error
report against float32.

* ``layer_report(model)``: one row per step (name, type, input precisions, output types,
  kernel, output shape, fused nodes, notes) and the peak activation memory.
* ``validate(model, inputs)``: runs every step's kernel and, on the very same inputs, the numpy
  reference of its precision (:meth:`Kernel.reference`); integer paths must agree bit for bit,
  float paths within ``VALIDATE_TOLERANCE``. It names the first step that differs.
* ``error_report(model, inputs)``: the plan against a float32 run of the same steps (every op's
  fp32 reference, casts that the builder inserted skipped), per step: SQNR, cosine and max abs
  error, worst first. It shows which layers lose accuracy in a mixed-precision build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mmbuild.errors import MMError
from mmbuild.graph import reference_outputs
from mmbuild.ir.types import DataType
from mmbuild.kernels.cpu.qcommon import carried_values
from mmbuild.kernels.table import kernel_named, to_numpy
from mmbuild.ops.registry import get_op
from mmbuild.report import (
    ErrorReport,
    ErrorRow,
    LayerReport,
    LayerRow,
    error_stats,
    plain,
    rows_to_csv,
    rows_to_json,
)
from mmbuild.runtime.engine import IRTTensor, input_buffers, plan_buffers

if TYPE_CHECKING:
    from mmbuild.runtime.engine import Context, Model
    from mmbuild.runtime.manifest import ModelData
    from mmbuild.runtime.model_file import TensorInfo

# |kernel - reference| <= tol * max(1, max|reference|) for float outputs: float32 kernels sum
# in another order than numpy (a few ulps of the sum of |terms|); float16 outputs may round the
# other way after such a difference (one fp16 ulp, 2**-10 relative).
VALIDATE_TOLERANCE = {DataType.FLOAT32: 1e-4, DataType.FLOAT16: 2e-3}

INSERTED = "inserted:"  # the note that marks a cast the builder added


def _context(model: Model) -> Context:
    return model.create_i_engine().create_i_context()


def _input_buffers(model: Model, inputs: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Checked buffers of ``inputs`` (a list in input order; one array for one input)."""
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    declared = model.data.inputs
    if len(inputs) != len(declared):
        raise MMError(f"got {len(inputs)} input arrays; the model takes {len(declared)}")
    tensors = [IRTTensor(t.name, t.dtype, t.dims) for t in declared]
    for t, a in zip(tensors, inputs):
        t.from_numpy(a)
    return input_buffers(model.data, tensors)


def layer_report(
    model: Model, inputs: Sequence[np.ndarray] | np.ndarray | None = None
) -> LayerReport:
    """The rows of the plan; shapes and peak memory for ``inputs`` when given (or when every
    input dimension is known), computed without binding any kernel."""
    data = model.data
    shapes = {k: tuple(v.dims) for k, v in data.tensors.items()}
    peak: int | None = None
    if inputs is not None:
        input_shapes = tuple(a.shape for a in _input_buffers(model, inputs))
    elif all(d >= 0 for t in data.inputs for d in t.dims):
        input_shapes = tuple(tuple(t.dims) for t in data.inputs)
    else:
        input_shapes = None
    if input_shapes is not None:
        declarations = [s.node().declaration() for s in data.steps]
        plan = plan_buffers(data, declarations, input_shapes)
        shapes, peak = plan.shapes, plan.arena_bytes
    rows = [
        LayerRow(
            name=s.name,
            type=get_op(s.op).node_type,
            input_precisions=list(s.precisions),
            output_types=list(s.output_types),
            kernel=s.kernel,
            shape=[list(shapes[t]) for t in s.outputs],
            fused=list(s.fused),
            notes=list(s.notes),
        )
        for s in data.steps
    ]
    return LayerReport(rows, peak_activation_bytes=peak, mode=data.mode)


@dataclass
class StepCheck:
    name: str
    kernel: str
    max_abs: float
    tolerance: float
    exact: bool  # integer path: must be bit-identical

    @property
    def ok(self) -> bool:
        return self.max_abs == 0 if self.exact else self.max_abs <= self.tolerance


@dataclass
class ValidationReport:
    checks: list[StepCheck] = field(default_factory=list)

    @property
    def first_mismatch(self) -> StepCheck | None:
        return next((c for c in self.checks if not c.ok), None)

    def ok(self) -> bool:
        return self.first_mismatch is None

    def __str__(self) -> str:
        bad = self.first_mismatch
        if bad is None:
            return f"validate: all {len(self.checks)} steps match their references"
        what = "bit-exact" if bad.exact else f"within {bad.tolerance:.3g}"
        return (
            f"validate: step {bad.name!r} ({bad.kernel}) differs from its reference by "
            f"{bad.max_abs:.6g} (should be {what}); the steps before it match"
        )

    def to_json(self) -> str:
        """``{"report": "validation", "ok": ..., "first_mismatch": name or null, "rows": [...]}``,
        one row per step in run order (fields of :class:`StepCheck`)."""
        bad = self.first_mismatch
        summary = {"ok": self.ok(), "first_mismatch": None if bad is None else bad.name}
        return rows_to_json("validation", self.checks, summary)

    def to_csv(self) -> str:
        """One line per step: name, kernel, max_abs, tolerance, exact."""
        return rows_to_csv(self.checks)


def validate(model: Model, inputs: Sequence[np.ndarray] | np.ndarray) -> ValidationReport:
    """Each step's kernel against its precision's reference on the same inputs."""
    values = _context(model).run(_input_buffers(model, inputs), keep_all=True)
    values.update(model.data.constants)
    report = ValidationReport()
    for step in model.data.steps:
        args = [values[t] for t in step.inputs]
        expected = kernel_named(step.kernel).reference(step, args)
        exact = any(p.is_quantized for p in step.precisions) or not any(
            t.is_float for t in step.output_types
        )
        worst, tol = 0.0, 0.0
        for t, e, dtype in zip(step.outputs, expected, step.output_types):
            got = to_numpy(values[t], dtype).astype(np.float64)
            ref = to_numpy(np.asarray(e), dtype).astype(np.float64)
            if exact:
                same = _same_bits(values[t], np.asarray(e))
                diff = 0.0 if same else float(np.nanmax(np.abs(got - ref), initial=np.inf))
            else:
                # equal values (the same infinity among them) and NaN in the same places agree
                agree = (got == ref) | (np.isnan(got) & np.isnan(ref))
                with np.errstate(invalid="ignore"):
                    d = np.where(agree, 0.0, np.abs(got - ref))
                diff = float(np.nan_to_num(d, nan=np.inf).max(initial=0.0))
                scale = max(1.0, float(np.nan_to_num(np.abs(ref), posinf=0).max(initial=0.0)))
                tol = max(tol, VALIDATE_TOLERANCE.get(dtype, 0.0) * scale)
            worst = max(worst, diff)
        report.checks.append(StepCheck(step.name, step.kernel, worst, tol, exact))
    return report


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def float32_shadow(model: Model, buffers: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of the plan computed in float32 by the ops' references, from the checked
    input ``buffers``."""
    data = model.data
    values = {t.name: to_numpy(a, t.dtype) for t, a in zip(data.inputs, buffers)}
    values.update({k: to_numpy(v, data.tensors[k].dtype) for k, v in data.constants.items()})
    for step in data.steps:
        args = [values[t] for t in step.inputs]
        if step.op == "cast" and any(n.startswith(INSERTED) for n in step.notes):
            results = args
        else:
            results = reference_outputs(step.node(), args)
        values.update(zip(step.outputs, results))
    return values


def float_values(data: ModelData, name: str, buffer: np.ndarray) -> np.ndarray:
    """Tensor ``name``'s run-time ``buffer`` as the float32 numbers it holds: fp16 bits widened,
    and a quantized tensor (one carried between quantized nodes) dequantized with the scale and
    zero point its producer stored it with (``scale_out``, ``za_out``)."""
    dtype = data.tensors[name].dtype
    if not dtype.is_quantized:
        return np.asarray(to_numpy(buffer, dtype), np.float32)
    attrs = next(s.lowered.attrs for s in data.steps if name in s.outputs)
    return carried_values(buffer, attrs["scale_out"], attrs["za_out"])


def error_report(model: Model, inputs: Sequence[np.ndarray] | np.ndarray) -> ErrorReport:
    """Per step, its output in the plan against float32, worst SQNR first."""
    buffers = _input_buffers(model, inputs)
    actual = _context(model).run(buffers, keep_all=True)
    shadow = float32_shadow(model, buffers)
    rows = []
    for step in model.data.steps:
        if step.op == "cast" and any(n.startswith(INSERTED) for n in step.notes):
            continue
        t = step.outputs[0]
        got = float_values(model.data, t, actual[t])
        stats = error_stats(got, np.asarray(shadow[t], np.float32))
        rows.append(ErrorRow(step.name, get_op(step.op).node_type, stats.sqnr_db, stats.cosine,
                             stats.max_abs))  # fmt: skip
    return ErrorReport(rows)


def isa_level() -> str:
    """The instruction-set level of the kernels this process runs (``features.level()``:
    ``avx512_vnni``, ``avx512``, ``avx_vnni``, ``avx2`` or ``portable``, or the one
    ``MMBUILD_ISA`` forces). A model file holds no machine code; its kernels are compiled for
    the CPU that runs them."""
    from mmbuild.kernels.cpu import features

    return features.level().name


def model_summary(model: Model) -> dict[str, Any]:
    """What a model file says about itself, as JSON data: name, mode, inputs and outputs (name,
    dims, dtype), step count, build warnings, fingerprint, and the kernels' instruction-set
    level on this machine (:func:`isa_level`)."""
    data = model.data

    def tensors(infos: Sequence[TensorInfo]) -> list[dict[str, Any]]:
        return [{"name": t.name, "dims": list(t.dims), "dtype": t.dtype.name} for t in infos]

    return plain(
        {
            "name": data.name,
            "mode": data.mode,
            "inputs": tensors(data.inputs),
            "outputs": tensors(data.outputs),
            "steps": len(data.steps),
            "warnings": list(data.warnings),
            "fingerprint": data.fingerprint,
            "isa": isa_level(),
        }
    )
