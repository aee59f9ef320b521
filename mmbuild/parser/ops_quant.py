"""Handlers of QuantizeLinear / DequantizeLinear (see ``quant``)."""

from __future__ import annotations
