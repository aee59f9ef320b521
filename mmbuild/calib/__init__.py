"""Calibration: ``CalibDataInterface`` (user data sources), ``Calibrator`` (ranges from data or a
cache) and the ``QuantizationAlgorithm`` that chooses them. See docs/calibration.md."""

from __future__ import annotations

from mmbuild.calib.calibrator import Calibrator
from mmbuild.calib.data import CalibDataInterface
from mmbuild.quant.algorithms import QuantizationAlgorithm

__all__ = ["CalibDataInterface", "Calibrator", "QuantizationAlgorithm"]
