"""The pydantic models behind ``BuilderConfig``: every key, its allowed values and its default.

This file is the single source of truth for the builder configuration: ``BuilderConfig`` validates
with these models, ``python -m mmbuild.tools.write_schemas`` turns them into
``include/builder_config.schema.json``, and ``docs/config.md`` describes them. A key that
MagicMind knows but that means nothing on a CPU is declared here too, as a field marked
``x-mmbuild-ignored``, so that it is accepted, reported and listed in the schema. The MagicMind
keys that change what the built model takes or computes (``convert_input_layout``,
``convert_output_layout``, ``insert_bn_before_firstnode``, ``graph_shape_mutable``, ``dim_range``)
are honoured; they are keyed by input (or output) index, ``"0"``, ``"1"``, ..., as MagicMind's.

The models are strict (``"1.0"`` is not a number, ``true`` is not a number) and forbid unknown keys;
``BuilderConfig`` turns their validation errors into ``MMError`` messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    field_validator,
    model_validator,
)

PrecisionMode = Literal[
    "force_float32",
    "force_float16",
    "qint8_mixed_float16",
    "qint8_mixed_float32",
    "qint16_mixed_float16",
    "qint16_mixed_float32",
]
WeightQuantGranularity = Literal["per_tensor", "per_axis"]
WeightQuantRange = Literal["full", "reduced"]
ActivationQuantAlgo = Literal["symmetric", "asymmetric"]
ActivationQuantMode = Literal["static", "dynamic"]

PRECISION_MODES: tuple[str, ...] = get_args(PrecisionMode)
WEIGHT_QUANT_GRANULARITIES: tuple[str, ...] = get_args(WeightQuantGranularity)
ACTIVATION_QUANT_ALGOS: tuple[str, ...] = get_args(ActivationQuantAlgo)

# Marks a key as accepted but ignored, for BuilderConfig and for readers of the JSON Schema.
IGNORED_MARKER = "x-mmbuild-ignored"

# Strict: a JSON number only (not a bool, not a string), and finite.
_FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# A bare number is accepted and normalised to a one-element list (see CustomRange._one_or_many);
# the schema says so, since the validator runs before the list type sees the value.
_NUMBER_OR_LIST_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number"},
        {"type": "array", "items": {"type": "number"}, "minItems": 1},
    ]
}
_Bounds = Annotated[list[_FiniteFloat], WithJsonSchema(_NUMBER_OR_LIST_SCHEMA)]
# Any JSON value: ignored keys are not validated, only remembered and reported.
_AnyJson = Annotated[JsonValue, WithJsonSchema({})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PrecisionConfig(_Strict):
    """Precision of the built model: the mode and how quantized tensors are scaled."""

    precision_mode: PrecisionMode = Field(
        default="force_float32",
        description=(
            "force_float32 / force_float16: every float computation and float tensor in that "
            "type. qintB_mixed_floatN: the quantizable inputs of conv, deconv, inner product and "
            "matmul are quantized to B bits; bias and every other node compute in floatN."
        ),
    )
    weight_quant_granularity: WeightQuantGranularity = Field(
        default="per_tensor",
        description=(
            "How constant weights are ranged for quantization: one range per tensor, or one per "
            "output channel (per_axis)."
        ),
    )
    weight_quant_range: WeightQuantRange = Field(
        default="full",
        description=(
            "full: int8 weights use the codes -127..127. reduced: -64..64 (about 7 bits, as "
            "onnxruntime's reduce_range), so that on CPUs without VNNI (AVX2, AVX-512 before "
            "Cascade Lake) the int8 kernels take vpmaddubsw, exactly, at about twice the speed; "
            "a little less accurate, most with per_tensor weights. int16 weights, and weights "
            "whose tensor has a range of its own, are not affected."
        ),
    )
    activation_quant_algo: ActivationQuantAlgo = Field(
        default="symmetric",
        description=(
            "symmetric: zero point 0, scale from max(|min|, |max|). asymmetric: the range is "
            "widened to contain 0 and mapped onto the whole integer range with a zero point."
        ),
    )
    activation_quant_mode: ActivationQuantMode = Field(
        default="static",
        description=(
            "static: every quantized input has its range from calibration, set_dynamic_range or "
            "custom_ranges. dynamic: the first input of a conv, deconv, inner product, or matmul "
            "with a constant weight is quantized at each run, symmetrically, with the scale "
            "max|x| / 127 (32767 for int16) of that run's values, and needs no range; other "
            "quantized inputs stay static. No calibration is needed for a network of such nodes; "
            "each run pays one pass over those inputs for their maximum."
        ),
    )
    cross_layer_equalization: bool = Field(
        default=False,
        description=(
            "true: before quantizing, rescale the output channels of each conv (or inner "
            "product) and the matching input channels of the conv it feeds, through nothing, a "
            "batch norm, relu or leaky relu, so that both weights have balanced per-channel "
            "ranges (cross-layer equalisation, Nagel et al. 2019). The float result is "
            "unchanged; calibrate with the same config, since the ranges between the pair change."
        ),
    )
    bias_correction: bool = Field(
        default=False,
        description=(
            "true: subtract from the bias of each conv and inner product with quantized weights "
            "the mean output error those weights cause, (W_q - W) times the mean of the node's "
            "input per filter tap, measured by calibration from data (Nagel et al. 2019). "
            "Needs a calibration from data with the same config (a cache holds no means)."
        ),
    )


class CustomRange(_Strict):
    """A range for one tensor's quantization: {"min": [..], "max": [..]}.

    A bare number stands for a one-element list. One element is a per-tensor range; several are
    per-axis ranges, one per channel.
    """

    min: _Bounds = Field(
        min_length=1,
        description="Lower bounds: a finite number or a non-empty list of them, each <= max.",
    )
    max: _Bounds = Field(
        min_length=1,
        description="Upper bounds: a finite number or a non-empty list of them, as long as min.",
    )

    @field_validator("min", "max", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return [value]
        return value

    @model_validator(mode="after")
    def _check_order(self) -> CustomRange:
        if len(self.min) != len(self.max):
            raise ValueError(
                f"min has {len(self.min)} values and max has {len(self.max)}; "
                "give both the same length (1 for a per-tensor range)"
            )
        for i, (lo, hi) in enumerate(zip(self.min, self.max, strict=True)):
            if lo > hi:
                raise ValueError(
                    f"min[{i}] = {lo} is greater than max[{i}] = {hi}; need min <= max"
                )
        return self


LayoutName = Literal["NCHW", "NHWC", "NCDHW", "NDHWC", "NCT", "NTC"]
LAYOUT_NAMES: tuple[str, ...] = get_args(LayoutName)
# Layouts of one rank name the same axes in another order: a conversion stays within one pair.
_LAYOUT_PAIRS = "NCHW <-> NHWC, NCDHW <-> NDHWC, NCT <-> NTC"
_Size = Annotated[int, Field(strict=True, ge=0)]


class LayoutConversion(_Strict):
    """One input's (or output's) layout conversion: ``{"src": "NCHW", "dst": "NHWC"}``.

    The network was written for ``src``; the built model takes (or gives) the tensor in ``dst``.
    """

    src: LayoutName = Field(description="The layout the network was written for.")
    dst: LayoutName = Field(description="The layout the built model takes or gives.")

    @model_validator(mode="after")
    def _same_axes(self) -> LayoutConversion:
        if sorted(self.src) != sorted(self.dst):
            raise ValueError(
                f"src {self.src!r} and dst {self.dst!r} name different axes; convert within one "
                f"of {_LAYOUT_PAIRS}"
            )
        return self


class InputNormalization(_Strict):
    """``{"mean": [...], "var": [...]}``: the model computes ``(x - mean[c]) / sqrt(var[c])``."""

    mean: list[_FiniteFloat] = Field(
        min_length=1, description="One mean per channel of the input (finite numbers)."
    )
    var: list[_FiniteFloat] = Field(
        min_length=1, description="One variance per channel, each > 0, as many as mean."
    )

    @model_validator(mode="after")
    def _check(self) -> InputNormalization:
        if len(self.mean) != len(self.var):
            raise ValueError(
                f"mean has {len(self.mean)} values and var has {len(self.var)}; give one of each "
                "per channel"
            )
        for c, v in enumerate(self.var):
            if v <= 0:
                raise ValueError(f"var[{c}] = {v}; a variance must be > 0 (it is divided by)")
        return self


class DimRange(_Strict):
    """The shapes an input may take: ``{"min": [1, 3, 224, 224], "max": [8, 3, 224, 224]}``."""

    min: list[_Size] = Field(min_length=1, description="Smallest size of each dimension.")
    max: list[_Size] = Field(min_length=1, description="Largest size of each dimension.")

    @model_validator(mode="after")
    def _check(self) -> DimRange:
        if len(self.min) != len(self.max):
            raise ValueError(
                f"min has {len(self.min)} dimensions and max has {len(self.max)}; give both one "
                "size per dimension of the input"
            )
        for i, (lo, hi) in enumerate(zip(self.min, self.max, strict=True)):
            if lo > hi:
                raise ValueError(f"min[{i}] = {lo} exceeds max[{i}] = {hi}; need min <= max")
        return self


def _check_index_keys(value: dict[str, Any]) -> dict[str, Any]:
    for key in value:
        if not key.isdigit() or not key.isascii():
            raise ValueError(
                f"key {key!r} is not an index; use the input's (or output's) position in the "
                'network: "0", "1", ...'
            )
    return value


def _indexed(description: str) -> Any:
    return Field(default_factory=dict, description=description)


def _ignored(description: str) -> Any:
    """A field for a MagicMind key that mmbuild accepts, remembers and reports as ignored."""
    return Field(
        default=None,
        description=f"Ignored by mmbuild (no meaning on a CPU). MagicMind: {description}",
        json_schema_extra={IGNORED_MARKER: True},
    )


def _allow_schema_key(schema: dict[str, Any]) -> None:
    # A config file may name its schema ("$schema", for editors); BuilderConfig accepts and drops
    # it before validation, and the published schema allows it, or editors would flag it.
    schema["properties"] = {
        "$schema": {
            "type": "string",
            "description": "The URL or path of this JSON Schema, for editors; ignored by mmbuild.",
        },
        **schema["properties"],
    }


class BuilderConfigModel(_Strict):
    """The configuration of a build, as parsed by BuilderConfig.parse_from_string."""

    model_config = ConfigDict(
        title="mmbuild builder configuration", json_schema_extra=_allow_schema_key
    )

    precision_config: PrecisionConfig = Field(
        default_factory=PrecisionConfig,
        description="Precision mode and quantization settings.",
    )
    custom_ranges: dict[str, CustomRange] = Field(
        default_factory=dict,
        description=(
            'Quantization ranges by tensor name. The name "" gives the range of every tensor '
            "that has no range of its own (from calibration, set_dynamic_range or this map)."
        ),
    )

    # MagicMind keys that change the built model, honoured; keyed by input / output index.
    convert_input_layout: dict[str, LayoutConversion] = _indexed(
        'Per network input index: {"src": layout the network was written for, "dst": layout '
        "the built model takes}. The model permutes the input; the layout pass absorbs the "
        "permute where the network's first nodes are convolutions or pooling."
    )
    convert_output_layout: dict[str, LayoutConversion] = _indexed(
        'Per network output index: {"src": layout the network computes, "dst": layout the '
        "built model gives}."
    )
    insert_bn_before_firstnode: dict[str, InputNormalization] = _indexed(
        'Per network input index: {"mean": [...], "var": [...]}; the model computes '
        "(x - mean[c]) / sqrt(var[c]) per channel c of that input (the C axis of its layout) "
        "before the network, folded into the first convolution where that is exact."
    )
    graph_shape_mutable: bool = Field(
        default=True,
        description=(
            "false: the network's input shapes must be fully known (no -1) and the model takes "
            "only those shapes. true (the default): -1 dimensions are fixed at enqueue."
        ),
    )
    dim_range: dict[str, DimRange] = _indexed(
        'Per model input index: {"min": [...], "max": [...]}, the shapes enqueue accepts for '
        "that input (as the model takes it, after convert_input_layout)."
    )

    _index_keys = field_validator(
        "convert_input_layout", "convert_output_layout", "insert_bn_before_firstnode", "dim_range"
    )(_check_index_keys)

    # MagicMind keys with no meaning on a CPU. Keep them in MagicMind's own spelling.
    archs: _AnyJson = _ignored("the MLU architectures (and clusters) to build for.")
    opt_config: _AnyJson = _ignored("graph optimisation switches such as type64to32_conversion.")
    debug_config: _AnyJson = _ignored("debugging switches of the MLU compiler.")
    cross_compile_toolchain_path: _AnyJson = _ignored("the toolchain for edge devices.")
    dynamic_shape: _AnyJson = _ignored("whether input shapes may change after the build.")
    computation_preference: _AnyJson = _ignored("fast or high-precision MLU kernels.")
    compute_determinism: _AnyJson = _ignored("deterministic MLU kernels; mmbuild is deterministic.")
    device_id: _AnyJson = _ignored("the MLU device to build on.")
    bit_width: _AnyJson = _ignored("the bit width of MLU integer kernels.")
    max_workspace_size: _AnyJson = _ignored("the MLU workspace limit.")
    enable_fusion_pass: _AnyJson = _ignored("MLU fusion passes.")


IGNORED_KEYS: tuple[str, ...] = tuple(
    name
    for name, field in BuilderConfigModel.model_fields.items()
    if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(IGNORED_MARKER)
)

# The honoured MagicMind keys: like ignored keys, to_json() writes them only when they were given.
MAGICMIND_KEYS: tuple[str, ...] = (
    "convert_input_layout",
    "convert_output_layout",
    "insert_bn_before_firstnode",
    "graph_shape_mutable",
    "dim_range",
)
