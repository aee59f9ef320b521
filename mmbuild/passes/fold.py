"""Folding passes: work done once at build time instead of on every run.

``fold_constants`` evaluates nodes whose inputs are all constants; ``fold_batch_norm`` merges an
inference batch norm into the weights of the convolution or inner product before it, and
``fold_channel_affine`` does the same for a per-channel constant scale or shift (``y * s``,
``y / s``, ``y + b``, ``y - b``), with the batch norm's formulas for ``s`` and the shift:

    s[c]      = gamma[c] / sqrt(var[c] + eps)
    W'[c,...] = W[c,...] * s[c]                 (c the output channel of the weight)
    b'[c]     = (b[c] - mean[c]) * s[c] + beta[c]   (b = 0 when the node has no bias)

Worked example, one channel: W = 2, b = 1, mean = 3, var = 3, eps = 1, gamma = 4, beta = 0.5:
s = 4 / sqrt(4) = 2, W' = 4, b' = (1 - 3) * 2 + 0.5 = -3.5. For x = 5 the two nodes give
(2 * 5 + 1 - 3) / 2 * 4 + 0.5 = 16.5 and the folded one 4 * 5 - 3.5 = 16.5.
"""

from __future__ import annotations

import numpy as np

from mmbuild.graph import Graph, Node, reference_outputs
from mmbuild.ir.types import DataType, Layout
from mmbuild.ops.activation import IActivation
from mmbuild.ops.conv import ConvLike
from mmbuild.ops.deconv import IDeconvNode
from mmbuild.ops.elementwise import IElementwise
from mmbuild.ops.registry import get_op
from mmbuild.passes._rewrite import CHANNEL_WEIGHT_OPS, absorb, is_a, sole_reader

__all__ = ["fold_batch_norm", "fold_channel_affine", "fold_constants", "fold_hard_sigmoid"]


def fold_constants(graph: Graph) -> int:
    """Evaluate every node whose inputs are all constants; its outputs become constants.

    Before: ``c1 (const) -> reshape -> c2 -> conv`` (filter input). After: ``c2 (const) ->
    conv``. A node that produces a network output is kept (the output stays a computed tensor).
    Values are float32 for float tensors (rounded through float16 first when the tensor's type
    is FLOAT16, as the node would have stored it) and keep their dtype otherwise. Nodes are
    visited in order, so a chain of constant nodes folds in one pass.
    """
    count = 0
    for node in list(graph.nodes):
        if any(t in graph.outputs for t in node.outputs):
            continue
        values = [v for v in map(graph.value, node.inputs) if v is not None]
        if len(values) < len(node.inputs):
            continue
        args = [v.astype(np.float32) if v.dtype == np.float16 else v for v in values]
        for name, result in zip(node.outputs, reference_outputs(node, args)):
            tensor = graph.tensors[name]
            if result.dtype.kind == "f" and tensor.dtype is DataType.FLOAT16:
                result = result.astype(np.float16).astype(np.float32)
            tensor.value = np.ascontiguousarray(result)
            tensor.dims = tuple(result.shape)
        graph.remove(node)
        count += 1
    return count


def fold_batch_norm(graph: Graph) -> int:
    """Fold a ``fused_batch_norm`` into the conv, deconv or inner product that feeds it.

    Before: ``x -> conv(W, b) -> t -> bn(mean, var, gamma, beta) -> y``. After:
    ``x -> conv(W', b') -> y`` (formulas in the module docstring), computed in float64 and
    stored float32 (new FLOAT32 constants; the node's precisions say what it computes in). A
    conv without bias gains a bias constant and a third input whose precision is that of the
    batch norm's offset, the parameter it mostly carries. The conv takes over ``y`` and the
    batch norm's output types, and lists the batch norm in ``fused``.

    A per-channel constant between them (``t + c``, a bias the export added separately, or any
    affine ``fold_channel_affine`` folds) folds into the node first.

    It fires only when ``t`` is read by the batch norm alone and is no network output, the batch
    norm works on the node's channel axis (1 for an NCHW output or an inner product, 3 for
    NHWC), the weights, bias and batch norm parameters are constants, the node has no fused
    activation yet, and every ``s[c]`` is finite. Otherwise the graph is left as it was.
    """
    count = sum(_fold_one_batch_norm(graph, bn) for bn in list(graph.nodes)
                if bn.op == "fused_batch_norm")  # fmt: skip
    if count:
        graph.prune_tensors()
    return count


def _fold_one_batch_norm(graph: Graph, bn: Node) -> bool:
    """Fold ``bn`` into its producer when ``fold_batch_norm`` allows it; whether it did. A
    per-channel constant added (or multiplied) between them folds first: a deconv's bias that
    the export wrote as a separate add."""
    main = graph.producer(bn.inputs[0])
    if main is not None and main.op == "elementwise" and _fold_one_affine(graph, main):
        main = graph.producer(bn.inputs[0])
    if main is None or not _foldable(graph, main, bn):
        return False
    mean, var, gamma, beta = (_f64(graph, t) for t in bn.inputs[1:5])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = gamma / np.sqrt(var + float(bn.attrs["eps"]))
    if not np.all(np.isfinite(s)):
        return False
    _scale_and_shift(graph, main, bn, s, beta - mean * s, bn.precisions[4], "bn")
    return True


def fold_channel_affine(graph: Graph) -> int:
    """Fold a constant per-channel scale or shift into the conv, deconv or inner product before it.

    Before: ``x -> conv(W, b) -> t -> mul(t, s) -> y`` with ``s`` constant, one value per output
    channel (shape ``[1, C, 1, 1]`` on NCHW, ``[C]`` on NHWC, or one value). After: ``x ->
    conv(W * s, b * s) -> y``. ``t / s`` folds as ``t * (1/s)``; ``t + c`` and ``t - c`` fold into
    the bias (one is added when the node has none, in the precision of ``c``). A chain ``t * s +
    c`` folds step by step. Worked example, one channel: W = 2, b = 1, s = 3: (2x + 1) * 3 = 6x + 3.

    It does not fire for ``s / t`` or ``c - t``, a constant that varies along another axis than
    the channels (or widens ``t``), a ``t`` read elsewhere too or that is a network output, a
    node with a fused activation already, non-constant weights, an elementwise that reads ``t``
    in another precision than the node's output type, or a scale that is not finite.
    """
    count = sum(_fold_one_affine(graph, e) for e in list(graph.nodes) if e.op == "elementwise")
    if count:
        graph.prune_tensors()
    return count


def _fold_one_affine(graph: Graph, e: Node) -> bool:
    """Fold the elementwise ``e`` into its producer when ``fold_channel_affine`` allows it."""
    found = _channel_affine(graph, e)
    if found is None:
        return False
    main, c = found
    mode = e.attrs["mode"]
    with np.errstate(divide="ignore"):
        scale = {IElementwise.MUL: c, IElementwise.DIV: 1.0 / c}.get(mode, np.ones_like(c))
    shift = {IElementwise.ADD: c, IElementwise.SUB: -c}.get(mode, np.zeros_like(c))
    if not np.all(np.isfinite(scale)):
        return False
    const_slot = 1 if graph.value(e.inputs[1]) is not None else 0
    _scale_and_shift(graph, main, e, scale, shift, e.precisions[const_slot], "affine")
    return True


def fold_hard_sigmoid(graph: Graph) -> int:
    """A HARD_SIGMOID after a conv, deconv or inner product becomes its weights and epilogue.

    ``hard_sigmoid(t) = clip(alpha * t + beta, 0, 1)``: the affine part folds into the weights
    (``W' = alpha * W``, ``b' = alpha * b + beta``) and the clip is the fused activation
    ``{"function": "clip", "lo": 0.0, "hi": 1.0}``. Before: ``x -> conv(W, b) -> t ->
    hard_sigmoid -> y`` (a squeeze-excitation gate). After: ``x -> conv(W', b')[clip 0..1] ->
    y``. Example, alpha 1/6, beta 1/2, W = 3, b = 0, x = 1: clip(3 / 6 + 1 / 2, 0, 1) = 1, and
    the folded conv gives clip(0.5 * 1 + 0.5, 0, 1) = 1.

    It fires under the conditions of ``fold_channel_affine`` (``t`` private, weights constant,
    no fused activation yet, the activation reads ``t`` in the node's output type).
    """
    count = 0
    for act in [n for n in graph.nodes if n.op == "activation"]:
        if act.attrs["mode"] is not IActivation.HARD_SIGMOID:
            continue
        main = graph.producer(act.inputs[0])
        if main is None or not _affine_foldable(graph, main, act, act.inputs[0]):
            continue
        channels = graph.tensors[act.inputs[0]].dims[_channel_axis(main)]
        if channels < 0:
            continue
        alpha, beta = float(act.attrs["alpha"]), float(act.attrs["beta"])
        s, shift = np.full(channels, alpha), np.full(channels, beta)
        _scale_and_shift(graph, main, act, s, shift, act.precisions[0], "hard_sigmoid")
        main.attrs["activation"] = {"function": "clip", "lo": 0.0, "hi": 1.0}
        count += 1
    if count:
        graph.prune_tensors()
    return count


def _channel_affine(graph: Graph, e: Node) -> tuple[Node, np.ndarray] | None:
    """``(main, c[C])`` when ``e`` is ``t (op) c`` with ``t`` the private output of a foldable
    ``main`` and ``c`` a per-channel constant of it (see ``fold_channel_affine``)."""
    mode = e.attrs["mode"]
    if mode not in (IElementwise.MUL, IElementwise.DIV, IElementwise.ADD, IElementwise.SUB):
        return None
    for slot in (0, 1):
        t, c_name = e.inputs[slot], e.inputs[1 - slot]
        if slot == 1 and mode in (IElementwise.DIV, IElementwise.SUB):
            break  # c / t and c - t are no affine function of t
        main, c = graph.producer(t), graph.value(c_name)
        if main is None or c is None or not _affine_foldable(graph, main, e, t):
            continue
        dims = graph.tensors[t].dims
        if graph.tensors[e.outputs[0]].dims != dims or c.ndim > len(dims):
            continue
        axis = _channel_axis(main)
        shape = (1,) * (len(dims) - c.ndim) + c.shape
        channels = dims[axis]
        across = any(n != 1 for i, n in enumerate(shape) if i != axis)
        if across or shape[axis] not in (1, channels) or channels < 0:
            continue
        return main, np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (channels,)).copy()
    return None


def _affine_foldable(graph: Graph, main: Node, e: Node, t: str) -> bool:
    if not is_a(main, CHANNEL_WEIGHT_OPS) or "activation" in main.attrs:
        return False
    if len(main.outputs) != 1 or sole_reader(graph, t) is not e:
        return False
    if main.output_types[0] != e.precisions[e.inputs.index(t)]:
        return False
    return all(graph.value(w) is not None for w in main.inputs[1:])


def _scale_and_shift(
    graph: Graph, main: Node, absorbed: Node, s: np.ndarray, shift: np.ndarray,
    bias_precision: DataType, tag: str,
) -> None:  # fmt: skip
    """``main`` computes ``its result * s + shift`` per output channel (float64, stored float32)
    and absorbs ``absorbed``: ``W' = W * s``, ``b' = b * s + shift``."""
    w = _f64(graph, main.inputs[1])
    b = _f64(graph, main.inputs[2]) if len(main.inputs) > 2 else np.zeros_like(s)
    new_w = (w * _weight_multiplier(main, w.shape, s)).astype(np.float32)
    new_b = (b * s + shift).astype(np.float32)
    main.inputs[1] = graph.add_const(f"{main.name}/filter_{tag}", new_w)
    bias = graph.add_const(f"{main.name}/bias_{tag}", new_b)
    if len(main.inputs) > 2:
        main.inputs[2] = bias
    else:
        main.inputs.append(bias)
        main.precisions.append(bias_precision)
    absorb(graph, main, absorbed)


def _foldable(graph: Graph, main: Node, bn: Node) -> bool:
    if not is_a(main, CHANNEL_WEIGHT_OPS) or "activation" in main.attrs:
        return False
    if len(main.outputs) != 1 or sole_reader(graph, bn.inputs[0]) is not bn:
        return False
    if any(graph.value(t) is None for t in [*main.inputs[1:], *bn.inputs[1:]]):
        return False
    rank = len(graph.tensors[bn.inputs[0]].dims)
    return int(bn.attrs["axis"]) % rank == _channel_axis(main)


def _channel_axis(node: Node) -> int:
    """The output axis that holds the output channels."""
    if is_a(node, (ConvLike,)):
        return 1 if node.attrs["layout"][2] is Layout.NCHW else 3
    return 1  # inner product: [N, N_out]


def _weight_multiplier(node: Node, shape: tuple[int, ...], s: np.ndarray) -> np.ndarray:
    """``s`` laid out to multiply the weight of ``node`` (of ``shape``) per output channel."""
    if not is_a(node, (ConvLike,)):
        return s[:, None]  # inner product weight [N_out, K]
    decl = node.declaration()
    assert isinstance(decl, ConvLike)
    perm = decl.filter_ohwi((0, 1, 2, 3))  # filter axes -> the canonical [A, Kh, Kw, B]
    a, b = shape[perm[0]], shape[perm[3]]
    if issubclass(get_op(node.op), IDeconvNode):
        # canonical [Cin, Kh, Kw, Cout/g]: input channel ci of group ci // (Cin/g) feeds output
        # channels g * Cout/g + o, so row ci scales by s[g * Cout/g : (g + 1) * Cout/g]
        group = int(node.attrs["group"])
        m = np.repeat(s.reshape(group, b), a // group, axis=0).reshape(a, 1, 1, b)
    else:
        m = s.reshape(a, 1, 1, 1)  # canonical [Cout, Kh, Kw, Cin/g]
    return m.transpose(np.argsort(perm))


def _f64(graph: Graph, tensor: str) -> np.ndarray:
    value = graph.value(tensor)
    assert value is not None  # checked by _foldable
    return np.asarray(value, dtype=np.float64)
