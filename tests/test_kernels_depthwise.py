"""The depthwise vector loop over random geometries, on every level this CPU runs: QINT8 bit for
bit the reference, FLOAT32 within the float bound of the exact conv. Strips of 8 pixels, the
pixels at the borders, filter rows and columns outside the input, strides, dilations and every
channel-vector width (16, 8 and single lanes) meet in these shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from kernelcheck import assert_ulps
from test_kernels_conv import (
    Conv,
    activate,
    activated_bound,
    assert_float_within,
    input_buffers,
    run_both,
)

import mmbuild as mm
from mmbuild.kernels.cpu import features

F32, Q8 = mm.DataType.FLOAT32, mm.DataType.QINT8


@st.composite
def depthwise_convs(draw: st.DrawFn) -> Conv:
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 23))
    c = draw(st.sampled_from([2, 3, 8, 13, 16, 27, 40]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 4)) for _ in range(4))  # top, bottom, left, right
    assume(h + pads[0] + pads[1] > dh * (kh - 1) and w + pads[2] + pads[3] > dw * (kw - 1))
    act = draw(st.sampled_from([None, {"function": "relu"}]))
    return Conv((n, h, w, c), c, (kh, kw), stride=(sh, sw), dilation=(dh, dw), pads=pads,
                group=c, act=act)  # fmt: skip


@given(conv=depthwise_convs(), seed=st.integers(0, 2**16))
def test_depthwise_qint8_is_bit_exact_on_every_level(conv: Conv, seed: int) -> None:
    case, x, _, _ = conv.case(Q8, F32, ("per_axis", "asymmetric"), seed=seed)
    inputs = input_buffers(case, [x], F32)
    for level in features.runnable_levels():
        with features.using_level(level):
            got, ref = run_both(case, inputs)
        assert_ulps(got, ref, F32, ulps=0)


@given(conv=depthwise_convs(), seed=st.integers(0, 2**16))
def test_depthwise_float_is_within_the_bound_on_every_level(conv: Conv, seed: int) -> None:
    case, x, w, b = conv.case(F32, F32, seed=seed)
    inputs = case.buffers([x])
    exact, mag = conv.exact(x, w, b)
    bound = activated_bound(conv.k * 2.0**-24 * mag, exact, conv.act)
    for level in features.runnable_levels():
        with features.using_level(level):
            got, _ = run_both(case, inputs)
        assert_float_within(got, activate(exact, conv.act), bound, F32)
        assert np.isfinite(got).all()
