"""Whole-model latency of the samples in every precision mode, against the numpy reference.

    python benchmarks/bench_models.py [--batch 16] [--runs 200]

For each mode: build time (with engine creation), time per inference (median of ``--runs``
enqueues after warm-up), speed-up over the float32 numpy reference evaluator, and the cosine of
the output against it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_cnn import ImageBatches, build_cnn, sample_images
from sample_transformer import build_transformer_block

import mmbuild as mm
from mmbuild.config.schema import PRECISION_MODES

MODES = PRECISION_MODES


def median_time(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, make: Callable[[], mm.Network], x: np.ndarray, runs: int) -> None:
    print(f"\n{name}: input {list(x.shape)}")
    print(f"{'mode':<22}{'build ms':>9}{'ms/inference':>14}{'x numpy':>9}{'cosine':>10}")
    reference_net = make()
    out_name = reference_net.get_output(0).get_tensor_name()
    numpy_s = median_time(lambda: mm.run_reference(reference_net, [x]), max(5, runs // 10))
    expected = mm.run_reference(reference_net, [x])[out_name].astype(np.float64).ravel()
    for mode in MODES:
        net = make()
        config = mm.BuilderConfig()
        config.parse_from_string(
            f'{{"precision_config": {{"precision_mode": "{mode}", '
            '"weight_quant_granularity": "per_axis"}}'
        )
        batches = [x[i : i + 4] for i in range(0, len(x), 4)]
        calib = mm.Calibrator([ImageBatches(batches)])
        calib.set_progress(False)
        calib.calibrate(net, config)
        start = time.perf_counter()
        model = mm.Builder().build_model(name, net, config)
        context = model.create_i_engine().create_i_context()
        build_s = time.perf_counter() - start
        inputs = context.create_inputs()
        inputs[0].from_numpy(x)
        outputs: list[mm.IRTTensor] = []
        seconds = median_time(lambda: context.enqueue(inputs, outputs), runs)  # noqa: B023
        y = outputs[0].asnumpy().astype(np.float64).ravel()
        cosine = float(y @ expected / np.linalg.norm(y) / np.linalg.norm(expected))
        print(
            f"{mode:<22}{build_s * 1e3:>9.1f}{seconds * 1e3:>14.3f}{numpy_s / seconds:>9.1f}"
            f"{cosine:>10.5f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    bench("sample_cnn", build_cnn, sample_images(args.batch, seed=3), args.runs)
    net = build_transformer_block()
    shape = [d if d > 0 else args.batch for d in net.get_input(0).get_dimension()]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    bench("sample_transformer", build_transformer_block, x, args.runs)


if __name__ == "__main__":
    main()
