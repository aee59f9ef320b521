"""Ops that recompute values without mixing channels: resize (nearest, bilinear) and cast."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mmbuild.errors import MMError, Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import DataType, Layout
from mmbuild.ops._common import require_float, require_rank
from mmbuild.ops.registry import register_op
from mmbuild.ops.shape import int_values

__all__ = [
    "ICastNode",
    "IResizeCoordinateMode",
    "IResizeMode",
    "IResizeNearestMode",
    "IResizeNode",
]


class IResizeMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"  # ONNX Resize mode "linear" on the two spatial dimensions


class IResizeCoordinateMode(enum.Enum):
    """How output index ``x`` maps to the input coordinate (ONNX coordinate_transformation_mode).

    ``scale`` is the given scale, or out / in when a size was given.
    """

    HALF_PIXEL = "half_pixel"  # (x + 0.5) / scale - 0.5: TF2, PyTorch align_corners=False
    PYTORCH_HALF_PIXEL = "pytorch_half_pixel"  # as HALF_PIXEL, but 0 when the output length is 1
    ALIGN_CORNERS = "align_corners"  # x * (in - 1) / (out - 1), 0 when out is 1
    ASYMMETRIC = "asymmetric"  # x / scale: TF1 align_corners=False, PyTorch nearest


class IResizeNearestMode(enum.Enum):
    """How NEAREST rounds the input coordinate (ONNX nearest_mode)."""

    ROUND_PREFER_FLOOR = "round_prefer_floor"  # round half down: 2.5 -> 2, 2.6 -> 3
    ROUND_PREFER_CEIL = "round_prefer_ceil"  # round half up: 2.5 -> 3
    FLOOR = "floor"  # PyTorch / TF1 nearest (with ASYMMETRIC)
    CEIL = "ceil"


_NEAREST: dict[IResizeNearestMode, Callable[[np.ndarray], np.ndarray]] = {
    IResizeNearestMode.ROUND_PREFER_FLOOR: lambda c: np.ceil(c - 0.5),
    IResizeNearestMode.ROUND_PREFER_CEIL: lambda c: np.floor(c + 0.5),
    IResizeNearestMode.FLOOR: np.floor,
    IResizeNearestMode.CEIL: np.ceil,
}


@register_op
class IResizeNode(INode):
    """Resize the two spatial dimensions: ``add_i_resize_node(x, size=None, scale=None)``.

    ``x`` is rank 4, NHWC by default (``set_layout(mm.Layout.NCHW)`` for NCHW). Give exactly one
    of ``size`` [H_out, W_out] or ``scale`` [sh, sw], with ``H_out = floor(H * sh)``. The
    defaults are ONNX Resize's: ``set_mode(mm.IResizeMode.NEAREST)`` (or BILINEAR),
    ``set_coordinate_mode(mm.IResizeCoordinateMode.HALF_PIXEL)`` and, for NEAREST,
    ``set_nearest_mode(mm.IResizeNearestMode.ROUND_PREFER_FLOOR)``. Output index ``x`` reads the
    input at ``c = (x + 0.5) / scale - 0.5`` under HALF_PIXEL, where ``scale`` is the given scale
    or H_out / H for a size (so the results match ONNX Resize with ``scales`` or ``sizes``).
    NEAREST reads ``round(c)`` clamped to the input; BILINEAR clamps ``c`` to [0, H - 1] and
    mixes ``x[floor(c)]`` and ``x[floor(c) + 1]`` by ``c - floor(c)``, then the same along W.

    Example: a row [0, 10] resized to width 4 by BILINEAR / HALF_PIXEL reads c = -0.25, 0.25,
    0.75, 1.25, so it gives [0, 2.5, 7.5, 10]; NEAREST gives [0, 0, 10, 10].
    The policy is NEVER: interpolation is arithmetic, computed in float.
    """

    node_type = "IResizeNode"
    op = "resize"
    policy = Policy.NEVER
    defaults = {
        "mode": IResizeMode.NEAREST,
        "coordinate_mode": IResizeCoordinateMode.HALF_PIXEL,
        "nearest_mode": IResizeNearestMode.ROUND_PREFER_FLOOR,
        "layout": Layout.NHWC,
    }

    @classmethod
    def create(cls, network: Network, x: ITensor, size: Any = None, scale: Any = None) -> INode:  # type: ignore[override]
        call = "add_i_resize_node"
        if (size is None) == (scale is None):
            raise MMError(f"{call}: give exactly one of size [H, W] and scale [sh, sw]")
        attrs: dict[str, Any] = {"size": None, "scale": None}
        if size is not None:
            attrs["size"] = int_values(network, size, call, "size")
            if len(attrs["size"]) != 2 or min(attrs["size"]) < 1:
                raise MMError(f"{call}: size {list(attrs['size'])} must be two sizes [H, W] >= 1")
        else:
            try:
                sc = np.asarray(scale, dtype=np.float64)
            except (TypeError, ValueError):
                raise MMError(f"{call}: scale {scale!r} must be two numbers [sh, sw]") from None
            if sc.shape != (2,) or not np.all(np.isfinite(sc)) or np.any(sc <= 0):
                raise MMError(f"{call}: scale {scale!r} must be two finite numbers [sh, sw] > 0")
            attrs["scale"] = (float(sc[0]), float(sc[1]))
        return network._add_node(cls, [x], attrs)

    def set_mode(self, mode: IResizeMode) -> Status:
        return self._set(mode=self._enum(mode, IResizeMode, "set_mode"))

    def set_coordinate_mode(self, mode: IResizeCoordinateMode) -> Status:
        return self._set(
            coordinate_mode=self._enum(mode, IResizeCoordinateMode, "set_coordinate_mode")
        )

    def set_nearest_mode(self, mode: IResizeNearestMode) -> Status:
        return self._set(nearest_mode=self._enum(mode, IResizeNearestMode, "set_nearest_mode"))

    def set_layout(self, layout: Layout) -> Status:
        if layout not in (Layout.NHWC, Layout.NCHW):
            raise self.error(f"set_layout takes mm.Layout.NHWC or mm.Layout.NCHW, not {layout!r}")
        return self._set(layout=layout)

    def get_mode(self) -> IResizeMode:
        return self.attrs["mode"]

    def get_coordinate_mode(self) -> IResizeCoordinateMode:
        return self.attrs["coordinate_mode"]

    def get_nearest_mode(self) -> IResizeNearestMode:
        return self.attrs["nearest_mode"]

    def get_layout(self) -> Layout:
        return self.attrs["layout"]

    def _enum(self, value: Any, kind: type[enum.Enum], call: str) -> Any:
        if not isinstance(value, kind):
            known = ", ".join(f"mm.{kind.__name__}.{m.name}" for m in kind)
            raise self.error(f"{call} takes one of {known}, not {value!r}")
        return value

    def _spatial_axes(self) -> tuple[int, int]:
        return (2, 3) if self.attrs["layout"] is Layout.NCHW else (1, 2)

    def _out_size(self, dims: Sequence[int]) -> tuple[int, int]:
        if self.attrs["size"] is not None:
            return self.attrs["size"]
        out = []
        for axis, s in zip(self._spatial_axes(), self.attrs["scale"]):
            d = dims[axis]
            o = -1 if d == -1 else int(np.floor(d * s))
            if o == 0 and d != 0:
                raise self.error(
                    f"scale {s} makes dimension {axis} of the input shape {list(dims)} empty "
                    f"(floor({d} * {s}) = 0); use a larger scale or give the size"
                )
            out.append(o)
        return out[0], out[1]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_rank(self, inputs[0], 0, 4)
        require_float(self, inputs, [0])
        dims = list(inputs[0].dims)
        for axis, o in zip(self._spatial_axes(), self._out_size(dims)):
            if dims[axis] == 0 and o != 0:
                raise self.error(
                    f"dimension {axis} of the input shape {list(inputs[0].dims)} is empty; "
                    "there is nothing to resize"
                )
            dims[axis] = o
        return [TensorSpec(tuple(dims), inputs[0].dtype)]

    def _coords(self, out_len: int, in_len: int, scale: float) -> np.ndarray:
        x = np.arange(out_len, dtype=np.float64)
        mode = self.attrs["coordinate_mode"]
        if mode is IResizeCoordinateMode.ALIGN_CORNERS:
            return x * ((in_len - 1) / (out_len - 1)) if out_len > 1 else x * 0
        if mode is IResizeCoordinateMode.ASYMMETRIC:
            return x / scale
        if mode is IResizeCoordinateMode.PYTORCH_HALF_PIXEL and out_len == 1:
            return x * 0
        return (x + 0.5) / scale - 0.5

    def _resize_axis(self, x: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
        n = x.shape[axis]
        c = self._coords(out_len, n, scale)
        if self.attrs["mode"] is IResizeMode.NEAREST:
            idx = np.clip(_NEAREST[self.attrs["nearest_mode"]](c), 0, n - 1).astype(np.int64)
            return np.take(x, idx, axis=axis)
        c = np.clip(c, 0, n - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        shape = [1] * x.ndim
        shape[axis] = out_len
        w = (c - lo).reshape(shape)
        return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        y = arrays[0].astype(np.float64)
        outs = self._out_size(y.shape)
        scales = self.attrs["scale"]
        for k, (axis, o) in enumerate(zip(self._spatial_axes(), outs)):
            scale = scales[k] if scales is not None else o / y.shape[axis]
            y = self._resize_axis(y, axis, o, scale)
        return [y.astype(np.float32)]


def cast_array(x: np.ndarray, dtype: DataType) -> np.ndarray:
    """``x`` as ``dtype`` under ICastNode's rules (see its docstring).

    >>> cast_array(np.array([-2.7, 2.7, 300.0, np.nan]), DataType.INT8)
    array([ -2,   2, 127,   0], dtype=int8)
    """
    target = dtype.numpy_dtype
    with np.errstate(invalid="ignore", over="ignore"):
        if x.dtype.kind == "f" and target.kind in "iu":
            info = np.iinfo(target)
            t = np.trunc(np.nan_to_num(x.astype(np.float64), nan=0.0))
            # float(info.max) may round up (int64: 2**63), so compare before converting
            high, low = t >= float(info.max), t <= float(info.min)
            out = np.where(high | low, 0, t).astype(target)
            out[high] = info.max
            out[low] = info.min
            return out
        return x.astype(target)


@register_op
class ICastNode(INode):
    """``y = x`` converted to ``dtype``: ``add_i_cast_node(x, dtype)``.

    ``dtype`` is any ``mm.DataType`` but QINT8 / QINT16 (quantization is the builder's job). The
    rules are numpy's ``astype`` where that is defined, and saturating where it is not:

    - float to integer truncates toward zero; values beyond the type saturate to its min / max,
      and NaN gives 0 (ONNX leaves these undefined). Example: [-2.7, 2.7, 300, nan] to INT8
      gives [-2, 2, 127, 0].
    - integer to narrower integer wraps around (two's complement): 300 to UINT8 is 44.
    - to BOOL is ``x != 0``; from BOOL gives 0 / 1; float32 to float16 rounds to nearest even
      and overflows to +-inf; integers to float round to nearest.

    The policy is NEVER: a cast must see the values, never the codes of a quantized tensor, so
    it is not quantized and does not follow a quantized input; its output type is the one asked.
    """

    node_type = "ICastNode"
    op = "cast"
    policy = Policy.NEVER
    fixed_output_type = True

    @classmethod
    def create(cls, network: Network, x: ITensor, dtype: DataType) -> INode:  # type: ignore[override]
        if not isinstance(dtype, DataType) or dtype.is_quantized:
            allowed = ", ".join(f"mm.DataType.{d.name}" for d in DataType if not d.is_quantized)
            raise MMError(f"add_i_cast_node: dtype {dtype!r} is not one of {allowed}")
        return network._add_node(cls, [x], {"dtype": dtype})

    def get_dtype(self) -> DataType:
        return self.attrs["dtype"]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        if inputs[0].dtype.is_quantized:
            raise self.error(
                f"{self.input_label(0)} is {inputs[0].dtype.name}, whose stored codes mean "
                "nothing without a scale; feed a FLOAT32 or FLOAT16 tensor"
            )
        return [TensorSpec(inputs[0].dims, self.attrs["dtype"])]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return [cast_array(np.asarray(arrays[0]), self.attrs["dtype"])]
