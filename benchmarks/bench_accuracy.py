"""Accuracy of the three real ONNX models in fp16 and int8 against onnxruntime fp32, side by
side with onnxruntime's own ``quantize_static``.

    python benchmarks/bench_accuracy.py [--models ocr_cls,ocr_det,wakeword_embedding]
        [--granularity per_axis,per_tensor] [--algorithms linear,entropy,percentile]
        [--cle off,on] [--bias-correction off,on] [--weight-range full,reduced]
        [--activations static,dynamic] [--no-ort] [--tuner 0.999]

Calibration and evaluation batches are scikit-image sample images (``tests/onnx_models.py``),
disjoint crops. For each model and method: the cosine of the output against onnxruntime fp32 over
the evaluation batch, and an agreement figure: top-1 for the classifier, the share of pixels on
the same side of 0.3 for the detector's map, the cosine of each embedding vector (the worst one)
for the wake-word model. mmbuild runs ``force_float16`` and ``qint8_mixed_float16`` with
per-axis (``--granularity``) weights and the LINEAR, ENTROPY and PERCENTILE (99.99) range
algorithms (``--algorithms``), without and with ``cross_layer_equalization`` (``--cle``; the
number of equalised pairs is printed per model) and ``bias_correction``
(``--bias-correction``), with full or reduced (-64..64, ``--weight-range``) int8 weight codes,
and with dynamic activations (``--activations dynamic``: ``activation_quant_mode`` "dynamic",
no calibration, one run per granularity and weight range); onnxruntime runs the QDQ model of
``quantize_static`` (per-channel int8 weights, int8 activations) with MinMax,
Entropy and Percentile calibration. ``--tuner C`` adds ``mm.AccuracyTuner`` (per-axis weights,
AUTO ranges, target output cosine >= C against onnxruntime fp32 on the evaluation batch, at most
16 trial builds) and prints its report: what it moved to float and the MACs it kept in int8.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from onnx_models import model_input, model_path
from sample_cnn import ImageBatches

import mmbuild as mm

CALIBRATION = [(2, k) for k in (1, 2, 4)]  # (batch, image offset)
EVALUATION = (4, 0)


def agreement(key: str, got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    got, want = got.astype(np.float64), want.astype(np.float64)
    cos = float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want)))
    if key == "ocr_cls":
        return cos, float(np.mean(got.argmax(1) == want.argmax(1)))
    if key == "ocr_det":
        return cos, float(np.mean((got > 0.3) == (want > 0.3)))
    g, w = got.reshape(len(got), -1), want.reshape(len(want), -1)
    per = (g * w).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1))
    return cos, float(per.min())


def ort_run(path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def mmbuild_run(
    key: str,
    mode: str,
    algo: mm.QuantizationAlgorithm | None,
    x: np.ndarray,
    granularity: str = "per_axis",
    cle: bool = False,
    bias_correction: bool = False,
    weight_range: str = "full",
    activations: str = "static",
) -> Any:
    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, str(model_path(key))).ok()
    config = mm.BuilderConfig()
    precision = {
        "precision_mode": mode,
        "weight_quant_granularity": granularity,
        "cross_layer_equalization": cle,
        "bias_correction": bias_correction,
        "weight_quant_range": weight_range,
        "activation_quant_mode": activations,
    }
    config.parse_from_string(json.dumps({"precision_config": precision}))
    if algo is not None:
        calib = mm.Calibrator([ImageBatches([model_input(key, b, k) for b, k in CALIBRATION])])
        calib.set_quantization_algorithm(algo)
        if algo is mm.QuantizationAlgorithm.PERCENTILE_ALGORITHM:
            calib.set_percentile(99.99)
        assert calib.calibrate(net, config).ok()
    return run_model(mm.Builder().build_model(key, net, config), x)


def run_model(model: mm.Model, x: np.ndarray) -> Any:
    """The first output of ``model`` on ``x``, as the numpy array of its type."""
    ctx = model.create_i_engine().create_i_context()
    inputs = ctx.create_inputs()
    inputs[0].from_numpy(x)
    outs: list[Any] = []
    assert ctx.enqueue(inputs, outs).ok()
    return outs[0].asnumpy()


def tuned_run(key: str, min_cosine: float, x: np.ndarray, want: np.ndarray) -> Any:
    """The output of ``mm.AccuracyTuner``'s model on ``x``; prints the tuner's report."""
    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, str(model_path(key))).ok()
    config = mm.BuilderConfig()
    precision = {"precision_mode": "qint8_mixed_float16", "weight_quant_granularity": "per_axis"}
    config.parse_from_string(json.dumps({"precision_config": precision}))
    calib = [ImageBatches([model_input(key, b, k) for b, k in CALIBRATION])]
    tuner = mm.AccuracyTuner(net, config, calib, [x], min_cosine=min_cosine,
                             reference=[[want]], progress=False)  # fmt: skip
    model, report = tuner.tune()
    print(f"{key}: AccuracyTuner\n{report}", flush=True)
    return run_model(model, x)


def equalized_pairs(key: str) -> int:
    """How many conv pairs ``cross_layer_equalization`` finds in model ``key``."""
    from mmbuild.quant.equalize import equalize_network

    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, str(model_path(key))).ok()
    return len(equalize_network(net).pairs)


def ort_quantized(key: str, method: str, x: np.ndarray, tmp: Path) -> np.ndarray:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = str(model_path(key))
    name = __import__("onnx").load(src).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: model_input(key, b, k)} for b, k in CALIBRATION])

        def get_next(self) -> Any:
            return next(self.it, None)

    out = str(tmp / f"{key}_{method}.onnx")
    quantize_static(
        src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options={"CalibPercentile": 99.99},
    )  # fmt: skip
    return ort_run(out, x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ocr_cls,ocr_det,wakeword_embedding")
    parser.add_argument("--granularity", default="per_axis", help="per_axis and/or per_tensor")
    parser.add_argument("--algorithms", default="linear,entropy,percentile")
    parser.add_argument("--cle", default="off", help="cross_layer_equalization: off and/or on")
    parser.add_argument("--bias-correction", default="off", help="off and/or on")
    parser.add_argument("--weight-range", default="full", help="full and/or reduced")
    parser.add_argument("--activations", default="static", help="static and/or dynamic")
    parser.add_argument("--no-ort", action="store_true", help="skip onnxruntime quantize_static")
    parser.add_argument("--tuner", type=float, default=None, help="AccuracyTuner's min cosine")
    args = parser.parse_args()
    q = mm.QuantizationAlgorithm
    algorithms = [q[f"{a.upper()}_ALGORITHM"] for a in args.algorithms.split(",")]
    cles = [{"off": False, "on": True}[c] for c in args.cle.split(",")]
    bcs = [{"off": False, "on": True}[c] for c in args.bias_correction.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            x = model_input(key, *EVALUATION)
            want = ort_run(str(model_path(key)), x)
            runs: list[tuple[str, Any, tuple[Any, ...]]] = [
                ("mmbuild force_float16", mmbuild_run, (key, "force_float16", None, x))
            ]
            print(f"{key}: {equalized_pairs(key)} pair(s) for cross_layer_equalization")
            for g in args.granularity.split(","):
                for a in algorithms if "static" in args.activations.split(",") else ():
                    for cle, bc, wr in ((c, b, w) for c in cles for b in bcs
                                        for w in args.weight_range.split(",")):  # fmt: skip
                        label = f"mmbuild qint8_mixed_float16 {g} {a.name.split('_')[0]}"
                        label += (" CLE" if cle else "") + (" BC" if bc else "")
                        label += " reduced" if wr == "reduced" else ""
                        fn_args = (key, "qint8_mixed_float16", a, x, g, cle, bc, wr)
                        runs.append((label, mmbuild_run, fn_args))
                if "dynamic" in args.activations.split(","):
                    for wr in args.weight_range.split(","):
                        label = f"mmbuild qint8_mixed_float16 {g} dynamic"
                        label += " reduced" if wr == "reduced" else ""
                        fn_args = (key, "qint8_mixed_float16", None, x, g, False, False, wr,
                                   "dynamic")  # fmt: skip
                        runs.append((label, mmbuild_run, fn_args))
            if args.tuner is not None:
                label = f"mmbuild AccuracyTuner, cosine >= {args.tuner}"
                runs.append((label, tuned_run, (key, args.tuner, x, want)))
            for m in () if args.no_ort else ("MinMax", "Entropy", "Percentile"):
                label = f"onnxruntime quantize_static QDQ per-channel {m}"
                runs.append((label, ort_quantized, (key, m, x, Path(tmp))))
            for method, fn, fn_args in runs:
                cos, agree = agreement(key, fn(*fn_args), want)
                rows.append((key, method, cos, agree))
                print(f"{key:20} {method:56} cosine {cos:.5f}  agreement {agree:.4f}", flush=True)
    print("\n| model | method | cosine vs ORT fp32 | agreement |\n| --- | --- | --- | --- |")
    for key, method, cos, agree in rows:
        print(f"| {key} | {method} | {cos:.5f} | {agree:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
