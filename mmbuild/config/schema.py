"""The pydantic models behind ``BuilderConfig``: every key, its allowed values and its default.

This file is the single source of truth for the builder configuration: ``BuilderConfig`` validates
with these models, ``python -m mmbuild.tools.write_schemas`` turns them into
``include/builder_config.schema.json``, and ``docs/config.md`` describes them. A key that
MagicMind knows but that means nothing on a CPU is declared here too, as a field marked
``x-mmbuild-ignored``, so that it is accepted, reported and listed in the schema.

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
ActivationQuantAlgo = Literal["symmetric", "asymmetric"]

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
    activation_quant_algo: ActivationQuantAlgo = Field(
        default="symmetric",
        description=(
            "symmetric: zero point 0, scale from max(|min|, |max|). asymmetric: the range is "
            "widened to contain 0 and mapped onto the whole integer range with a zero point."
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

    # MagicMind keys with no meaning on a CPU. Keep them in MagicMind's own spelling.
    archs: _AnyJson = _ignored("the MLU architectures (and clusters) to build for.")
    opt_config: _AnyJson = _ignored("graph optimisation switches such as type64to32_conversion.")
    debug_config: _AnyJson = _ignored("debugging switches of the MLU compiler.")
    cross_compile_toolchain_path: _AnyJson = _ignored("the toolchain for edge devices.")
    graph_shape_mutable: _AnyJson = _ignored(
        "whether input shapes may change after the build; mmbuild always takes -1 dimensions."
    )
    dynamic_shape: _AnyJson = _ignored("whether input shapes may change after the build.")
    dim_range: _AnyJson = _ignored("the shape ranges the MLU kernels are tuned for.")
    computation_preference: _AnyJson = _ignored("fast or high-precision MLU kernels.")
    compute_determinism: _AnyJson = _ignored("deterministic MLU kernels; mmbuild is deterministic.")
    device_id: _AnyJson = _ignored("the MLU device to build on.")
    convert_input_layout: _AnyJson = _ignored(
        "a layout conversion at the model inputs; the model keeps the network's input layouts."
    )
    convert_output_layout: _AnyJson = _ignored(
        "a layout conversion at the model outputs; the model keeps the network's output layouts."
    )
    bit_width: _AnyJson = _ignored("the bit width of MLU integer kernels.")
    max_workspace_size: _AnyJson = _ignored("the MLU workspace limit.")
    enable_fusion_pass: _AnyJson = _ignored("MLU fusion passes.")


IGNORED_KEYS: tuple[str, ...] = tuple(
    name
    for name, field in BuilderConfigModel.model_fields.items()
    if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(IGNORED_MARKER)
)

# MagicMind keys that change a network's arithmetic: ignoring them would give wrong results, so they
# are refused with the reason and the mmbuild way to get the same effect.
UNSUPPORTED_KEYS: dict[str, str] = {
    "insert_bn_before_firstnode": (
        "it changes the network's arithmetic, so mmbuild does not ignore it; normalise the input "
        "in preprocessing, or add the (x - mean) / sqrt(var) nodes to the network"
    ),
}
