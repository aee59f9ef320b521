"""Quantization: parameters and (de)quantization, observers, and range algorithms.

- ``params``: ``choose_qparams`` turns a float range into scale and zero point; ``quantize``,
  ``dequantize`` and ``fake_quantize`` are the arithmetic of API.md, used by every kernel.
- ``observers``: ``MinMaxObserver`` and ``HistogramObserver`` accumulate bounded, mergeable
  statistics during calibration.
- ``algorithms``: ``choose_range`` picks a tensor's range from those statistics (LINEAR, EQNM,
  ENTROPY, PERCENTILE, MSE, AUTO); ``rank_ranges`` lists what AUTO chose among.
- ``error``: ``histogram_quant_error``, the quantization error of a histogram's values for a
  range, which MSE and AUTO minimise.
"""

from __future__ import annotations

from mmbuild.quant.algorithms import (
    ALGORITHM_NAMES,
    QuantizationAlgorithm,
    RangeCandidate,
    choose_range,
    rank_ranges,
)
from mmbuild.quant.error import histogram_quant_error
from mmbuild.quant.observers import HistogramObserver, MinMaxObserver
from mmbuild.quant.params import (
    QuantParams,
    choose_qparams,
    dequantize,
    dynamic_scale,
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
    "RangeCandidate",
    "choose_qparams",
    "choose_range",
    "dequantize",
    "dynamic_scale",
    "fake_quantize",
    "histogram_quant_error",
    "qrange",
    "quantize",
    "rank_ranges",
]
