"""Model, Engine, Context and IRTTensor: running a built plan (API.md "Build and run").

* ``Model`` holds the plan as data (steps, constants, tensor types): it is what the builder
  returns and what the model file stores.
* ``Engine`` binds every step to its kernel once (weights packed) and plans buffers per set of
  input shapes; it is shared, read-only, by its contexts.
* ``Context`` owns the buffers of one stream of inferences; several contexts of one engine may
  run at once in different threads.

Shapes: a ``-1`` dimension is fixed by the arrays given to ``enqueue``; every step's output
shape is then inferred by its op's own rule, and the buffers are planned: intermediates share
one arena, a buffer being reused once its last reader has run (the layer report states the
peak). Example: the sample CNN at batch 8 in float32 needs 2 buffers of 8*16*16*16 floats at its
peak, not one per tensor. The output of a reshape, squeeze or unsqueeze of an intermediate is
a view of its input's bytes (``BufferPlan.views``), so that step copies nothing and runs nothing.

A context binds the plan once per set of input shapes (``mmbuild.runtime.bind``): a run then
only calls the bound steps. ``Context.set_step_hook`` gives a profiler each step's time.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from mmbuild._aliases import CamelCaseAliases
from mmbuild.errors import Code, MMError, Status
from mmbuild.ir.node import INode, TensorSpec
from mmbuild.ir.types import DataType, Dims
from mmbuild.kernels.table import Runner, buffer_dtype, kernel_named, value_type
from mmbuild.runtime.bind import BoundPlan, StepHook, bind_plan
from mmbuild.runtime.device import Device, Queue, check_device
from mmbuild.runtime.device import EngineConfig as _EngineConfig

if TYPE_CHECKING:
    from mmbuild.report import ErrorReport, LayerReport
    from mmbuild.runtime.inspect import ValidationReport
    from mmbuild.runtime.model_file import ModelData, TensorInfo
    from mmbuild.runtime.profile import ProfileReport

_ALIGN = 64
# ops whose output is its input's bytes in row-major order: a view where the buffer allows it
VIEW_OPS = frozenset({"reshape", "squeeze", "unsqueeze"})
# bound plans a context keeps (one per set of input shapes, the least recently used dropped)
_BOUND_PLANS = 4


def _threadsafe_parallel_layer() -> bool:
    """True when the threading layer numba really uses lets several threads launch parallel
    kernels at once: tbb or OpenMP. Its fallback, workqueue, aborts the process on concurrent
    launches, so runs are then serialised. numba names its layer only after a parallel launch
    (``numba.threading_layer()``), so a one-element probe makes the first one."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel launch in this process yet
        _parallel_probe(np.zeros(1))
        try:
            layer = numba.threading_layer()
        except ValueError:  # still none: the JIT is disabled and nothing runs in parallel
            return True
    return layer in ("tbb", "omp")


@numba.njit(parallel=True, cache=True)
def _parallel_probe(out: np.ndarray) -> None:  # pragma: no cover - numba compiles it
    """A one-element parallel launch, after which numba names the threading layer it chose.
    Cached like every kernel, so only the first process of a cache compiles it."""
    for i in numba.prange(out.shape[0]):
        out[i] = 1.0


class _SerialRuns:
    """Held around each run: a lock when the threading layer is not thread-safe (see above),
    else nothing. The layer is asked once, at the first run, under a lock of its own."""

    def __init__(self) -> None:
        self._decided = threading.Lock()
        self._lock: threading.Lock | None = None
        self._known = False

    def __enter__(self) -> None:
        if not self._known:
            with self._decided:
                if not self._known:
                    self._lock = None if _threadsafe_parallel_layer() else threading.Lock()
                    self._known = True
        if self._lock is not None:
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()


_SERIAL_RUNS: _SerialRuns | None = _SerialRuns()

#: The most bytes one tensor buffer, or a context's arena of intermediates, may take: a run that
#: would need more is refused before allocating, naming the step, the shape and the bytes.
#: Set ``MMBUILD_MAX_BUFFER_BYTES`` (an integer) to change it; the default is 4 GiB.
MAX_BUFFER_BYTES = int(os.environ.get("MMBUILD_MAX_BUFFER_BYTES", 4 * 2**30))


class IRTTensor(CamelCaseAliases):
    """A tensor at the API boundary: a name, a type, dims and (once set) a numpy array."""

    def __init__(self, name: str, dtype: DataType, dims: Sequence[int]) -> None:
        self._name = name
        self._dtype = dtype
        self._dims = tuple(dims)
        self._array: np.ndarray | None = None

    @classmethod
    def _wrap(cls, name: str, dtype: DataType, buffer: np.ndarray) -> IRTTensor:
        t = cls(name, dtype, buffer.shape)
        t._array = buffer.view(np.float16) if dtype is DataType.FLOAT16 else buffer
        return t

    def from_numpy(self, array: np.ndarray) -> Status:
        """Set the contents; the array must have this tensor's dtype and fit its dims."""
        array = np.asarray(array)
        want = self._dtype.numpy_dtype
        if array.dtype != want:
            raise MMError(
                f"tensor {self._name!r}: array of dtype {array.dtype} given; it takes {want} "
                f"({self._dtype.name}). Convert with array.astype(np.{want})"
            )
        if array.ndim != len(self._dims) or any(
            d not in (-1, s) for d, s in zip(self._dims, array.shape)
        ):
            raise MMError(
                f"tensor {self._name!r}: array of shape {list(array.shape)} given; it takes "
                f"dims {list(self._dims)} (-1 = any size)"
            )
        self._array = array if array.flags.c_contiguous else array.copy(order="C")  # 0-d stays 0-d
        return Status.OK()

    def to(self, device: Device | int) -> IRTTensor:
        """MagicMind's copy to a device: the CPU's memory is the device's, so this returns the
        tensor itself, holding the same data (no copy). ``device`` is an ``mm.Device`` (id 0)
        or the id 0; ``inputs[0].to(dev)`` and ``x = inputs[0].to(dev)`` both work."""
        check_device(device, f"tensor {self._name!r}: to(device)")
        return self

    def asnumpy(self) -> np.ndarray:
        if self._array is None:
            raise MMError(f"tensor {self._name!r} holds no data yet; call from_numpy first")
        return self._array

    def get_tensor_name(self) -> str:
        return self._name

    def get_data_type(self) -> DataType:
        return self._dtype

    def get_dimensions(self) -> Dims:
        return Dims(self._array.shape if self._array is not None else self._dims)

    def get_size(self) -> int:
        """Bytes of the data (0 before any is set)."""
        return 0 if self._array is None else int(self._array.nbytes)

    def __repr__(self) -> str:
        return f"IRTTensor({self._name!r}, {self._dtype.name}, {list(self.get_dimensions())})"


class Model(CamelCaseAliases):
    """A built model: build it with ``mm.Builder``, or ``deserialize_from_file``."""

    #: MagicMind's ``mm.Model.EngineConfig`` (``device_type`` "MLU" or "CPU"), for
    #: ``create_i_engine(econfig)``.
    EngineConfig = _EngineConfig

    def __init__(self) -> None:
        self._data: ModelData | None = None

    @classmethod
    def _from_data(cls, data: ModelData) -> Model:
        model = cls()
        model._set_data(data)
        return model

    def _set_data(self, data: ModelData) -> None:
        self._check_kernels(data)
        self._data = data

    @staticmethod
    def _check_kernels(data: ModelData) -> None:
        for step in data.steps:  # an unknown kernel is refused here, before any run
            try:
                kernel_named(step.kernel)
            except MMError:
                raise MMError(
                    f"model {data.name!r}: step {step.name!r} needs kernel {step.kernel!r}, which "
                    "this mmbuild does not have; rebuild the model with this version",
                    Code.NOT_FOUND,
                ) from None

    @property
    def data(self) -> ModelData:
        if self._data is None:
            raise MMError(
                "this Model is empty; build one with mm.Builder().build_model(...) or call "
                "deserialize_from_file(path)"
            )
        return self._data

    # -- files -------------------------------------------------------------------------------
    def serialize_to_file(self, path: str) -> Status:
        from mmbuild.runtime.model_file import write_model_file

        write_model_file(path, self.data)
        return Status.OK()

    def deserialize_from_file(self, path: str) -> Status:
        """Load the model file at ``path``, checked whole (``runtime.validate_model``) before
        this model changes; a refused file leaves it as it was."""
        from mmbuild.runtime.model_file import read_model_file
        from mmbuild.runtime.validate_model import validate_model

        data = read_model_file(path)
        self._check_kernels(data)
        validate_model(data, f"model file {path!r}")
        self._set_data(data)
        return Status.OK()

    # -- queries -----------------------------------------------------------------------------
    def get_name(self) -> str:
        return self.data.name

    def get_input_num(self) -> int:
        return len(self.data.inputs)

    def get_output_num(self) -> int:
        return len(self.data.outputs)

    def get_input_names(self) -> list[str]:
        return [t.name for t in self.data.inputs]

    def get_output_names(self) -> list[str]:
        return [t.name for t in self.data.outputs]

    def get_input_dimensions(self) -> list[Dims]:
        return [Dims(t.dims) for t in self.data.inputs]

    def get_output_dimensions(self) -> list[Dims]:
        return [Dims(t.dims) for t in self.data.outputs]

    def get_input_data_types(self) -> list[DataType]:
        return [t.dtype for t in self.data.inputs]

    def get_output_data_types(self) -> list[DataType]:
        return [t.dtype for t in self.data.outputs]

    # -- running and reports -----------------------------------------------------------------
    def create_i_engine(self, econfig: _EngineConfig | None = None) -> Engine:
        """An engine over this model. ``econfig`` (an ``mm.Model.EngineConfig``) may be omitted;
        its device type, "MLU" or "CPU", runs on this CPU either way."""
        if econfig is not None and not isinstance(econfig, _EngineConfig):
            raise MMError(
                f"create_i_engine: econfig must be an mm.Model.EngineConfig or omitted, not "
                f"{type(econfig).__name__}"
            )
        return Engine(self.data)

    def get_layer_report(
        self, inputs: Sequence[np.ndarray] | np.ndarray | None = None
    ) -> LayerReport:
        """One row per step of the plan; with ``inputs`` the shapes and the peak activation
        memory are those of that run, else those known at build time (-1 where dynamic)."""
        from mmbuild.runtime.inspect import layer_report

        return layer_report(self, inputs)

    inspect = get_layer_report

    def validate(self, inputs: Sequence[np.ndarray] | np.ndarray) -> ValidationReport:
        """Run every step and, on the same inputs, the numpy reference of its precision; the
        result names the first step that differs (``str()`` says which and by how much)."""
        from mmbuild.runtime.inspect import validate

        return validate(self, inputs)

    def get_error_report(self, inputs: Sequence[np.ndarray] | np.ndarray) -> ErrorReport:
        """Each step's output against a float32 run of the same plan: SQNR, cosine, max abs
        error, worst first."""
        from mmbuild.runtime.inspect import error_report

        return error_report(self, inputs)

    def __repr__(self) -> str:
        if self._data is None:
            return "Model(empty)"
        return f"Model({self._data.name!r}, {self._data.mode}, {len(self._data.steps)} steps)"


@dataclass(frozen=True)
class BufferPlan:
    """Shapes of every tensor for one set of input shapes, and where intermediates live."""

    shapes: dict[str, tuple[int, ...]]
    offsets: dict[str, int]  # arena byte offset of each intermediate tensor
    arena_bytes: int
    views: dict[str, str] = field(default_factory=dict)  # view tensor -> tensor whose bytes it is


class Engine(CamelCaseAliases):
    """A model's steps bound to their kernels; create contexts to run it."""

    def __init__(self, data: ModelData) -> None:
        self.data = data
        self.runners: list[Runner] = [kernel_named(s.kernel).bind(s) for s in data.steps]
        self._declarations: list[INode] = [s.node().declaration() for s in data.steps]
        self._constants = dict(data.constants)
        self._plans: dict[tuple[tuple[int, ...], ...], BufferPlan] = {}
        self._lock = threading.Lock()

    def create_i_context(self) -> Context:
        return Context(self)

    def buffer_plan(self, input_shapes: tuple[tuple[int, ...], ...]) -> BufferPlan:
        """The shapes and buffer offsets for these input shapes (computed once, cached)."""
        with self._lock:
            plan = self._plans.get(input_shapes)
        if plan is None:
            plan = plan_buffers(self.data, self._declarations, input_shapes)
            with self._lock:
                self._plans[input_shapes] = plan
        return plan


def plan_buffers(
    data: ModelData, declarations: Sequence[INode], input_shapes: tuple[tuple[int, ...], ...]
) -> BufferPlan:
    """Every tensor's shape for these input shapes (each step's op ``infer``, in order), and
    the arena placement of the intermediates."""
    shapes: dict[str, tuple[int, ...]] = dict(zip((t.name for t in data.inputs), input_shapes))
    shapes.update({k: v.shape for k, v in data.constants.items()})
    for step, decl in zip(data.steps, declarations):
        specs = [TensorSpec(shapes[t], value_type(data.tensors[t].dtype)) for t in step.inputs]
        for t, spec in zip(step.outputs, decl.infer(specs)):
            shapes[t] = tuple(spec.dims)
            nbytes = _nbytes(data.tensors[t], shapes[t])
            if nbytes > MAX_BUFFER_BYTES:
                raise MMError(
                    f"step {step.name!r}: its output {t!r} of shape {list(shapes[t])} would take "
                    f"{nbytes} bytes, above the limit of {MAX_BUFFER_BYTES} bytes per buffer; "
                    "run smaller inputs, or raise MMBUILD_MAX_BUFFER_BYTES",
                    Code.OUT_OF_RANGE,
                )
    views = _plan_views(data)
    offsets, arena = _plan_arena(data, shapes, views)
    if arena > MAX_BUFFER_BYTES:
        raise MMError(
            f"model {data.name!r}: its intermediates for inputs of shapes "
            f"{[list(s) for s in input_shapes]} need an arena of {arena} bytes, above the limit "
            f"of {MAX_BUFFER_BYTES} bytes; run smaller inputs, or raise MMBUILD_MAX_BUFFER_BYTES",
            Code.OUT_OF_RANGE,
        )
    return BufferPlan(shapes, offsets, arena, views)


def _fixed_tensors(data: ModelData) -> set[str]:
    """Tensors that live outside the arena: network inputs, outputs and constants."""
    return {t.name for t in data.inputs} | {t.name for t in data.outputs} | set(data.constants)


def _plan_views(data: ModelData) -> dict[str, str]:
    """The outputs of ``VIEW_OPS`` steps that can be views of an intermediate's bytes, each
    mapped to that intermediate (through a chain of views, the first one). Not a view: a
    network output (the caller keeps it after the arena is reused), the view of a network input
    or output (those arrays change from run to run), or one that changes the buffer type."""
    fixed = _fixed_tensors(data)
    views: dict[str, str] = {}
    for step in data.steps:
        if step.op not in VIEW_OPS or "activation" in step.op_attrs or len(step.outputs) != 1:
            continue
        src, dst = step.inputs[0], step.outputs[0]
        source = views.get(src, src)
        same_type = buffer_dtype(data.tensors[src].dtype) == buffer_dtype(data.tensors[dst].dtype)
        if source not in fixed and dst not in fixed and same_type:
            views[dst] = source
    return views


def _nbytes(info: TensorInfo, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * buffer_dtype(info.dtype).itemsize  # exact: no int64 wrap-around


def _plan_arena(
    data: ModelData, shapes: dict[str, tuple[int, ...]], views: dict[str, str]
) -> tuple[dict[str, int], int]:
    """First-fit placement of intermediates: a tensor lives from the step that writes it to the
    last step that reads it or a view of it; outputs of a step are placed before its inputs are
    freed, so no step reads and writes the same bytes. Views take no room of their own."""
    fixed = _fixed_tensors(data) | set(views)
    last_use: dict[str, int] = {}
    for i, step in enumerate(data.steps):
        for t in step.inputs:
            last_use[views.get(t, t)] = i
    free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
    offsets: dict[str, int] = {}
    sizes: dict[str, int] = {}
    top = 0
    for i, step in enumerate(data.steps):
        for t in step.outputs:
            if t in fixed:
                continue
            size = sizes[t] = -(-_nbytes(data.tensors[t], shapes[t]) // _ALIGN) * _ALIGN
            for j, (off, room) in enumerate(free):
                if room >= size:
                    offsets[t] = off
                    free[j] = (off + size, room - size)
                    break
            else:
                offsets[t] = top
                top += size
            last_use.setdefault(t, i)
        for t in {views.get(t, t) for t in (*step.inputs, *step.outputs)}:
            if t in offsets and last_use[t] == i:
                free = _merge([*free, (offsets[t], sizes[t])])
    return offsets, top


def _merge(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for off, size in sorted(b for b in blocks if b[1] > 0):
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + size)
        else:
            merged.append((off, size))
    return merged


class Context(CamelCaseAliases):
    """The buffers of one stream of inferences over an engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._bound: OrderedDict[tuple[tuple[int, ...], ...], BoundPlan] = OrderedDict()
        self._step_hook: StepHook | None = None

    def create_inputs(self) -> list[IRTTensor]:
        """One empty IRTTensor per network input, in order; fill them with ``from_numpy``."""
        return [IRTTensor(t.name, t.dtype, t.dims) for t in self._engine.data.inputs]

    def set_step_hook(self, hook: StepHook | None) -> None:
        """Call ``hook(step, seconds)`` after each step of every later run (``None``: stop).

        ``step`` is the plan's ``Step`` (``name``, ``op``, ``kernel``), ``seconds`` the
        ``time.perf_counter`` time of its call. Steps whose output is a view of their input
        run nothing and are not reported. Example: ``times = []``;
        ``context.set_step_hook(lambda s, t: times.append((s.name, t)))``.
        """
        if hook is not None and not callable(hook):
            raise MMError(f"set_step_hook: {type(hook).__name__} is not callable; give a "
                          "function of (step, seconds) or None")  # fmt: skip
        self._step_hook = hook

    def profile(
        self, inputs: Sequence[Any], runs: int = 100, warmup: int = 5, progress: bool = True
    ) -> ProfileReport:
        """Latency percentiles and per-step times over ``runs`` runs (runtime/profile.py).

        Example: ``print(context.profile(inputs, runs=50))`` prints p50/p90/p99 and the steps,
        slowest first; ``.to_json()`` gives the same as a document.
        """
        from mmbuild.runtime.profile import profile_context

        return profile_context(self, inputs, runs=runs, warmup=warmup, progress=progress)

    def enqueue(
        self, inputs: Sequence[IRTTensor], outputs: list[IRTTensor], queue: Queue | None = None
    ) -> Status:
        """Run the model: ``outputs`` is cleared and receives one IRTTensor per network output.

        ``queue`` (from ``dev.create_queue()``) may be omitted. The run is synchronous: it has
        finished when enqueue returns, and ``queue.sync()`` returns OK. A queue serves the
        context that first ran on it; another context's queue is refused.
        """
        if not isinstance(outputs, list):
            raise MMError("enqueue: outputs must be a list, which enqueue fills")
        if queue is not None:
            if not isinstance(queue, Queue):
                raise MMError(
                    f"enqueue: queue must be an mm queue from dev.create_queue() or omitted, "
                    f"not {type(queue).__name__}"
                )
            queue._bind(self)
        arrays = input_buffers(self._engine.data, inputs)
        check_input_shapes(self._engine.data, arrays)
        values = self.run(arrays)
        data = self._engine.data
        outputs.clear()
        outputs.extend(IRTTensor._wrap(t.name, t.dtype, values[t.name]) for t in data.outputs)
        return Status.OK()

    def run(self, arrays: Sequence[np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
        """Run the plan on checked input buffers; returns the output buffers by tensor name
        (every tensor, copied out of the arena, when ``keep_all``).

        Buffers hold values as the runtime does: a FLOAT16 tensor is uint16 fp16 bits, in and
        out (``out.view(np.float16)`` reads it); ``enqueue`` takes and gives ``IRTTensor``s,
        whose ``asnumpy()`` is float16. Example: a ``qint8_mixed_float16`` model's output
        comes back as uint16 from ``run`` and as float16 from ``enqueue``."""
        if _SERIAL_RUNS is None:
            return self._run(arrays, keep_all)
        with _SERIAL_RUNS:
            return self._run(arrays, keep_all)

    def _run(self, arrays: Sequence[np.ndarray], keep_all: bool) -> dict[str, np.ndarray]:
        return self._bound_plan(tuple(a.shape for a in arrays)).run(
            arrays, keep_all, self._step_hook
        )

    def _bound_plan(self, input_shapes: tuple[tuple[int, ...], ...]) -> BoundPlan:
        """The plan bound for these input shapes: made on first use, kept for the next runs."""
        bound = self._bound.get(input_shapes)
        if bound is None:
            engine = self._engine
            bound = bind_plan(engine.data, engine.runners, engine.buffer_plan(input_shapes))
            self._bound[input_shapes] = bound
            if len(self._bound) > _BOUND_PLANS:
                self._bound.popitem(last=False)
        else:
            self._bound.move_to_end(input_shapes)
        return bound


def check_input_shapes(data: ModelData, arrays: Sequence[np.ndarray]) -> None:
    """Refuse input shapes outside the builder config's ``dim_range`` of each input.

    Example: ``{"dim_range": {"0": {"min": [1, 3, 8, 8], "max": [4, 3, 8, 8]}}}`` takes batches
    of 1 to 4, so an array of shape [5, 3, 8, 8] for input 0 is refused.
    """
    for i, (info, a) in enumerate(zip(data.inputs, arrays)):
        if info.min_dims is None or info.max_dims is None:
            continue
        lo, hi = info.min_dims, info.max_dims
        if any(not low <= s <= high for s, low, high in zip(a.shape, lo, hi)):
            raise MMError(
                f"enqueue: input {i} ({info.name!r}) has shape {list(a.shape)}, outside the "
                f"model's dim_range min {list(lo)} .. max {list(hi)}; give a shape in that "
                "range, or rebuild with a wider dim_range",
                Code.OUT_OF_RANGE,
            )


def input_buffers(data: ModelData, inputs: Sequence[Any]) -> list[np.ndarray]:
    """The buffers of ``inputs`` (IRTTensors in model-input order), checked against the model:
    count, dtype and dims; float16 arrays are viewed as their uint16 bits."""
    declared = data.inputs
    if not isinstance(inputs, (list, tuple)) or len(inputs) != len(declared):
        n = len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs).__name__
        raise MMError(
            f"enqueue: got {n} inputs; the model takes {len(declared)}: "
            f"{[t.name for t in declared]} (use context.create_inputs())"
        )
    arrays = []
    for i, (t, info) in enumerate(zip(inputs, declared)):
        if not isinstance(t, IRTTensor):
            raise MMError(f"enqueue: input {i} is a {type(t).__name__}, not an IRTTensor")
        a = t.asnumpy()
        if (
            a.dtype != info.dtype.numpy_dtype
            or a.ndim != len(info.dims)
            or any(d not in (-1, s) for d, s in zip(info.dims, a.shape))
        ):
            raise MMError(
                f"enqueue: input {i} ({info.name!r}) is {a.dtype} {list(a.shape)}; the model "
                f"takes {info.dtype.numpy_dtype} {list(info.dims)} (-1 = any size)"
            )
        arrays.append(a.view(np.uint16) if info.dtype is DataType.FLOAT16 else a)
    return arrays
