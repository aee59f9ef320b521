"""Per-step profiling of a context: latency percentiles, throughput and where the time goes.

``context.profile(inputs, runs=100)`` runs the plan ``warmup`` times untimed, then ``runs``
times as a user's ``enqueue`` would (the latency figures), then ``runs`` times more with every
step timed through ``Context.set_step_hook`` (the step table; view steps, which run
nothing, are left out). The step table is
sorted slowest first, as ``trtexec --dumpProfile`` prints it; a step's ``share`` is its mean
time over the sum of the mean step times.

Percentiles are numpy's linear interpolation between order statistics. Example: run times
[1, 2, 3, 4] ms give p50 = 2.5 ms and p90 = 3.7 ms (the 0.9 * 3 = 2.7th order statistic);
throughput is ``batch / mean latency``: batch 8 at a mean of 4 ms is 2000 samples/s.

>>> latency_stats([0.001, 0.002, 0.003, 0.004], batch=8)  # doctest: +NORMALIZE_WHITESPACE
LatencyStats(mean_ms=2.5, p50_ms=2.5, p90_ms=3.7, p99_ms=3.97, min_ms=1.0, max_ms=4.0,
             throughput=3200.0)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from tqdm import tqdm

from mmbuild.calib.calibrator import PROGRESS_ENV
from mmbuild.errors import MMError
from mmbuild.ir.types import DataType
from mmbuild.kernels.table import Step
from mmbuild.ops.registry import get_op
from mmbuild.report import _table, _types, plain, rows_to_csv, rows_to_json
from mmbuild.runtime.engine import IRTTensor, input_buffers

if TYPE_CHECKING:
    from mmbuild.runtime.engine import Context


def progress_shown(requested: bool = True) -> bool:
    """Whether to draw a progress bar: asked for, ``MMBUILD_PROGRESS`` is not ``0``, and stderr
    is a terminal (the calibrator's rule)."""
    return (
        requested
        and os.environ.get(PROGRESS_ENV, "1") != "0"
        and bool(getattr(sys.stderr, "isatty", lambda: False)())
    )


@dataclass(frozen=True)
class LatencyStats:
    """Whole-run latency in milliseconds and throughput in samples per second."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float


def latency_stats(seconds: Sequence[float], batch: int) -> LatencyStats:
    """Percentiles of run times given in seconds (module docstring)."""
    ms = np.asarray(seconds, np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return LatencyStats(
        mean_ms=round(mean, 6),
        p50_ms=round(p50, 6),
        p90_ms=round(p90, 6),
        p99_ms=round(p99, 6),
        min_ms=round(float(ms.min()), 6),
        max_ms=round(float(ms.max()), 6),
        throughput=round(batch / (mean / 1e3), 3) if mean > 0 else float("inf"),
    )


@dataclass(frozen=True)
class StepTime:
    """One step's time: mean and median over the timed runs, and its share of the total."""

    name: str
    type: str
    kernel: str
    input_precisions: list[DataType]
    output_types: list[DataType]
    mean_ms: float
    median_ms: float
    share: float


class ProfileReport(Sequence[StepTime]):
    """The profile of one set of input shapes: ``latency``, ``batch``, ``runs``, ``threads``
    and the step rows, slowest first. ``str()`` is a summary line and an aligned table."""

    def __init__(
        self, rows: Sequence[StepTime], latency: LatencyStats, batch: int, runs: int, threads: int
    ) -> None:
        self._rows = sorted(rows, key=lambda r: -r.mean_ms)
        self.latency = latency
        self.batch = batch
        self.runs = runs
        self.threads = threads

    @property
    def rows(self) -> list[StepTime]:
        return list(self._rows)

    @overload
    def __getitem__(self, i: int) -> StepTime: ...
    @overload
    def __getitem__(self, i: slice) -> list[StepTime]: ...
    def __getitem__(self, i: int | slice) -> StepTime | list[StepTime]:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[StepTime]:
        return iter(self._rows)

    def summary(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "runs": self.runs,
            "threads": self.threads,
            "latency": plain(self.latency),
        }

    def to_json(self) -> str:
        """``{"report": "profile", "batch", "runs", "threads", "latency": {...}, "rows"}``."""
        return rows_to_json("profile", self._rows, self.summary())

    def to_csv(self) -> str:
        """One line per step, slowest first (fields of :class:`StepTime`)."""
        return rows_to_csv(self._rows)

    def __str__(self) -> str:
        lat = self.latency
        head = (
            f"batch {self.batch}, {self.runs} runs, {self.threads} thread(s): latency mean "
            f"{lat.mean_ms:.3f} ms, p50 {lat.p50_ms:.3f} ms, p90 {lat.p90_ms:.3f} ms, "
            f"p99 {lat.p99_ms:.3f} ms; throughput {lat.throughput:.1f} samples/s"
        )
        table = _table(
            [
                "name",
                "type",
                "kernel",
                "in precisions",
                "out types",
                "mean ms",
                "median ms",
                "share",
            ],
            [
                [
                    r.name,
                    r.type,
                    r.kernel,
                    _types(r.input_precisions),
                    _types(r.output_types),
                    f"{r.mean_ms:.4f}",
                    f"{r.median_ms:.4f}",
                    f"{100 * r.share:.1f}%",
                ]
                for r in self._rows
            ],
            right=(5, 6, 7),
        )
        return f"{head}\n{table}"

    def __repr__(self) -> str:
        return f"<ProfileReport of {len(self)} steps, batch {self.batch}>"


def profile_context(
    context: Context,
    inputs: Sequence[Any] | np.ndarray,
    runs: int = 100,
    warmup: int = 5,
    progress: bool = True,
) -> ProfileReport:
    """Profile ``context`` on ``inputs``: numpy arrays in input order (one array for one input)
    or the IRTTensors of ``context.create_inputs()``; see the module docstring."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise MMError(f"profile: runs must be a positive integer, not {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise MMError(f"profile: warmup must be an integer >= 0, not {warmup!r}")
    data = context._engine.data
    arrays = input_buffers(data, _as_tensors(data.inputs, inputs))
    for _ in range(warmup):
        context.run(arrays)
    times = np.zeros((runs, len(data.steps)))
    latencies = []
    bar = tqdm(
        total=2 * runs,
        desc="profiling",
        unit="run",
        disable=not progress_shown(progress),
        file=sys.stderr,
    )
    with bar:
        for _ in range(runs):
            start = time.perf_counter()
            context.run(arrays)
            latencies.append(time.perf_counter() - start)
            bar.update(1)
        index = {step.name: i for i, step in enumerate(data.steps)}
        saved, row = context._step_hook, times[0]

        def timed(step: Step, seconds: float) -> None:
            row[index[step.name]] = seconds

        try:
            context.set_step_hook(timed)
            for r in range(runs):
                row = times[r]
                context.run(arrays)
                bar.update(1)
        finally:
            context.set_step_hook(saved)
    ran = np.flatnonzero(np.any(times, axis=0)).tolist()  # view steps run nothing
    times = times[:, ran]
    steps = [data.steps[i] for i in ran]
    means = times.mean(axis=0)
    medians = np.median(times, axis=0)
    total = float(means.sum())
    rows = [
        StepTime(
            name=step.name,
            type=get_op(step.op).node_type,
            kernel=step.kernel,
            input_precisions=list(step.precisions),
            output_types=list(step.output_types),
            mean_ms=round(float(mean) * 1e3, 6),
            median_ms=round(float(median) * 1e3, 6),
            share=round(float(mean) / total, 6) if total > 0 else 0.0,
        )
        for step, mean, median in zip(steps, means, medians)
    ]
    batch = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1
    return ProfileReport(rows, latency_stats(latencies, batch), batch, runs, _threads())


def _as_tensors(declared: Sequence[Any], inputs: Sequence[Any] | np.ndarray) -> list[Any]:
    """IRTTensors for ``inputs``; numpy arrays are checked by ``from_numpy`` against the
    model's inputs (count, dtype, dims)."""
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)):
        raise MMError(f"profile: inputs must be a list of arrays or IRTTensors, not {inputs!r}")
    if len(inputs) != len(declared):
        raise MMError(
            f"profile: got {len(inputs)} inputs; the model takes {len(declared)}: "
            f"{[t.name for t in declared]}"
        )
    tensors: list[Any] = []
    for info, x in zip(declared, inputs):
        if isinstance(x, np.ndarray):
            t = IRTTensor(info.name, info.dtype, info.dims)
            t.from_numpy(x)
            x = t
        tensors.append(x)
    return tensors


def _threads() -> int:
    import numba

    return int(numba.get_num_threads())
