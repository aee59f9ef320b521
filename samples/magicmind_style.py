"""A build-and-run script written as MagicMind users write theirs, with only the import changed.

MagicMind's Python samples come as a ``gen_model`` step (network, BuilderConfig from a JSON file,
calibration over image files, build, serialize) and a ``run`` step (System, Device, queue,
deserialize, EngineConfig, enqueue, sync). This sample does both, on an NCHW network of the
kind an ONNX export gives, with the two config keys every such script passes: the model takes
NHWC uint8-range pixels (``convert_input_layout``) and normalises them itself
(``insert_bn_before_firstnode``). It then runs the same network through mmbuild's own API with
the preprocessing done by hand in numpy, and prints how far the two results are apart.

    python samples/magicmind_style.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

import mmbuild as mm  # MagicMind: import magicmind.python.runtime as mm

MEAN = [123.675, 116.28, 103.53]  # the ImageNet means and variances of MagicMind's samples
STD = [58.395, 57.12, 57.375]
IMAGES, BATCH, SIZE = 24, 8, 16

BUILD_CONFIG = {
    "archs": ["mtp_372"],  # ignored on the CPU (reported)
    "opt_config": {"type64to32_conversion": True, "conv_scale_fold": True},  # ignored
    "graph_shape_mutable": True,
    "dim_range": {"0": {"min": [1, SIZE, SIZE, 3], "max": [BATCH, SIZE, SIZE, 3]}},
    "precision_config": {"precision_mode": "qint8_mixed_float16"},
    "convert_input_layout": {"0": {"src": "NCHW", "dst": "NHWC"}},
    "insert_bn_before_firstnode": {"0": {"mean": MEAN, "var": [s * s for s in STD]}},
}


# -- gen_model --------------------------------------------------------------------------------
def build_network(seed: int = 0) -> mm.Network:
    """[-1, 3, 16, 16] NCHW -> conv 3x3 (8) -> relu -> max pool 2 -> conv 3x3 pad 1 (16) ->
    relu -> global average pool -> reshape -> inner product (10) -> softmax."""
    rng = np.random.default_rng(seed)

    def const(shape: tuple[int, ...], scale: float) -> mm.ITensor:
        value = (rng.standard_normal(shape) * scale).astype(np.float32)
        node = network.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(shape), value)
        return node.get_output(0)

    network = mm.Network()
    x = network.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 3, SIZE, SIZE]))
    conv1 = network.add_i_conv_node(x, const((8, 3, 3, 3), 0.3), const((8,), 0.1))
    conv1.set_layout(mm.Layout.NCHW, mm.Layout.NCHW, mm.Layout.NCHW)
    relu1 = network.add_i_activation_node(conv1.get_output(0), mm.IActivation.RELU)
    pool = network.add_i_maxpool2d_node(relu1.get_output(0))
    pool.set_kernel(2, 2)
    pool.set_stride(2, 2)
    pool.set_layout(mm.Layout.NCHW, mm.Layout.NCHW)
    conv2 = network.add_i_conv_node(pool.get_output(0), const((16, 8, 3, 3), 0.2), None)
    conv2.set_layout(mm.Layout.NCHW, mm.Layout.NCHW, mm.Layout.NCHW)
    conv2.set_pad(1, 1, 1, 1)
    relu2 = network.add_i_activation_node(conv2.get_output(0), mm.IActivation.RELU)
    mean = network.add_i_reduce_node(relu2.get_output(0), [2, 3], mm.IReduce.MEAN, False)
    fc = network.add_i_inner_product_node(mean.get_output(0), const((10, 16), 0.3), None)
    probs = network.add_i_softmax_node(fc.get_output(0), 1)
    assert network.mark_output(probs.get_output(0)).ok()
    return network


def write_images(folder: Path, count: int, seed: int = 1) -> list[Path]:
    """Smooth random pictures, HWC uint8, one ``.npy`` file each (stand-ins for JPEGs)."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        coarse = rng.uniform(0, 255, (4, 4, 3))
        image = np.kron(coarse, np.ones((SIZE // 4, SIZE // 4, 1)))
        image += rng.normal(0, 8, (SIZE, SIZE, 3))
        path = folder / f"image_{i:03d}.npy"
        np.save(path, np.clip(image, 0, 255).astype(np.uint8))
        files.append(path)
    return files


class ImageFileData(mm.CalibDataInterface):
    """Batches of image files, NHWC float32 pixels in 0..255: what the model takes."""

    def __init__(self, files: list[Path], batch_size: int) -> None:
        super().__init__()
        self.files, self.batch_size, self.cur = files, batch_size, -batch_size
        self.data = np.zeros((0, SIZE, SIZE, 3), np.float32)

    def get_shape(self) -> mm.Dims:
        return mm.Dims(self.data.shape)

    def get_data_type(self) -> mm.DataType:
        return mm.get_datatype_by_numpy(self.data.dtype)

    def get_sample(self) -> np.ndarray:
        return self.data

    def next(self) -> mm.Status:
        self.cur += self.batch_size
        if self.cur >= len(self.files):
            return mm.Status(mm.Code.OUT_OF_RANGE, "end of data")
        batch = self.files[self.cur : self.cur + self.batch_size]
        self.data = np.stack([np.load(f) for f in batch]).astype(np.float32)
        return mm.Status.OK()

    def reset(self) -> mm.Status:
        self.cur = -self.batch_size
        return mm.Status.OK()


def gen_model(workdir: Path, files: list[Path]) -> Path:
    config_path = workdir / "build_config.json"
    config_path.write_text(json.dumps(BUILD_CONFIG, indent=2))
    network = build_network()
    config = mm.BuilderConfig()
    assert config.parse_from_file(str(config_path)).ok()
    calibrator = mm.Calibrator([ImageFileData(files, BATCH)])
    assert calibrator.set_quantization_algorithm(mm.QuantizationAlgorithm.LINEAR_ALGORITHM).ok()
    calibrator.set_progress(False)
    assert calibrator.calibrate(network, config).ok()
    builder = mm.Builder()
    model = builder.build_model("magicmind_style", network, config)
    model_path = workdir / "magicmind_style.mm"
    assert model.serialize_to_file(str(model_path)).ok()
    return model_path


# -- run ----------------------------------------------------------------------------------------
def run(model_path: Path, images: np.ndarray) -> np.ndarray:
    system = mm.System()
    assert system.initialize().ok()
    dev = mm.Device()
    dev.id = 0
    assert dev.active().ok()
    model = mm.Model()
    assert model.deserialize_from_file(str(model_path)).ok()
    econfig = mm.Model.EngineConfig()
    econfig.device_type = "MLU"
    engine = model.create_i_engine(econfig)
    context = engine.create_i_context()
    queue = dev.create_queue()
    inputs = context.create_inputs()
    results = []
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH].astype(np.float32)
        assert inputs[0].from_numpy(batch).ok()
        inputs[0].to(dev)
        outputs: list[mm.IRTTensor] = []
        assert context.enqueue(inputs, outputs, queue).ok()
        assert queue.sync().ok()
        results.append(outputs[0].asnumpy().astype(np.float32))
    assert system.destroy().ok()
    return np.concatenate(results)


# -- the same network through mmbuild's own API, preprocessing by hand -----------------------------
def preprocess(images: np.ndarray) -> np.ndarray:
    """(x - mean) / std per channel, HWC -> CHW: what the network itself reads."""
    x = (images.astype(np.float32) - np.float32(MEAN)) / np.sqrt(np.square(np.float32(STD)))
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def run_plain(images: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    class Batches(mm.CalibDataInterface):
        def __init__(self) -> None:
            super().__init__()
            self.i = -1

        def get_shape(self) -> mm.Dims:
            return mm.Dims(calibration[self.i * BATCH : (self.i + 1) * BATCH].shape)

        def get_data_type(self) -> mm.DataType:
            return mm.DataType.FLOAT32

        def get_sample(self) -> np.ndarray:
            return calibration[self.i * BATCH : (self.i + 1) * BATCH]

        def next(self) -> mm.Status:
            self.i += 1
            ok = self.i * BATCH < len(calibration)
            return mm.Status.OK() if ok else mm.Status(mm.Code.OUT_OF_RANGE, "end")

        def reset(self) -> mm.Status:
            self.i = -1
            return mm.Status.OK()

    network = build_network()
    config = mm.BuilderConfig()
    config.parse_from_string('{"precision_config": {"precision_mode": "qint8_mixed_float16"}}')
    calibrator = mm.Calibrator([Batches()])
    calibrator.set_progress(False)
    assert calibrator.calibrate(network, config).ok()
    model = mm.Builder().build_model("plain", network, config)
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    inputs[0].from_numpy(images)
    outputs: list[mm.IRTTensor] = []
    assert context.enqueue(inputs, outputs).ok()
    return outputs[0].asnumpy().astype(np.float32)


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "images").mkdir()
        files = write_images(workdir / "images", IMAGES)
        model_path = gen_model(workdir, files)
        images = np.stack([np.load(f) for f in files])
        y = run(model_path, images)
        model = mm.Model()
        assert model.deserialize_from_file(str(model_path)).ok()
        print(model.get_layer_report())
    expected = run_plain(preprocess(images), preprocess(images))
    diff = float(np.abs(y - expected).max())
    agree = float(np.mean(y.argmax(1) == expected.argmax(1)))
    print(f"input {model.get_input_dimensions()[0]} NHWC, output {list(y.shape)}")
    print(f"against mmbuild's own API with numpy preprocessing: max |diff| {diff:.2e}, "
          f"top-1 agreement {agree:.0%}")  # fmt: skip
    return {"max_abs_diff": diff, "top1_agreement": agree}


if __name__ == "__main__":
    main()
