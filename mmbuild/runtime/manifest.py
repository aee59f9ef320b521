"""What a model file holds: ``ModelData`` (in memory) and ``ManifestModel`` (manifest.json,
validated on load; its JSON Schema is include/model_manifest.schema.json). The file format itself
is in :mod:`mmbuild.runtime.model_file`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from mmbuild.config.schema import PrecisionMode
from mmbuild.ir.types import DataType
from mmbuild.kernels.table import Step


# -- the data a model file holds ---------------------------------------------------------------
@dataclass
class TensorInfo:
    """A tensor's name, dims (-1 = known at run time) and runtime type; a model input may have
    the shape range of the builder config's ``dim_range`` (checked by enqueue)."""

    name: str
    dims: tuple[int, ...]
    dtype: DataType
    min_dims: tuple[int, ...] | None = None
    max_dims: tuple[int, ...] | None = None


@dataclass(eq=False)
class ModelData:
    """Everything a model file holds; ``read_model_file(write_model_file(d))`` gives ``d`` back."""

    name: str
    mode: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    tensors: dict[str, TensorInfo]
    constants: dict[str, np.ndarray]
    steps: list[Step]
    warnings: list[str] = field(default_factory=list)
    fingerprint: str = ""


# -- the manifest ------------------------------------------------------------------------------
DataTypeName = Literal[
    "FLOAT32",
    "FLOAT16",
    "QINT8",
    "QINT16",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "FLOAT64",
    "BOOL",
]
_Member = Annotated[str, Field(pattern=r"^arrays/[0-9]{4,6}\.npy$")]
_Dim = Annotated[int, Field(ge=-1)]
_Attrs = Annotated[
    dict[str, JsonValue],
    Field(
        description=(
            'graph.encode_attrs: enums as {"enum": class, "name": member}, dicts as '
            '{"dict": {...}}, non-finite floats as {"float": "inf" | "-inf" | "nan"}'
        )
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TensorModel(_Strict):
    dims: list[_Dim] = Field(description="Dimensions; -1 is known only at run time.")
    dtype: DataTypeName = Field(description="The mm.DataType name of the runtime buffer.")


class NamedTensorModel(TensorModel):
    name: str
    min_dims: list[_Dim] | None = Field(default=None, description="dim_range min (inputs).")
    max_dims: list[_Dim] | None = Field(default=None, description="dim_range max (inputs).")


class StepModel(_Strict):
    """One step: a graph node, the kernel that runs it, and what that kernel prepared."""

    name: str
    op: str
    kernel: str = Field(description="The kernel table entry that runs the step (by name).")
    op_attrs: _Attrs
    inputs: list[str]
    outputs: list[str]
    precisions: list[DataTypeName]
    output_types: list[DataTypeName]
    lowered_attrs: _Attrs
    arrays: dict[str, _Member] = Field(description="Lowered array key -> its member.")
    notes: list[str]
    fused: list[str] = Field(description="Names of the nodes folded into this step.")


class MemberModel(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, description="Uncompressed size in bytes.")


class ManifestModel(_Strict):
    """manifest.json of an mmbuild model file (see mmbuild/runtime/model_file.py)."""

    model_config = ConfigDict(title="mmbuild model manifest")

    format: Literal["mmbuild-model"]
    format_version: Literal[1] = Field(description="A reader refuses a version newer than its own.")
    mmbuild_version: str
    name: str
    mode: PrecisionMode
    fingerprint: str = Field(pattern=r"^([0-9a-f]{64})?$", description="Network fingerprint.")
    inputs: list[NamedTensorModel]
    outputs: list[NamedTensorModel]
    tensors: dict[str, TensorModel] = Field(description="Every tensor a step reads or writes.")
    constants: dict[str, _Member] = Field(description="Constant tensor -> its member.")
    steps: list[StepModel] = Field(description="In run order.")
    warnings: list[str]
    members: dict[_Member, MemberModel] = Field(description="Every array member.")
