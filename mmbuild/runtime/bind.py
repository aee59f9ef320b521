"""A plan bound to buffers for one set of input shapes, so that a run only calls.

``bind_plan`` does once what every run used to do per step: it makes each intermediate tensor a
ready view of one arena (``BufferPlan.offsets``), makes each view tensor (the output of a
reshape, squeeze or unsqueeze whose bytes are those of its input, ``BufferPlan.views``) a
reshaped view of its source instead of a copy, and turns every step into a call without
arguments (``Runner.bound``: a kernel's ``prepare`` does its checks and flattening there).

A run then only fills what changes from run to run: the steps that read a network input (the
caller's arrays) or write a network output (fresh arrays, which the caller keeps) are bound
again with those arrays; every other call is made as it is. Example: a chain of 1,000 RELU
steps re-binds two steps per run (the first and the last) and calls the other 998 as they are.

The steps bound again take the instruction-set level the plan was bound at (its ``level``), so
that a context made inside ``features.using_level`` keeps that level in every run after the
block, its first and last steps included.

Several contexts may run at once: each owns its bound plans and their arenas; runners keep no
buffer between calls (``mmbuild.kernels.table``), so sharing them is safe.

Per-step timing: ``BoundPlan.run(..., hook=f)`` calls ``f(step, seconds)`` after each step
that runs, with the ``Step`` (its ``name``, ``op`` and ``kernel``) and the wall time of its
call from ``time.perf_counter``; view steps run nothing and are not reported. Without a hook
the loop does no timing at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmbuild.errors import Code, MMError
from mmbuild.kernels.cpu import features
from mmbuild.kernels.table import Runner, Step, buffer_dtype

if TYPE_CHECKING:
    from mmbuild.runtime.engine import BufferPlan
    from mmbuild.runtime.model_file import ModelData

StepHook = Callable[[Step, float], None]


@dataclass
class BoundPlan:
    """The calls of one plan on one context's buffers (see the module docstring)."""

    data: ModelData
    plan: BufferPlan
    arena: np.ndarray
    buffers: dict[str, np.ndarray]  # constants, arena views and view tensors
    steps: list[Step]  # the step of each call, in run order (view steps left out)
    runners: list[Runner]
    calls: list[Callable[[], None]]
    rebind: list[int]  # calls bound again on every run: they touch a network input or output
    views_of: dict[str, list[str]]  # source tensor -> the view tensors of its bytes
    level: str  # the instruction-set level the calls were bound at

    def run(
        self, arrays: Sequence[np.ndarray], keep_all: bool = False, hook: StepHook | None = None
    ) -> dict[str, np.ndarray]:
        """Run on the input buffers ``arrays`` (of the shapes bound); returns the outputs by
        tensor name (every tensor, copied out of the arena, when ``keep_all``)."""
        data, shapes = self.data, self.plan.shapes
        fresh: dict[str, np.ndarray] = dict(zip((t.name for t in data.inputs), arrays))
        for info in data.outputs:
            if info.name not in fresh:
                fresh[info.name] = np.empty(shapes[info.name], buffer_dtype(info.dtype))
        calls = self.calls
        if self.rebind and features.level().name != self.level:
            with features.using_level(self.level):
                self._rebind(fresh)
        elif self.rebind:
            self._rebind(fresh)
        kept: dict[str, np.ndarray] = {}
        if keep_all:
            kept.update(zip((t.name for t in data.inputs), arrays))
        i = 0
        try:
            if keep_all:
                for i, call in enumerate(calls):
                    call()
                    self._keep(self.steps[i], fresh, kept)
            elif hook is None:
                for i, call in enumerate(calls):  # noqa: B007 (i names a failing step)
                    call()
            else:
                clock = time.perf_counter
                for i, call in enumerate(calls):
                    start = clock()
                    call()
                    hook(self.steps[i], clock() - start)
        except MMError:
            raise
        except Exception as exc:  # a kernel failure is a bug: name the step
            step = self.steps[i]
            raise MMError(
                f"step {step.name!r} ({step.kernel}) failed: {type(exc).__name__}: {exc}",
                Code.INTERNAL,
            ) from exc
        out = {t.name: fresh[t.name] for t in data.outputs}
        for info in data.inputs:  # an input marked as an output is returned as a copy
            if info.name in out:
                out[info.name] = out[info.name].copy()
        if keep_all:
            kept.update(out)
            return kept
        return out

    def _rebind(self, fresh: dict[str, np.ndarray]) -> None:
        """Bind the steps that touch a network input or output to this run's arrays."""
        for i in self.rebind:
            step = self.steps[i]
            self.calls[i] = self.runners[i].bound(
                [fresh[t] if t in fresh else self.buffers[t] for t in step.inputs],
                [fresh[t] if t in fresh else self.buffers[t] for t in step.outputs],
            )

    def _keep(self, step: Step, fresh: dict[str, np.ndarray], kept: dict[str, np.ndarray]) -> None:
        """Copy a step's outputs, and the views of them, before the arena reuses their bytes."""
        for t in step.outputs:
            kept[t] = (fresh[t] if t in fresh else self.buffers[t]).copy()
            for v in self.views_of.get(t, ()):
                kept[v] = self.buffers[v].copy()


def bind_plan(data: ModelData, runners: Sequence[Runner], plan: BufferPlan) -> BoundPlan:
    """Bind every step of ``data`` to buffers of a new arena laid out by ``plan``."""
    arena = np.empty(plan.arena_bytes, np.uint8)
    # contiguous, as kernels bind flat views of their buffers once
    buffers = {t: np.ascontiguousarray(c) for t, c in data.constants.items()}
    for t, off in plan.offsets.items():
        dtype = buffer_dtype(data.tensors[t].dtype)
        n = int(np.prod(plan.shapes[t], dtype=np.int64)) * dtype.itemsize
        buffers[t] = arena[off : off + n].view(dtype).reshape(plan.shapes[t])
    views_of: dict[str, list[str]] = {}
    for t, source in plan.views.items():
        buffers[t] = buffers[source].reshape(plan.shapes[t])
        views_of.setdefault(source, []).append(t)
    per_run = {t.name for t in data.inputs} | {t.name for t in data.outputs}
    steps: list[Step] = []
    bound_runners: list[Runner] = []
    calls: list[Callable[[], None]] = []
    rebind: list[int] = []
    for step, runner in zip(data.steps, runners):
        if step.outputs and all(t in plan.views for t in step.outputs):
            continue  # its output is a view of its input: nothing to run
        if per_run.intersection(step.inputs) or per_run.intersection(step.outputs):
            rebind.append(len(calls))
            call = _unbound
        else:
            call = runner.bound([buffers[t] for t in step.inputs],
                                [buffers[t] for t in step.outputs])  # fmt: skip
        steps.append(step)
        bound_runners.append(runner)
        calls.append(call)
    return BoundPlan(data, plan, arena, buffers, steps, bound_runners, calls, rebind, views_of,
                     features.level().name)  # fmt: skip


def _unbound() -> None:
    raise MMError("a step was called before its buffers were bound", Code.INTERNAL)
