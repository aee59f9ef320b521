"""IConvNode: 2-D convolution (groups and depthwise through ``set_group``).

The window attributes (stride, pad, dilation, group, padding mode, layouts) live in ``ConvLike``,
which deconvolution shares.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmbuild.errors import Status
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode, Policy, TensorSpec
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import Layout
from mmbuild.ops._common import require_float, require_rank, same_pads, window_out
from mmbuild.ops.registry import register_op

__all__ = ["ConvLike", "IConvNode", "IPaddingMode", "conv2d_nhwc"]


class IPaddingMode(enum.Enum):
    EXPLICIT = "explicit"  # the pads of set_pad
    SAME = "same"  # TensorFlow SAME: output = ceil(input / stride), extra padding at the end
    VALID = "valid"  # no padding


# filter layout -> the permutation that brings it to [Cout, Kh, Kw, Cin/group] ("OHWI")
_FILTER_TO_OHWI = {Layout.NHWC: (0, 1, 2, 3), Layout.NCHW: (0, 2, 3, 1), Layout.HWCN: (3, 0, 1, 2)}


class ConvLike(INode):
    """Window attributes shared by convolution and deconvolution."""

    policy = Policy.ALWAYS
    quantizable_inputs = (0, 1)
    input_names = ("input", "filter", "bias")
    defaults = {
        "stride": (1, 1),
        "pad": (0, 0, 0, 0),
        "dilation": (1, 1),
        "group": 1,
        "padding_mode": IPaddingMode.EXPLICIT,
        "layout": (Layout.NHWC, Layout.NHWC, Layout.NHWC),
    }

    @classmethod
    def create(cls, network: Network, x: ITensor, w: ITensor, b: ITensor | None = None) -> INode:  # type: ignore[override]
        return network._add_node(cls, [x, w, b], {})

    def set_stride(self, stride_h: int, stride_w: int) -> Status:
        return self._set(stride=self.int_args((stride_h, stride_w), 2, "set_stride", 1))

    def set_pad(self, top: int, bottom: int, left: int, right: int) -> Status:
        return self._set(pad=self.int_args((top, bottom, left, right), 4, "set_pad", 0))

    def set_dilation(self, dilation_h: int, dilation_w: int) -> Status:
        return self._set(dilation=self.int_args((dilation_h, dilation_w), 2, "set_dilation", 1))

    def set_group(self, group: int) -> Status:
        return self._set(group=self.int_args(group, 1, "set_group", 1)[0])

    def set_padding_mode(self, mode: IPaddingMode) -> Status:
        if not isinstance(mode, IPaddingMode):
            raise self.error(f"set_padding_mode takes an mm.IPaddingMode, not {mode!r}")
        return self._set(padding_mode=mode)

    def set_layout(
        self, input_layout: Layout, filter_layout: Layout, output_layout: Layout
    ) -> Status:
        """Data and filter layouts: NHWC (filter [Cout, Kh, Kw, Cin/g]) or NCHW (filter
        [Cout, Cin/g, Kh, Kw]); HWCN filters ([Kh, Kw, Cin/g, Cout]) are accepted too."""
        for what, value, allowed in (
            ("input", input_layout, (Layout.NHWC, Layout.NCHW)),
            ("filter", filter_layout, tuple(_FILTER_TO_OHWI)),
            ("output", output_layout, (Layout.NHWC, Layout.NCHW)),
        ):
            if value not in allowed:
                names = ", ".join(f"mm.Layout.{v.name}" for v in allowed)
                raise self.error(f"set_layout: the {what} layout {value!r} is not one of {names}")
        return self._set(layout=(input_layout, filter_layout, output_layout))

    def get_stride(self) -> tuple[int, int]:
        return self.attrs["stride"]

    def get_pad(self) -> tuple[int, int, int, int]:
        return self.attrs["pad"]

    def get_dilation(self) -> tuple[int, int]:
        return self.attrs["dilation"]

    def get_group(self) -> int:
        return self.attrs["group"]

    # -- layout helpers -----------------------------------------------------------------------
    def to_nhwc(self, dims: Sequence[int]) -> tuple[int, ...]:
        n, a, b, c = dims
        return (n, b, c, a) if self.attrs["layout"][0] is Layout.NCHW else (n, a, b, c)

    def from_nhwc(self, dims: Sequence[int]) -> tuple[int, ...]:
        n, h, w, c = dims
        return (n, c, h, w) if self.attrs["layout"][2] is Layout.NCHW else (n, h, w, c)

    def filter_ohwi(self, dims: Sequence[int]) -> tuple[int, ...]:
        """The filter shape as [O, Kh, Kw, I] (for deconvolution O is its input channels)."""
        perm = _FILTER_TO_OHWI[self.attrs["layout"][1]]
        return tuple(dims[p] for p in perm)

    def pads_for(self, h: int, w: int, kh: int, kw: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for an input of h x w under the padding mode."""
        mode = self.attrs["padding_mode"]
        if mode is IPaddingMode.VALID:
            return (0, 0, 0, 0)
        if mode is IPaddingMode.SAME:
            sh, sw = self.attrs["stride"]
            dh, dw = self.attrs["dilation"]
            return (*same_pads(h, kh, sh, dh), *same_pads(w, kw, sw, dw))
        return self.attrs["pad"]

    def check_bias(self, inputs: Sequence[TensorSpec], cout: int) -> None:
        if len(inputs) > 2 and tuple(inputs[2].dims) != (cout,):
            raise self.error(
                f"{self.input_label(2)} has shape {list(inputs[2].dims)}; it must be [{cout}], one "
                "value per output channel"
            )


@register_op
class IConvNode(ConvLike):
    """2-D convolution ``y[n,h,w,o] = b[o] + sum_{i,j,c} x[n, h*sh+i*dh-pt, w*sw+j*dw-pl, g*Cg+c]
    * W[o, i, j, c]`` over the group ``g`` of output channel ``o``.

    NHWC input [N, H, W, Cin] and filter [Cout, Kh, Kw, Cin/group] by default. Example: a 3x3
    filter, stride 2, pads 1 on a [1, 32, 32, 3] input gives [1, 16, 16, Cout]. Depthwise
    convolution is ``set_group(Cin)`` with a filter [Cin * multiplier, Kh, Kw, 1].
    """

    node_type = "IConvNode"
    op = "conv"

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_rank(self, inputs[0], 0, 4)
        require_rank(self, inputs[1], 1, 4)
        require_float(self, inputs, range(len(inputs)))
        n, h, w, cin = self.to_nhwc(inputs[0].dims)
        cout, kh, kw, cin_g = self.filter_ohwi(inputs[1].dims)
        g = self.attrs["group"]
        if cin != -1 and cin != cin_g * g:
            raise self.error(
                f"{self.input_label(0)} has {cin} channels (shape {list(inputs[0].dims)}) but "
                f"the filter (shape {list(inputs[1].dims)}) takes {cin_g} per group x {g} groups "
                f"= {cin_g * g}; fix the filter's Cin/group dimension or set_group"
            )
        if cout % g:
            raise self.error(f"the filter's {cout} output channels do not divide into {g} groups")
        self.check_bias(inputs, cout)
        (sh, sw), (dh, dw) = self.attrs["stride"], self.attrs["dilation"]
        pt, pb, pl, pr = self.pads_for(h, w, kh, kw)
        ho = -1 if h < 0 else window_out(h, kh, sh, pt + pb, dh)
        wo = -1 if w < 0 else window_out(w, kw, sw, pl + pr, dw)
        if ho == 0 or wo == 0 or ho < -1 or wo < -1:
            raise self.error(
                f"the {kh}x{kw} filter (dilation {dh}x{dw}) does not fit the padded {h}x{w} input "
                f"{list(inputs[0].dims)}; lower the kernel or dilation or add padding"
            )
        return [TensorSpec(self.from_nhwc((n, ho, wo, cout)), inputs[0].dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        x, w = arrays[0], arrays[1]
        x = x.transpose(0, 2, 3, 1) if self.attrs["layout"][0] is Layout.NCHW else x
        w = w.transpose(_FILTER_TO_OHWI[self.attrs["layout"][1]])
        y = conv2d_nhwc(
            x.astype(np.float64),
            w.astype(np.float64),
            self.attrs["stride"],
            self.pads_for(x.shape[1], x.shape[2], w.shape[1], w.shape[2]),
            self.attrs["dilation"],
            self.attrs["group"],
        )
        if len(arrays) > 2:
            y = y + arrays[2].astype(np.float64)
        y = y.transpose(0, 3, 1, 2) if self.attrs["layout"][2] is Layout.NCHW else y
        return [y.astype(np.float32)]


def conv2d_nhwc(
    x: np.ndarray,
    w: np.ndarray,
    stride: Sequence[int],
    pads: Sequence[int],
    dilation: Sequence[int],
    group: int,
) -> np.ndarray:
    """Grouped 2-D convolution of NHWC ``x`` with OHWI ``w``, in the dtype of the inputs.

    Integer inputs accumulate exactly (pass int64 arrays), so the quantized references use it too.
    """
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = stride, dilation, pads
    cout, kh, kw, cin_g = w.shape
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    win = win[:, ::sh, ::sw, :, ::dh, ::dw]  # [N, Ho, Wo, Cin, Kh, Kw]
    n, ho, wo = win.shape[:3]
    win = win.reshape(n, ho, wo, group, cin_g, kh, kw)
    wg = w.reshape(group, cout // group, kh, kw, cin_g)
    y = np.einsum("nhwgcij,goijc->nhwgo", win, wg, optimize=True)
    return y.reshape(n, ho, wo, cout)
