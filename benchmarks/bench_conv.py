"""Convolution latency of mmbuild against onnxruntime Conv / QLinearConv and numpy, at ResNet and
MobileNet shapes, per instruction-set level.

    python benchmarks/bench_conv.py                        # every shape, batch 1 and 8, every level
    python benchmarks/bench_conv.py --batches 1 --isa avx2 --shapes resnet-3x3,mobilenet-dw3x3
    python benchmarks/bench_conv.py --modes force_float32,force_float16,qint8_mixed_float32

Each shape is a network of one conv node with bias and no activation (NHWC, as mmbuild takes it),
built in every ``--modes`` precision mode (the qint modes calibrated on the input they are timed
on, per-axis weights) and bound once per level the CPU runs (``features.using_level``), then
timed, interleaved with:

- onnxruntime ``Conv`` (fp32, NCHW, all graph optimisations: its NCHWc kernels);
- onnxruntime ``QLinearConv`` (uint8 input, per-channel int8 weights, int32 bias, uint8
  output);
- numpy: im2col by ``sliding_window_view`` and one ``matmul`` (OpenBLAS), or for a depthwise
  conv the sum of its taps, each one multiply-add over the whole map.

mmbuild is timed through ``Context.run`` as a user runs it (float32 in, float32 out, a few
microseconds of run loop included). A qint run quantizes its float input and dequantizes in its
epilogue, work that ``QLinearConv`` (uint8 in, uint8 out) does not do. Times are the best of 5
interleaved rounds of the median of many calls (``bench_gemm.best_medians``); ``x`` is the
baseline's time over mmbuild's, above 1 is faster than the baseline; ``err`` the largest
difference to onnxruntime fp32 over the largest magnitude of its output. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# numpy's OpenBLAS threads spin for about 0.1 s after each call, and a contender timed next shares
# the cores with them (it doubled an mmbuild conv timed after numpy on a 2-core machine); 2**4
# cycles makes them sleep at once, as onnxruntime's spinning is switched off (set before numpy
# loads OpenBLAS)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from bench_gemm import _ort_session, best_medians
from bench_overhead import cpu_name
from sample_cnn import ImageBatches

import mmbuild as mm
from mmbuild.kernels.cpu import features


@dataclass(frozen=True)
class Shape:
    """A convolution: ``h x w x cin`` input, ``cout`` filters of ``k x k``, stride, groups."""

    h: int
    w: int
    cin: int
    cout: int
    k: int
    stride: int = 1
    group: int = 1

    @property
    def pad(self) -> int:
        return self.k // 2

    @property
    def out_hw(self) -> tuple[int, int]:
        def side(n: int) -> int:
            return (n + 2 * self.pad - self.k) // self.stride + 1

        return side(self.h), side(self.w)

    def macs(self, batch: int) -> int:
        oh, ow = self.out_hw
        return batch * oh * ow * self.cout * self.k * self.k * (self.cin // self.group)


SHAPES = {
    "resnet-3x3": Shape(56, 56, 64, 64, 3),
    "resnet-3x3-s2": Shape(56, 56, 128, 128, 3, stride=2),
    "resnet-1x1": Shape(56, 56, 64, 256, 1),
    "resnet-1x1-14": Shape(14, 14, 1024, 256, 1),
    "mobilenet-1x1-expand": Shape(56, 56, 24, 144, 1),
    "mobilenet-1x1-project": Shape(14, 14, 384, 64, 1),
    "mobilenet-dw3x3": Shape(56, 56, 144, 144, 3, group=144),
    "mobilenet-dw3x3-s2": Shape(56, 56, 144, 144, 3, stride=2, group=144),
    "mobilenet-dw3x3-14": Shape(14, 14, 576, 576, 3, group=576),
}


# ---------------------------------------------------------------------------------------------
# The contenders
# ---------------------------------------------------------------------------------------------
def mmbuild_contexts(
    s: Shape, x: np.ndarray, w: np.ndarray, bias: np.ndarray, mode: str, levels: list[str]
) -> dict[str, Any]:
    """One context per level of the one-conv network in ``mode``, bound at ``x``'s shape."""
    f32 = mm.DataType.FLOAT32
    net = mm.Network()
    inp = net.add_input(f32, mm.Dims(list(x.shape)))
    wt = net.add_i_const_node(f32, mm.Dims(list(w.shape)), w).get_output(0)
    bt = net.add_i_const_node(f32, mm.Dims([s.cout]), bias).get_output(0)
    conv = net.add_i_conv_node(inp, wt, bt)
    conv.set_pad(s.pad, s.pad, s.pad, s.pad)
    conv.set_stride(s.stride, s.stride)
    conv.set_group(s.group)
    assert net.mark_output(conv.get_output(0)).ok()
    config = mm.BuilderConfig()
    precision = {"precision_mode": mode, "weight_quant_granularity": "per_axis"}
    config.parse_from_string(json.dumps({"precision_config": precision}))
    if mode.startswith("qint"):
        assert mm.Calibrator([ImageBatches([x])]).calibrate(net, config).ok()
    model = mm.Builder().build_model(f"conv_{mode}", net, config)
    contexts = {}
    for lv in levels:
        with features.using_level(lv):
            ctx = model.create_i_engine().create_i_context()
            ctx.run([x])  # binds the plan's kernels at this level
        contexts[lv] = ctx
    return contexts


def ort_conv(s: Shape, w: np.ndarray, bias: np.ndarray, threads: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[s.k, s.k],
                            pads=[s.pad] * 4, strides=[s.stride] * 2, group=s.group)  # fmt: skip
    return _ort_session(
        [node],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", s.cin, s.h, s.w])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", s.cout, "OH", "OW"])],
        [
            numpy_helper.from_array(w.transpose(0, 3, 1, 2).copy(), "W"),
            numpy_helper.from_array(bias, "B"),
        ],
        threads,
    )


def ort_qlinear_conv(
    s: Shape, x: np.ndarray, w: np.ndarray, bias: np.ndarray, y_ref: np.ndarray, threads: int
) -> tuple[Any, np.ndarray]:
    """QLinearConv quantized like mmbuild's per-axis int8 (asymmetric uint8 activations from the
    min/max of ``x`` and of the fp32 output ``y_ref``), and ``x`` as its uint8 input."""
    from onnx import TensorProto, helper, numpy_helper

    def asym(t: np.ndarray) -> tuple[np.float32, np.uint8]:
        lo, hi = min(float(t.min()), 0.0), max(float(t.max()), 0.0)
        scale = np.float32((hi - lo) / 255 or 1.0)
        return scale, np.uint8(round(-lo / scale))

    xs, xz = asym(x)
    ys, yz = asym(y_ref)
    ws = (np.abs(w).reshape(s.cout, -1).max(axis=1) / 127).astype(np.float32)
    wq = np.round(w / ws[:, None, None, None]).astype(np.int8).transpose(0, 3, 1, 2).copy()
    bq = np.round(bias / (xs * ws)).astype(np.int32)
    consts = {"xs": xs, "xz": xz, "W": wq, "ws": ws, "wz": np.zeros(s.cout, np.int8),
              "ys": ys, "yz": yz, "B": bq}  # fmt: skip
    node = helper.make_node("QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz", "B"],
                            ["Y"], kernel_shape=[s.k, s.k], pads=[s.pad] * 4,
                            strides=[s.stride] * 2, group=s.group)  # fmt: skip
    session = _ort_session(
        [node],
        [helper.make_tensor_value_info("X", TensorProto.UINT8, ["N", s.cin, s.h, s.w])],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, ["N", s.cout, "OH", "OW"])],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in consts.items()],
        threads,
    )
    xq = np.clip(np.round(x / xs) + xz, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).copy()
    return session, xq


def numpy_conv(s: Shape, x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The conv in numpy, NHWC: im2col and one matmul, or a depthwise conv tap by tap."""
    p, st, (oh, ow) = s.pad, s.stride, s.out_hw
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))

    def tap(i: int, j: int) -> np.ndarray:
        return xp[:, i : i + st * oh : st, j : j + st * ow : st, :]

    if s.group == s.cin == s.cout:  # depthwise: w is [C, k, k, 1]
        y = np.broadcast_to(bias, (x.shape[0], oh, ow, s.cout)).copy()
        for i in range(s.k):
            for j in range(s.k):
                y += tap(i, j) * w[:, i, j, 0]
        return y
    cols = np.concatenate([tap(i, j) for i in range(s.k) for j in range(s.k)], axis=3)
    return cols @ w.transpose(1, 2, 3, 0).reshape(-1, s.cout) + bias


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def bench(name: str, s: Shape, batch: int, modes: list[str], levels: list[str],
          rng: np.random.Generator) -> list[str]:  # fmt: skip
    """The rows of one shape at one batch size: one per level."""
    threads = numba.get_num_threads()
    x = rng.standard_normal((batch, s.h, s.w, s.cin)).astype(np.float32)
    w = (rng.standard_normal((s.cout, s.k, s.k, s.cin // s.group)) * 0.1).astype(np.float32)
    bias = rng.standard_normal(s.cout).astype(np.float32)
    conv = ort_conv(s, w, bias, threads)
    x_nchw = x.transpose(0, 3, 1, 2).copy()
    want = conv.run(None, {"X": x_nchw})[0].transpose(0, 2, 3, 1)
    qconv, xq = ort_qlinear_conv(s, x, w, bias, want, threads)
    fns: dict[str, Any] = {
        "Conv": lambda: conv.run(None, {"X": x_nchw}),
        "QLinearConv": lambda: qconv.run(None, {"X": xq}),
        "numpy": lambda: numpy_conv(s, x, w, bias),
    }
    err: dict[str, float] = {}
    scale = float(np.abs(want).max())
    for mode in modes:
        for lv, ctx in mmbuild_contexts(s, x, w, bias, mode, levels).items():
            got = next(iter(ctx.run([x]).values()))
            got = got.view(np.float16) if got.dtype == np.uint16 else got
            err[f"{mode} [{lv}]"] = float(np.abs(got.astype(np.float32) - want).max()) / scale
            fns[f"{mode} [{lv}]"] = lambda ctx=ctx: ctx.run([x])
    t = best_medians(fns)
    gops = 2 * s.macs(batch) / 1e9
    rows = []
    for lv in levels:
        cells = []
        for mode in modes:
            key = f"{mode} [{lv}]"
            vs = f"x{t['Conv'] / t[key]:.2f}"
            if mode.startswith("qint8"):
                vs += f", x{t['QLinearConv'] / t[key]:.2f} QLinearConv"
            cells.append(f"{t[key] * 1e3:.3f} ms ({vs}, {gops / t[key]:.0f} GOPS, "
                         f"err {err[key]:.0e})")  # fmt: skip
        rows.append(f"| {name} | {batch} | {lv} | {t['Conv'] * 1e3:.3f} ms "
                    f"({gops / t['Conv']:.0f} GOPS) | {t['QLinearConv'] * 1e3:.3f} ms | "
                    f"{t['numpy'] * 1e3:.3f} ms | {' | '.join(cells)} |")  # fmt: skip
    return rows


def main() -> int:
    from threadpoolctl import threadpool_limits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shape names")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--modes", default="force_float32,qint8_mixed_float32")
    parser.add_argument("--isa", default=None, help="comma-separated levels (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    levels = args.isa.split(",") if args.isa else list(features.runnable_levels())
    for lv in levels:
        features.check_runnable(lv)
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        raise SystemExit(f"unknown shapes {sorted(unknown)}; known: {', '.join(SHAPES)}")
    modes = args.modes.split(",")
    print(f"CPU: {cpu_name()}; {features.describe()}; {numba.get_num_threads()} threads "
          f"(mmbuild, onnxruntime, numpy); levels measured: {', '.join(levels)}\n")  # fmt: skip
    print(f"| shape | batch | level | ORT Conv fp32 | ORT QLinearConv | numpy | "
          f"{' | '.join(f'mmbuild {m}' for m in modes)} |")  # fmt: skip
    print("|---|---|---|---|---|---|" + "---|" * len(modes))
    rng = np.random.default_rng(0)
    with threadpool_limits(numba.get_num_threads()):
        for name in args.shapes.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                for row in bench(name, SHAPES[name], batch, modes, levels, rng):
                    print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
