"""IMaxPool2DNode and IAvgPool2DNode: 2-D pooling over the spatial axes of an NHWC or NCHW tensor.

The window attributes (kernel, stride, pads, padding mode, layouts, ceil mode) live in
``Pool2DLike``; the two nodes differ only in what they do with a window.

Defaults, and why:

- The kernel is 1x1 until ``set_kernel``: it fits any input, so the node can be added before its
  window is known (MagicMind and TensorRT users always give the window; TensorRT takes it when
  the layer is made).
- The stride follows the kernel until ``set_stride``, as ``nn.MaxPool2d(k)`` and Keras do:
  ``set_kernel(2, 2)`` alone halves H and W. ONNX's default stride is 1, not the kernel, so code
  that ports an ONNX graph passes its strides explicitly.
- Every pad must be smaller than the kernel (no window may hold only padding), as onnxruntime
  requires. Setters apply one at a time and each state must fit, so this is checked from the
  moment a kernel is set: ``set_pad`` may come first, and a 1-wide input can take kernel 3 with
  pads 1. ``set_layout`` should come before ``set_kernel``, which reads H and W through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmbuild.errors import MMError, Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import Layout
from mmbuild.ops._common import require_float, require_rank, same_pads
from mmbuild.ops.conv import IPaddingMode
from mmbuild.ops.registry import register_op

__all__ = ["IAvgPool2DNode", "IMaxPool2DNode", "Pool2DLike"]


def pool_out(size: int, k: int, stride: int, pad_begin: int, pad_end: int, ceil: bool) -> int:
    """Output length of a pooling window along one axis (-1 when ``size`` is -1).

    ``floor((size + pad_begin + pad_end - k) / stride) + 1``, or with ``ceil`` the ceiling; in
    ceil mode a last window that would start in the end padding is dropped, as onnxruntime and
    PyTorch do. Example: size 6, kernel 2, stride 2, pads (0, 1): floor gives 3; the ceiling gives
    4, but window 4 would start at 6, past the input, so the result is 3.

    >>> pool_out(8, 3, 2, 0, 0, False), pool_out(8, 3, 2, 0, 0, True), pool_out(6, 2, 2, 0, 1, True)
    (3, 4, 3)
    """
    if size < 0:
        return -1
    span = size + pad_begin + pad_end - k
    if span < 0:
        return 0
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


class Pool2DLike(INode):
    """Window attributes shared by max and average pooling."""

    policy = Policy.NEVER
    defaults = {
        "kernel": None,  # None: not set yet, a 1x1 window whose pads are not checked
        "stride": None,  # None: the stride follows the kernel
        "pad": (0, 0, 0, 0),
        "padding_mode": IPaddingMode.EXPLICIT,
        "layout": (Layout.NHWC, Layout.NHWC),
        "ceil_mode": False,
    }

    @classmethod
    def create(cls, network: Network, x: ITensor, ceil_mode: bool = False) -> INode:  # type: ignore[override]
        if not isinstance(ceil_mode, (bool, np.bool_)):
            raise MMError(
                f"add_i_{cls.op}_node: ceil_mode must be True or False, not {ceil_mode!r}"
            )
        return network._add_node(cls, [x], {"ceil_mode": bool(ceil_mode)})

    # -- setters --------------------------------------------------------------------------------
    def set_kernel(self, kernel_h: int, kernel_w: int) -> Status:
        """The window size; while no stride is set, the stride follows it."""
        return self._set(kernel=self.int_args((kernel_h, kernel_w), 2, "set_kernel", 1))

    def set_stride(self, stride_h: int, stride_w: int) -> Status:
        return self._set(stride=self.int_args((stride_h, stride_w), 2, "set_stride", 1))

    def set_pad(self, top: int, bottom: int, left: int, right: int) -> Status:
        """Explicit pads (used in ``IPaddingMode.EXPLICIT``, the default mode)."""
        return self._set(pad=self.int_args((top, bottom, left, right), 4, "set_pad", 0))

    def set_padding_mode(self, mode: IPaddingMode) -> Status:
        """EXPLICIT (the pads of ``set_pad``), SAME (TensorFlow: output = ceil(input / stride),
        the extra pad at the end) or VALID (no padding)."""
        if not isinstance(mode, IPaddingMode):
            raise self.error(f"set_padding_mode takes an mm.IPaddingMode, not {mode!r}")
        return self._set(padding_mode=mode)

    def set_layout(self, input_layout: Layout, output_layout: Layout) -> Status:
        """NHWC (the default) or NCHW, for the input and the output independently."""
        for what, value in (("input", input_layout), ("output", output_layout)):
            if value not in (Layout.NHWC, Layout.NCHW):
                raise self.error(
                    f"set_layout: the {what} layout {value!r} is not mm.Layout.NHWC or "
                    "mm.Layout.NCHW"
                )
        return self._set(layout=(input_layout, output_layout))

    def set_ceil_mode(self, ceil_mode: bool) -> Status:
        if not isinstance(ceil_mode, (bool, np.bool_)):
            raise self.error(f"set_ceil_mode takes True or False, not {ceil_mode!r}")
        return self._set(ceil_mode=bool(ceil_mode))

    def get_kernel(self) -> tuple[int, int]:
        """The kernel in effect: the one set, or 1x1 before ``set_kernel``."""
        return self.attrs["kernel"] or (1, 1)

    def get_stride(self) -> tuple[int, int]:
        """The stride in effect: the one set, or the kernel when none was set."""
        return self.attrs["stride"] or self.get_kernel()

    def get_pad(self) -> tuple[int, int, int, int]:
        return self.attrs["pad"]

    def get_ceil_mode(self) -> bool:
        return self.attrs["ceil_mode"]

    # -- shape rule -----------------------------------------------------------------------------
    def pads_for(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for an input of h x w under the padding mode."""
        mode = self.attrs["padding_mode"]
        if mode is IPaddingMode.VALID:
            return (0, 0, 0, 0)
        if mode is IPaddingMode.SAME:
            (kh, kw), (sh, sw) = self.get_kernel(), self.get_stride()
            # a run-time dimension gets its SAME pads at run time; they are below the kernel
            top_bottom = same_pads(h, kh, sh) if h >= 0 else (0, 0)
            left_right = same_pads(w, kw, sw) if w >= 0 else (0, 0)
            return (*top_bottom, *left_right)
        return self.attrs["pad"]

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), ceil = self.get_kernel(), self.get_stride(), self.get_ceil_mode()
        pt, pb, pl, pr = self.pads_for(h, w)
        return (pool_out(h, kh, sh, pt, pb, ceil), pool_out(w, kw, sw, pl, pr, ceil))

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_rank(self, inputs[0], 0, 4)
        require_float(self, inputs, [0])
        x = inputs[0]
        n, h, w, c = self._to_nhwc(x.dims)
        (kh, kw), pads = self.get_kernel(), self.pads_for(h, w)
        sides = zip(("top", "bottom", "left", "right"), pads, (kh, kh, kw, kw), "HHWW")
        for side, p, k, axis in sides if self.attrs["kernel"] else ():
            if p >= k:
                raise self.error(
                    f"the {side} pad {p} is not smaller than the kernel's {axis} size {k}: a "
                    f"window could hold only padding; lower the pad below {k} or enlarge the kernel"
                )
        ho, wo = self.out_hw(h, w)
        if ho == 0 or wo == 0:
            layout = self.attrs["layout"][0].name
            raise self.error(
                f"the {kh}x{kw} kernel does not fit the input {list(x.dims)} (read as {layout}: "
                f"H x W = {h}x{w}) with pads {list(pads)}; lower the kernel or add padding "
                "(set_layout and set_pad before set_kernel)"
            )
        return [TensorSpec(self._from_nhwc((n, ho, wo, c)), x.dtype)]

    # -- reference helpers ----------------------------------------------------------------------
    def _to_nhwc(self, dims: Sequence[int]) -> tuple[int, ...]:
        n, a, b, c = dims
        return (n, b, c, a) if self.attrs["layout"][0] is Layout.NCHW else (n, a, b, c)

    def _from_nhwc(self, dims: Sequence[int]) -> tuple[int, ...]:
        n, h, w, c = dims
        return (n, c, h, w) if self.attrs["layout"][1] is Layout.NCHW else (n, h, w, c)

    def _windows(
        self, x: np.ndarray, fill: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """The windows of NHWC ``x`` as [N, Ho, Wo, C, Kh, Kw], padded with ``fill``.

        Also gives, per output position, the count of input elements in the window and the count
        of input-or-pad elements (the window clipped to the padded extent, which a ceil-mode
        window can overhang), and the output spatial shape.
        """
        _, h, w, _ = x.shape
        (kh, kw), (sh, sw) = self.get_kernel(), self.get_stride()
        pt, pb, pl, pr = self.pads_for(h, w)
        if self.attrs["kernel"] is None and any((pt, pb, pl, pr)):
            # the one state shape inference lets through: pads waiting for their kernel
            raise self.error(
                f"pads {[pt, pb, pl, pr]} are set but the kernel never was, so windows of "
                "padding alone would reach the output; call set_kernel"
            )
        ho, wo = self.out_hw(h, w)
        # rows beyond the explicit pads that a ceil-mode window overhangs
        over_h = max((ho - 1) * sh + kh - (h + pt + pb), 0)
        over_w = max((wo - 1) * sw + kw - (w + pl + pr), 0)
        xp = np.pad(
            x,
            ((0, 0), (pt, pb + over_h), (pl, pr + over_w), (0, 0)),
            constant_values=fill,
        )
        win = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :ho, :wo]

        def counts(mask: np.ndarray) -> np.ndarray:
            m = np.pad(mask, ((0, over_h), (0, over_w)))
            cw = sliding_window_view(m, (kh, kw))[::sh, ::sw][:ho, :wo]
            return cw.sum(axis=(2, 3)).astype(np.float64)

        real = np.zeros((h + pt + pb, w + pl + pr))
        real[pt : pt + h, pl : pl + w] = 1
        padded = np.ones_like(real)
        return win, counts(real), counts(padded), (ho, wo)

    def _to_nhwc_array(self, x: np.ndarray) -> np.ndarray:
        return x.transpose(0, 2, 3, 1) if self.attrs["layout"][0] is Layout.NCHW else x

    def _from_nhwc_array(self, y: np.ndarray) -> np.ndarray:
        y = y.transpose(0, 3, 1, 2) if self.attrs["layout"][1] is Layout.NCHW else y
        return np.ascontiguousarray(y, dtype=np.float32)


@register_op
class IMaxPool2DNode(Pool2DLike):
    """Max pooling ``y[n,i,j,c] = max_{a<Kh, b<Kw} xp[n, i*sh + a, j*sw + b, c]``, where ``xp`` is
    the input padded with -inf (so padding never wins).

    Example: a [1, 4, 4, 1] input holding 0..15 row by row, ``set_kernel(2, 2)`` and the default
    stride (the kernel) gives [1, 2, 2, 1] holding [[5, 7], [13, 15]]. With ``ceil_mode=True`` a
    5x5 input gives 3x3: the last row and column of windows overhang the input.

    Runs in the precision of its input (max commutes with a monotonic quantization).
    """

    node_type = "IMaxPool2DNode"
    op = "maxpool2d"
    policy = Policy.FOLLOW

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = self._to_nhwc_array(np.asarray(arrays[0], dtype=np.float32))
        win, _, _, _ = self._windows(x, -np.inf)
        return [self._from_nhwc_array(win.max(axis=(4, 5)))]


@register_op
class IAvgPool2DNode(Pool2DLike):
    """Average pooling ``y[n,i,j,c] = sum_{window} x / count``, computed in float64.

    ``count`` is the number of input elements in the window (the default, as ONNX's
    ``count_include_pad=0``), or with ``set_count_include_pad(True)`` the window's size clipped
    to the explicitly padded input: the part of a ceil-mode window that overhangs the end padding
    is never counted (as onnxruntime and PyTorch do).

    Example: x = [[1, 2, 3]] (H=1, W=3), kernel 1x2, stride 1x2, pads left 1: the windows are
    [pad, 1] and [2, 3]; the output is [1, 2.5], or [0.5, 2.5] when padding counts.
    """

    node_type = "IAvgPool2DNode"
    op = "avgpool2d"
    policy = Policy.NEVER
    defaults = {**Pool2DLike.defaults, "count_include_pad": False}

    def set_count_include_pad(self, flag: bool) -> Status:
        """Whether padded positions count in the divisor (default False, as ONNX)."""
        if not isinstance(flag, (bool, np.bool_)):
            raise self.error(f"set_count_include_pad takes True or False, not {flag!r}")
        return self._set(count_include_pad=bool(flag))

    def get_count_include_pad(self) -> bool:
        return self.attrs["count_include_pad"]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x = self._to_nhwc_array(np.asarray(arrays[0], dtype=np.float64))
        win, real, padded, _ = self._windows(x, 0.0)
        count = padded if self.attrs["count_include_pad"] else real
        y = win.sum(axis=(4, 5)) / count[None, :, :, None]
        return [self._from_nhwc_array(y)]
