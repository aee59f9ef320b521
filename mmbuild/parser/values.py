"""What the importer knows of an ONNX value: a tensor of the network, a constant array, or a
shape computation still being folded.

A ``Value`` holds an ``ITensor`` (computed at run time, or a const node), a known ``array``, or
both. A shape read from a tensor with run-time (-1) dimensions is an object array whose unknown
entries are ``Dim`` symbols, so ``Shape -> Gather -> Concat -> Reshape`` folds even at a free
batch size: a symbol that copies dimension ``i`` of the reshaped tensor into position ``i``
becomes Reshape's ``0``. Example: ``x`` of shape [-1, 8, 4, 4], ``Concat(Shape(x)[0:1], [-1])``
is the object array ``[Dim(x, 0), -1]``, which reshapes ``x`` with the shape ``[0, -1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmbuild.ir.tensor import ITensor


@dataclass(frozen=True)
class Dim:
    """A dimension known only at run time: axis ``axis`` of the tensor named ``tensor``, or an
    expression of such dimensions (``tensor`` is then None)."""

    tensor: str | None
    axis: int = -1

    def __repr__(self) -> str:
        return f"Dim({self.tensor}, {self.axis})" if self.tensor else "Dim(?)"


UNKNOWN = Dim(None)


@dataclass(frozen=True)
class QuantParams:
    """ONNX linear quantization: ``q = clip(rint(x / scale) + zero_point, qmin, qmax)``."""

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    axis: int


@dataclass
class Value:
    """One ONNX value during import (see the module docstring)."""

    name: str
    tensor: ITensor | None = None
    array: np.ndarray | None = None
    # the output of a QuantizeLinear waiting for its DequantizeLinear: the float value it
    # quantizes (``source``) and its parameters
    quant: QuantParams | None = None
    source: Value | None = None
    # the parameters a DequantizeLinear of an integer constant dequantized ``array`` with: a
    # weight's given scales, which its reader passes on to the builder (ops_quant.give_scale)
    given: QuantParams | None = None

    @property
    def is_known(self) -> bool:
        """True when every element is known now (a constant, or a folded shape)."""
        return self.array is not None and not is_symbolic(self.array)

    @property
    def is_folding(self) -> bool:
        """True for a shape computation that holds run-time dimensions."""
        return self.array is not None and is_symbolic(self.array)


def is_symbolic(a: np.ndarray) -> bool:
    return a.dtype == object


def symbolic_shape(name: str, dims: list[int]) -> np.ndarray:
    """The shape of tensor ``name`` as an int64 array, or an object array with a ``Dim`` for
    each run-time dimension."""
    if all(d >= 0 for d in dims):
        return np.asarray(dims, dtype=np.int64)
    out = np.empty(len(dims), dtype=object)
    for i, d in enumerate(dims):
        out[i] = Dim(name, i) if d < 0 else int(d)
    return out


def as_object(a: np.ndarray) -> np.ndarray:
    """An int array as an object array of Python ints (symbolic arrays pass through)."""
    if is_symbolic(a):
        return a
    out = np.empty(a.shape, dtype=object)
    out.ravel()[:] = [int(v) for v in a.ravel()]
    return out


def simplify(a: np.ndarray) -> np.ndarray:
    """An object array whose symbols have all been replaced by ints back as int64."""
    if is_symbolic(a) and not any(isinstance(v, Dim) for v in a.ravel()):
        return np.asarray([int(v) for v in a.ravel()], dtype=np.int64).reshape(a.shape)
    return a
