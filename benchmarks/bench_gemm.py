"""GEMM throughput of mmbuild's kernels against numpy and onnxruntime, and compile / start times.

    python benchmarks/bench_gemm.py                 # throughput table, all threads, every level
    python benchmarks/bench_gemm.py --threads 1     # one thread everywhere
    python benchmarks/bench_gemm.py --isa avx2      # only the levels named
    python benchmarks/bench_gemm.py --startup       # cold compile and warm start, in subprocesses

For each shape M x K x N it times, on the same inputs and thread count, and for every
instruction-set level the CPU runs (the header names the CPU and the levels):

- mmbuild int8 (``gemm_u8s8``, float32 output with scale and bias fused) against onnxruntime
  ``MatMulInteger`` (int32 output, no epilogue) and ``MatMul`` (fp32), and mmbuild's fused uint8
  requantisation against ``QLinearMatMul``;
- mmbuild int16 (``gemm_s16``, exact int64 sums, float32 output) against onnxruntime ``MatMul``
  and numpy (onnxruntime has no int16 matrix product: fp32 is what the user would run instead);
- mmbuild fp32 and fp16-weight GEMM (``gemm_f32``) against onnxruntime ``MatMul`` and numpy's
  ``matmul`` (OpenBLAS);

and prints GOPS (2 * M * N * K per second) and each ratio as "baseline time / mmbuild time"
(above 1: mmbuild is faster). Times are the best of several interleaved rounds of the median of
many calls (see :func:`best_medians`); a round during which other processes used the CPUs is run
again (Linux ``/proc``), so other work on the machine makes the script slower rather than its
numbers wrong. mmbuild is timed through its bound calls (``bind_gemm_*``), the way a built plan
runs it (onnxruntime's ``run`` costs a few microseconds more per call, which shows on the small
shapes). This is a script, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# numpy's OpenBLAS threads spin for about 0.1 s after each call, and a contender timed next shares
# the cores with them (it doubled an mmbuild conv timed after numpy on a 2-core machine); 2**4
# cycles makes them sleep at once, as onnxruntime's spinning is switched off (set before numpy
# loads OpenBLAS)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np

SHAPES = [(512, 512, 512), (3136, 576, 64), (64, 64, 64), (1, 1024, 1000)]


def _busy_ticks() -> tuple[int, int]:
    """(CPU ticks all processes spent busy, ticks this process used), from /proc."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])


def _others_share(start: tuple[int, int], seconds: float) -> float:
    """Fraction of the machine's CPU time that other processes used since ``start``."""
    busy, own = _busy_ticks()
    ticks = (busy - start[0]) - (own - start[1])
    return max(0.0, ticks / os.sysconf("SC_CLK_TCK") / (seconds * (os.cpu_count() or 1)))


def _timed_round(fn: Callable[[], Any], reps: int) -> tuple[float, bool]:
    """(median seconds per call of ``reps`` calls, whether other processes stayed quiet)."""
    times = np.empty(reps)
    start, t0 = _busy_ticks(), time.perf_counter()
    for r in range(reps):
        t = time.perf_counter()
        fn()
        times[r] = time.perf_counter() - t
    return float(np.median(times)), _others_share(start, time.perf_counter() - t0) <= 0.05


def best_medians(fns: dict[str, Callable[[], Any]], rounds: int = 5,
                 min_round_s: float = 0.1) -> dict[str, float]:  # fmt: skip
    """Seconds per call of each function: the smallest, over ``rounds``, of the median of a
    round's calls. The rounds are interleaved (round 1 of every function, then round 2, ...), so
    a slow phase of the machine hits every contender alike.

    A round during which other processes used more than 5% of the CPUs is discarded and run
    again (up to 20 tries per function), so a busy machine costs time rather than accuracy.
    """
    reps = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        t = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t, 1e-7)
        reps[name] = int(min(5000, max(10, min_round_s / one)))
    best = dict.fromkeys(fns, float("inf"))
    tries = dict.fromkeys(fns, 0)
    for _ in range(rounds):
        for name, fn in fns.items():
            while True:
                tries[name] += 1
                median, quiet = _timed_round(fn, reps[name])
                if quiet or tries[name] >= 20:
                    break
                time.sleep(0.2)
            best[name] = min(best[name], median)
    return best


# ---------------------------------------------------------------------------------------------
# onnxruntime models
# ---------------------------------------------------------------------------------------------
def _ort_session(nodes: list, inputs: list, outputs: list, inits: list, threads: int) -> Any:
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_matmul_integer(w: np.ndarray, za: int, threads: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    return _ort_session(
        [helper.make_node("MatMulInteger", ["A", "B", "za"], ["Y"])],
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", n])],
        [numpy_helper.from_array(w, "B"), numpy_helper.from_array(np.array(za, np.uint8), "za")],
        threads,
    )


def ort_qlinear_matmul(w: np.ndarray, sa: float, za: int, sw: float, sy: float, zy: int,
                       threads: int) -> Any:  # fmt: skip
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    consts = {"as": np.float32(sa), "az": np.uint8(za), "B": w, "bs": np.float32(sw),
              "bz": np.int8(0), "ys": np.float32(sy), "yz": np.uint8(zy)}  # fmt: skip
    return _ort_session(
        [helper.make_node("QLinearMatMul", ["A", "as", "az", "B", "bs", "bz", "ys", "yz"], ["Y"])],
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, ["M", n])],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in consts.items()],
        threads,
    )


def ort_matmul(w: np.ndarray, threads: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    return _ort_session(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])],
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(w, "B")],
        threads,
    )


# ---------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------
def _row(shape: str, name: str, seconds: float, ops: float, ratios: str = "") -> None:
    print(f"{shape:>16} {name:<38} {seconds * 1e3:8.3f} {ops / seconds / 1e9:7.1f}  {ratios}")


def bench_shape(
    m: int, k: int, n: int, threads: int, levels: list[str], rng: np.random.Generator
) -> None:
    """Every mmbuild kernel on every level in ``levels`` and the baselines, interleaved."""
    from mmbuild.kernels.cpu.gemm import (
        Activation,
        Epilogue,
        OutKind,
        bind_gemm_f32,
        bind_gemm_s16,
        bind_gemm_u8s8,
        pack_float_weights,
        pack_int8_weights,
        pack_int16_weights,
    )

    shape = f"{m}x{k}x{n}"
    ops = 2.0 * m * n * k

    # int8: uint8 activations with zero point 128, symmetric int8 weights; int16 alike
    a8 = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w8 = rng.integers(-127, 128, (k, n), dtype=np.int8)
    a16 = rng.integers(-32768, 32768, (m, k), dtype=np.int16)
    w16 = rng.integers(-32767, 32768, (k, n), dtype=np.int16)
    za, sa, sw = 128, 0.02, 0.01
    sy = sa * sw * 3000
    packed8, packed16 = pack_int8_weights(w8), pack_int16_weights(w16)
    ep_f = Epilogue.create(n, scale_a=sa, scale_w=sw, bias=rng.standard_normal(n))
    ep_u8 = Epilogue.create(
        n, scale_a=sa, scale_w=sw, act=Activation.RELU, out_kind=OutKind.U8, out_scale=sy
    )
    af = rng.standard_normal((m, k)).astype(np.float32)
    wf = rng.standard_normal((k, n)).astype(np.float32)
    wh = wf.astype(np.float16)
    packed_f, packed_h = pack_float_weights(wf), pack_float_weights(wf, half=True)
    ep = Epilogue.create(n)
    out_f = np.empty((m, n), np.float32)
    out_u8 = np.empty((m, n), np.uint8)
    out_np = np.empty((m, n), np.float32)

    mmi = ort_matmul_integer(w8, za, threads)
    qmm = ort_qlinear_matmul(w8, sa, za, sw, sy, 0, threads)
    mm = ort_matmul(wf, threads)
    fns: dict[str, Callable[[], Any]] = {
        "MatMulInteger": lambda: mmi.run(None, {"A": a8}),
        "QLinearMatMul": lambda: qmm.run(None, {"A": a8}),
        "MatMul": lambda: mm.run(None, {"A": af}),
        "numpy": lambda: np.matmul(af, wf, out=out_np),
        "numpy widen": lambda: np.matmul(af, wh.astype(np.float32), out=out_np),
    }
    for lv in levels:
        fns[f"int8 -> f32 [{lv}]"] = bind_gemm_u8s8(a8, za, packed8, ep_f, out_f, isa=lv)
        fns[f"int8 -> u8 [{lv}]"] = bind_gemm_u8s8(a8, za, packed8, ep_u8, out_u8, isa=lv)
        fns[f"int16 -> f32 [{lv}]"] = bind_gemm_s16(a16, -7, packed16, ep_f, out_f, isa=lv)
        fns[f"fp32 [{lv}]"] = bind_gemm_f32(af, packed_f, ep, out_f, isa=lv)
        fns[f"fp16 weights [{lv}]"] = bind_gemm_f32(af, packed_h, ep, out_f, isa=lv)
    t = best_medians(fns)

    def vs(name: str, *baselines: str) -> str:
        return "  ".join(f"{b} {t[b] / t[name]:.2f}" for b in baselines)

    for lv in levels:
        rows = {
            f"int8 -> f32 [{lv}]": ("MatMulInteger", "MatMul"),
            f"int8 -> u8 [{lv}]": ("QLinearMatMul",),
            f"int16 -> f32 [{lv}]": ("MatMul", "numpy"),
            f"fp32 [{lv}]": ("MatMul", "numpy"),
            f"fp16 weights [{lv}]": ("MatMul", "numpy widen"),
        }
        for name, baselines in rows.items():
            _row(shape, name, t[name], ops, vs(name, *baselines))
    for name, label in (("MatMulInteger", "(ORT int8 MatMulInteger)"),
                        ("QLinearMatMul", "(ORT QLinearMatMul)"), ("MatMul", "(ORT fp32 MatMul)"),
                        ("numpy", "(numpy fp32 matmul)")):  # fmt: skip
        _row(shape, label, t[name], ops)


def throughput(threads: int | None, levels: list[str] | None) -> None:
    import numba
    from threadpoolctl import threadpool_limits

    from mmbuild.kernels.cpu import features

    if threads:
        numba.set_num_threads(threads)
    nt = numba.get_num_threads()
    chosen = levels or list(features.runnable_levels())
    for lv in chosen:
        features.check_runnable(lv)
    print(f"# {features.describe()}; numba threads {nt}; levels measured: {', '.join(chosen)}")
    print(f"{'M x K x N':>16} {'kernel [level]':<38} {'ms':>8} {'GOPS':>7}  "
          "ratios (baseline time / mmbuild time)")  # fmt: skip
    rng = np.random.default_rng(0)
    with threadpool_limits(nt):
        for m, k, n in SHAPES:
            bench_shape(m, k, n, nt, chosen, rng)


# ---------------------------------------------------------------------------------------------
# Cold compile and warm start
# ---------------------------------------------------------------------------------------------
_CHILD = """
import json, time
t0 = time.perf_counter()
import numpy as np
from mmbuild.kernels.cpu import gemm as G
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
a = rng.integers(0, 256, (64, 64), dtype=np.uint8)
w = G.pack_int8_weights(rng.integers(-127, 128, (64, 64), dtype=np.int8))
af = rng.standard_normal((64, 64)).astype(np.float32)
wf = rng.standard_normal((64, 64)).astype(np.float32)
a16 = rng.integers(-999, 999, (64, 64), dtype=np.int16)
w16 = G.pack_int16_weights(rng.integers(-999, 999, (64, 64), dtype=np.int16))
times = {"import": t_import}
def first(name, fn):
    t = time.perf_counter(); fn(); times[name] = time.perf_counter() - t
for kind in G.OutKind:
    ep = G.Epilogue.create(64, out_kind=kind)
    out = np.empty((64, 64), kind.dtype)
    first(f"int8 -> {kind.name}", lambda: G.gemm_u8s8(a, 128, w, ep, out))
ep = G.Epilogue.create(64)
out = np.empty((64, 64), np.float32)
first("fp32", lambda: G.gemm_f32(af, G.pack_float_weights(wf), ep, out))
first("fp16 weights", lambda: G.gemm_f32(af, G.pack_float_weights(wf, half=True), ep, out))
first("int16", lambda: G.gemm_s16(a16, 3, w16, ep, out))
times["total"] = time.perf_counter() - t0
print(json.dumps(times))
"""


def startup() -> None:
    """Run the same first calls twice in fresh processes sharing fresh, empty caches."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MMBUILD_CACHE_DIR=os.path.join(tmp, "mmbuild"),
                   NUMBA_CACHE_DIR=os.path.join(tmp, "numba"))  # fmt: skip
        runs = []
        for _ in range(2):
            done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                                  text=True, check=True)  # fmt: skip
            runs.append(json.loads(done.stdout))
    print(f"{'first call':<22} {'cold (s)':>9} {'warm (s)':>9}")
    for name in runs[0]:
        print(f"{name:<22} {runs[0][name]:9.2f} {runs[1][name]:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    parser.add_argument("--startup", action="store_true", help="measure cold and warm start")
    parser.add_argument("--isa", default=None,
                        help="comma-separated levels to measure (default: every level the CPU "
                             "runs, e.g. avx2,portable)")  # fmt: skip
    args = parser.parse_args()
    if args.startup:
        startup()
    else:
        throughput(args.threads, args.isa.split(",") if args.isa else None)


if __name__ == "__main__":
    main()
