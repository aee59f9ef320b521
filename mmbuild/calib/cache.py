"""The calibration cache: its pydantic model, the network fingerprint, and the file itself.

The model is the single definition of the file format: ``read_cache`` validates with it, the
calibrator writes from it, and ``python -m mmbuild.tools.write_schemas`` publishes it as
``include/calibration_cache.schema.json``. A cache looks like this::

    {"format": "mmbuild-calibration-cache", "version": 1, "algorithm": "linear",
     "activation_quant_algo": "symmetric", "bits": 8, "fingerprint": "3f1c...",
     "tensors": {"input_0": {"min": [-1.0], "max": [0.96875]}, ...}}

Floats are written with Python's ``repr`` (what ``json`` does), which reads back to the same
float, so a range survives the round trip bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmbuild._files import checked_path, parse_json, read_bytes, write_atomically
from mmbuild.config.schema import ActivationQuantAlgo, CustomRange
from mmbuild.errors import MMError
from mmbuild.ir.network import Network

CACHE_FORMAT: Final = "mmbuild-calibration-cache"
CACHE_VERSION: Final = 1
#: A cache file above this size is refused unread (a cache of 100,000 tensors is about 10 MiB).
MAX_CACHE_BYTES = 64 * 2**20

#: The keys of ``mm.QuantizationAlgorithm`` (``QuantizationAlgorithm.X.key``); a test keeps the two
#: in step.
AlgorithmKey = Literal["linear", "eqnm", "entropy", "percentile", "mse", "auto"]


class CalibrationCacheModel(BaseModel):
    """The ranges one calibration chose, keyed by tensor name, and what they were chosen for."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, title="mmbuild calibration cache"
    )

    format: Literal["mmbuild-calibration-cache"] = Field(
        description="Always 'mmbuild-calibration-cache': tells this file from other JSON."
    )
    version: Literal[1] = Field(
        description="The version of this format. A reader refuses a version it does not know."
    )
    algorithm: AlgorithmKey = Field(
        description="The mm.QuantizationAlgorithm that chose the ranges (its key)."
    )
    activation_quant_algo: ActivationQuantAlgo = Field(
        description="precision_config.activation_quant_algo of the calibration's config."
    )
    bits: Literal[8, 16] = Field(
        description="The QINT width the ranges were chosen for (8 when the mode is float)."
    )
    fingerprint: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description=(
            "SHA-256 of the network's structure: input names, dimensions and types; node names, "
            "types, input and output tensor names, in order. Weights are not part of it."
        ),
    )
    equalization: str = Field(
        default="",
        pattern=r"^([0-9a-f]{64})?$",
        description=(
            "SHA-256 of the weights of the cross-layer equalisation the ranges were taken on "
            "(precision_config.cross_layer_equalization), or '' without one."
        ),
    )
    tensors: dict[str, CustomRange] = Field(
        description="Tensor name -> its range, {'min': [lo], 'max': [hi]}, in network order."
    )


def network_fingerprint(network: Network) -> str:
    """SHA-256 (hex) of what identifies a network's tensors: the inputs (name, dimensions, type)
    and every node (name, type, input and output tensor names), in order.

    Constant values and node attributes are not part of it: a cache records ranges by tensor name,
    as TensorRT's does, and stays the user's to refresh when weights change.
    """
    structure = {
        "inputs": [
            [t.get_tensor_name(), t.get_dimension().get_dims(), t.get_data_type().value]
            for t in network.inputs
        ],
        "nodes": [
            [
                n.get_node_name(),
                n.get_node_type(),
                [t.get_tensor_name() for t in n.inputs],
                [t.get_tensor_name() for t in n.outputs],
            ]
            for n in network.nodes
        ],
    }
    text = json.dumps(structure, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def read_cache(path: str | os.PathLike[str]) -> CalibrationCacheModel:
    """The validated cache in the file at ``path``.

    Reading is as strict as reading a model manifest (``mmbuild._files`` guards the file and the
    JSON). Raises ``MMError``: ``NOT_FOUND`` for a missing file; ``INVALID_ARGUMENT`` for a version
    newer than this reader, a special file, text that is not JSON (a
    truncated file among it), a repeated key, JSON that is not a calibration cache, a version that
    is not an integer this reader knows, or a value the model refuses (the message gives the key
    path, the reason and the value found).
    """
    where = f"calibration cache {checked_path(path, 'calibration cache')!r}"
    text = read_bytes(path, "calibration cache", MAX_CACHE_BYTES)
    data = parse_json(text, where, allow_non_finite=True)  # the model names a NaN's key path
    found = data.get("format") if isinstance(data, dict) else None
    if found != CACHE_FORMAT:
        what = f"its 'format' is {found!r}" if isinstance(data, dict) else "not a JSON object"
        raise MMError(
            f"{where}: not an mmbuild calibration cache ({what}; expected 'format': "
            f"{CACHE_FORMAT!r})"
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise MMError(
            f"{where}: 'version' is {_found(version)}; a calibration cache's version is an "
            f"integer ({CACHE_VERSION} for this mmbuild)"
        )
    if version > CACHE_VERSION:
        raise MMError(
            f"{where}: format version {version} is newer than this mmbuild reads (version "
            f"{CACHE_VERSION}); upgrade mmbuild or calibrate again to write a version "
            f"{CACHE_VERSION} cache"
        )
    if version != CACHE_VERSION:
        raise MMError(
            f"{where}: format version {version} is not one this mmbuild reads (version "
            f"{CACHE_VERSION}); calibrate again to write a version {CACHE_VERSION} cache"
        )
    try:
        cache = CalibrationCacheModel.model_validate(data)
    except ValidationError as e:
        raise MMError(f"{where}: {_explain(e)}") from None
    if not text.endswith(b"\n"):  # a prefix of JSON text is JSON only when cut after its end
        raise MMError(
            f"{where}: the file does not end with the newline write_cache puts last, so it may "
            "have been cut short; write it again with Calibrator.write_cache (or end it with a "
            "newline if you wrote it by hand)"
        )
    return cache


def write_cache(path: str | os.PathLike[str], cache: CalibrationCacheModel) -> None:
    """Write ``cache`` as JSON to ``path``, whole or not at all (a temporary file is renamed)."""
    where = f"calibration cache {os.fspath(path)!r}"
    write_atomically(path, _dumps(cache).encode("utf-8"), where)


def _dumps(cache: CalibrationCacheModel) -> str:
    """The cache as JSON text: the header keys first, then one line per tensor, for short diffs."""
    data = cache.model_dump()
    tensors = data.pop("tensors")
    if not data["equalization"]:
        del data["equalization"]  # a cache without equalisation reads as it always did
    head = "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in data.items())
    rows = ",\n".join(
        f"    {json.dumps(name)}: {json.dumps(r, allow_nan=False)}" for name, r in tensors.items()
    )
    body = f"\n{rows}\n  " if rows else ""
    return f'{{\n{head}  "tensors": {{{body}}}\n}}\n'


def _found(value: object) -> str:
    """A value read from the file, for a message: its JSON type and a short repr."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "an object"}  # fmt: skip
    if value is None:
        return "missing or null"
    kind = next((k for t, k in kinds.items() if isinstance(value, t)), type(value).__name__)
    text = repr(value)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


def _explain(error: ValidationError) -> str:
    """The first few validation problems as 'key.path: reason (found: value)'."""
    parts = []
    for item in error.errors()[:3]:
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        found = f" (found {_found(item['input'])})" if item["type"] != "missing" else ""
        parts.append(f"{loc}: {item['msg']}{found}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
