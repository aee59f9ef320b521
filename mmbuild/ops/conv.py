"""IConvNode: 2-D convolution (groups and depthwise through ``set_group``).

The window attributes (stride, pad, dilation, group, padding mode, layouts) live in ``ConvLike``,
which deconvolution shares.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, cast

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmbuild.errors import MMError, Status
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


class ImpliedAttrs(INode):
    """Attributes that the input shapes imply until a setter fixes them.

    MagicMind code adds a node first and configures it after (``set_layout``, ``set_group``,
    ``set_transpose_b``, in any order), but shapes are inferred, and a node that cannot fit is
    refused, when it is added. So until a setter names its value, each attribute of
    ``implied_names`` takes the first of ``fitting_choices`` under which the node infers, and
    each setter re-chooses the attributes that are still implied. A value that the shapes chose
    and that differs from the default must still be confirmed by its setter: ``validate``
    refuses the node until then, as MagicMind, which would have kept the default, would have.
    """

    implied_names: ClassVar[tuple[str, ...]] = ()
    required_inputs: ClassVar[int] = 2  # the inputs before the optional ones

    def __init__(
        self, network: Network, name: str, inputs: list[ITensor], attrs: dict[str, Any]
    ) -> None:
        super().__init__(network, name, inputs, attrs)
        self._fixed: set[str] = set()  # implied names that a setter has given a value
        self._implied: set[str] = set()  # implied names holding a non-default, unconfirmed value

    def fitting_choices(
        self, inputs: Sequence[TensorSpec], fixed: set[str]
    ) -> Iterator[dict[str, Any]]:
        """Values for the implied attributes, most preferred first; ``fixed`` ones are kept."""
        raise NotImplementedError

    def confirm_call(self, name: str) -> str:
        """The setter call that confirms the current value of implied attribute ``name``."""
        return f"set_{name}({self.attrs[name]!r})"

    def validate(self) -> None:
        """Refuse values that only the shapes chose; the message names the calls that confirm
        them."""
        if self._implied:
            calls = " and ".join(self.confirm_call(k) for k in sorted(self._implied))
            raise self.error(
                f"its inputs only fit with {calls}, which their shapes implied when the node was "
                "added; make that call to confirm it, or fix the input shapes"
            )

    @classmethod
    def _create_implied(cls, network: Network, inputs: list[ITensor | None]) -> INode:
        """``network._add_node`` with the implied attributes chosen to fit ``inputs``."""
        for i, t in enumerate(inputs[: cls.required_inputs]):
            if t is None:
                raise MMError(
                    f"add_i_{cls.op}_node: input {i} ({cls.input_names[i]}) is missing; pass an "
                    "ITensor"
                )
        given = [t for t in inputs if t is not None]
        if not all(isinstance(t, ITensor) and t.network is network for t in given):
            return network._add_node(cls, inputs, {})  # which reports the bad input
        attrs = cls(network, "", given, {})._fitting_attrs(set())  # the probe is never added
        node = cast(ImpliedAttrs, network._add_node(cls, inputs, attrs))
        node._implied = node._unconfirmed(set())
        return node

    def _fitting_attrs(self, fixed: set[str]) -> dict[str, Any]:
        """This node's attributes with the first of ``fitting_choices`` under which it infers;
        unchanged when none does (so that the error then names the problem)."""
        specs = [TensorSpec(tuple(t.get_dimension()), t.get_data_type()) for t in self._inputs]
        # a choice whose window fits comes first; one that waits for its pads comes next
        for whole in (True, False):
            for choice in self.fitting_choices(specs, fixed):
                attrs = {**self.attrs, **choice}
                probe = type(self)(self._network, self._name, self._inputs, attrs)
                try:
                    probe.infer(specs)
                except MMError:
                    continue
                if not whole or probe.window_misfit(specs) is None:
                    return probe.attrs
        return dict(self.attrs)

    def window_misfit(self, inputs: Sequence[TensorSpec]) -> str | None:
        """Why the window does not fit the padded input, or None (see ``IConvNode``)."""
        return None

    def _set_implied(self, **change: Any) -> Status:
        """Set implied attributes and fix them; the others still implied are re-chosen."""
        return self._set_and_rechoose(change, self._fixed | change.keys())

    def _set(self, **attrs: Any) -> Status:
        """Any other setter re-chooses the attributes still implied too: a dilation, stride or
        pad can make the shapes fit another layout or group than the one they implied when the
        node was added."""
        return self._set_and_rechoose(attrs, self._fixed)

    def _set_and_rechoose(self, change: dict[str, Any], fixed: set[str]) -> Status:
        probe = type(self)(self._network, self._name, self._inputs, {**self.attrs, **change})
        status = INode._set(self, **probe._fitting_attrs(fixed))
        self._fixed = fixed
        self._implied = self._unconfirmed(fixed)
        return status

    def _unconfirmed(self, fixed: set[str]) -> set[str]:
        return {
            k for k in self.implied_names if k not in fixed and self.attrs[k] != self.defaults[k]
        }


class ConvLike(ImpliedAttrs):
    """Window attributes shared by convolution and deconvolution.

    The layout and group are implied by the shapes until ``set_layout`` / ``set_group`` (see
    ``ImpliedAttrs``): group 1 before the group the shapes imply, the current layout (NHWC when
    the node is added) before the other of NHWC and NCHW. Ambiguous shapes keep NHWC.
    """

    policy = Policy.ALWAYS
    quantizable_inputs = (0, 1)
    input_names = ("input", "filter", "bias")
    implied_names = ("group", "layout")
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
        return cls._create_implied(network, [x, w, b])

    def fitting_choices(
        self, inputs: Sequence[TensorSpec], fixed: set[str]
    ) -> Iterator[dict[str, Any]]:
        layouts = [self.attrs["layout"]]
        if "layout" not in fixed:
            layouts += [u for u in ((Layout.NHWC,) * 3, (Layout.NCHW,) * 3) if u != layouts[0]]
        if "group" in fixed:
            yield from ({"layout": u} for u in layouts)
            return
        yield from ({"layout": u, "group": 1} for u in layouts)
        for u in layouts:
            probe = type(self)(self._network, "", self._inputs, {**self.attrs, "layout": u})
            group = probe.implied_group(inputs)
            if group is not None:
                yield {"layout": u, "group": group}

    def implied_group(self, inputs: Sequence[TensorSpec]) -> int | None:
        """The group that makes the input's channels fit the filter (Cin / (Cin/group))."""
        if inputs[0].rank != 4 or inputs[1].rank != 4:
            return None
        cin, cin_g = self.to_nhwc(inputs[0].dims)[3], self.filter_ohwi(inputs[1].dims)[3]
        return cin // cin_g if cin > 0 and cin_g > 0 and cin % cin_g == 0 else None

    def confirm_call(self, name: str) -> str:
        if name == "layout":
            return "set_layout(" + ", ".join(f"mm.Layout.{u.name}" for u in self.attrs[name]) + ")"
        return super().confirm_call(name)

    def set_stride(self, stride_h: int, stride_w: int) -> Status:
        return self._set(stride=self.int_args((stride_h, stride_w), 2, "set_stride", 1))

    def set_pad(self, top: int, bottom: int, left: int, right: int) -> Status:
        return self._set(pad=self.int_args((top, bottom, left, right), 4, "set_pad", 0))

    def set_dilation(self, dilation_h: int, dilation_w: int) -> Status:
        return self._set(dilation=self.int_args((dilation_h, dilation_w), 2, "set_dilation", 1))

    def set_group(self, group: int) -> Status:
        """The number of groups; depthwise convolution is ``set_group(Cin)``."""
        return self._set_implied(group=self.int_args(group, 1, "set_group", 1)[0])

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
        return self._set_implied(layout=(input_layout, filter_layout, output_layout))

    def get_stride(self) -> tuple[int, int]:
        return self.attrs["stride"]

    def get_pad(self) -> tuple[int, int, int, int]:
        return self.attrs["pad"]

    def get_dilation(self) -> tuple[int, int]:
        return self.attrs["dilation"]

    def get_group(self) -> int:
        return self.attrs["group"]

    def get_padding_mode(self) -> IPaddingMode:
        return self.attrs["padding_mode"]

    def get_layout(self) -> tuple[Layout, Layout, Layout]:
        """(input, filter, output) layouts."""
        return self.attrs["layout"]

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

    def check_filter_static(self, inputs: Sequence[TensorSpec]) -> None:
        """The filter's shape fixes the output's, so it must hold no -1."""
        if any(d < 0 for d in inputs[1].dims):
            raise self.error(
                f"{self.input_label(1)} has shape {list(inputs[1].dims)}; a filter's dimensions "
                "must be known when the node is added (declare them without -1)"
            )

    def reference_nhwc(
        self, arrays: Sequence[np.ndarray], filter_perm: Sequence[int], window: Any, *extra: Any
    ) -> list[np.ndarray]:
        """The reference frame conv and deconv share: input to NHWC, filter permuted by
        ``filter_perm``, ``window(x, w, stride, pads, dilation, group, *extra)`` in float64, bias
        added, result in the output layout as float32."""
        x = arrays[0].transpose(0, 2, 3, 1) if self.attrs["layout"][0] is Layout.NCHW else arrays[0]
        w = arrays[1].transpose(filter_perm)
        y = window(
            x.astype(np.float64),
            w.astype(np.float64),
            self.attrs["stride"],
            self.pads_for(x.shape[1], x.shape[2], w.shape[1], w.shape[2]),
            self.attrs["dilation"],
            self.attrs["group"],
            *extra,
        )
        if len(arrays) > 2:
            y = y + arrays[2].astype(np.float64)
        y = y.transpose(0, 3, 1, 2) if self.attrs["layout"][2] is Layout.NCHW else y
        return [y.astype(np.float32)]

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
    convolution is ``set_group(Cin)`` with a filter [Cin * multiplier, Kh, Kw, 1]. Until
    ``set_layout`` and ``set_group`` are called, the shapes imply them (see ``ConvLike``).
    """

    node_type = "IConvNode"
    op = "conv"

    def infer(self, inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
        require_rank(self, inputs[0], 0, 4)
        require_rank(self, inputs[1], 1, 4)
        require_float(self, inputs, range(len(inputs)))
        self.check_filter_static(inputs)
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
            raise self.error(
                f"the filter (shape {list(inputs[1].dims)}) has {cout} output channels, which do "
                f"not divide into {g} groups (input shape {list(inputs[0].dims)}); use a group "
                "that divides both the input and the output channels"
            )
        self.check_bias(inputs, cout)
        (sh, sw), (dh, dw) = self.attrs["stride"], self.attrs["dilation"]
        pt, pb, pl, pr = self.pads_for(h, w, kh, kw)
        ho = -1 if h < 0 else window_out(h, kh, sh, pt + pb, dh)
        wo = -1 if w < 0 else window_out(w, kw, sw, pl + pr, dw)
        # A window that does not fit (yet) gives an empty output: the pads that make it fit
        # may still come (set_pad after add), so ``validate`` refuses it at build time.
        # window_out can return -1 for a known size too, so test the known sizes, not the result
        ho = 0 if h >= 0 and ho <= 0 else ho
        wo = 0 if w >= 0 and wo <= 0 else wo
        return [TensorSpec(self.from_nhwc((n, ho, wo, cout)), inputs[0].dtype)]

    def validate(self) -> None:
        """Besides the implied attributes, the window must fit the padded input."""
        super().validate()
        specs = [TensorSpec(tuple(t.get_dimension()), t.get_data_type()) for t in self._inputs]
        misfit = self.window_misfit(specs)
        if misfit is not None:
            raise self.error(misfit)

    def window_misfit(self, inputs: Sequence[TensorSpec]) -> str | None:
        x, w = inputs[0].dims, inputs[1].dims
        if len(x) != 4 or len(w) != 4:
            return None
        _, h, wd, _ = self.to_nhwc(x)
        _, kh, kw, _ = self.filter_ohwi(w)
        (sh, sw), (dh, dw) = self.attrs["stride"], self.attrs["dilation"]
        pt, pb, pl, pr = self.pads_for(h, wd, kh, kw)
        if (h >= 0 and window_out(h, kh, sh, pt + pb, dh) <= 0) or (
            wd >= 0 and window_out(wd, kw, sw, pl + pr, dw) <= 0
        ):
            return (
                f"the {kh}x{kw} filter (dilation {dh}x{dw}) does not fit the {h}x{wd} input "
                f"{list(x)} with pads {[pt, pb, pl, pr]}; lower the kernel or dilation or add "
                "padding (set_pad)"
            )
        return None

    def reference(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.reference_nhwc(arrays, _FILTER_TO_OHWI[self.attrs["layout"][1]], conv2d_nhwc)


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
