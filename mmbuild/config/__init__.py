"""The builder configuration: ``BuilderConfig`` and the pydantic models that define its keys."""

from __future__ import annotations

from mmbuild.config.builder_config import BuilderConfig
from mmbuild.config.schema import (
    ACTIVATION_QUANT_ALGOS,
    IGNORED_KEYS,
    PRECISION_MODES,
    WEIGHT_QUANT_GRANULARITIES,
    BuilderConfigModel,
    CustomRange,
    PrecisionConfig,
)

__all__ = [
    "ACTIVATION_QUANT_ALGOS",
    "IGNORED_KEYS",
    "PRECISION_MODES",
    "WEIGHT_QUANT_GRANULARITIES",
    "BuilderConfig",
    "BuilderConfigModel",
    "CustomRange",
    "PrecisionConfig",
]
