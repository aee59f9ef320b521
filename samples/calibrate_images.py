"""Calibrate a small conv network over a folder of real images, then reuse the calibration cache.

The images are the 8x8 handwritten digits that ship inside scikit-learn, an optional dependency
of this sample only (``pip install scikit-learn``); without it the sample says so and exits.
The sample saves the first 200 digits into a temporary folder, one ``.npy`` file per image, and a
``CalibDataInterface`` reads that folder back in batches, as it would a folder of your own images.

    python samples/calibrate_images.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import mmbuild as mm
from mmbuild.precision import plan_precision

IMAGES = 200
BATCH = 32  # the last batch holds the 8 images left over: batches may differ in shape


class FolderData(mm.CalibDataInterface):
    """Batches of the ``.npy`` images of a folder, in file-name order, as NHWC float32 in [0, 1]."""

    def __init__(self, folder: Path, batch_size: int) -> None:
        super().__init__()
        self.files = sorted(folder.glob("*.npy"))
        self.batch_size = batch_size
        self.start = -batch_size
        self.batch = np.zeros((0, 8, 8, 1), np.float32)

    def reset(self) -> mm.Status:
        self.start = -self.batch_size
        return mm.Status.OK()

    def next(self) -> mm.Status:
        self.start += self.batch_size
        if self.start >= len(self.files):
            return mm.Status(mm.Code.OUT_OF_RANGE, "no more images")
        images = [np.load(f) for f in self.files[self.start : self.start + self.batch_size]]
        self.batch = (np.stack(images)[..., None] / 16.0).astype(np.float32)  # pixels are 0..16
        return mm.Status.OK()

    def get_shape(self) -> mm.Dims:
        return mm.Dims(self.batch.shape)

    def get_data_type(self) -> mm.DataType:
        return mm.DataType.FLOAT32

    def get_sample(self) -> np.ndarray:
        return self.batch


def build_network() -> mm.Network:
    """[-1, 8, 8, 1] -> conv 3x3 (8) -> relu -> max pool 2x2 -> conv 3x3 (4) -> relu.

    The weights come from a fixed seed, so every call builds the same network with the same
    (deterministic) tensor names, which is what lets a calibration cache be reused.
    """
    rng = np.random.default_rng(2024)
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 8, 8, 1]))
    y = x
    for cout, cin in ((8, 1), (4, 8)):
        w = rng.standard_normal((cout, 3, 3, cin)).astype(np.float32) / np.sqrt(9 * cin)
        b = np.full(cout, 0.05, np.float32)
        w_t = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(list(w.shape)), w).get_output(0)
        b_t = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims([cout]), b).get_output(0)
        conv = net.add_i_conv_node(y, w_t, b_t)
        conv.set_pad(1, 1, 1, 1)
        y = net.add_i_activation_node(conv.get_output(0), mm.IActivation.RELU).get_output(0)
        if cin == 1 and hasattr(net, "add_i_maxpool2d_node"):
            pool = net.add_i_maxpool2d_node(y)
            pool.set_kernel(2, 2)
            y = pool.get_output(0)
    assert net.mark_output(y).ok()
    return net


def save_digits(folder: Path) -> None:
    from sklearn.datasets import load_digits

    for i, image in enumerate(load_digits().images[:IMAGES]):
        np.save(folder / f"digit_{i:04d}.npy", image)


def main() -> int:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("This sample reads the digit images that ship with scikit-learn, which is not")
        print("installed. Install it with `pip install scikit-learn` and run the sample again.")
        return 0

    config = mm.BuilderConfig()
    config.parse_from_string('{"precision_config": {"precision_mode": "qint8_mixed_float32"}}')
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "digits"
        folder.mkdir()
        save_digits(folder)
        print(f"saved {IMAGES} digit images to {folder}")

        # 1. calibrate from the folder, with two algorithms, and compare their ranges
        chosen = {}
        for algorithm in (
            mm.QuantizationAlgorithm.LINEAR_ALGORITHM,
            mm.QuantizationAlgorithm.PERCENTILE_ALGORITHM,
        ):
            calib = mm.Calibrator([FolderData(folder, BATCH)])
            calib.set_quantization_algorithm(algorithm)
            calib.set_percentile(99.9)
            assert calib.calibrate(build_network(), config).ok()
            chosen[algorithm.name] = calib.get_ranges()
        print(f"\n{'tensor':<16} {'LINEAR':>22} {'PERCENTILE 99.9':>22}")
        for name, linear in chosen["LINEAR_ALGORITHM"].items():
            pct = chosen["PERCENTILE_ALGORITHM"][name]
            print(f"{name:<16} {_show(linear):>22} {_show(pct):>22}")

        # 2. the last calibrator (percentile) writes its cache; a new one applies it to a freshly
        #    built network without reading any image
        cache = Path(tmp) / "digits.calib.json"
        assert calib.write_cache(cache).ok()
        net = build_network()
        reader = mm.Calibrator([FolderData(folder, BATCH)])
        assert reader.read_cache(cache).ok()
        assert reader.calibrate(net, config).ok()
        assert reader.get_ranges() == chosen["PERCENTILE_ALGORITHM"]
        print(f"\nthe cache {cache.name} gave the same ranges to a freshly built network")

    # 3. the ranges the builder will quantize the conv inputs with
    plan = plan_precision(net, config)
    print("\nQINT8 inputs of the precision plan and their ranges:")
    for name, rng in plan.ranges.items():
        print(f"  {name:<16} {_show(rng)}")
    return 0


def _show(rng: mm.Range) -> str:
    return f"[{rng.min:.4f}, {rng.max:.4f}]"


if __name__ == "__main__":
    sys.exit(main())
