"""Per-step cost of the run loop, and the sample CNN end to end against onnxruntime.

    python benchmarks/bench_overhead.py [--steps 1000] [--rounds 30] [--batch 1]

1. A chain of ``--steps`` RELU nodes on 16 float32 values: the arithmetic is nothing, so the
   time per step is what the runtime and the kernel's Python wrapper cost. Four figures, each
   the median over ``--rounds`` rounds (the runs of each round interleaved):

   * ``step``: a whole ``enqueue`` divided by the number of steps (loop + runner + numba call);
   * ``prepared``: the same with a runner that gives ``Runner.prepare`` (its numba call's
     arguments made once, at binding), as a kernel can: loop + numba call;
   * ``loop``: the same plan with every runner replaced by one that does nothing, which is what
     the runtime itself adds per step;
   * ``numba call``: the jitted RELU loop called directly with its arguments ready, the floor
     of any runner that calls numba from Python.

2. The sample CNN (float32, input ``[batch, 16, 16, 3]``) in every precision mode, and the
   same network in onnxruntime fp32 (its default session), interleaved run by run; the ratio
   is mmbuild time over onnxruntime time.

The figures are printed with the CPU they were measured on; on a shared machine take them as
medians of a noisy process.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

# this checkout's mmbuild, samples and benchmarks, whatever else is installed
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_models import cnn_onnx_session
from sample_cnn import ImageBatches, build_cnn, sample_images

import mmbuild as mm
from mmbuild.config.schema import PRECISION_MODES
from mmbuild.kernels.table import Runner


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``) and the target LLVM compiles numba kernels for."""
    import llvmlite.binding as llvm

    return f"{_cpu_model()} (LLVM host CPU: {llvm.get_host_cpu_name()})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def relu_chain(steps: int, width: int = 16) -> mm.Network:
    net = mm.Network()
    t = net.add_input(mm.DataType.FLOAT32, mm.Dims([width]))
    for _ in range(steps):
        t = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
    net.mark_output(t)
    return net


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, repeat: int) -> dict[str, float]:
    """Median seconds of one call of each function; round by round, each runs ``repeat`` times
    in turn, so that the machine's load falls on all of them alike."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(min(_time(fn) for _ in range(repeat)))
    return {k: statistics.median(v) for k, v in samples.items()}


def _noop(inputs: object, outputs: object) -> None:
    return None


def step_overhead(steps: int, rounds: int) -> None:
    from mmbuild.kernels.cpu.pointwise import _unary_range, fused_activation

    model = mm.Builder().build_model("chain", relu_chain(steps))
    x = np.linspace(-1, 1, 16, dtype=np.float32)
    act = fused_activation(model.data.steps[0])

    def prepare(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Callable[[], None]:
        # what a RELU runner's run() does on each call, done once: flat views, the whole range
        x, y = inputs[0].reshape(-1), outputs[0].reshape(-1)
        return partial(_unary_range, x, y, 0, 0.0, 0.0, act, 0, y.size)

    variants: dict[str, Callable[[Runner], Runner] | None] = {
        "step": None,
        "prepared": lambda r: Runner(r.run, r.fns, prepare),
        "loop": lambda r: Runner(_noop, ()),
    }
    fns: dict[str, Callable[[], object]] = {}
    results: dict[str, list[mm.IRTTensor]] = {}
    for name, replace in variants.items():
        engine = model.create_i_engine()
        if replace is not None:
            engine.runners = [replace(r) for r in engine.runners]
        context = engine.create_i_context()
        inputs = context.create_inputs()
        inputs[0].from_numpy(x)
        results[name] = []
        fns[name] = partial(context.enqueue, inputs, results[name])

    buf_in, buf_out = x.copy(), np.empty_like(x)

    def numba_calls() -> None:
        for _ in range(steps):
            _unary_range(buf_in, buf_out, 0, 0.0, 0.0, act, 0, 16)

    fns["numba call"] = numba_calls
    t = interleaved(fns, rounds, repeat=5)
    for name in ("step", "prepared"):
        assert np.array_equal(results[name][0].asnumpy(), np.maximum(x, 0)), name
    print(f"\nper-step cost, a chain of {steps} RELU steps on 16 float32 (median of {rounds})")
    for name, seconds in t.items():
        print(f"  {name:<12}{seconds / steps * 1e6:8.2f} us per step")


def cnn_against_onnxruntime(batch: int, rounds: int) -> None:
    x = sample_images(batch, seed=3)
    session = cnn_onnx_session(build_cnn(), x)
    fns: dict[str, Callable[[], object]] = {}
    if session is not None:
        fns["onnxruntime fp32"] = lambda: session.run(None, {"x": x})
    for mode in PRECISION_MODES:
        net = build_cnn()
        config = mm.BuilderConfig()
        config.parse_from_string(
            f'{{"precision_config": {{"precision_mode": "{mode}", '
            '"weight_quant_granularity": "per_axis"}}'
        )
        calib = mm.Calibrator([ImageBatches([sample_images(8, seed=1)])])
        calib.set_progress(False)
        calib.calibrate(net, config)
        context = mm.Builder().build_model(mode, net, config).create_i_engine().create_i_context()
        inputs = context.create_inputs()
        inputs[0].from_numpy(x)
        outputs: list[mm.IRTTensor] = []
        fns[mode] = lambda c=context, i=inputs, o=outputs: c.enqueue(i, o)
    t = interleaved(fns, rounds, repeat=3)
    ort_s = t.get("onnxruntime fp32")
    print(f"\nsample CNN, input [{batch}, 16, 16, 3], median of {rounds} interleaved rounds")
    print(f"  {'':<24}{'ms':>9}{'x ORT time':>12}")
    for name, seconds in t.items():
        ratio = f"{seconds / ort_s:>12.2f}" if ort_s else ""
        print(f"  {name:<24}{seconds * 1e3:>9.3f}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; numba threads: {mm_threads()}")
    step_overhead(args.steps, args.rounds)
    cnn_against_onnxruntime(args.batch, args.rounds)


def mm_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


if __name__ == "__main__":
    main()
