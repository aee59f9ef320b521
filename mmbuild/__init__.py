"""mmbuild: a mixed-precision network builder for the CPU, in the style of Cambricon MagicMind.

``import mmbuild as mm`` gives the whole public API (see docs/ and API.md).
"""

from __future__ import annotations

from mmbuild import parser
from mmbuild.builder import Builder
from mmbuild.calib import CalibDataInterface, Calibrator, QuantizationAlgorithm
from mmbuild.config import BuilderConfig
from mmbuild.errors import Code, MMError, Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import DataType, Dims, Layout, Range, get_datatype_by_numpy
from mmbuild.ops import PUBLIC as _OPS_PUBLIC
from mmbuild.parser import ModelKind, Parser
from mmbuild.quant.tuner import AccuracyTuner
from mmbuild.quant.tuner_report import TunerReport, TunerRow
from mmbuild.reference import run_reference
from mmbuild.runtime.device import Device, EngineConfig, Queue, System
from mmbuild.runtime.engine import Context, Engine, IRTTensor, Model

__version__ = "0.1.0"

globals().update(_OPS_PUBLIC)  # node classes and their enums: mm.IActivation, mm.IConvNode, ...

__all__ = [
    "AccuracyTuner",
    "Builder",
    "BuilderConfig",
    "CalibDataInterface",
    "Calibrator",
    "Code",
    "Context",
    "DataType",
    "Device",
    "Dims",
    "Engine",
    "EngineConfig",
    "INode",
    "IRTTensor",
    "ITensor",
    "Layout",
    "MMError",
    "Model",
    "ModelKind",
    "Network",
    "Parser",
    "Policy",
    "QuantizationAlgorithm",
    "Queue",
    "Range",
    "Status",
    "System",
    "TunerReport",
    "TunerRow",
    "__version__",
    "get_datatype_by_numpy",
    "parser",
    "run_reference",
    *_OPS_PUBLIC,
]
