"""Carry NHWC through an NCHW network: permutes sink below the ops that work in any layout.

After ``convert_layout`` every conv and pool of an NCHW network sits between a permute to NHWC
and one back; ``cancel_permutes`` removes the pairs between two such nodes, but not those around
an activation, an elementwise op, a concat or a reduce in between. ``sink_permutes`` moves a
permute from the input of such an op to its output, adapting the op, until the permute meets
its inverse and both cancel:

    conv -> to_nchw -> hard_swish -> to_nhwc -> conv      (before)
    conv -> hard_swish -> to_nchw -> to_nhwc -> conv      (sunk)
    conv -> hard_swish -> conv                            (cancelled)

The op is rewritten to work on the permute's input. With ``x = transpose(x', p)`` (the op read
``x``; ``x'`` is the permute's input) and ``inv = argsort(p)``:

* an axis ``a`` of ``x`` is axis ``p[a]`` of ``x'`` (concat, split, softmax, batch norm,
  reduce); NCHW -> NHWC is ``p = (0, 3, 1, 2)``: the channel axis 1 becomes ``p[1] = 3``;
* a per-axis attribute list ``v`` (slice begin / size / stride, pad pairs) becomes
  ``v'[j] = v[inv[j]]``;
* a constant operand of an elementwise op, right-aligned to the rank of ``x`` with leading 1s,
  becomes ``transpose(c, inv)``: ``[1, C, 1, 1]`` on NCHW is ``[1, 1, 1, C]`` on NHWC;
* the result ``y'`` gets the permute ``p`` that gives back ``y`` (a reduce without kept dims
  gets the order of its remaining axes, often the identity, then no permute at all).

An op sinks only when its data inputs come from permutes of one and the same ``p`` that move
data in one type, and have the rank of ``p``. A data input that comes from elsewhere (a residual
add of the network input) is taken from a permute ``inv`` of it that the graph already has (the
one before the first conv), provided one of the permutes above the op is read by it alone and so
goes; otherwise the op does not sink. The whole rewrite
is kept only when, with ``cancel_permutes`` after it, the graph has no more permutes than
before; otherwise the graph is left as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from mmbuild.errors import Code, MMError
from mmbuild.graph import Graph, Node
from mmbuild.passes.dce import remove_dead_nodes
from mmbuild.passes.layout import _new_tensor, _permute, _pure_move, cancel_permutes

__all__ = ["sink_permutes"]

Perm = tuple[int, ...]
# op -> attrs remapped for the permute's input (None: the op cannot take it), given the old
# attributes, the permute p and its inverse
AttrRule = Callable[[dict[str, Any], Perm, Perm], dict[str, Any] | None]


def _same(attrs: dict[str, Any], p: Perm, inv: Perm) -> dict[str, Any]:
    return dict(attrs)


def _axis(attrs: dict[str, Any], p: Perm, inv: Perm) -> dict[str, Any]:
    return {**attrs, "axis": p[int(attrs["axis"]) % len(p)]}


def _per_axis(*keys: str) -> AttrRule:
    def rule(attrs: dict[str, Any], p: Perm, inv: Perm) -> dict[str, Any] | None:
        if any(len(attrs[k]) != len(p) for k in keys):
            return None
        return {**attrs, **{k: tuple(attrs[k][i] for i in inv) for k in keys}}

    return rule


def _reduce(attrs: dict[str, Any], p: Perm, inv: Perm) -> dict[str, Any]:
    return {**attrs, "axes": tuple(sorted(p[int(a) % len(p)] for a in attrs["axes"]))}


# ops that work in any layout once their attributes are remapped
_RULES: dict[str, AttrRule] = {
    "activation": _same,
    "clip": _same,
    "cast": _same,
    "elementwise": _same,
    "concat": _axis,
    "split": _axis,
    "softmax": _axis,
    "fused_batch_norm": _axis,
    "reduce": _reduce,
    "slice": _per_axis("begin", "size", "stride"),
    "pad": _per_axis("pads"),
}
# ops whose every input carries the layout (the others read only input 0 as data)
_ALL_INPUTS_ARE_DATA = frozenset({"elementwise", "concat"})


def sink_permutes(graph: Graph) -> int:
    """Move permutes below layout-agnostic ops (see the module docstring) and cancel them.

    Before: ``x -> conv(NHWC) -> p(0, 3, 1, 2) -> t -> relu -> q(0, 2, 3, 1) -> conv(NHWC)``.
    After: ``x -> conv -> relu -> conv``. Returns the number of ops sunk through (0 when the
    rewrite would leave more permutes than it found, and the graph is then unchanged).
    """
    before = _permute_count(graph)
    if before == 0:
        return 0
    trial = copy.deepcopy(graph)
    count = 0
    # a sweep in graph order carries a permute down a whole chain; the sweeps after it pick up
    # what the cancelled permutes uncovered
    for _ in range(len(trial.nodes) + 1):
        sunk = sum(_sink_through(trial, n) for n in list(trial.nodes) if n in trial.nodes)
        if not sunk:
            break
        count += sunk
        trial.infer_dims()
        cancel_permutes(trial)
    else:
        raise MMError("sink_permutes did not settle; a permute cycle is a bug", Code.INTERNAL)
    remove_dead_nodes(trial)
    trial.prune_tensors()
    if count == 0 or _permute_count(trial) > before:
        return 0
    graph.tensors, graph.nodes, graph.outputs = trial.tensors, trial.nodes, trial.outputs
    return count


def _permute_count(graph: Graph) -> int:
    return sum(1 for n in graph.nodes if n.op == "permute")


def _sink_through(graph: Graph, node: Node) -> bool:
    """Rewrite ``node`` to read the inputs of the permutes before it; False when it cannot."""
    rule = _RULES.get(node.op)
    if rule is None:  # (a fused activation is pointwise: it moves with its node)
        return False
    slots = range(len(node.inputs)) if node.op in _ALL_INPUTS_ARE_DATA else range(1)
    data = [i for i in slots if graph.value(node.inputs[i]) is None]
    permuted = {i: p for i in data if (p := _permute_before(graph, node.inputs[i])) is not None}
    perms = {tuple(int(v) for v in p.attrs["perm"]) for p in permuted.values()}
    if len(perms) != 1:
        return False
    perm = perms.pop()
    if perm == tuple(range(len(perm))):
        return False
    if any(len(graph.tensors[node.inputs[i]].dims) != len(perm) for i in data):
        return False
    inv = tuple(int(v) for v in np.argsort(perm))
    # x = transpose(x', p): a permuted input reads x'; another data input x reads the output
    # of a permute inv that some other node already made of it
    sources = {i: p.inputs[0] for i, p in permuted.items()}
    for i in data:
        if i not in sources:
            inverse = _permute_of(graph, node.inputs[i], inv, node)
            if inverse is None:
                return False
            sources[i] = inverse
    # reading such a copy, the op must take a permute down with it (one read by it alone), or
    # two ops could hand a permute back and forth
    if len(permuted) < len(data) and not any(graph.is_private(node.inputs[i]) for i in permuted):
        return False
    attrs = rule(node.attrs, perm, inv)
    if attrs is None:
        return False
    consts = {i: _relaid(graph, node.inputs[i], perm, inv) for i in slots if i not in sources}
    if any(v is None for v in consts.values()):
        return False
    for i, src in sources.items():
        node.inputs[i] = src
    for p in {id(p): p for p in permuted.values()}.values():
        if not graph.consumers(p.outputs[0]) and p.outputs[0] not in graph.outputs:
            graph.remove(p)
    for i, value in consts.items():
        dtype = graph.tensors[node.inputs[i]].dtype
        node.inputs[i] = graph.add_const(f"{node.name}/relaid", value, dtype)  # type: ignore[arg-type]
    out_perms = _output_perms(node, attrs, perm)
    node.attrs = attrs
    at = graph.nodes.index(node) + 1
    for k, (y, q) in enumerate(zip(list(node.outputs), out_perms)):
        if q == tuple(range(len(q))):
            continue  # the result is already in the order its readers expect
        inner = _new_tensor(graph, f"{node.name}/sunk:{k}", graph.tensors[y])
        node.outputs[k] = inner
        name = graph.unique_node_name(f"{node.name}/permute_{k}")
        graph.nodes.insert(at, _permute(graph, name, q, inner, y))
        at += 1
    return True  # the caller re-infers dims (only ranks are read until then)


def _permute_before(graph: Graph, tensor: str) -> Node | None:
    """The permute that makes ``tensor`` by moving data in one type, or None."""
    p = graph.producer(tensor)
    return p if p is not None and p.op == "permute" and _pure_move(graph, p) else None


def _permute_of(graph: Graph, tensor: str, perm: Perm, before: Node) -> str | None:
    """The output of a permute ``perm`` of ``tensor`` that the graph already has ahead of
    ``before``, or None."""
    limit = graph.nodes.index(before)
    for reader in graph.consumers(tensor):
        same = reader.op == "permute" and tuple(int(v) for v in reader.attrs["perm"]) == perm
        if same and _pure_move(graph, reader) and graph.nodes.index(reader) < limit:
            return reader.outputs[0]
    return None


def _relaid(graph: Graph, tensor: str, perm: Perm, inv: Perm) -> np.ndarray | None:
    """A constant operand for the permute's input: right-aligned to the rank, transposed."""
    value = graph.value(tensor)
    if value is None or value.ndim > len(perm):
        return None
    full = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
    return np.ascontiguousarray(np.transpose(full, inv))


def _output_perms(node: Node, attrs: dict[str, Any], perm: Perm) -> list[Perm]:
    """The permute that turns each new output back into the old one."""
    if node.op != "reduce" or attrs["keep_dims"]:
        return [perm] * len(node.outputs)
    reduced_old = {int(a) % len(perm) for a in node.attrs["axes"]}
    kept_new = [a for a in range(len(perm)) if a not in set(attrs["axes"])]
    kept_old = [a for a in range(len(perm)) if a not in reduced_old]
    return [tuple(kept_new.index(perm[b]) for b in kept_old)]
