"""The elementwise kernel: ADD SUB MUL DIV MAX MIN of two tensors, with numpy broadcasting.

One numba function serves FLOAT32 and FLOAT16 by type specialisation, splits long steps over the
threads and applies the node's fused activation before the store, as every float kernel of
:mod:`.pointwise` (whose docstring has the details, and whose ``split_call``,
``PARALLEL_MIN_WORK`` and ``CHUNK`` it uses).

Arithmetic: ADD SUB MUL DIV MAX MIN in float32, one IEEE operation each, exactly as numpy's
float32 ufuncs: bit-exact in fp32 and, since the reference rounds the same float32 value to fp16,
in fp16. MAX / MIN mirror ``np.maximum`` / ``np.minimum``: NaN on either side gives NaN, and of
two equal values (+0.0 and -0.0) the second operand is returned. Example:
MAX([-0.0, 1, nan], [0.0, nan, 2]) = [0.0, nan, nan].

Broadcasting is numpy's: the shapes are aligned at the right, each operand gets a stride of 0
along the dimensions it is broadcast over, adjacent dimensions that are contiguous for both
operands are merged (:func:`broadcast_geometry`, which works an example), and one loop walks
the output with an index counter (any rank).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange

from mmbuild.kernels.cpu.pointwise import (
    FLOATS,
    apply_fused,
    contiguous_out,
    flat_in,
    fused_activation,
    is_identity,
    keep,
    split_call,
)
from mmbuild.kernels.cpu.simd import load_f32, store_f32
from mmbuild.kernels.table import Buffers, Kernel, Runner, Step, register_kernel
from mmbuild.ops.elementwise import IElementwise

__all__ = ["ElementwiseKernel", "broadcast_geometry"]

_BIN_CODES = {mode: i for i, mode in enumerate(IElementwise)}
_ADD, _SUB, _MUL, _DIV, _MAX, _MIN = (
    _BIN_CODES[m]
    for m in (
        IElementwise.ADD,
        IElementwise.SUB,
        IElementwise.MUL,
        IElementwise.DIV,
        IElementwise.MAX,
        IElementwise.MIN,
    )
)


#: Rows shorter than this (elements) go several at a time against a tiled broadcast row: the
#: squeeze-excitation scale of a [1, 40, 56, 96] fp16 tensor took 0.13 ms in rows of 96 and
#: 0.03 ms three rows at a time (AVX-512 Xeon, 2 threads).
SHORT_ROW = 256


# One function per operation, each as numpy's float32 ufunc; ``_binary_run`` picks one before
# its loops, so that each loop holds one operation and LLVM vectorises it (a switch on the
# operation inside the loop kept every elementwise step scalar).
@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _add(a, b):  # type: ignore[no-untyped-def]
    return a + b


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _sub(a, b):  # type: ignore[no-untyped-def]
    return a - b


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _mul(a, b):  # type: ignore[no-untyped-def]
    return a * b


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _div(a, b):  # type: ignore[no-untyped-def]
    return a / b


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _max(a, b):  # type: ignore[no-untyped-def]
    r = a if a > b else b  # selects, no `or`: the loop vectorises
    return a if a != a else r


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _min(a, b):  # type: ignore[no-untyped-def]
    r = a if a < b else b
    return a if a != a else r


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _binary_loops(fn, post, a, ia, ja, b, ib, jb, ys, act):  # type: ignore[no-untyped-def]
    """``ys[j] = post(fn(a[ia + j*ja], b[ib + j*jb]), act)``. The innermost merged dimension
    has strides of 1 or 0 (broadcast), so three loops cover it; each reads slices, whose
    indices numba knows to be non-negative, which lets LLVM vectorise the loop."""
    n = ys.size
    if ja == 1 and jb == 1:
        xa, xb = a[ia : ia + n], b[ib : ib + n]
        for j in range(n):
            store_f32(ys, j, post(fn(load_f32(xa, j), load_f32(xb, j)), act))
    elif ja == 1:
        xa, vb = a[ia : ia + n], load_f32(b, ib)
        for j in range(n):
            store_f32(ys, j, post(fn(load_f32(xa, j), vb), act))
    elif jb == 1:
        va, xb = load_f32(a, ia), b[ib : ib + n]
        for j in range(n):
            store_f32(ys, j, post(fn(va, load_f32(xb, j)), act))
    else:  # a single output element
        va, vb = load_f32(a, ia), load_f32(b, ib)
        for j in range(n):
            store_f32(ys, j, post(fn(va, vb), act))


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _tiled(x, ix, n, k):  # type: ignore[no-untyped-def]
    """``k`` copies of the row ``x[ix : ix + n]`` side by side, as float32."""
    tile = np.empty(k * n, np.float32)
    for j in range(k * n):
        tile[j] = load_f32(x, ix + j % n)
    return tile


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _binary_rows(fn, post, a, ia, ja, ra, b, ib, jb, rb, ys, n, act):  # type: ignore[no-untyped-def]
    """``ys.size // n`` rows of ``n`` elements; row ``r`` starts at ``ia + r*ra``, ``ib + r*rb``.

    Rows shorter than :data:`SHORT_ROW` of a contiguous operand against one broadcast row (the
    channel scale of a squeeze-excitation block, ``[H*W, C] * [1, C]`` with C = 8) go ``k`` rows
    at a time against ``k`` copies of the broadcast row, so that each loop is long enough for
    SIMD lanes: ``k = ceil(SHORT_ROW / n)``."""
    rows = ys.size // n
    r = 0
    if rows > 1 and n < SHORT_ROW and ja == 1 and jb == 1:
        k = (SHORT_ROW + n - 1) // n
        if rb == 0 and ra == n:
            tile = _tiled(b, ib, n, k)
            while r + k <= rows:
                _binary_loops(fn, post, a, ia + r * n, 1, tile, 0, 1, ys[r * n : (r + k) * n],
                              act)  # fmt: skip
                r += k
        elif ra == 0 and rb == n:
            tile = _tiled(a, ia, n, k)
            while r + k <= rows:
                _binary_loops(fn, post, tile, 0, 1, b, ib + r * n, 1, ys[r * n : (r + k) * n],
                              act)  # fmt: skip
                r += k
    for i in range(r, rows):
        _binary_loops(fn, post, a, ia + i * ra, ja, b, ib + i * rb, jb, ys[i * n : (i + 1) * n],
                      act)  # fmt: skip


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _binary_run(op, post, a, ia, ja, ra, b, ib, jb, rb, ys, n, act):  # type: ignore[no-untyped-def]
    """The rows of :func:`_binary_rows` for ``op``: the op chosen once per block of rows."""
    if op == _ADD:
        _binary_rows(_add, post, a, ia, ja, ra, b, ib, jb, rb, ys, n, act)
    elif op == _SUB:
        _binary_rows(_sub, post, a, ia, ja, ra, b, ib, jb, rb, ys, n, act)
    elif op == _MUL:
        _binary_rows(_mul, post, a, ia, ja, ra, b, ib, jb, rb, ys, n, act)
    elif op == _DIV:
        _binary_rows(_div, post, a, ia, ja, ra, b, ib, jb, rb, ys, n, act)
    elif op == _MAX:
        _binary_rows(_max, post, a, ia, ja, ra, b, ib, jb, rb, ys, n, act)
    else:
        _binary_rows(_min, post, a, ia, ja, ra, b, ib, jb, rb, ys, n, act)


@njit(cache=True, error_model="numpy", boundscheck=False, forceinline=True)
def _binary_walk(post, a, b, out, shape, sa, sb, op, act, start, stop):  # type: ignore[no-untyped-def]
    """Output elements ``[start, stop)``; ``shape`` (merged) with strides ``sa``, ``sb``. Whole
    rows of the innermost dimension go in blocks along the next one (a squeeze-excitation
    product ``[H*W, C] * [1, C]`` is one block of H*W rows of C, not H*W separate runs)."""
    nd = shape.size
    idx = np.empty(nd, np.int64)
    rem = start
    ia = 0
    ib = 0
    for d in range(nd - 1, -1, -1):
        idx[d] = rem % shape[d]
        rem //= shape[d]
        ia += idx[d] * sa[d]
        ib += idx[d] * sb[d]
    last = nd - 1
    inner, ja, jb = shape[last], sa[last], sb[last]
    ra = sa[last - 1] if nd > 1 else 0
    rb = sb[last - 1] if nd > 1 else 0
    pos = start
    while pos < stop:
        run = min(inner - idx[last], stop - pos)
        rows = 1
        if nd > 1 and run == inner:
            rows = max(1, min(shape[last - 1] - idx[last - 1], (stop - pos) // inner))
        _binary_run(op, post, a, ia, ja, ra, b, ib, jb, rb, out[pos : pos + rows * run], run,
                    act)  # fmt: skip
        pos += rows * run
        if rows > 1:  # whole rows: step along the next dimension out
            d = last - 1
            ia += rows * ra
            ib += rows * rb
            idx[d] += rows
        else:
            d = last
            ia += run * ja
            ib += run * jb
            idx[d] += run
        while d > 0 and idx[d] == shape[d]:  # carry into the next dimension out
            ia -= shape[d] * sa[d]
            ib -= shape[d] * sb[d]
            idx[d] = 0
            d -= 1
            idx[d] += 1
            ia += sa[d]
            ib += sb[d]


@njit(cache=True, error_model="numpy", boundscheck=False)
def _binary_range(a, b, out, shape, sa, sb, op, act, start, stop):  # type: ignore[no-untyped-def]
    if is_identity(act):
        _binary_walk(keep, a, b, out, shape, sa, sb, op, act, start, stop)
    else:
        _binary_walk(apply_fused, a, b, out, shape, sa, sb, op, act, start, stop)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _binary_parallel(a, b, out, shape, sa, sb, op, act, n, chunk):  # type: ignore[no-untyped-def]
    for c in prange((n + chunk - 1) // chunk):
        _binary_range(a, b, out, shape, sa, sb, op, act, c * chunk, min(n, (c + 1) * chunk))


def broadcast_geometry(
    out_shape: tuple[int, ...], *in_shapes: tuple[int, ...]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Merged output shape and one element-stride array per input (0 where broadcast).

    >>> shape, (sa, sb) = broadcast_geometry((2, 4, 3), (2, 1, 3), (4, 1))
    >>> shape.tolist(), sa.tolist(), sb.tolist()
    ([2, 4, 3], [3, 0, 1], [0, 1, 0])
    """
    rank = len(out_shape)
    strides = []
    for shp in in_shapes:
        full = (1,) * (rank - len(shp)) + tuple(shp)
        st, acc = [0] * rank, 1
        for d in range(rank - 1, -1, -1):
            st[d] = acc if full[d] != 1 else 0
            acc *= full[d]
        strides.append(st)
    dims = [d for d in range(rank) if out_shape[d] != 1]
    shape = [out_shape[d] for d in dims]
    per = [[st[d] for d in dims] for st in strides]
    # merge dimension k-1 into k where every operand walks both as one contiguous run
    k = len(shape) - 1
    while k > 0:
        if all(s[k - 1] == s[k] * shape[k] for s in per):
            shape[k - 1] *= shape[k]
            for s in per:
                s[k - 1] = s[k]
            del shape[k]
            for s in per:
                del s[k]
        k -= 1
    if not shape:
        shape, per = [1], [[0] for _ in per]
    return np.array(shape, np.int64), [np.array(s, np.int64) for s in per]


@register_kernel
class ElementwiseKernel(Kernel):
    """ADD SUB MUL DIV MAX MIN with numpy broadcasting, float32 and float16."""

    name = "elementwise"
    ops = ("elementwise",)
    precisions = FLOATS

    def bind(self, step: Step) -> Runner:
        op = _BIN_CODES[step.op_attrs["mode"]]
        act = fused_activation(step)
        name = step.name

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            a, b = inputs[0], inputs[1]
            out = outputs[0]
            shape, (sa, sb) = broadcast_geometry(out.shape, a.shape, b.shape)
            flat = contiguous_out(out, name)
            return split_call(_binary_range, _binary_parallel, flat.size,
                              flat_in(a), flat_in(b), flat, shape, sa, sb, op, act)  # fmt: skip

        return Runner.from_prepare(prepare, (_binary_range, _binary_parallel))
