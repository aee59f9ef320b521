"""IDeconvNode: 2-D transposed convolution (deconvolution), the adjoint of ``IConvNode``.

It shares the window attributes of ``ConvLike`` (stride, pad, dilation, group, padding mode,
layouts) and adds ``set_output_padding``. ``deconv2d_nhwc`` is the arithmetic, usable on int64
arrays for exact integer references.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmbuild.errors import Status
from mmbuild.ir.node import TensorSpec
from mmbuild.ops._common import require_float, require_rank
from mmbuild.ops.conv import ConvLike, IPaddingMode
from mmbuild.ops.registry import register_op

__all__ = ["IDeconvNode", "deconv2d_nhwc"]


def deconv_out(
    size: int, k: int, stride: int, pad: int, dilation: int = 1, output_padding: int = 0
) -> int:
    """Output length of a transposed convolution; -1 stays -1.

    ``(size - 1) * stride - pad + dilation * (k - 1) + output_padding + 1``, ``pad`` the total of
    both ends. Example: size 16, k 3, stride 2, pads 1 + 1, output_padding 1 gives
    15 * 2 - 2 + 2 + 1 + 1 = 32.

    >>> deconv_out(16, 3, 2, 2, 1, 1), deconv_out(-1, 3, 2, 2)
    (32, -1)
    """
    if size < 0:
        return -1
    return (size - 1) * stride - pad + dilation * (k - 1) + output_padding + 1


def deconv_same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(head, tail) crops that make a SAME transposed convolution ``size * stride`` long.

    The full result is ``(size - 1) * stride + dilation * (k - 1) + 1`` long; the extra
    ``total = dilation * (k - 1) + 1 - stride`` is cropped ``total // 2`` at the head and the rest
    at the tail (TensorFlow's ``conv2d_transpose``, the adjoint of IConvNode's SAME, and ONNX
    ConvTranspose's ``SAME_UPPER``). When the kernel is shorter than the stride, ``total`` is
    negative: the tail "crop" is negative, that is, zeros are appended (ONNX stops short there
    instead). Example: k 5, stride 2: total 3, crops (1, 2); k 1, stride 2: crops (0, -1).

    >>> deconv_same_pads(8, 5, 2), deconv_same_pads(8, 1, 2)
    ((1, 2), (0, -1))
    """
    total = dilation * (k - 1) + 1 - stride
    head = max(total, 0) // 2
    return head, total - head


@register_op
class IDeconvNode(ConvLike):
    """2-D transposed convolution: every input pixel scatters a filter-weighted window,
    ``y[n, h*sh + i*dh - pt, w*sw + j*dw - pl, g*Og + o] += x[n, h, w, g*Cg + c] * W[g*Cg + c,
    i, j, o]`` plus ``b[g*Og + o]``, with ``Cg = Cin / group`` and ``Og = Cout / group``.

    Layouts: NHWC input [N, H, W, Cin] and filter [Cin, Kh, Kw, Cout/group] by default; with
    ``set_layout`` an NCHW input and filter [Cin, Cout/group, Kh, Kw] (ONNX ConvTranspose), or
    an HWCN filter [Kh, Kw, Cout/group, Cin] (TensorFlow ``conv2d_transpose``). Until
    ``set_layout`` and ``set_group`` are called, the shapes imply them (the group from the bias,
    Cout / (Cout/group); see ``ConvLike``).

    Output size per spatial axis: ``(in - 1) * stride - (pad_begin + pad_end) +
    dilation * (k - 1) + output_padding + 1``; pads crop the full result and ``output_padding``
    adds rows and columns at the end (they receive only the bias). ``set_output_padding``
    takes any value >= 0; ONNX and PyTorch also ask for it to be below the stride or dilation.
    Under ``IPaddingMode.SAME`` the output is exactly ``in * stride`` (see ``deconv_same_pads``)
    and ``output_padding`` is not used; VALID means no pads.

    Example: a [1, 16, 16, 8] input, a 3x3 filter [8, 3, 3, 4], stride 2, pads 1 on every side
    and output_padding (1, 1) give 15 * 2 - 2 + 2 + 1 + 1 = 32: [1, 32, 32, 4]. By hand, a 2x2
    input [[1, 2], [3, 4]] with a 2x2 filter of ones and stride 1 gives
    [[1, 3, 2], [4, 10, 6], [3, 7, 4]].
    """

    node_type = "IDeconvNode"
    op = "deconv"
    defaults = {**ConvLike.defaults, "output_padding": (0, 0)}

    def set_output_padding(self, output_padding_h: int, output_padding_w: int) -> Status:
        """Extra rows and columns at the bottom and right of the output (ONNX output_padding)."""
        value = self.int_args(
            (output_padding_h, output_padding_w), 2, "set_output_padding", minimum=0
        )
        return self._set(output_padding=value)

    def get_output_padding(self) -> tuple[int, int]:
        return self.attrs["output_padding"]

    def implied_group(self, inputs: Sequence[TensorSpec]) -> int | None:
        """The group that the bias implies (Cout / (Cout/group)): the filter fits the input
        whatever the group, which only sets Cout."""
        if len(inputs) < 3 or inputs[1].rank != 4 or inputs[2].rank != 1:
            return None
        cout, cout_g = inputs[2].dims[0], self.filter_ohwi(inputs[1].dims)[3]
        return cout // cout_g if cout > 0 and cout_g > 0 and cout % cout_g == 0 else None

    def pads_for(self, h: int, w: int, kh: int, kw: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) crops for an input of h x w under the padding mode."""
        if self.attrs["padding_mode"] is IPaddingMode.SAME:
            sh, sw = self.attrs["stride"]
            dh, dw = self.attrs["dilation"]
            return (*deconv_same_pads(h, kh, sh, dh), *deconv_same_pads(w, kw, sw, dw))
        return super().pads_for(h, w, kh, kw)

    def output_padding(self) -> tuple[int, int]:
        """The output padding in effect: none under SAME, where the output is in * stride."""
        if self.attrs["padding_mode"] is IPaddingMode.SAME:
            return (0, 0)
        return self.attrs["output_padding"]

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_rank(self, inputs[0], 0, 4)
        require_rank(self, inputs[1], 1, 4)
        require_float(self, inputs, range(len(inputs)))
        self.check_filter_static(inputs)
        n, h, w, cin = self.to_nhwc(inputs[0].dims)
        cin_f, kh, kw, cout_g = self.filter_ohwi(inputs[1].dims)  # "O" is the input channels
        g = self.attrs["group"]
        if cin != -1 and cin != cin_f:
            raise self.error(
                f"{self.input_label(0)} has {cin} channels (shape {list(inputs[0].dims)}) but "
                f"the filter (shape {list(inputs[1].dims)}) takes {cin_f} input channels; a "
                "deconvolution filter is [Cin, Kh, Kw, Cout/group] in NHWC and "
                "[Cin, Cout/group, Kh, Kw] in NCHW, so fix its Cin dimension"
            )
        if cin_f % g:
            raise self.error(
                f"the filter (shape {list(inputs[1].dims)}) has {cin_f} input channels, which do "
                f"not divide into {g} groups; set_group to a divisor of {cin_f}"
            )
        cout = cout_g * g
        self.check_bias(inputs, cout)
        (sh, sw), (dh, dw) = self.attrs["stride"], self.attrs["dilation"]
        oph, opw = self.output_padding()
        pt, pb, pl, pr = self.pads_for(h, w, kh, kw)
        ho = deconv_out(h, kh, sh, pt + pb, dh, oph)
        wo = deconv_out(w, kw, sw, pl + pr, dw, opw)
        if (h >= 0 and ho <= 0) or (w >= 0 and wo <= 0):
            raise self.error(
                f"the pads ({pt}, {pb}, {pl}, {pr}) crop away the whole {kh}x{kw} deconvolution "
                f"output of the input {list(inputs[0].dims)} (it would be {ho}x{wo}); "
                "lower the pads"
            )
        return [TensorSpec(self.from_nhwc((n, ho, wo, cout)), inputs[0].dtype)]

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.reference_nhwc(arrays, self.filter_perm(), deconv2d_nhwc, self.output_padding())

    def filter_perm(self) -> tuple[int, ...]:
        """The axis permutation that brings the filter to [Cin, Kh, Kw, Cout/group]."""
        dims = tuple(range(4))
        return self.filter_ohwi(dims)


def deconv2d_nhwc(
    x: np.ndarray,
    w_ihwo: np.ndarray,
    stride: Sequence[int],
    pads: Sequence[int],
    dilation: Sequence[int],
    group: int,
    output_padding: Sequence[int] = (0, 0),
) -> np.ndarray:
    """Grouped 2-D transposed convolution of NHWC ``x`` with ``w_ihwo`` [Cin, Kh, Kw, Cout/g].

    ``pads`` (top, bottom, left, right) crop the full result; a negative pad at the end appends
    zeros instead (SAME with a kernel shorter than the stride). ``output_padding`` (h, w) appends
    zero rows / columns. Computes in the dtype of the inputs: integer inputs accumulate exactly
    (pass int64 arrays), so the quantized references use it too.
    """
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = stride, dilation, pads
    oph, opw = output_padding
    n, h, w, cin = x.shape
    _, kh, kw, cout_g = w_ihwo.shape
    cin_g = cin // group
    # every input pixel times every filter tap: [N, H, W, Kh, Kw, G, Cout/g]
    taps = np.einsum(
        "nhwgc,gcijo->nhwijgo",
        x.reshape(n, h, w, group, cin_g),
        w_ihwo.reshape(group, cin_g, kh, kw, cout_g),
        optimize=True,
    )
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    full_w = (w - 1) * sw + dw * (kw - 1) + 1 + opw
    ho, wo = full_h - pt - pb, full_w - pl - pr
    buf = np.zeros((n, max(full_h, pt + ho), max(full_w, pl + wo), group, cout_g), taps.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (h - 1) * sh + 1, sh)
            cols = slice(j * dw, j * dw + (w - 1) * sw + 1, sw)
            buf[:, rows, cols] += taps[:, :, :, i, j]
    return buf[:, pt : pt + ho, pl : pl + wo].reshape(n, ho, wo, group * cout_g)
