"""``mmbuild build``: a network (ONNX file or Python function) -> calibrated model file."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmbuild.builder import Builder
from mmbuild.calib.calibrator import Calibrator
from mmbuild.calib.files import calibration_sources
from mmbuild.cli._common import (
    HelpFormatter,
    UsageError,
    emit,
    existing_file,
    parse_input_shapes,
    usage,
)
from mmbuild.config import BuilderConfig
from mmbuild.errors import Code, MMError, did_you_mean
from mmbuild.ir.network import Network
from mmbuild.ir.types import DataType, Dims
from mmbuild.parser import ModelKind, Parser
from mmbuild.precision import split_mode
from mmbuild.quant.algorithms import QuantizationAlgorithm

log = logging.getLogger(__name__)

EXAMPLE = """example:
  mmbuild build model.onnx -o model.mm --precision qint8_mixed_float16 \\
      --calib images/ --preprocess mean=0.485,0.456,0.406 --preprocess std=0.229,0.224,0.225 \\
      --calib-cache model.calib.json
  mmbuild build samples/sample_cnn.py:build_cnn -o cnn.mm --set \\
      precision_config.weight_quant_granularity=per_axis --precision qint8_mixed_float32 \\
      --calib data.npz --node-precision classifier:0=FLOAT32
"""

MODES = (
    "force_float32",
    "force_float16",
    "qint8_mixed_float16",
    "qint8_mixed_float32",
    "qint16_mixed_float16",
    "qint16_mixed_float32",
)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build",
        help="build a model file from an ONNX file or a Python function",
        description="Build MODEL (an .onnx file, or path/to/file.py:function returning an "
        "mm.Network) into a model file, calibrating it for the qint modes.",
        epilog=EXAMPLE,
        formatter_class=HelpFormatter,
        parents=parents,
    )
    p.add_argument("model", metavar="MODEL", help="file.onnx or path/to/file.py:function")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mm", help="model file to write")
    p.add_argument("--name", help="model name (default: the file's stem)")
    p.add_argument(
        "--precision",
        choices=MODES,
        metavar="MODE",
        help=f"precision_config.precision_mode: {', '.join(MODES)}",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="build.json",
        help="builder config file; repeatable, merged in order",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="one config key by its dotted path, after --config and --precision "
        "(VALUE is JSON, or else a string)",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:DIMS",
        help="set an input's dims, e.g. input:1x3x224x224 (-1 = dynamic)",
    )
    p.add_argument(
        "--calib",
        action="append",
        default=[],
        metavar="DATA",
        help="calibration data: a folder of images or a .npy per input (in input "
        "order), or one .npz with an array per input name",
    )
    p.add_argument(
        "--calib-batch",
        type=int,
        metavar="N",
        help="calibration batch size (default: the input's batch, else 8)",
    )
    p.add_argument(
        "--preprocess",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="image preprocessing: resize=HxW, scale=255, mean=a,b,c, std=a,b,c, "
        "layout=NCHW|NHWC (size and layout default to the input's)",
    )
    p.add_argument(
        "--calib-algo",
        default="linear",
        choices=[a.value for a in QuantizationAlgorithm],
        help="range algorithm (default: linear)",
    )
    p.add_argument("--percentile", type=float, help="percentile for --calib-algo percentile")
    p.add_argument(
        "--calib-cache",
        metavar="FILE",
        help="calibration cache: written after calibrating with --calib, read "
        "(instead of data) without --calib",
    )
    p.add_argument(
        "--node-precision",
        action="append",
        default=[],
        metavar="NAME:SLOT=DTYPE",
        help="node input precision, e.g. conv1:0=FLOAT16 (repeatable)",
    )
    p.add_argument(
        "--node-output-type",
        action="append",
        default=[],
        metavar="NAME:SLOT=DTYPE",
        help="node output type, e.g. fc:0=FLOAT32 (repeatable)",
    )
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    with usage():
        config = read_config(args.config, args.precision, args.settings)
    network = load_network(args.model)  # a bad MODEL spec is a usage error, a bad network not
    with usage():
        names = [network.get_input(i).get_tensor_name() for i in range(network.get_input_count())]
        for name, dims in parse_input_shapes(args.input_shape, names).items():
            network.find_tensor_by_name(name).set_dimension(Dims(dims))  # type: ignore[union-attr]
        for spec in args.node_precision:
            _node_setting(network, spec, "--node-precision")
        for spec in args.node_output_type:
            _node_setting(network, spec, "--node-output-type")
        calib = _calibrator(args, network)
    if calib is not None:
        calib.calibrate(network, config)
        if args.calib and args.calib_cache:
            calib.write_cache(args.calib_cache)
    if args.name:
        name = args.name
    elif args.model.lower().endswith(".onnx"):
        name = Path(args.model).stem
    else:
        name = args.model.rpartition(":")[2]
    if calib is None and split_mode(config.precision_mode)[0] is not None:
        log.info(
            "no --calib or --calib-cache: the qint ranges must come from the network "
            "(set_dynamic_range, QDQ nodes) or custom_ranges"
        )
    model = Builder().build_model(name, network, config)
    model.serialize_to_file(args.output)
    emit(
        f"wrote {args.output}: model {name!r}, {config.precision_mode}, "
        f"{len(model.data.steps)} steps"
    )
    return 0


def read_config(
    files: Sequence[str], precision: str | None, settings: Sequence[str]
) -> BuilderConfig:
    """The config of ``--config`` files (merged in order), then ``--precision``, then each
    ``--set KEY=VALUE`` (``a.b=v`` -> ``{"a": {"b": v}}``, v read as JSON, else a string)."""
    config = BuilderConfig()
    for path in files:
        existing_file(path, "--config file")
        config.parse_from_file(path)
    if precision is not None:
        config.parse_from_string(json.dumps({"precision_config": {"precision_mode": precision}}))
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"--set {item!r}: write KEY=VALUE, e.g. "
                "precision_config.weight_quant_granularity=per_axis"
            )
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        doc: Any = value
        for part in reversed(key.strip().split(".")):
            doc = {part: doc}
        try:
            config.parse_from_string(json.dumps(doc))
        except MMError as e:
            raise UsageError(f"--set {item!r}: {e}", e.code) from None
    return config


def load_network(spec: str) -> Network:
    """An ``.onnx`` file through ``mm.Parser``, or ``file.py:function`` called with no
    arguments."""
    if spec.lower().endswith(".onnx"):
        existing_file(spec, "ONNX file")
        network = Network()
        Parser(ModelKind.kOnnx).parse(network, spec)
        return network
    path, sep, function = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not function.isidentifier():
        raise UsageError(
            f"MODEL {spec!r}: give an .onnx file or path/to/file.py:function (a function that "
            "returns an mm.Network)"
        )
    existing_file(path, "Python file")
    module_spec = importlib.util.spec_from_file_location(f"_mmbuild_model_{Path(path).stem}", path)
    assert module_spec is not None and module_spec.loader is not None  # a .py file always has one
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    make = getattr(module, function, None)
    if not callable(make):
        found = [n for n in vars(module) if callable(vars(module)[n]) and not n.startswith("_")]
        raise UsageError(
            f"{path!r} has no function {function!r}{did_you_mean(function, found)}", Code.NOT_FOUND
        )
    network = make()
    if not isinstance(network, Network):
        raise MMError(f"{spec}() returned {type(network).__name__}; it must return an mm.Network")
    return network


def _node_setting(network: Network, spec: str, flag: str) -> None:
    """``NAME:SLOT=DTYPE`` -> ``node.set_precision(SLOT, DTYPE)`` (or ``set_output_type``)."""
    target, sep, dtype_name = spec.partition("=")
    name, colon, slot = target.rpartition(":")
    if not sep or not colon or not slot.isdigit():
        raise UsageError(f"{flag} {spec!r}: write NAME:SLOT=DTYPE, e.g. conv1:0=FLOAT16")
    node = network.find_node_by_name(name)
    if node is None:
        names = [n.get_node_name() for n in network.get_all_nodes_in_network()]
        raise UsageError(
            f"{flag} {spec!r}: the network has no node {name!r}{did_you_mean(name, names)}",
            Code.NOT_FOUND,
        )
    try:
        dtype = DataType[dtype_name.strip().upper()]
    except KeyError:
        raise UsageError(
            f"{flag} {spec!r}: {dtype_name!r} is not a DataType; use one of "
            f"{', '.join(d.name for d in DataType)}"
        ) from None
    if flag == "--node-precision":
        node.set_precision(int(slot), dtype)
    else:
        node.set_output_type(int(slot), dtype)


def _calibrator(args: argparse.Namespace, network: Network) -> Calibrator | None:
    """The calibrator the arguments ask for: over ``--calib`` data, or from ``--calib-cache``;
    None when neither is given."""
    if not args.calib and not args.calib_cache:
        return None
    if not args.calib:
        existing_file(args.calib_cache, "--calib-cache file")
        calib = Calibrator([])
        calib.read_cache(args.calib_cache)
        return calib
    inputs = [(t.get_tensor_name(), list(t.get_dimension())) for t in network.inputs]
    sources = calibration_sources(args.calib, inputs, args.calib_batch, args.preprocess)
    calib = Calibrator(sources)
    calib.set_quantization_algorithm(QuantizationAlgorithm(args.calib_algo))
    if args.percentile is not None:
        calib.set_percentile(args.percentile)
    calib.set_progress(not args.quiet)
    return calib
