"""Pointwise fusion: chains of elementwise nodes with scalar constants that spell an activation
become that one activation node (one step instead of three to five).

=========================================================  =========================================
chain (``c`` scalar constants)                             becomes
=========================================================  =========================================
``clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``; RELU6 for clip)  HARD_SIGMOID(x), alpha 1/6, beta 1/2
``x * hard_sigmoid(x)`` (alpha 1/6, beta 1/2; either side)  HARD_SWISH(x)
``x * clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``)              HARD_SWISH(x)
``x * sigmoid(x)`` (either side)                           SILU(x)
``max(x, c)`` / ``min(x, c)`` (either side)                  clip(x, c, inf) / clip(x, -inf, c)
=========================================================  =========================================

Worked example, x = 1: clip(1 + 3, 0, 6) / 6 = 4 / 6 = 0.6667 = clip(1/6 * 1 + 1/2, 0, 1), so
1 * 0.6667 is HARD_SWISH(1) = 1 * clip(1/6 + 1/2, 0, 1). The fused node computes the formula of
``ACTIVATIONS`` (the ONNX one, ``x * (1/6) + 1/2``, in float32), where the chain added 3 and
divided by 6: the results agree within a few float32 ulps.

A rewrite fires only when every node of the chain runs in one float type (its inputs and outputs
alike), every tensor inside the chain is read by the next node alone and is no network output,
and each constant is one value (its size 1, not widening the result's shape). The fused node
keeps the name and outputs of the chain's last node and lists the others in ``fused``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mmbuild.graph import Graph, Node
from mmbuild.ir.types import DataType
from mmbuild.ops.activation import ACTIVATIONS, IActivation
from mmbuild.ops.elementwise import IElementwise
from mmbuild.passes._rewrite import sole_reader

__all__ = [
    "clamp_as_clip",
    "fuse_hard_sigmoid",
    "fuse_hard_swish",
    "fuse_silu",
    "one_float_type",
    "with_scalar",
]

_MUL, _DIV, _ADD = IElementwise.MUL, IElementwise.DIV, IElementwise.ADD
_MAX, _MIN = IElementwise.MAX, IElementwise.MIN


def clamp_as_clip(graph: Graph) -> int:
    """``max(x, c)`` -> ``clip(x, c, inf)`` and ``min(x, c)`` -> ``clip(x, -inf, c)``.

    ONNX exports write a relu as ``Max(x, 0)``; as a clip it fuses into the conv before it.
    Before: ``x -> elementwise(MAX, 0.0) -> y``. After: ``x -> clip(0.0, inf) -> y``. The same
    numbers: both compare, NaN passes (``max(NaN, 0) = NaN``). Does not fire for a constant of
    more than one value, one that widens the result, a NaN constant, or mixed types.
    """
    count = 0
    for node in list(graph.nodes):
        found = with_scalar(graph, node, (_MAX, _MIN))
        if found is None or np.isnan(found[1]) or not one_float_type(graph, [node]):
            continue
        x, c = found
        lo, hi = (c, math.inf) if node.attrs["mode"] is _MAX else (-math.inf, c)
        clip = Node(node.name, "clip", {"lo": lo, "hi": hi}, [x], list(node.outputs),
                    [node.precisions[node.inputs.index(x)]], list(node.output_types),
                    notes=list(node.notes), fused=list(node.fused))  # fmt: skip
        graph.nodes[graph.nodes.index(node)] = clip
        count += 1
    graph.prune_tensors()
    return count


def fuse_hard_sigmoid(graph: Graph) -> int:
    """``clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``, RELU6 in place of the clip) -> HARD_SIGMOID.

    Before: ``x -> add(3) -> clip(0, 6) -> div(6) -> y``. After: ``x -> activation(HARD_SIGMOID,
    alpha=1/6, beta=0.5) -> y``. Does not fire for other constants (``clip(x + 3, 0, 5)``), a
    clip whose output is read elsewhere too, or a chain that changes type on the way.
    """
    count = 0
    for last in list(graph.nodes):
        if last in graph.nodes and (x_chain := _hard_sigmoid_chain(graph, last)) is not None:
            x, chain = x_chain
            _replace(graph, chain, x, IActivation.HARD_SIGMOID)
            count += 1
    return count


def fuse_hard_swish(graph: Graph) -> int:
    """``x * hard_sigmoid(x)`` or ``x * clip(x + 3, 0, 6) / 6`` -> HARD_SWISH.

    Before: ``x -> hard_sigmoid(1/6, 1/2) -> g``, ``(x, g) -> mul -> y``. After: ``x ->
    activation(HARD_SWISH) -> y``. Run after ``fuse_hard_sigmoid``, which makes the gate of the
    first form. Does not fire for a hard sigmoid of other alpha or beta (ONNX's default 0.2),
    for ``x * hard_sigmoid(z)`` with ``z`` another tensor, or when the gate is read elsewhere.
    """
    count = 0
    for last in list(graph.nodes):
        if last not in graph.nodes:
            continue
        found = _gated(graph, last, _is_hard_sigmoid) or _scaled_hard_swish(graph, last)
        if found is not None:
            _replace(graph, found[1], found[0], IActivation.HARD_SWISH)
            count += 1
    return count


def fuse_silu(graph: Graph) -> int:
    """``x * sigmoid(x)`` -> SILU.

    Before: ``x -> sigmoid -> g``, ``(x, g) -> mul -> y``. After: ``x -> activation(SILU) -> y``.
    Does not fire for ``x * sigmoid(z)`` with ``z`` another tensor, or when ``g`` is read
    elsewhere (it is then computed anyway).
    """
    count = 0
    for last in list(graph.nodes):
        if last in graph.nodes and (found := _gated(graph, last, _is_sigmoid)) is not None:
            _replace(graph, found[1], found[0], IActivation.SILU)
            count += 1
    return count


# -- matching ----------------------------------------------------------------------------------
def _scalar(graph: Graph, node: Node, operand: str, result: str) -> float | None:
    """The value of ``operand`` when it is a one-value constant that does not widen ``result``
    beyond the other operand of ``node``."""
    value = graph.value(operand)
    if value is None or value.size != 1:
        return None
    other = node.inputs[1] if node.inputs[0] == operand else node.inputs[0]
    if graph.tensors[other].dims != graph.tensors[result].dims:
        return None
    return float(np.asarray(value, np.float64).reshape(()))


def with_scalar(
    graph: Graph, node: Node, modes: tuple[IElementwise, ...]
) -> tuple[str, float] | None:
    """``(tensor, c)`` when ``node`` is an elementwise ``tensor (mode) c`` (or ``c * tensor``,
    ``c + tensor``) with ``mode`` in ``modes``."""
    if node.op != "elementwise" or node.attrs["mode"] not in modes or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    c = _scalar(graph, node, b, node.outputs[0])
    if c is not None:
        return a, c
    if node.attrs["mode"] in (_MUL, _ADD, _MAX, _MIN):
        c = _scalar(graph, node, a, node.outputs[0])
        if c is not None:
            return b, c
    return None


def _divided_by_six(graph: Graph, node: Node) -> str | None:
    """The tensor that ``node`` divides by 6 (``t / 6`` or ``t * (1/6)``), or None."""
    found = with_scalar(graph, node, (_DIV, _MUL))
    if found is None:
        return None
    t, c = found
    six = c if node.attrs["mode"] is _DIV else (1.0 / c if c else 0.0)
    return t if np.float32(six) == np.float32(6.0) else None


def _relu6_of_x_plus_3(graph: Graph, t: str, reader: Node) -> tuple[str, list[Node]] | None:
    """``(x, [add, clip])`` when ``t = clip(x + 3, 0, 6)`` (or RELU6) is read by ``reader``
    alone."""
    clip = graph.producer(t)
    if clip is None or sole_reader(graph, t) is not reader:
        return None
    relu6 = clip.op == "activation" and clip.attrs["mode"] is IActivation.RELU6
    if not relu6 and not (clip.op == "clip" and (clip.attrs["lo"], clip.attrs["hi"]) == (0, 6)):
        return None
    add = graph.producer(clip.inputs[0])
    found = with_scalar(graph, add, (_ADD,)) if add is not None else None
    if found is None or found[1] != 3.0 or sole_reader(graph, clip.inputs[0]) is not clip:
        return None
    return found[0], [add, clip]  # type: ignore[list-item]


def _hard_sigmoid_chain(graph: Graph, last: Node) -> tuple[str, list[Node]] | None:
    t = _divided_by_six(graph, last)
    found = _relu6_of_x_plus_3(graph, t, last) if t is not None else None
    if found is None:
        return None
    chain = [*found[1], last]
    return (found[0], chain) if one_float_type(graph, chain) else None


def _scaled_hard_swish(graph: Graph, last: Node) -> tuple[str, list[Node]] | None:
    """``x * clip(x + 3, 0, 6) / 6``: ``last`` divides a product of x and the clip by 6."""
    t = _divided_by_six(graph, last)
    mul = graph.producer(t) if t is not None else None
    if mul is None or t is None or sole_reader(graph, t) is not last:
        return None
    if mul.op != "elementwise" or mul.attrs["mode"] is not _MUL:
        return None
    for x, r in (mul.inputs, mul.inputs[::-1]):
        found = _relu6_of_x_plus_3(graph, r, mul)
        if found is not None and found[0] == x:
            chain = [*found[1], mul, last]
            return (x, chain) if one_float_type(graph, chain) else None
    return None


def _gated(graph: Graph, mul: Node, is_gate: Any) -> tuple[str, list[Node]] | None:
    """``(x, [gate, mul])`` when ``mul`` is ``x * gate(x)`` (either side) and the gate output is
    read by ``mul`` alone."""
    if mul.op != "elementwise" or mul.attrs["mode"] is not _MUL or len(mul.inputs) != 2:
        return None
    for x, g in (mul.inputs, mul.inputs[::-1]):
        gate = graph.producer(g)
        if gate is None or not is_gate(gate) or gate.inputs[0] != x:
            continue
        if sole_reader(graph, g) is mul and one_float_type(graph, [gate, mul]):
            return x, [gate, mul]
    return None


def _is_sigmoid(node: Node) -> bool:
    return node.op == "activation" and node.attrs["mode"] is IActivation.SIGMOID


def _is_hard_sigmoid(node: Node) -> bool:
    if node.op != "activation" or node.attrs["mode"] is not IActivation.HARD_SIGMOID:
        return False
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    return np.float32(alpha) == np.float32(1 / 6) and np.float32(beta) == np.float32(0.5)


def one_float_type(graph: Graph, chain: list[Node]) -> bool:
    """Every input precision and output type in ``chain`` is one float type, and the tensors
    between its nodes are no network outputs."""
    types: set[DataType] = set()
    for node in chain:
        types.update(node.precisions)
        types.update(node.output_types)
    inner = [t for node in chain[:-1] for t in node.outputs]
    return len(types) == 1 and types.pop().is_float and not set(inner) & set(graph.outputs)


# -- rewriting ---------------------------------------------------------------------------------
def _replace(graph: Graph, chain: list[Node], x: str, mode: IActivation) -> None:
    """Replace ``chain`` (in graph order, its last node making the result) by ``mode`` of ``x``."""
    last = chain[-1]
    d = ACTIVATIONS[mode]
    alpha, beta = (1 / 6, 0.5) if mode is IActivation.HARD_SIGMOID else (d.alpha, d.beta)
    fused = [name for node in chain[:-1] for name in (node.name, *node.fused)]
    node = Node(
        last.name, "activation", {"mode": mode, "alpha": alpha, "beta": beta}, [x],
        list(last.outputs), [last.precisions[0]], list(last.output_types),
        notes=list(last.notes), fused=[*fused, *last.fused],
    )  # fmt: skip
    graph.nodes[graph.nodes.index(last)] = node
    for old in chain[:-1]:
        graph.remove(old)
    graph.prune_tensors()
