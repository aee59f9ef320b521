"""Data-movement kernels: reshape, squeeze, unsqueeze, permute, concat, split, slice and pad.

These ops copy elements without arithmetic, so each kernel is exact in every precision and
works on the bits: a buffer is viewed as a flat array of the unsigned integer of its element
size (uint8 for int8 / uint8 / bool, uint16 for fp16 bits / int16, uint32 for float32 / int32,
uint64 for int64), so one compiled loop serves every type of that size.

Two loops do all the work:

- a *box copy*: ``dst[doff + sum_d i_d * dst_stride_d] = src[soff + sum_d i_d * src_stride_d]``
  for every index ``i`` of a box ``shape`` (strides and offsets in elements). Before the call,
  dimensions of size 1 are dropped and neighbours that are contiguous in both buffers merged, so
  a reshape is one run and a permute keeps its longest runs innermost. Worked through: permute
  perm (0, 2, 1) of x of shape [2, 3, 4] (strides [12, 4, 1]) into y of shape [2, 4, 3] is the
  box [2, 4, 3] with source strides [12, 1, 4] and destination strides [12, 3, 1]; y[1, 2, 0]
  lands at 1*12 + 2*3 + 0 = 18 and reads x at 1*12 + 2*1 + 0*4 = 14, which is x[1, 0, 2].
  Reshape, squeeze and unsqueeze copy the whole buffer; concat and split copy one box per piece
  at an offset along the axis; slice is the box of the output with strides ``stride * step``.
- a *table gather* for pad: along each output dimension a table gives the source offset of each
  index, or -1 for the constant fill. With pads (2, 2) on [1, 2, 3]: CONSTANT gives
  [-1, -1, 0, 1, 2, -1, -1], REFLECT [2, 1, 0, 1, 2, 1, 0], EDGE [0, 0, 0, 1, 2, 2, 2].
  The input's part of each innermost row is copied as one run; only the pads go through the
  table.

Buffers may be strided views with non-negative strides (a reshape needs one side
contiguous). Steps over ``PARALLEL_MIN_ELEMENTS`` elements split their rows over the threads,
copies whose innermost run is strided (most permutes) over ``PARALLEL_MIN_GATHER``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import as_strided

from mmbuild.errors import Code, MMError
from mmbuild.ir.types import DataType
from mmbuild.kernels.table import (
    BUFFER_TYPES,
    Buffers,
    Kernel,
    Runner,
    Step,
    in_order,
    register_kernel,
)
from mmbuild.ops.combine import IPadMode, IPadNode, ISliceNode

__all__ = [
    "MOVEMENT_PRECISIONS",
    "PARALLEL_MIN_ELEMENTS",
    "PARALLEL_MIN_GATHER",
    "flat_view",
    "refuse_activation",
]

# Measured on an AVX-512 Xeon, 2 threads: a flat copy of 573K float32 takes 155 us serial and
# 64 us split, 108K 12 us and 14 us; a permute NCHW -> NHWC of [1, 24, 40, 56] (54K) 48 us and
# 31 us.
PARALLEL_MIN_ELEMENTS = 1 << 18
PARALLEL_MIN_GATHER = 1 << 15  # the same for a copy whose innermost run is strided
_CHUNK = 1 << 16  # elements per parallel work item
_SHORT_RUN = 16  # innermost runs shorter than this are reordered (see _coalesce)

MOVEMENT_PRECISIONS = BUFFER_TYPES
_UNITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_PAD_MODES = {IPadMode.CONSTANT: 0, IPadMode.REFLECT: 1, IPadMode.EDGE: 2}
# Buffer indices are cast to uint64 in the loops: numba wraps a negative signed index around,
# and that test on every access keeps LLVM from vectorising a copy (a 15x slower loop).
_U: Any = np.uint64


# ---------------------------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", boundscheck=False)
def _run(src, dst, s, d, n, si, di):  # type: ignore[no-untyped-def]
    """``dst[d + j * di] = src[s + j * si]`` for ``j < n``; unit strides get their own loop,
    which LLVM turns into a vector copy."""
    if si == 1 and di == 1:
        for j in range(n):
            dst[_U(d + j)] = src[_U(s + j)]
    else:
        for j in range(n):
            dst[_U(d + j * di)] = src[_U(s + j * si)]


@njit(cache=True, error_model="numpy", boundscheck=False)
def _copy_rows(src, dst, shape, sstr, dstr, soff, doff, row0, row1):  # type: ignore[no-untyped-def]
    """Rows ``row0 .. row1`` of a box copy; a row is the innermost dimension."""
    r = shape.size
    idx = np.zeros(max(r - 1, 1), np.int64)
    s, d, rem = soff, doff, row0
    for k in range(r - 2, -1, -1):
        idx[k] = rem % shape[k]
        rem //= shape[k]
        s += idx[k] * sstr[k]
        d += idx[k] * dstr[k]
    for _ in range(row0, row1):
        _run(src, dst, s, d, shape[r - 1], sstr[r - 1], dstr[r - 1])
        k = r - 2  # odometer step to the next row
        while k >= 0:
            idx[k] += 1
            s += sstr[k]
            d += dstr[k]
            if idx[k] < shape[k]:
                break
            s -= shape[k] * sstr[k]
            d -= shape[k] * dstr[k]
            idx[k] = 0
            k -= 1


@njit(cache=True, error_model="numpy", boundscheck=False)
def _copy_serial(src, dst, shape, sstr, dstr, soff, doff):  # type: ignore[no-untyped-def]
    rows = 1
    for k in range(shape.size - 1):
        rows *= shape[k]
    _copy_rows(src, dst, shape, sstr, dstr, soff, doff, 0, rows)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _copy_parallel(src, dst, shape, sstr, dstr, soff, doff, chunk):  # type: ignore[no-untyped-def]
    rows = 1
    for k in range(shape.size - 1):
        rows *= shape[k]
    per = max(chunk // max(shape[shape.size - 1], 1), 1)
    for c in prange((rows + per - 1) // per):
        _copy_rows(src, dst, shape, sstr, dstr, soff, doff, c * per, min(rows, (c + 1) * per))


@njit(cache=True, error_model="numpy", boundscheck=False)
def _pad_tables(geo, pads, mode):  # type: ignore[no-untyped-def]
    """Per output dimension, the source offset of each index (-1: the constant fill), all in
    one array; ``starts[d]`` is where dimension ``d``'s table begins. ``geo`` holds the rows
    input shape, input strides, output shape, output strides."""
    in_shape, in_strides, out_shape = geo[0], geo[1], geo[2]
    r = in_shape.size
    starts = np.empty(r + 1, np.int64)
    starts[0] = 0
    for d in range(r):
        starts[d + 1] = starts[d] + out_shape[d]
    table = np.empty(starts[r], np.int64)
    for d in range(r):
        n, before = in_shape[d], pads[2 * d]
        for j in range(out_shape[d]):
            i = j - before
            if i < 0 or i >= n:
                if mode == 0:  # CONSTANT
                    table[starts[d] + j] = -1
                    continue
                if mode == 1:  # REFLECT: the edge is not repeated; the pads are below n
                    i = -i if i < 0 else 2 * (n - 1) - i
                else:  # EDGE
                    i = 0 if i < 0 else n - 1
            table[starts[d] + j] = i * in_strides[d]
    return table, starts


@njit(cache=True, error_model="numpy", boundscheck=False)
def _pad_span(src, dst, table, s, d, di, fill, j0, j1):  # type: ignore[no-untyped-def]
    """Output indices ``j0 .. j1`` of an innermost row, through the table."""
    for j in range(j0, j1):
        t = table[j]
        dst[_U(d + j * di)] = fill[0] if t < 0 else src[_U(s + t)]


@njit(cache=True, error_model="numpy", boundscheck=False)
def _pad_rows(src, dst, geo, pads, table, starts, fill, row0, row1):  # type: ignore[no-untyped-def]
    in_shape, in_strides, shape, dstr = geo[0], geo[1], geo[2], geo[3]
    r = shape.size
    inner, di = shape[r - 1], dstr[r - 1]
    row_table = table[starts[r - 1] :]
    before, n_in = pads[2 * r - 2], in_shape[r - 1]
    for row in range(row0, row1):
        rem, s, d, outside = row, 0, 0, False
        for k in range(r - 2, -1, -1):
            j = rem % shape[k]
            rem //= shape[k]
            t = table[starts[k] + j]
            outside |= t < 0
            s += t
            d += j * dstr[k]
        if outside:
            for j in range(inner):
                dst[_U(d + j * di)] = fill[0]
        else:  # the pads through the table, the input's run between them as a copy
            _pad_span(src, dst, row_table, s, d, di, fill, 0, before)
            _run(src, dst, s, d + before * di, n_in, in_strides[r - 1], di)
            _pad_span(src, dst, row_table, s, d, di, fill, before + n_in, inner)


@njit(cache=True, error_model="numpy", boundscheck=False)
def _pad_serial(src, dst, geo, pads, mode, fill):  # type: ignore[no-untyped-def]
    table, starts = _pad_tables(geo, pads, mode)
    rows = 1
    for k in range(geo.shape[1] - 1):
        rows *= geo[2, k]
    _pad_rows(src, dst, geo, pads, table, starts, fill, 0, rows)


@njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _pad_parallel(src, dst, geo, pads, mode, fill, chunk):  # type: ignore[no-untyped-def]
    table, starts = _pad_tables(geo, pads, mode)
    r = geo.shape[1]
    rows = 1
    for k in range(r - 1):
        rows *= geo[2, k]
    per = max(chunk // max(geo[2, r - 1], 1), 1)
    for c in prange((rows + per - 1) // per):
        _pad_rows(src, dst, geo, pads, table, starts, fill, c * per, min(rows, (c + 1) * per))


# ---------------------------------------------------------------------------------------------
# Buffers and boxes
# ---------------------------------------------------------------------------------------------
def flat_view(a: np.ndarray, unit: type | None = None) -> tuple[np.ndarray, list[int]]:
    """The memory of ``a`` as a flat array starting at ``a``'s first element, and ``a``'s
    strides in elements. ``unit`` is the flat array's dtype (default: the unsigned integer of
    ``a``'s element size). ``a`` may be a view with non-negative strides."""
    size = a.itemsize
    if any(s < 0 or s % size for s in a.strides):
        raise MMError(
            f"a buffer of shape {list(a.shape)} has strides {list(a.strides)}; kernels take "
            "buffers whose strides are non-negative multiples of the element size",
            Code.INTERNAL,
        )
    strides = [s // size for s in a.strides]
    unit = unit or _UNITS[size]
    if a.flags.c_contiguous:
        return a.reshape(-1).view(unit), strides
    span = 1 + sum((n - 1) * s for n, s in zip(a.shape, strides)) if a.size else 0
    return as_strided(a, shape=(span,), strides=(size,)).view(unit), strides


def _contiguous_strides(shape: Sequence[int]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


def _coalesce(
    shape: Sequence[int], sstr: Sequence[int], dstr: Sequence[int]
) -> tuple[list[int], list[int], list[int]] | None:
    """The box with size-1 dimensions dropped and neighbours merged where both buffers are
    contiguous across them, a short innermost run moved out; None when the box is empty.

    Example: NCHW [8, 3, 48, 192] to NHWC (``shape`` [8, 48, 192, 3], source strides
    [27648, 192, 1, 9216], destination [27648, 576, 3, 1]) merges H and W and walks
    [8, 3, 9216]: runs of 9216 read contiguously instead of 73728 runs of 3.
    """
    if 0 in shape:
        return None
    dims = [(n, s, d) for n, s, d in zip(shape, sstr, dstr) if n != 1] or [(1, 1, 1)]
    out = [dims[-1]]
    for n, s, d in reversed(dims[:-1]):
        n_in, s_in, d_in = out[-1]
        if s == n_in * s_in and d == n_in * d_in:
            out[-1] = (n * n_in, s_in, d_in)
        else:
            out.append((n, s, d))
    out.reverse()
    if out[-1][0] < _SHORT_RUN:
        # a short innermost run (a permute to NHWC of 3 channels: runs of 3) costs a loop
        # start per element or two; any order of the dimensions copies the same box, so make
        # the longest dimension that one buffer walks contiguously the innermost one
        unit = [k for k, (n, s, d) in enumerate(out) if (s == 1 or d == 1) and n > out[-1][0]]
        if unit:
            k = max(unit, key=lambda k: out[k][0])
            out.append(out.pop(k))
    return [n for n, _, _ in out], [s for _, s, _ in out], [d for _, _, d in out]


def bind_copy_box(
    src: np.ndarray,
    sstr: Sequence[int],
    soff: int,
    dst: np.ndarray,
    dstr: Sequence[int],
    doff: int,
    shape: Sequence[int],
) -> Callable[[], None]:
    """The copy of the box ``shape`` from flat ``src`` to flat ``dst`` (same dtype; strides and
    offsets in elements, as the module docstring states) as one call without arguments."""
    box = _coalesce(shape, sstr, dstr)
    if box is None:
        return in_order([])
    dims, s, d = box
    size = int(np.prod(dims))
    gather = s[-1] != 1 or d[-1] != 1
    if size < (PARALLEL_MIN_GATHER if gather else PARALLEL_MIN_ELEMENTS):
        return partial(_copy_serial, src, dst, _i64(dims), _i64(s), _i64(d), np.int64(soff),
                       np.int64(doff))  # fmt: skip
    calls = []
    if len(dims) == 1:  # one long run: rows of _CHUNK elements for the threads, then the tail
        (n,), (s0,), (d0,) = dims, s, d
        rows = n // _CHUNK
        dims, s, d = [rows, _CHUNK], [_CHUNK * s0, s0], [_CHUNK * d0, d0]
        tail = rows * _CHUNK
        calls.append(partial(_copy_serial, src, dst, _i64([n - tail]), _i64([s0]), _i64([d0]),
                             np.int64(soff + tail * s0), np.int64(doff + tail * d0)))  # fmt: skip
    calls.append(partial(_copy_parallel, src, dst, _i64(dims), _i64(s), _i64(d), np.int64(soff),
                         np.int64(doff), np.int64(_CHUNK)))  # fmt: skip
    return in_order(calls)


def _i64(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _where(step: Step) -> str:
    return f"{step.node().node_type} {step.name!r}"


def refuse_activation(step: Step) -> None:
    """Refuse a step with a fused activation (these kernels have no epilogue)."""
    if step.op_attrs.get("activation") is not None:
        raise MMError(
            f"{_where(step)}: kernel of op {step.op!r} has no fused activation; keep the "
            "activation as its own node",
            Code.INTERNAL,
        )


def _check_shape(step: Step, what: str, have: Sequence[int], want: Sequence[int]) -> None:
    if tuple(have) != tuple(want):
        raise MMError(
            f"{_where(step)}: {what} has shape {list(have)} but the op gives {list(want)}",
            Code.INTERNAL,
        )


# ---------------------------------------------------------------------------------------------
# Kernel entries
# ---------------------------------------------------------------------------------------------
Prepare = Callable[[Buffers, Buffers], Callable[[], None]]


class _Movement(Kernel):
    """Base of the movement kernels: every precision, bits copied as they are."""

    precisions = MOVEMENT_PRECISIONS
    fns: tuple[Any, ...] = (_copy_serial, _copy_parallel)

    def bind(self, step: Step) -> Runner:
        refuse_activation(step)
        return Runner.from_prepare(self.prepare(step), self.fns)

    def prepare(self, step: Step) -> Prepare:
        """The step's ``Runner.prepare``: its buffers checked, its copies bound."""
        raise NotImplementedError


@register_kernel
class CopyKernel(_Movement):
    """reshape, squeeze, unsqueeze: the elements of input 0 in row-major order (a reshape's
    optional shape input is not read)."""

    name = "copy"
    ops = ("reshape", "squeeze", "unsqueeze")

    def prepare(self, step: Step) -> Prepare:
        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x, y = inputs[0], outputs[0]
            if x.size != y.size:
                raise MMError(
                    f"{_where(step)}: the input of shape {list(x.shape)} ({x.size} elements) "
                    f"cannot fill the output of shape {list(y.shape)} ({y.size} elements); feed "
                    "an input that fits"
                )
            src, sstr = flat_view(x)
            dst, dstr = flat_view(y)
            if x.flags.c_contiguous:  # walk the output; the input index is the row-major one
                return bind_copy_box(src, _contiguous_strides(y.shape), 0, dst, dstr, 0, y.shape)
            if y.flags.c_contiguous:
                return bind_copy_box(src, sstr, 0, dst, _contiguous_strides(x.shape), 0, x.shape)
            else:
                raise MMError(
                    f"{_where(step)}: a copy between two strided views is not supported; "
                    "give one contiguous buffer",
                    Code.INTERNAL,
                )

        return prepare


@register_kernel
class PermuteKernel(_Movement):
    """permute: output dimension ``i`` walks input dimension ``perm[i]``."""

    name = "permute"
    ops = ("permute",)

    def prepare(self, step: Step) -> Prepare:
        perm = [int(p) for p in step.op_attrs["perm"]]

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x, y = inputs[0], outputs[0]
            _check_shape(step, "the output", y.shape, [x.shape[p] for p in perm])
            src, sstr = flat_view(x)
            dst, dstr = flat_view(y)
            return bind_copy_box(src, [sstr[p] for p in perm], 0, dst, dstr, 0, y.shape)

        return prepare


@register_kernel
class ConcatKernel(_Movement):
    """concat: each input is a box of the output, at the offset of the inputs before it."""

    name = "concat"
    ops = ("concat",)

    def prepare(self, step: Step) -> Prepare:
        axis_attr = int(step.op_attrs["axis"])

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            y = outputs[0]
            axis = axis_attr % y.ndim
            want = list(y.shape)
            want[axis] = sum(x.shape[axis] for x in inputs)
            _check_shape(step, "the output", y.shape, want)
            dst, dstr = flat_view(y)
            at, calls = 0, []
            for x in inputs:
                _check_shape(step, "an input", [*x.shape[:axis], *x.shape[axis + 1 :]],
                             [*y.shape[:axis], *y.shape[axis + 1 :]])  # fmt: skip
                if x.dtype != y.dtype:
                    raise MMError(
                        f"{_where(step)}: an input buffer holds {x.dtype.name} but the output "
                        f"{y.dtype.name}; concatenated inputs share one type",
                        Code.INTERNAL,
                    )
                src, sstr = flat_view(x)
                calls.append(bind_copy_box(src, sstr, 0, dst, dstr, at * dstr[axis], x.shape))
                at += x.shape[axis]
            return in_order(calls)

        return prepare


@register_kernel
class SplitKernel(_Movement):
    """split: each output is a box of the input, at the offset of the outputs before it."""

    name = "split"
    ops = ("split",)

    def prepare(self, step: Step) -> Prepare:
        axis_attr = int(step.op_attrs["axis"])

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x = inputs[0]
            axis = axis_attr % x.ndim
            src, sstr = flat_view(x)
            at, calls = 0, []
            for y in outputs:
                want = list(x.shape)
                want[axis] = y.shape[axis]
                _check_shape(step, "an output", y.shape, want)
                dst, dstr = flat_view(y)
                calls.append(bind_copy_box(src, sstr, at * sstr[axis], dst, dstr, 0, y.shape))
                at += y.shape[axis]
            if at != x.shape[axis]:
                raise MMError(
                    f"{_where(step)}: the outputs take {at} of the {x.shape[axis]} elements "
                    f"on axis {axis}",
                    Code.INTERNAL,
                )
            return in_order(calls)

        return prepare


@register_kernel
class SliceKernel(_Movement):
    """slice: the output box, read from ``begin`` with strides ``stride * input stride``."""

    name = "slice"
    ops = ("slice",)

    def prepare(self, step: Step) -> Prepare:
        decl = cast(ISliceNode, step.node().declaration())

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x, y = inputs[0], outputs[0]
            window = decl._window(x.shape)  # checks the run-time shape as the reference does
            _check_shape(step, "the output", y.shape, [c for _, c, _ in window])
            src, sstr = flat_view(x)
            dst, dstr = flat_view(y)
            soff = sum(b * s for (b, c, _), s in zip(window, sstr) if c)
            steps = [s * st for (_, _, st), s in zip(window, sstr)]
            return bind_copy_box(src, steps, soff, dst, dstr, 0, y.shape)

        return prepare


def _unpadded_merged(
    shape: Sequence[int],
    sstr: Sequence[int],
    out_shape: Sequence[int],
    dstr: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The pad's ``[shape, sstr, out_shape, dstr]`` and pads with every unpadded dimension of
    size 1 dropped and each unpadded dimension merged into the unpadded one before it when both
    buffers walk the two as one run (at least one dimension stays). The rows of a pad then hold
    whole runs: [1, 76, 32, 1] padded along W alone is 76 rows of 34, not 2,584 rows of 1.
    """
    dims: list[list[int]] = []
    kept: list[tuple[int, int]] = []
    for d in range(len(shape)):
        n, s, m, t, p = shape[d], sstr[d], out_shape[d], dstr[d], pads[d]
        if n == 1 and p == (0, 0) and (dims or d < len(shape) - 1):
            continue
        if dims and p == (0, 0) == kept[-1]:
            prev = dims[-1]
            if prev[1] == s * n and prev[3] == t * m:
                dims[-1] = [prev[0] * n, s, prev[2] * m, t]
                continue
        dims.append([n, s, m, t])
        kept.append(p)
    return [list(col) for col in zip(*dims)], kept


@register_kernel
class PadKernel(_Movement):
    """pad: CONSTANT, REFLECT and EDGE over any rank, by a table gather."""

    name = "pad"
    ops = ("pad",)
    fns = (_pad_serial, _pad_parallel)

    def prepare(self, step: Step) -> Prepare:
        decl = cast(IPadNode, step.node().declaration())
        mode = np.int64(_PAD_MODES[decl.attrs["mode"]])
        pads = [(0, 0), *((int(b), int(a)) for b, a in decl.attrs["pads"])]
        dtype = self._dtype(step.precisions[0])
        value = decl.attrs["value"]
        # a float fill goes through float32 first, as the reference pads the float32 tensor
        fill_value = np.float32(value) if dtype.kind == "f" else decl._fill(dtype)
        with np.errstate(over="ignore"):  # a float beyond fp16 pads with inf, as the reference
            fill = np.array([fill_value]).astype(dtype).view(_UNITS[dtype.itemsize])

        def prepare(inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
            x, y = inputs[0], outputs[0]
            decl._check(x.shape)
            # a leading unit dimension gives every tensor (a scalar too) an outer dimension
            x1, y1 = x[None], y[None]
            _check_shape(step, "the output", y1.shape,
                         [n + b + a for n, (b, a) in zip(x1.shape, pads)])  # fmt: skip
            src, sstr = flat_view(x1)
            dst, dstr = flat_view(y1)
            if dst.dtype != fill.dtype:
                raise MMError(
                    f"{_where(step)}: the buffers hold {x.dtype.name}, not the "
                    f"{step.precisions[0].name} the step declares",
                    Code.INTERNAL,
                )
            dims, kept_pads = _unpadded_merged(x1.shape, sstr, y1.shape, dstr, pads)
            geo = np.array(dims, dtype=np.int64)
            flat = _i64([v for p in kept_pads for v in p])
            if y.size >= PARALLEL_MIN_ELEMENTS:
                return partial(_pad_parallel, src, dst, geo, flat, mode, fill, np.int64(_CHUNK))
            return partial(_pad_serial, src, dst, geo, flat, mode, fill)

        return prepare

    @staticmethod
    def _dtype(precision: DataType) -> np.dtype:
        if precision is DataType.FLOAT16:
            return np.dtype(np.float16)
        return np.dtype(precision.numpy_dtype)
