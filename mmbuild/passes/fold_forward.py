"""Forward folding: a scalar affine ``x * s + b`` read only by unpadded convs becomes their weights.

PP-OCRv4's backbone (PPLCNetV3) ends every conv block with a learnable affine block: after the
activation, ``y = x * s + b`` with one learned ``s`` and ``b``. The activation sits between it
and the conv before it, so it cannot fold backwards (``fold_channel_affine``); it folds forwards
into a conv that reads it without padding, since that conv's sums are linear in its input:

    sum_k w[o, k] * (s * x[k] + b) = sum_k (s * w[o, k]) * x[k] + b * sum_k w[o, k]

so ``W' = s * W`` and ``bias'[o] = bias[o] + b * sum_k W[o, k]`` (over the taps and input
channels of output channel ``o``), computed in float64 and stored float32. A padded conv would
see ``s * 0 + b`` at its borders in one form and 0 in the other, so it does not fold.

Before: ``x -> mul(s) -> add(b) -> t -> conv(W, bias)``. After: ``x -> conv(s W, bias')``, with
the two elementwise nodes in the conv's ``fused``. Worked example, one 1x1 filter w = 2, bias 1,
s = 3, b = 0.5: 2 * (3x + 0.5) + 1 = 6x + 2, and W' = 6, bias' = 1 + 0.5 * 2 = 2.

It fires when ``s`` and ``b`` are one-value constants (``x * s``, ``x + b`` or both, either
operand order), the chain is in one float type with private inner tensors, ``t`` is no network
output, and every reader of ``t`` is a conv with constant weights reading it as its input 0
with no padding at the known input size (and, when the reader is quantized, ``x`` has a range
to quantize with: the reader now quantizes ``x``). Each reader gets its own folded weights.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mmbuild.graph import Graph, Node
from mmbuild.ops.conv import ConvLike
from mmbuild.ops.elementwise import IElementwise
from mmbuild.passes.pointwise import one_float_type, with_scalar

__all__ = ["affine_chain", "affine_chains", "fold_affine_into_readers"]

_MUL, _ADD = IElementwise.MUL, IElementwise.ADD


def fold_affine_into_readers(graph: Graph) -> int:
    """Fold each scalar affine chain into the unpadded convs that read it (module docstring);
    returns the number of chains folded.

    Before: ``x -> mul(s) -> add(b) -> t -> conv(W, bias)``. After: ``x -> conv(s W, bias +
    b * sum W)``."""
    count = 0
    for x, s, b, chain in affine_chains(graph, list(graph.nodes)):
        t = chain[-1].outputs[0]
        readers = graph.consumers(t)
        if not readers or t in graph.outputs:
            continue
        if not all(_folds_into(graph, r, t, x) for r in readers):
            continue
        for reader in readers:
            _absorb(graph, reader, x, s, b, chain)
        for node in chain:
            graph.remove(node)
        count += 1
    if count:
        graph.prune_tensors()
    return count


def affine_chains(
    graph: Graph, order: list[Node]
) -> Iterator[tuple[str, float, float, list[Node]]]:
    """:func:`affine_chain` of each node of ``order`` that is still in ``graph`` when reached
    (a rewrite between two may remove the nodes of the next)."""
    for last in order:
        if last in graph.nodes:
            found = affine_chain(graph, last)
            if found is not None:
                yield found


def affine_chain(graph: Graph, last: Node) -> tuple[str, float, float, list[Node]] | None:
    """``(x, s, b, nodes)`` when ``last`` ends ``x * s + b``, ``x * s`` or ``x + b``."""
    add = with_scalar(graph, last, (_ADD,))
    if add is not None:
        u, b = add
        mul_node = graph.producer(u)
        mul = with_scalar(graph, mul_node, (_MUL,)) if mul_node is not None else None
        if mul_node is not None and mul is not None and graph.is_private(u):
            chain = [mul_node, last]
            return (mul[0], mul[1], b, chain) if one_float_type(graph, chain) else None
        return (u, 1.0, b, [last]) if one_float_type(graph, [last]) else None
    mul = with_scalar(graph, last, (_MUL,))
    if mul is not None and one_float_type(graph, [last]):
        return mul[0], mul[1], 0.0, [last]
    return None


def _folds_into(graph: Graph, reader: Node, t: str, x: str) -> bool:
    """Whether ``reader`` is a conv that reads ``t`` unpadded as its input 0 only."""
    if reader.op != "conv" or reader.inputs[0] != t or t in reader.inputs[1:]:
        return False
    if any(graph.value(w) is None for w in reader.inputs[1:]):
        return False
    if reader.precisions[0].is_quantized and graph.tensors[x].range is None:
        return False
    decl = reader.declaration()
    assert isinstance(decl, ConvLike)
    _, h, w, _ = decl.to_nhwc(graph.tensors[t].dims)
    _, kh, kw, _ = decl.filter_ohwi(graph.tensors[reader.inputs[1]].dims)
    return h >= 0 and w >= 0 and not any(decl.pads_for(h, w, kh, kw))


def _absorb(graph: Graph, reader: Node, x: str, s: float, b: float, chain: list[Node]) -> None:
    """``reader`` reads ``x`` with ``W' = s W`` and ``bias' = bias + b * sum W``."""
    decl = reader.declaration()
    assert isinstance(decl, ConvLike)
    w = np.asarray(graph.value(reader.inputs[1]), np.float64)
    out_axis = decl.filter_ohwi((0, 1, 2, 3))[0]
    sums = w.sum(axis=tuple(a for a in range(w.ndim) if a != out_axis))
    bias = np.zeros(sums.size) if len(reader.inputs) < 3 else graph.value(reader.inputs[2])
    new_bias = (np.asarray(bias, np.float64).reshape(-1) + b * sums).astype(np.float32)
    reader.inputs[0] = x
    reader.inputs[1] = graph.add_const(f"{reader.name}/filter_affine", (w * s).astype(np.float32))
    bias_name = graph.add_const(f"{reader.name}/bias_affine", new_bias)
    if len(reader.inputs) > 2:
        reader.inputs[2] = bias_name
    else:
        reader.inputs.append(bias_name)
        reader.precisions.append(chain[-1].precisions[0])
    reader.fused += [name for node in chain for name in (node.name, *node.fused)]
