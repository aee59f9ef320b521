"""A loaded model checked whole before anything runs (``validate_model``).

The model file's checksums prove that its bytes are the bytes written, not that what they say is
true: a manifest edited and re-checksummed must still be refused before a kernel reads past a
buffer or a run gives a wrong result. So, step by step in run order:

1. the op is known and its attributes are the ones its declaration has, with the types and
   ranges its ``add_i_*`` method and setters allow (``declarations.OP_ATTRS``);
2. every tensor a step reads is a model input, a constant or written by an earlier step; no
   tensor is written twice; every model output is produced;
3. the op's own shape rule (``infer``), run on the dims the inputs have (constants at their
   real shapes), gives exactly the output dims the manifest declares;
4. the kernel is the one the kernel table picks for the op in the step's precision (a softmax
   step cannot name ``copy``), its output types are buffer types equal to its tensors' types, and
   each computed input's tensor type is what the kernel reads (its precision, or a float when
   the precision is quantized);
5. the kernel's stored attributes and arrays are exactly those its declaration lists
   (``declarations.KERNEL_STORES``): the same names, each attribute of its type and range, each
   array of its dtype and shape (a function of the step's tensors), floats finite, scales > 0.

The first ``MAX_LISTED`` problems are listed, then a count of the rest. Example message::

    model file 'net.mm': step 'conv_0' (conv.qint): lowered array 'weight' is int8 [16, 3, 3, 5];
    this kernel stores int8 [16, 3, 3, 3] for this step
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmbuild.errors import MMError
from mmbuild.ir.node import TensorSpec
from mmbuild.ir.types import DataType
from mmbuild.kernels.table import (
    BUFFER_TYPES,
    KERNELS,
    KERNELS_BY_NAME,
    Kernel,
    Step,
    load_kernels,
    value_type,
)
from mmbuild.ops.registry import OPS
from mmbuild.passes.carry import CARRYING_OPS, CODE_OPS
from mmbuild.runtime.declarations import (
    FUSING_OPS,
    KERNEL_STORES,
    OP_ATTRS,
    StepFacts,
    array_problem,
    attr_problems,
    stored_by,
)

if TYPE_CHECKING:
    from mmbuild.runtime.manifest import ModelData

MAX_LISTED = 5


def validate_model(data: ModelData, where: str) -> None:
    """Raise one ``MMError`` listing what is wrong with ``data`` (see the module docstring);
    ``where`` starts the message, e.g. ``"model file 'net.mm'"``."""
    problems = model_problems(data)
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise MMError(f"{where}: {listed}{more}")


def model_problems(data: ModelData) -> list[str]:
    """Every problem found, as 'step 'name' (kernel): field: what', in run order."""
    load_kernels()
    problems: list[str] = []
    dims: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in data.inputs}
    dims.update({k: tuple(v.shape) for k, v in data.constants.items()})
    for t in data.inputs:
        if t.dtype not in BUFFER_TYPES:
            problems.append(f"input {t.name!r} is {t.dtype.name}; inputs are buffer types")
    for step in data.steps:
        found = _step_problems(data, step, dims)
        problems += [f"step {step.name!r} ({step.kernel}): {p}" for p in found]
        if found:  # later steps are checked against what the manifest declares it writes
            for name in step.outputs:
                if name in data.tensors:
                    dims.setdefault(name, tuple(data.tensors[name].dims))
    for t in data.outputs:
        if t.name not in dims:
            problems.append(f"output {t.name!r} is written by no step and is not an input")
    return problems


def _step_problems(data: ModelData, step: Step, dims: dict[str, tuple[int, ...]]) -> list[str]:
    """The problems of one step; on success its outputs' dims are entered in ``dims``."""
    cls = OPS.get(step.op)
    if cls is None:
        return [f"op {step.op!r} is not one this mmbuild has"]
    if len(step.precisions) != len(step.inputs) or len(step.output_types) != len(step.outputs):
        return [
            f"{len(step.inputs)} inputs with {len(step.precisions)} precisions and "
            f"{len(step.outputs)} outputs with {len(step.output_types)} output types; each "
            "input has one precision and each output one type"
        ]
    problems = _attr_problems(step)
    missing = [t for t in step.inputs if t not in dims]
    problems += [f"reads tensor {t!r}, which no earlier step writes" for t in missing]
    problems += [
        f"writes tensor {t!r}, which is already a model input, a constant or an earlier "
        "step's output"
        for t in step.outputs
        if t in dims
    ]
    if len(set(step.outputs)) != len(step.outputs):
        problems.append("writes one tensor twice")
    if problems:
        return problems
    node = step.node()
    try:
        precision = node.compute_precision
        declaration = node.declaration()
        specs = [TensorSpec(dims[t], value_type(data.tensors[t].dtype)) for t in step.inputs]
        inferred = declaration.infer(specs)
    except MMError as e:
        return [f"its op refuses its inputs and attributes: {e}"]
    except Exception as e:  # a shape rule meeting values no setter would have let through
        return [f"its attributes do not fit its op ({type(e).__name__}: {e})"]
    if len(inferred) != len(step.outputs):
        return [f"writes {len(step.outputs)} tensors; its op makes {len(inferred)}"]
    for t, spec, out_type in zip(step.outputs, inferred, step.output_types):
        declared = data.tensors[t]
        if tuple(declared.dims) != tuple(spec.dims):
            problems.append(
                f"output {t!r} is declared {list(declared.dims)}; its op gives "
                f"{list(spec.dims)} for these inputs"
            )
        if out_type not in BUFFER_TYPES and "scale_out" not in step.lowered.attrs:
            problems.append(
                f"output {t!r} is {out_type.name} but the step has no scale_out to quantize it with"
            )
        if declared.dtype is not out_type:
            problems.append(
                f"output {t!r} has type {declared.dtype.name} and output type {out_type.name}; "
                "they are one buffer type"
            )
        if cls.fixed_output_type and spec.dtype is not out_type:
            problems.append(f"output {t!r} is {out_type.name}; its op makes {spec.dtype.name}")
    problems += _kernel_problems(data, step, precision)
    if problems:
        return problems
    facts = StepFacts(
        step=step,
        precision=precision,
        declaration=declaration,
        input_dims=[dims[t] for t in step.inputs],
        output_dims=[tuple(s.dims) for s in inferred],
        constant_inputs=frozenset(i for i, t in enumerate(step.inputs) if t in data.constants),
    )
    problems += _stored_problems(step, facts)
    if not problems:
        dims.update({t: tuple(s.dims) for t, s in zip(step.outputs, inferred)})
    return problems


def _attr_problems(step: Step) -> list[str]:
    checks = OP_ATTRS.get(step.op)
    if checks is None:
        return [f"op {step.op!r} has no attribute declaration (declarations.OP_ATTRS)"]
    fused = ("activation",) if step.op in FUSING_OPS else ()
    return [f"op attribute {p}" for p in attr_problems(step.op_attrs, checks, fused)]


def _kernel_problems(data: ModelData, step: Step, precision: DataType) -> list[str]:
    chosen = KERNELS.get((step.op, precision))
    named = KERNELS_BY_NAME.get(step.kernel)
    if named is None:
        return [f"kernel {step.kernel!r} is not one this mmbuild has; rebuild the model"]
    if chosen is None or chosen is not named:
        runs = chosen.name if chosen is not None else "no kernel"
        return [f"op {step.op!r} in {precision.name} runs on kernel {runs!r}, not {step.kernel!r}"]
    problems = []
    for i, (t, p) in enumerate(zip(step.inputs, step.precisions)):
        if t in data.constants:
            continue
        have = data.tensors[t].dtype
        if p.is_quantized:
            carried = have is p and i == 0 and step.op in (*CARRYING_OPS, *CODE_OPS)
            if not (have.is_float or carried):
                problems.append(
                    f"input {i} ({t!r}) is {have.name}; a {p.name} input is read from a float "
                    f"tensor, or as input 0 of {' / '.join((*CARRYING_OPS, *CODE_OPS))} carried "
                    f"in {p.name}"
                )
        elif have is not p:
            problems.append(f"input {i} ({t!r}) is {have.name}; the kernel reads it as {p.name}")
    return problems


def _stored_problems(step: Step, facts: StepFacts) -> list[str]:
    kernel = KERNELS_BY_NAME[step.kernel]
    if step.kernel not in KERNEL_STORES and _prepares_data(kernel):
        return [f"kernel {step.kernel!r} has no declaration of what it stores"]
    stored = stored_by(step.kernel, facts)
    if stored.problem:
        return [stored.problem]
    problems = [f"lowered attribute {p}" for p in attr_problems(step.lowered.attrs, stored.attrs)]
    arrays = step.lowered.arrays
    for key in stored.arrays:
        if key not in arrays:
            problems.append(f"lowered array {key!r} is missing")
    for key, value in arrays.items():
        spec = stored.arrays.get(key)
        if spec is None:
            known = ", ".join(repr(k) for k in stored.arrays) or "none"
            problems.append(f"lowered array {key!r} is not one this kernel stores ({known})")
            continue
        problem = array_problem(spec, value)
        if problem:
            problems.append(f"lowered array {key!r} {problem}")
    return problems


def _prepares_data(kernel: Kernel) -> bool:
    return type(kernel).lower is not Kernel.lower
