"""Normalisation and reduction kernels: fused_batch_norm, layer_norm, softmax and reduce.

Each is one numba loop serving FLOAT32 and FLOAT16 (``load_f32`` / ``store_f32``, see
:mod:`.pointwise`), with the node's fused activation applied to the float32 result. The op
references compute in float64 (reduce's MAX / MIN in float32), and so do these kernels, with
the reference's operations in the reference's order:

- ``fused_batch_norm`` along any axis: ``y = (x - mean) / sqrt(var + eps) * scale + offset``,
  ``sqrt(var + eps)`` taken once per channel. Example: x = 4.0, mean 2, var 4, scale 1,
  offset 1, eps 0: (4 - 2) / 2 * 1 + 1 = 2.0.
- ``layer_norm`` over ``[axis, rank)``: per row of n elements, ``mean = sum(x) / n``,
  ``var = sum((x - mean) * (x - mean)) / n``,
  ``y = (x - mean) / sqrt(var + eps) * scale + bias``. Example: x = [1, 3], eps 0: mean 2,
  var 1, y = [-1, 1].
- ``softmax`` along any axis: ``m = max(x)``, ``e = exp(x - m)``, ``y = e / sum(e)`` (NaN in a
  lane, or +inf, makes the lane NaN, as in the reference). Example: softmax([1, 2, 3]) =
  [0.09003057, 0.24472847, 0.66524096].
- ``reduce`` MEAN SUM MAX MIN over any axes, with or without keep_dims: the input is walked
  once in memory order into one float64 accumulator per output element, starting from 0 for
  SUM / MEAN (numpy's identity), -inf for MAX and +inf for MIN, NaN propagating. Over an empty
  axis SUM gives 0, MEAN NaN, MAX -inf and MIN +inf. Example: [[1, 2, 3], [4, 5, 6]] MEAN over
  axis -1 = [2, 5].

Summation order. A run of elements that is contiguous in memory and reduced into one value is
summed with numpy's pairwise algorithm (:func:`pairwise_sum`: eight accumulators over blocks of
up to 128, halves combined recursively), and runs are accumulated in memory order, as numpy's
reduction loop does; so a sum over the last axes (layer_norm, softmax along the last axis,
reduce of trailing axes) or over leading axes is bit-identical to numpy's. Where numpy's
iterator orders a mixed reduction (e.g. axes (0, 2) of four) differently, or softmax sums along
an inner axis, the float64 sums differ by a few float64 ulps of ``sum(|x|)``, which moves the
float32 result only when it lies that close to a rounding boundary, or after heavy
cancellation. The tolerance is therefore 1 ulp of the output type plus ``n * 2**-52 * sum|x|``
(in practice bit-exact); batch norm and MAX / MIN are exact, MAX / MIN up to the sign of a zero
result (numpy does not specify which of -0.0 and +0.0 a max returns). exp comes from libm, as
in :mod:`.pointwise`. fp16: the same float64 -> float32 -> fp16 roundings as the reference.

Threads: batch norm and layer norm split their rows, softmax its (block, lane group) items over
the threads when the step is long enough (``split_call`` of :mod:`.pointwise`). Reduce runs on
one thread, so that the order of every sum is fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
from numba import njit, prange

from mmbuild.kernels.cpu.elementwise import SHORT_ROW, broadcast_geometry
from mmbuild.kernels.cpu.pointwise import (
    COST_DIVIDE,
    COST_LIBM,
    FLOATS,
    apply_fused,
    contiguous_out,
    flat_in,
    fused_activation,
    split_call,
)
from mmbuild.kernels.cpu.simd import load_f32, load_f64, store_f32
from mmbuild.kernels.table import Buffers, Kernel, Runner, Step, in_order, register_kernel
from mmbuild.ops.reduce import IReduce

__all__ = ["BatchNormKernel", "LayerNormKernel", "ReduceKernel", "SoftmaxKernel", "pairwise_sum"]


def _axis_split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """``shape`` as ``(outer, n, inner)`` around ``axis`` (negative counts from the end)."""
    axis %= len(shape)
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return outer, shape[axis], inner


# ---------------------------------------------------------------------------------------------
# numpy's pairwise summation
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _term(xs, i, shift, square):  # type: ignore[no-untyped-def]
    v = load_f64(xs, i)
    if square:
        d = v - shift
        return d * d
    return v


@njit(cache=True, error_model="numpy", boundscheck=False)
def pairwise_sum(xs, shift, square):  # type: ignore[no-untyped-def]
    """The float64 sum of ``xs`` (or of ``(xs - shift)**2`` when ``square``) in numpy's pairwise
    order (``pairwise_sum`` of numpy's ``loops_utils.h``): below 8 terms one by one from 0.0; up
    to 128 in eight interleaved accumulators combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)),
    then the remainder; above, the two halves (the first a multiple of 8) recursively."""
    n = xs.size
    if n < 8:
        res = 0.0
        for i in range(n):
            res += _term(xs, i, shift, square)
        return res
    if n <= 128:
        r0, r1 = _term(xs, 0, shift, square), _term(xs, 1, shift, square)
        r2, r3 = _term(xs, 2, shift, square), _term(xs, 3, shift, square)
        r4, r5 = _term(xs, 4, shift, square), _term(xs, 5, shift, square)
        r6, r7 = _term(xs, 6, shift, square), _term(xs, 7, shift, square)
        stop = n - n % 8
        for i in range(8, stop, 8):
            r0 += _term(xs, i, shift, square)
            r1 += _term(xs, i + 1, shift, square)
            r2 += _term(xs, i + 2, shift, square)
            r3 += _term(xs, i + 3, shift, square)
            r4 += _term(xs, i + 4, shift, square)
            r5 += _term(xs, i + 5, shift, square)
            r6 += _term(xs, i + 6, shift, square)
            r7 += _term(xs, i + 7, shift, square)
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for i in range(stop, n):
            res += _term(xs, i, shift, square)
        return res
    half = n // 2
    half -= half % 8
    return pairwise_sum(xs[:half], shift, square) + pairwise_sum(xs[half:], shift, square)


# ---------------------------------------------------------------------------------------------
# fused_batch_norm
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", boundscheck=False)
def _batch_norm_rows(x, mean, var, scale, offset, out, c, inner, eps, act, first, last):  # type: ignore[no-untyped-def]
    """Rows ``[first, last)``: of ``c`` channels each when ``inner`` is 1 (channels last),
    else of ``inner`` elements of channel ``row % c``. Channels-last rows shorter than
    ``SHORT_ROW`` go ``k`` at a time against the parameters repeated ``k`` times, so that each
    loop is long enough for SIMD lanes (the channel of element ``j`` is ``j % c``)."""
    per = max(1, min(last - first, SHORT_ROW // max(c, 1))) if inner == 1 else 1
    span = per * c
    m = np.empty(span, np.float64)
    den = np.empty(span, np.float64)
    s = np.empty(span, np.float64)
    o = np.empty(span, np.float64)
    for j in range(span):
        k = j % c
        m[j] = load_f32(mean, k)
        den[j] = math.sqrt(np.float64(load_f32(var, k)) + eps)
        s[j] = load_f32(scale, k)
        o[j] = load_f32(offset, k)
    width = c if inner == 1 else inner
    r = first
    while r < last:
        if inner == 1:  # two loops: the channel varies along the row, or is fixed for it
            n = span if r + per <= last else c
            xs, ys = x[r * c : r * c + n], out[r * c : r * c + n]
            for j in range(n):
                y = (np.float64(load_f32(xs, j)) - m[j]) / den[j] * s[j] + o[j]
                store_f32(ys, j, apply_fused(np.float32(y), act))
            r += n // c
        else:
            xs, ys = x[r * width : (r + 1) * width], out[r * width : (r + 1) * width]
            k = r % c
            mk, dk, sk, ok = m[k], den[k], s[k], o[k]
            for j in range(inner):
                y = (np.float64(load_f32(xs, j)) - mk) / dk * sk + ok
                store_f32(ys, j, apply_fused(np.float32(y), act))
            r += 1


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _batch_norm_parallel(x, mean, var, scale, offset, out, c, inner, eps, act, rows, chunk):  # type: ignore[no-untyped-def]
    for k in prange((rows + chunk - 1) // chunk):
        first, last = k * chunk, min(rows, (k + 1) * chunk)
        _batch_norm_rows(x, mean, var, scale, offset, out, c, inner, eps, act, first, last)


@register_kernel
class BatchNormKernel(Kernel):
    """Inference batch normalisation along any axis, float32 and float16."""

    name = "batch_norm"
    ops = ("fused_batch_norm",)
    precisions = FLOATS

    def bind(self, step: Step) -> Runner:
        axis, eps = int(step.op_attrs["axis"]), float(step.op_attrs["eps"])
        act = fused_activation(step)
        name = step.name

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x = inputs[0]
            outer, c, inner = _axis_split(x.shape, axis)
            rows, width = (outer, c) if inner == 1 else (outer * c, inner)
            params = [flat_in(p) for p in inputs[1:5]]
            out = contiguous_out(outputs[0], name)
            return split_call(_batch_norm_rows, _batch_norm_parallel, rows if width else 0,
                              flat_in(x), *params, out, c, inner, eps, act, unit_size=width,
                              cost=COST_DIVIDE)  # fmt: skip

        return Runner.from_prepare(prepare, (_batch_norm_rows, _batch_norm_parallel))


# ---------------------------------------------------------------------------------------------
# layer_norm
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", boundscheck=False)
def _layer_norm_rows(x, scale, bias, out, n, has_scale, has_bias, eps, act, first, last):  # type: ignore[no-untyped-def]
    """Rows ``[first, last)`` of ``n`` elements; ``scale`` / ``bias`` are read when flagged."""
    for r in range(first, last):
        xs, ys = x[r * n : (r + 1) * n], out[r * n : (r + 1) * n]
        mean = pairwise_sum(xs, 0.0, False) / n
        den = math.sqrt(pairwise_sum(xs, mean, True) / n + eps)
        for j in range(n):
            y = (np.float64(load_f32(xs, j)) - mean) / den
            if has_scale:
                y = y * np.float64(load_f32(scale, j))
            if has_bias:
                y = y + np.float64(load_f32(bias, j))
            store_f32(ys, j, apply_fused(np.float32(y), act))


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _layer_norm_parallel(x, scale, bias, out, n, has_scale, has_bias, eps, act, rows, chunk):  # type: ignore[no-untyped-def]
    for k in prange((rows + chunk - 1) // chunk):
        first, last = k * chunk, min(rows, (k + 1) * chunk)
        _layer_norm_rows(x, scale, bias, out, n, has_scale, has_bias, eps, act, first, last)


@register_kernel
class LayerNormKernel(Kernel):
    """Layer normalisation over the trailing axes from ``axis``, optional scale and bias,
    float32 and float16."""

    name = "layer_norm"
    ops = ("layer_norm",)
    precisions = FLOATS

    def bind(self, step: Step) -> Runner:
        axis, eps = int(step.op_attrs["axis"]), float(step.op_attrs["eps"])
        act = fused_activation(step)
        name = step.name

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x = flat_in(inputs[0])
            shape = inputs[0].shape
            n = int(np.prod(shape[axis % len(shape) :], dtype=np.int64))
            rows = x.size // n if n else 0
            absent = x[:0]  # same type as x: no extra specialisation for a missing input
            scale = flat_in(inputs[1]) if len(inputs) > 1 else absent
            bias = flat_in(inputs[2]) if len(inputs) > 2 else absent
            out = contiguous_out(outputs[0], name)
            return split_call(_layer_norm_rows, _layer_norm_parallel, rows,
                              x, scale, bias, out, n, len(inputs) > 1, len(inputs) > 2, eps, act,
                              unit_size=n, cost=COST_DIVIDE)  # fmt: skip

        return Runner.from_prepare(prepare, (_layer_norm_rows, _layer_norm_parallel))


# ---------------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------------
_LANES = 64  # lanes of one softmax item when the axis is not the last


@njit(cache=True, error_model="numpy", boundscheck=False)
def _softmax_items(x, out, n, inner, lanes, act, first, last):  # type: ignore[no-untyped-def]
    """Items ``[first, last)``; item k is block ``k // groups`` of ``x`` seen as
    ``[outer, n, inner]``, lanes ``[l0, l0 + lanes)`` of its ``inner``."""
    groups = (inner + lanes - 1) // lanes
    width = min(lanes, inner)
    top = np.empty(width, np.float64)
    total = np.empty(width, np.float64)
    e = np.empty(n * width, np.float64)
    for k in range(first, last):
        block = k // groups
        l0 = (k - block * groups) * lanes
        w = min(inner, l0 + lanes) - l0
        base = block * n * inner + l0
        top[:w] = -np.inf
        for j in range(n):
            xs = x[base + j * inner : base + j * inner + w]
            for lane in range(w):
                v = np.float64(load_f32(xs, lane))
                if v > top[lane] or v != v:  # NaN propagates, as numpy's max
                    top[lane] = v
        for j in range(n):
            xs, es = x[base + j * inner : base + j * inner + w], e[j * w : (j + 1) * w]
            for lane in range(w):
                es[lane] = math.exp(np.float64(load_f32(xs, lane)) - top[lane])
        if w == 1:  # along the last axis: numpy sums the row pairwise
            total[0] = pairwise_sum(e[:n], 0.0, False)
        else:  # along an inner axis: numpy adds the rows one by one
            total[:w] = 0.0
            for j in range(n):
                es = e[j * w : (j + 1) * w]
                for lane in range(w):
                    total[lane] += es[lane]
        for j in range(n):
            ys, es = out[base + j * inner : base + j * inner + w], e[j * w : (j + 1) * w]
            for lane in range(w):
                store_f32(ys, lane, apply_fused(np.float32(es[lane] / total[lane]), act))


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _softmax_parallel(x, out, n, inner, lanes, act, items, chunk):  # type: ignore[no-untyped-def]
    for k in prange((items + chunk - 1) // chunk):
        _softmax_items(x, out, n, inner, lanes, act, k * chunk, min(items, (k + 1) * chunk))


@register_kernel
class SoftmaxKernel(Kernel):
    """Softmax along any axis, max subtracted first, float32 and float16."""

    name = "softmax"
    ops = ("softmax",)
    precisions = FLOATS

    def bind(self, step: Step) -> Runner:
        axis = int(step.op_attrs["axis"])
        act = fused_activation(step)
        name = step.name

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            out = contiguous_out(outputs[0], name)
            if out.size == 0:
                return in_order([])
            outer, n, inner = _axis_split(inputs[0].shape, axis)
            lanes = min(inner, _LANES)
            items = outer * ((inner + lanes - 1) // lanes)
            return split_call(_softmax_items, _softmax_parallel, items,
                              flat_in(inputs[0]), out, n, inner, lanes, act,
                              unit_size=n * lanes, cost=COST_LIBM)  # fmt: skip

        return Runner.from_prepare(prepare, (_softmax_items, _softmax_parallel))


# ---------------------------------------------------------------------------------------------
# reduce
# ---------------------------------------------------------------------------------------------
_SUM, _MEAN, _MAX, _MIN = range(4)
_RED_CODES = {IReduce.SUM: _SUM, IReduce.MEAN: _MEAN, IReduce.MAX: _MAX, IReduce.MIN: _MIN}


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _combine(mode, acc, v):  # type: ignore[no-untyped-def]
    if mode == _MAX:
        r = v if v > acc else acc  # NaN propagates, as numpy's max (selects, no `or`)
        return v if v != v else r
    if mode == _MIN:
        r = v if v < acc else acc
        return v if v != v else r
    return acc + v


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _accumulate_rows(mode, xs, accs, rows, inner):  # type: ignore[no-untyped-def]
    """Combine ``rows`` contiguous rows of ``inner`` elements of ``xs`` into ``accs``
    (float64, ``inner``). Rows shorter than ``SHORT_ROW`` go ``k = ceil(SHORT_ROW / inner)`` at a
    time into a tile of ``k`` accumulators per element, folded into ``accs`` at the end, so that
    each loop is long enough for SIMD lanes (the global average pool of an NHWC tensor with 8
    channels reduces rows of 8)."""
    k = max(1, min(rows, (SHORT_ROW + inner - 1) // inner))
    width = k * inner
    tile = np.empty(width, np.float64)
    for j in range(width):  # the sums start from accs and zeros, max / min from accs
        tile[j] = accs[j % inner] if mode > _MEAN or j < inner else 0.0
    r = 0
    while r + k <= rows:
        xt = xs[r * inner : r * inner + width]
        if mode <= _MEAN:  # the mode chosen outside the loop, which then vectorises
            for j in range(width):
                tile[j] += np.float64(load_f32(xt, j))
        else:
            for j in range(width):
                tile[j] = _combine(mode, tile[j], np.float64(load_f32(xt, j)))
        r += k
    for j in range(inner, width):  # fold the tile
        if mode <= _MEAN:
            tile[j % inner] += tile[j]
        else:
            tile[j % inner] = _combine(mode, tile[j % inner], tile[j])
    for j in range(inner):
        accs[j] = tile[j]
    for i in range(r, rows):  # the rows left over
        xt = xs[i * inner : (i + 1) * inner]
        for j in range(inner):
            accs[j] = _combine(mode, accs[j], np.float64(load_f32(xt, j)))


@njit(cache=True, error_model="numpy", boundscheck=False)
def _reduce(x, out, shape, so, mode, count, act):  # type: ignore[no-untyped-def]
    """Walk ``x`` (merged ``shape``) in memory order; ``so`` is the output stride of each
    dimension, 0 along the reduced ones. ``count`` is the number of inputs per output. Runs
    kept whole (output stride 1) along a reduced dimension go as one block of rows
    (:func:`_accumulate_rows`)."""
    acc = np.empty(out.size, np.float64)
    acc[:] = 0.0 if mode <= _MEAN else (-np.inf if mode == _MAX else np.inf)
    nd = shape.size
    last = nd - 1
    inner, step = shape[last], so[last]
    idx = np.zeros(nd, np.int64)
    oi = 0
    pos = 0
    while pos < x.size and inner > 0:
        xs = x[pos : pos + inner]
        rows = 1
        if step == 0:  # the run is reduced into acc[oi]
            if mode <= _MEAN:
                acc[oi] += pairwise_sum(xs, 0.0, False)
            else:
                v = acc[oi]
                for j in range(inner):
                    v = _combine(mode, v, np.float64(load_f32(xs, j)))
                acc[oi] = v
        else:  # the run is kept: one accumulator per element (its output stride is 1)
            if nd > 1 and so[last - 1] == 0:  # ... and so are the next rows out
                rows = shape[last - 1] - idx[last - 1]
            _accumulate_rows(mode, x[pos : pos + rows * inner], acc[oi : oi + inner], rows,
                             inner)  # fmt: skip
        pos += rows * inner
        if rows > 1:  # whole rows: step along the next dimension out
            d = last - 1
            idx[d] += rows
        else:
            d = last
            idx[d] = inner
            oi += inner * step
        while d > 0 and idx[d] == shape[d]:  # carry into the next dimension out
            oi -= shape[d] * so[d]
            idx[d] = 0
            d -= 1
            idx[d] += 1
            oi += so[d]
    for k in range(out.size):
        y = acc[k]
        if mode == _MEAN:
            y = y / count if count > 0 else np.nan
        store_f32(out, k, apply_fused(np.float32(y), act))


@register_kernel
class ReduceKernel(Kernel):
    """MEAN, SUM, MAX, MIN over any axes, with or without keep_dims, float32 and float16."""

    name = "reduce"
    ops = ("reduce",)
    precisions = FLOATS

    def bind(self, step: Step) -> Runner:
        mode = _RED_CODES[step.op_attrs["mode"]]
        axes = tuple(int(a) for a in step.op_attrs["axes"])
        act = fused_activation(step)
        name = step.name

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            shape = inputs[0].shape
            rank = len(shape)
            reduced = {a % rank for a in axes}
            kept = tuple(1 if d in reduced else s for d, s in enumerate(shape))
            count = int(np.prod([shape[d] for d in reduced], dtype=np.int64))
            merged, (so,) = broadcast_geometry(shape, kept)
            out = contiguous_out(outputs[0], name)
            if not out.size:
                return in_order([])
            return partial(_reduce, flat_in(inputs[0]), out, merged, so, mode, count, act)

        return Runner.from_prepare(prepare, (_reduce,))
