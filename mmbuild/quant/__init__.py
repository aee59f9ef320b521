"""Quantization: parameters and (de)quantization, observers, and range algorithms.

- ``params``: ``choose_qparams`` turns a float range into scale and zero point; ``quantize``,
  ``dequantize`` and ``fake_quantize`` are the arithmetic of API.md, used by every kernel.
- ``observers``: ``MinMaxObserver`` and ``HistogramObserver`` accumulate bounded, mergeable
  statistics during calibration.
- ``algorithms``: ``choose_range`` picks a tensor's range from those statistics (LINEAR, EQNM,
  ENTROPY, PERCENTILE, MSE).
"""

from __future__ import annotations

from mmbuild.quant.algorithms import ALGORITHM_NAMES, QuantizationAlgorithm, choose_range
from mmbuild.quant.observers import HistogramObserver, MinMaxObserver
from mmbuild.quant.params import (
    QuantParams,
    choose_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
)

__all__ = [
    "ALGORITHM_NAMES",
    "HistogramObserver",
    "MinMaxObserver",
    "QuantParams",
    "QuantizationAlgorithm",
    "choose_qparams",
    "choose_range",
    "dequantize",
    "fake_quantize",
    "qrange",
    "quantize",
]
