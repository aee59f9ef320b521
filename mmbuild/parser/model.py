"""``mm.Parser``: reads a model file into an empty ``mm.Network``.

``Parser(mm.ModelKind.kOnnx).parse(network, "model.onnx")`` loads the file (and any external
data beside it) with the ``onnx`` package, walks its graph (``walk.Importer``) into a scratch
network and, only when every node imported, moves the result into ``network``: a refused model
leaves ``network`` as it was.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import Any

from mmbuild._aliases import CamelCaseAliases
from mmbuild.errors import Code, MMError, Status
from mmbuild.ir.network import Network
from mmbuild.ir.types import DataType

log = logging.getLogger(__name__)


class ModelKind(enum.Enum):
    """The frameworks MagicMind parses; mmbuild imports ONNX and asks for an export otherwise."""

    kOnnx = "onnx"  # noqa: N815 (MagicMind spelling)
    kPytorch = "pytorch"  # noqa: N815 (MagicMind spelling)
    kCaffe = "caffe"  # noqa: N815 (MagicMind spelling)
    kTensorflow = "tensorflow"  # noqa: N815 (MagicMind spelling)


_EXPORT_HINT = {
    ModelKind.kPytorch: "torch.onnx.export(model, example_input, 'model.onnx')",
    ModelKind.kCaffe: "a Caffe-to-ONNX converter such as caffe2onnx",
    ModelKind.kTensorflow: "python -m tf2onnx.convert --saved-model DIR --output model.onnx",
}

MODEL_PARAMS = ("onnx-input-dtypes",)


class Parser(CamelCaseAliases):
    """Parses a model file into a network (``mm.Parser(mm.ModelKind.kOnnx)``)."""

    def __init__(self, kind: ModelKind = ModelKind.kOnnx) -> None:
        if not isinstance(kind, ModelKind):
            known = ", ".join(f"mm.ModelKind.{k.name}" for k in ModelKind)
            raise MMError(f"Parser: the model kind must be one of {known}, not {kind!r}")
        self.kind = kind
        self.params: dict[str, Any] = {}

    def set_model_param(self, key: str, value: Any) -> Status:
        """``"onnx-input-dtypes"``: one ``mm.DataType`` per graph input, in order, to declare the
        inputs with instead of the types the file gives."""
        if key not in MODEL_PARAMS:
            raise MMError(
                f"set_model_param: unknown key {key!r}; the keys are: {', '.join(MODEL_PARAMS)}"
            )
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(d, DataType) and not d.is_quantized for d in value
        ):
            raise MMError(
                f"set_model_param({key!r}, ...): give a list of mm.DataType (not QINT types), "
                f"one per model input; got {value!r}"
            )
        self.params[key] = list(value)
        return Status.OK()

    def parse(self, network: Network, model_path: str | os.PathLike[str]) -> Status:
        """Fill the empty ``network`` with the model's graph; see the module docstring."""
        if self.kind is not ModelKind.kOnnx:
            raise MMError(
                f"Parser({self.kind.name}): mmbuild imports ONNX models only; export the model "
                f"to ONNX first ({_EXPORT_HINT[self.kind]}) and parse it with "
                "mm.Parser(mm.ModelKind.kOnnx)",
                Code.UNAVAILABLE,
            )
        if not isinstance(network, Network):
            raise MMError(f"parse: network must be an mm.Network, not {type(network).__name__}")
        if network.nodes or network.inputs or network.outputs:
            raise MMError(
                f"parse: the network already holds {len(network.nodes)} nodes and "
                f"{len(network.inputs)} inputs; parse into a new mm.Network()"
            )
        from mmbuild.parser.walk import Importer

        path = os.fspath(model_path)
        model = load_onnx(path)
        scratch = Network()
        Importer(model, scratch, path, self.params.get("onnx-input-dtypes")).run()
        _move(scratch, network)
        log.info("parsed %s: %d nodes", path, len(network.nodes))
        return Status.OK()


def onnx_module() -> Any:
    """The ``onnx`` package, imported on first use; a missing one says how to install it."""
    try:
        import onnx
    except ImportError:
        raise MMError(
            "the ONNX parser needs the onnx package: pip install 'mmbuild[onnx]'",
            Code.UNAVAILABLE,
        ) from None
    return onnx


def load_onnx(path: str) -> Any:
    """The ModelProto of ``path``, with external data loaded from beside the file."""
    onnx = onnx_module()
    if not os.path.isfile(path):
        raise MMError(f"parse: model file {path!r} does not exist", Code.NOT_FOUND)
    try:
        model = onnx.load(path, load_external_data=True)
    except Exception as exc:
        raise MMError(
            f"parse: {path!r} is not a readable ONNX model ({type(exc).__name__}: {exc})"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise MMError(f"parse: {path!r} holds no graph; is it an ONNX model file?")
    return model


def _move(src: Network, dst: Network) -> None:
    """Give ``dst`` (empty) the whole state of ``src``."""
    dst.__dict__.update(src.__dict__)
    for node in dst._nodes:
        node._network = dst
    for tensor in dst._tensor_names.values():
        tensor._network = dst
