"""Property (hypothesis): over random conv geometries (groups, depthwise, stride, dilation, pads,
padding modes, fused activations), quantization options and inputs, the QINT8 and QINT16 conv
kernels equal their reference bit for bit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernelcheck import assert_ulps
from test_kernels_conv import Conv, input_buffers, run_both

import mmbuild as mm
from mmbuild.ops import IPaddingMode

# every test runs on each instruction-set level this CPU can run (the `isa` fixture)
pytestmark = pytest.mark.usefixtures("isa")

F32, F16, Q8, Q16 = mm.DataType.FLOAT32, mm.DataType.FLOAT16, mm.DataType.QINT8, mm.DataType.QINT16
ACTS = [None, {"function": "relu"}, {"function": "clip", "lo": -0.5, "hi": 1.5},
        {"function": "leaky_relu", "alpha": 0.125}]  # fmt: skip


@st.composite
def convs(draw: st.DrawFn) -> Conv:
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cin = group * draw(st.integers(1, 4))
    cout = group * draw(st.integers(1, 5))
    depthwise = draw(st.booleans())
    if depthwise:
        group, cin = cin, cin
        cout = cin * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    h, w = draw(st.integers(span[0], span[0] + 6)), draw(st.integers(span[1], span[1] + 6))
    return Conv(
        (draw(st.integers(1, 3)), h, w, cin),
        cout,
        kernel,
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        dilation=dilation,
        pads=tuple(draw(st.integers(0, 2)) for _ in range(4)),  # type: ignore[arg-type]
        mode=draw(st.sampled_from([IPaddingMode.EXPLICIT, IPaddingMode.SAME, IPaddingMode.VALID])),
        group=group,
        bias=draw(st.booleans()),
        act=draw(st.sampled_from(ACTS)),
    )


@settings(max_examples=40, deadline=None)
@given(
    conv=convs(),
    qtype=st.sampled_from([Q8, Q16]),
    granularity=st.sampled_from(["per_tensor", "per_axis"]),
    algo=st.sampled_from(["symmetric", "asymmetric"]),
    out_type=st.sampled_from([F32, F16]),
    seed=st.integers(0, 2**16),
)
def test_quantized_conv_is_its_reference_bit_for_bit(  # type: ignore[no-untyped-def]
    conv, qtype, granularity, algo, out_type, seed
) -> None:
    case, x, _, _ = conv.case(qtype, out_type, (granularity, algo), seed=seed)
    got, ref = run_both(case, input_buffers(case, [x], F32))
    assert got.shape == ref.shape
    assert_ulps(got, ref, out_type, ulps=0)
