"""The implicit GEMM (a convolution without im2col) against im2col and numpy: int8 bit for bit,
with and without the slack that lets a byte tail be read as a quad; int16 and float within
their bounds; the row geometry."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels_gemm import LEVELS, assert_float_close, assert_same_bits, reference_epilogue

from mmbuild.errors import MMError
from mmbuild.kernels.cpu.gemm import (
    Activation,
    Epilogue,
    ImplicitRows,
    OutKind,
    gemm_f32,
    gemm_s16,
    gemm_u8s8,
    pack_float_weights,
    pack_int8_weights,
    pack_int16_weights,
)


def im2col(xp: np.ndarray, kernel, stride, dilation) -> np.ndarray:  # type: ignore[no-untyped-def]
    b, h, wd, c = xp.shape
    (kh, kw), (sh, sw), (dh, _) = kernel, stride, dilation
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (wd - kw) // sw + 1
    cols = np.empty((b, ho, wo, kh, kw, c), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j] = xp[:, i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                                     j : j + sw * (wo - 1) + 1 : sw]  # fmt: skip
    return cols.reshape(b * ho * wo, kh * kw * c)


CONV_CASES = [
    # batch, height, width, channels, kernel, stride, dilation
    (1, 6, 7, 3, (3, 3), (1, 1), (1, 1)),
    (2, 9, 8, 5, (3, 2), (2, 1), (2, 1)),
    (1, 5, 5, 16, (1, 1), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_u8s8_implicit_conv_matches_im2col(isa: str, case) -> None:  # type: ignore[no-untyped-def]
    b, h, wd, c, kernel, stride, dilation = case
    rng = np.random.default_rng(6)
    xp = rng.integers(0, 256, (b, h, wd, c), dtype=np.uint8)
    cout = 19
    w = rng.integers(-128, 128, (kernel[0] * kernel[1] * c, cout), dtype=np.int8)
    rows = ImplicitRows.conv2d_nhwc(b, h, wd, c, kernel, stride, dilation)
    ep = Epilogue.create(cout, scale_a=0.1, scale_w=0.001, act=Activation.RELU)
    packed = pack_int8_weights(w, segments=kernel[0])
    acc = (im2col(xp, kernel, stride, dilation).astype(np.int64) - 9) @ w.astype(np.int64)
    # the input as it is (kernel rows of 3 channels end in a byte tail), and with three bytes
    # of slack after it, which lets the kernels read each tail as a whole quad
    slack = np.concatenate([xp.reshape(-1), rng.integers(0, 256, 3, dtype=np.uint8)])
    for a in (xp, slack):
        out = np.zeros((rows.m, cout), np.float32)
        gemm_u8s8(a, 9, packed, ep, out, rows=rows, isa=isa)
        assert_same_bits(out, reference_epilogue(acc, ep))


def test_a_byte_tail_reads_as_a_quad_only_where_the_bytes_exist() -> None:
    from mmbuild.kernels.cpu.gemm import _quads_fit

    packed = pack_int8_weights(np.ones((9 * 3, 8), np.int8), segments=3)  # rows of 9 bytes
    rows = ImplicitRows.conv2d_nhwc(1, 6, 7, 3, (3, 3), (1, 1), (1, 1))
    x = np.zeros(6 * 7 * 3, np.uint8)
    assert not _quads_fit(x, packed, rows.m, 0, rows)  # the last row ends at the last byte
    assert _quads_fit(np.zeros(x.size + 3, np.uint8), packed, rows.m, 0, rows)
    plain = pack_int8_weights(np.ones((9, 8), np.int8))
    assert _quads_fit(np.zeros(5 * 12, np.uint8), plain, 5, 12, None)  # a row stride of 12
    assert not _quads_fit(np.zeros(5 * 9, np.uint8), plain, 5, 9, None)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("case", CONV_CASES[:2])
def test_s16_and_f32_implicit_conv(isa: str, case) -> None:  # type: ignore[no-untyped-def]
    b, h, wd, c, kernel, stride, dilation = case
    rng = np.random.default_rng(7)
    rows = ImplicitRows.conv2d_nhwc(b, h, wd, c, kernel, stride, dilation)
    k = kernel[0] * kernel[1] * c
    ep = Epilogue.create(11)
    out = np.zeros((rows.m, 11), np.float32)

    x16 = rng.integers(-32768, 32768, (b, h, wd, c), dtype=np.int16)
    w16 = rng.integers(-32767, 32768, (k, 11), dtype=np.int16)
    gemm_s16(x16, -5, pack_int16_weights(w16, segments=kernel[0]), ep, out, rows=rows, isa=isa)
    acc = (im2col(x16, kernel, stride, dilation).astype(np.int64) + 5) @ w16.astype(np.int64)
    assert_same_bits(out, reference_epilogue(acc, ep))

    xf = rng.standard_normal((b, h, wd, c)).astype(np.float32)
    wf = rng.standard_normal((k, 11)).astype(np.float32)
    gemm_f32(xf, pack_float_weights(wf, segments=kernel[0]), ep, out, rows=rows, isa=isa)
    cols = im2col(xf, kernel, stride, dilation).astype(np.float64)
    assert_float_close(out, cols, wf.astype(np.float64), ep, OutKind.F32)


def test_conv_rows_geometry() -> None:
    rows = ImplicitRows.conv2d_nhwc(2, 5, 6, 3, (3, 3), stride=(2, 1))
    assert rows.m == 2 * 2 * 4
    assert rows.seg_stride == 6 * 3
    assert rows.offsets[:5].tolist() == [0, 3, 6, 9, 2 * 6 * 3]
    assert rows.offsets[8] == 5 * 6 * 3
    with pytest.raises(MMError, match="im2col"):
        ImplicitRows.conv2d_nhwc(1, 5, 5, 1, (3, 3), dilation=(1, 2))
    with pytest.raises(MMError, match="does not fit"):
        ImplicitRows.conv2d_nhwc(1, 2, 5, 1, (3, 3))
