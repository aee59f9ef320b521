"""Dynamic quantization: a QINT input's scale chosen at run time from the values it holds.

Under ``precision_config.activation_quant_mode: "dynamic"`` the first input of a conv, deconv,
inner product, or matmul with a constant right operand needs no calibrated range: each run
quantizes it symmetrically with

``scale = max |x| / qmax`` over its finite values (``quant.params.dynamic_scale``: 127 for QINT8,
32767 for QINT16; an all-zero input gets scale 1), zero point 0 (carried 128 for QINT8),

so that a zero point never changes and every zero-point term the kernels bind stays valid;
only the scale moves, in two places: the ``[scale, zero point]`` array the input preparation
reads (``prepare.bind_prepare_input(qparams=...)``) and each epilogue's
``mult[n] = float32(scale) * scale_w[n]`` (``Epilogue.rescale``). NaN quantizes to the zero
point and +-inf saturate, as in static quantization; neither takes part in the maximum.

The largest magnitude is found on the float bits: clearing the sign bit of a float32 (fp16)
leaves an integer that orders the magnitudes as the floats do, and finite values are those
below the bits of +inf, so the maximum is an integer reduction that LLVM vectorises, and exact.

Worked example (QINT8): x = [0.5, -2.54, nan, inf] -> max finite |x| = 2.54, scale = 2.54 / 127
= 0.02; q = [rint(25.0), rint(-127.0), 0, 127] = [25, -127, 0, 127], carried [153, 1, 128, 255];
with a weight scale 0.01 the epilogue's mult becomes float32(0.02) * float32(0.01) = 2.0e-4.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numba import njit

from mmbuild.errors import Code, MMError
from mmbuild.ir.types import DataType
from mmbuild.kernels.cpu.gemm_pack import Epilogue
from mmbuild.kernels.table import to_numpy
from mmbuild.quant.params import dynamic_scale

__all__ = [
    "DYNAMIC_FNS",
    "DynamicInput",
    "finite_abs_max",
    "input_scale_reference",
    "reference_abs_max",
]

# (bits dtype, sign mask, bits of +inf, float dtype) of each float buffer dtype
_BITS = {
    np.dtype(np.float32): (np.uint32, 0x7FFFFFFF, 0x7F800000, np.float32),
    np.dtype(np.uint16): (np.uint16, 0x7FFF, 0x7C00, np.float16),  # fp16 bits
}


@njit(cache=True, error_model="numpy", boundscheck=False)
def _max_magnitude_bits(bits, sign_mask, inf_bits):  # type: ignore[no-untyped-def]
    """The largest ``b & sign_mask`` below ``inf_bits`` over ``bits`` (0 if there is none)."""
    top = sign_mask ^ sign_mask
    for i in range(bits.size):
        b = bits[i] & sign_mask
        top = max(top, b if b < inf_bits else top)
    return top


#: The dispatchers a dynamic input runs (for ``Runner.fns``).
DYNAMIC_FNS = (_max_magnitude_bits,)


def _bits_view(x: np.ndarray) -> tuple[np.ndarray, Any, Any, Any]:
    if x.dtype not in _BITS or not x.flags.c_contiguous:
        raise MMError(
            f"dynamic quantization reads a contiguous float32 or fp16-bits buffer, not a "
            f"{x.dtype} one of shape {x.shape}",
            Code.INTERNAL,
        )
    bits_dtype, mask, inf, ftype = _BITS[x.dtype]
    return x.reshape(-1).view(bits_dtype), bits_dtype(mask), bits_dtype(inf), ftype


def finite_abs_max(x: np.ndarray) -> float:
    """``max |x|`` over the finite values of a float32 or fp16-bits buffer (0.0 if none).

    >>> finite_abs_max(np.array([0.5, -2.5, np.nan, -np.inf], np.float32))
    2.5
    """
    return _abs_max(_bits_view(x))


def _abs_max(view: tuple[np.ndarray, Any, Any, Any]) -> float:
    """The largest finite magnitude of a :func:`_bits_view`, as a float."""
    bits, mask, inf, ftype = view
    top = _max_magnitude_bits(bits, mask, inf)
    return float(np.array(top, bits.dtype).view(ftype))


def reference_abs_max(x: np.ndarray) -> float:
    """:func:`finite_abs_max` in numpy, on the float values (the kernels' reference)."""
    xf = to_numpy(x, DataType.FLOAT16 if x.dtype == np.uint16 else DataType.FLOAT32)
    finite = np.abs(xf[np.isfinite(xf)])
    return float(finite.max()) if finite.size else 0.0


def input_scale_reference(attrs: Mapping[str, Any], x: np.ndarray, qtype: DataType) -> Any:
    """The scale a quantized step's input 0 runs with: the lowered ``scale_a``, or for a
    dynamic input (``attrs["dynamic"]``) the one chosen from ``x`` (:func:`reference_abs_max`)."""
    if attrs.get("dynamic"):
        return dynamic_scale(reference_abs_max(x), 8 if qtype is DataType.QINT8 else 16)
    return attrs["scale_a"]


class DynamicInput:
    """The run-time scale of one prepared step's quantized input (see the module docstring).

    ``bind(x, epilogues)`` returns the ``[scale, zero point]`` array to give the input's
    preparation, and the call that, when the step runs, sets it from ``x``'s current values and
    rescales each ``(epilogue, scale_w)``. The call must run before the preparation; the
    epilogues must be the prepared step's own (another thread's run would rescale shared ones).
    """

    def __init__(self, qtype: DataType, za: int) -> None:
        self.bits = 8 if qtype is DataType.QINT8 else 16
        self.za = int(za)

    def bind(
        self, x: np.ndarray, epilogues: Sequence[tuple[Epilogue, np.ndarray]]
    ) -> tuple[np.ndarray, Callable[[], None]]:
        qparams = np.array([1.0, self.za], np.float32)
        view, bits_of = _bits_view(x), self.bits

        def choose_scale() -> None:
            scale = dynamic_scale(_abs_max(view), bits_of)
            qparams[0] = scale
            for ep, scale_w in epilogues:
                ep.rescale(scale, scale_w)

        return qparams, choose_scale
