"""The real ONNX models the parser is tested on, fetched from the wheels that ship them.

``model_path("ocr_cls")`` downloads the wheel once with ``pip download --no-deps`` into the cache
directory (``MMBUILD_MODEL_CACHE``, default ``~/.cache/mmbuild/models``; the fetching is
``samples/onnx_classifier.py``'s), unzips the model and returns its path; when the wheel cannot be
fetched the calling test is skipped with the reason.
``model_input(key, batch)`` gives an input made from scikit-image's sample images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# key -> (requirement, member inside the wheel)
MODELS = {
    "ocr_cls": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    ),
    "ocr_det": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    ),
    "wakeword_embedding": (
        "openwakeword==0.4.0",
        "openwakeword/resources/models/embedding_model.onnx",
    ),
}


def model_path(key: str) -> Path:
    """The .onnx file of model ``key``, fetched and unpacked into the cache on first use (by the
    sample's ``fetch_wheel_member``); the test is skipped when the wheel cannot be fetched."""
    from onnx_classifier import fetch_wheel_member

    requirement, member = MODELS[key]
    try:
        return fetch_wheel_member(requirement, member)
    except RuntimeError as exc:
        pytest.skip(f"model {key!r}: {exc}")


def _image(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.float32) / 255.0


def _crop(img: np.ndarray, h: int, w: int, k: int) -> np.ndarray:
    """A deterministic h x w crop of ``img`` (the k-th along its diagonal) as CHW."""
    ys = max(img.shape[0] - h, 0)
    xs = max(img.shape[1] - w, 0)
    y, x = (ys * k) // 4, (xs * k) // 4
    return img[y : y + h, x : x + w].transpose(2, 0, 1)


IMAGES = ("text", "page", "astronaut", "coffee", "chelsea", "rocket")


def model_input(key: str, batch: int = 1, offset: int = 0) -> np.ndarray:
    """A batch of inputs for model ``key`` from scikit-image's sample images."""
    items = []
    for b in range(batch):
        img = _image(IMAGES[(b + offset) % len(IMAGES)])
        if key == "ocr_cls":  # text line crops, normalized to [-1, 1]
            items.append((_crop(img, 48, 192, b % 4) - 0.5) / 0.5)
        elif key == "ocr_det":  # ImageNet normalization
            mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
            std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
            items.append((_crop(img, 160, 224, b % 4) - mean) / std)
        else:  # mel-spectrogram-like features: image rows scaled to the model's range
            gray = img.mean(axis=-1)
            items.append(_crop(gray[..., None], 76, 32, b % 4).transpose(1, 2, 0) * 4.0 - 2.0)
    return np.ascontiguousarray(np.stack(items), dtype=np.float32)
