"""Import a real ONNX classifier, calibrate it on images, build it in int8 and compare it with
onnxruntime.

The model is the text-direction classifier of PP-OCR (a MobileNetV3, 0 or 180 degrees) that
ships inside the ``rapidocr-onnxruntime`` wheel; the sample fetches the wheel once with
``pip download --no-deps`` into ``~/.cache/mmbuild/models`` (``MMBUILD_MODEL_CACHE`` overrides
it) and takes the model out of it. The images are scikit-image's sample images (``pip install
scikit-image``), cut into 48 x 192 strips as the classifier reads text lines; each strip is also
turned upside down, so the model has both classes to tell apart. Without the wheel or
scikit-image the sample says so and stops.

    python samples/onnx_classifier.py [model.onnx]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import mmbuild as mm

REQUIREMENT = "rapidocr-onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
CALIBRATION_IMAGES = ("text", "page", "coins", "camera")
EVALUATION_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "moon")


def model_cache() -> Path:
    default = Path.home() / ".cache" / "mmbuild" / "models"
    return Path(os.environ.get("MMBUILD_MODEL_CACHE", default))


def fetch_wheel_member(requirement: str, member: str) -> Path:
    """``member`` of the wheel of ``requirement``, downloaded once (``pip download --no-deps``)
    and unpacked into the model cache. Raises RuntimeError when the wheel cannot be fetched."""
    cache = model_cache()
    target = cache / "extracted" / member
    if target.is_file():
        return target
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not list(cache.glob(pattern)):
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(cache)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"cannot fetch {requirement}: {exc}") from None
        if done.returncode != 0 or not list(cache.glob(pattern)):
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise RuntimeError(f"cannot fetch {requirement}: {last[0]}")
    with zipfile.ZipFile(sorted(cache.glob(pattern))[0]) as wheel:
        wheel.extract(member, cache / "extracted")
    return target


def text_strips(names: tuple[str, ...]) -> np.ndarray:
    """48 x 192 strips of the named scikit-image images, each also upside down, as the
    classifier's input: NCHW float32 in [-1, 1]."""
    from skimage import data, transform

    strips = []
    for name in names:
        img = getattr(data, name)()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        scale = 192 / img.shape[1]
        small = transform.resize(img, (max(48, int(img.shape[0] * scale)), 192), anti_aliasing=True)
        strip = small[:48].astype(np.float32).transpose(2, 0, 1)
        strips += [strip, strip[:, ::-1, ::-1]]
    return np.ascontiguousarray((np.stack(strips) - 0.5) / 0.5, dtype=np.float32)


class Strips(mm.CalibDataInterface):
    """The calibration strips, four per batch."""

    def __init__(self, strips: np.ndarray, batch: int = 4) -> None:
        super().__init__()
        self.strips, self.batch, self.i = strips, batch, -1

    def get_shape(self) -> mm.Dims:
        return mm.Dims(list(self.get_sample().shape))

    def get_data_type(self) -> mm.DataType:
        return mm.DataType.FLOAT32

    def get_sample(self) -> np.ndarray:
        return self.strips[self.i * self.batch : (self.i + 1) * self.batch]

    def next(self) -> mm.Status:
        self.i += 1
        if self.i * self.batch >= len(self.strips):
            return mm.Status(mm.Code.OUT_OF_RANGE, "end of data")
        return mm.Status.OK()

    def reset(self) -> mm.Status:
        self.i = -1
        return mm.Status.OK()


def compare(path: Path, mode: str = "qint8_mixed_float16") -> dict[str, Any]:
    """Parse, calibrate, build in ``mode`` and compare with onnxruntime fp32 on the
    evaluation strips: cosine, largest difference and top-1 agreement."""
    import onnxruntime as ort

    net = mm.Network()
    assert mm.Parser(mm.ModelKind.kOnnx).parse(net, str(path)).ok()
    assert net.get_input(0).set_dimension(mm.Dims([-1, 3, 48, 192])).ok()
    config = mm.BuilderConfig()
    precision = {"precision_mode": mode, "weight_quant_granularity": "per_axis"}
    config.parse_from_string(json.dumps({"precision_config": precision}))
    calib = mm.Calibrator([Strips(text_strips(CALIBRATION_IMAGES))])
    calib.set_quantization_algorithm(mm.QuantizationAlgorithm.LINEAR_ALGORITHM)
    assert calib.calibrate(net, config).ok()
    model = mm.Builder().build_model("onnx_classifier", net, config)
    x = text_strips(EVALUATION_IMAGES)
    ctx = model.create_i_engine().create_i_context()
    inputs = ctx.create_inputs()
    inputs[0].from_numpy(x)
    outputs: list[Any] = []
    assert ctx.enqueue(inputs, outputs).ok()
    got = outputs[0].asnumpy().astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    cos = float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want)))
    return {
        "mode": mode,
        "images": len(x),
        "cosine": cos,
        "max_abs": float(np.abs(got - want).max()),
        "top1_agreement": float(np.mean(got.argmax(1) == want.argmax(1))),
    }


def main(argv: list[str]) -> int:
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("This sample cuts its images from scikit-image's sample images; install it with")
        print("`pip install scikit-image` and run the sample again.")
        return 0
    if len(argv) > 1:
        path = Path(argv[1])
    else:
        try:
            path = fetch_wheel_member(REQUIREMENT, MEMBER)
        except RuntimeError as exc:
            print(f"The model comes from the {REQUIREMENT} wheel, which could not be fetched:")
            print(f"  {exc}")
            print("Pass the path of a model file instead: python samples/onnx_classifier.py m.onnx")
            return 0
    result = compare(path)
    print(f"{path.name} in {result['mode']} against onnxruntime fp32 on {result['images']} strips:")
    print(f"  cosine {result['cosine']:.6f}, largest difference {result['max_abs']:.4f}, "
          f"top-1 agreement {result['top1_agreement']:.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
