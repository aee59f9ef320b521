"""Activation fusion: an activation that only post-processes a GEMM becomes its epilogue.

The fused activation is ``node.attrs["activation"]``, one of the dicts that
``mmbuild.graph.apply_activation`` and the epilogues (``mmbuild.kernels.cpu.activate``) compute
in float32 with the clamps as comparisons:

=========================  =================================================
activation node            fused attribute
=========================  =================================================
RELU                       ``{"function": "relu"}``
RELU6                      ``{"function": "clip", "lo": 0.0, "hi": 6.0}``
LEAKY_RELU (alpha)         ``{"function": "leaky_relu", "alpha": alpha}``
LEAKY_RELU, then clip      ``{"function": "leaky_relu", "alpha": alpha, "lo": lo}``
(lo, inf)
clip(lo, hi)               ``{"function": "clip", "lo": lo, "hi": hi}``
HARD_SIGMOID (alpha, beta) ``{"function": "hard_sigmoid", "alpha": a, "beta": b}``
HARD_SWISH                 ``{"function": "hard_swish"}``
=========================  =================================================

Example: ``conv -> [-1.5, 2.0] -> relu6 -> [0.0, 2.0]`` becomes one conv with
``{"function": "clip", "lo": 0.0, "hi": 6.0}`` that stores [0.0, 2.0] directly.

A clip after a fused activation joins it where the epilogue's one clamp can do both
(:func:`compose_activations`): openWakeWord's ``max(leaky_relu(x, 0.2), -0.4)`` is one conv. A
scalar affine after a fused activation becomes its ``"mul"`` and ``"add"``
(:func:`fuse_affine_after_activation`): PPLCNetV3's hard swish and learnable affine are one conv.
"""

from __future__ import annotations

import math
from typing import Any

from mmbuild.graph import Graph, Node
from mmbuild.ops.activation import IActivation
from mmbuild.ops.elementwise import IElementwise
from mmbuild.passes._rewrite import ACTIVATION_OPS, absorb, is_a, sole_reader
from mmbuild.passes.fold_forward import affine_chains

__all__ = [
    "compose_activations",
    "epilogue_activation",
    "fuse_activations",
    "fuse_affine_after_activation",
]


def epilogue_activation(node: Node) -> dict[str, Any] | None:
    """The fused-activation dict that does what ``node`` does, or None when no epilogue can."""
    if node.op == "clip":
        return {"function": "clip", "lo": float(node.attrs["lo"]), "hi": float(node.attrs["hi"])}
    if node.op != "activation":
        return None
    mode = node.attrs["mode"]
    if mode is IActivation.RELU:
        return {"function": "relu"}
    if mode is IActivation.RELU6:
        return {"function": "clip", "lo": 0.0, "hi": 6.0}
    if mode is IActivation.LEAKY_RELU:
        return {"function": "leaky_relu", "alpha": float(node.attrs["alpha"])}
    if mode is IActivation.HARD_SIGMOID:
        alpha, beta = float(node.attrs["alpha"]), float(node.attrs["beta"])
        return {"function": "hard_sigmoid", "alpha": alpha, "beta": beta}
    if mode is IActivation.HARD_SWISH:
        return {"function": "hard_swish"}
    return None


def fuse_activations(graph: Graph) -> int:
    """Fuse RELU, RELU6, LEAKY_RELU, HARD_SIGMOID, HARD_SWISH and clip into the conv, deconv,
    inner product, matmul or batch norm that feeds them (a batch norm after a relu, which
    cannot fold into its conv, then takes the activation after it).

    Before: ``x -> conv -> t -> relu -> y``. After: ``x -> conv[activation=relu] -> y``; the
    conv takes over ``y`` and the activation's output types and lists it in ``fused``.

    It fires only when ``t`` is read by the activation alone and is no network output, the
    producer has no fused activation yet, and the producer's output type equals the precision
    the activation reads its input in (otherwise the activation converts as well, which the
    epilogue would skip).
    """
    count = 0
    for act in list(graph.nodes):
        fused = epilogue_activation(act)
        if fused is None:
            continue
        main = graph.producer(act.inputs[0])
        if main is None or not is_a(main, ACTIVATION_OPS):
            continue
        if len(main.outputs) != 1 or sole_reader(graph, act.inputs[0]) is not act:
            continue
        if main.output_types[0] != act.precisions[0]:
            continue
        both = compose_activations(main.attrs.get("activation"), fused)
        if both is None:
            continue
        main.attrs["activation"] = both
        absorb(graph, main, act)
        count += 1
    return count


def fuse_affine_after_activation(graph: Graph) -> int:
    """Fuse a scalar affine ``y * s + b`` (``y * s`` or ``y + b``; ``s``, ``b`` one-value
    constants) after a node's fused activation into it: ``"mul": s, "add": b``, which the
    epilogue applies after the activation in float32 (:mod:`mmbuild.kernels.cpu.activate`).

    Before: ``x -> conv[hard_swish] -> t -> mul(s) -> u -> add(b) -> y``. After: ``x ->
    conv[hard_swish, mul s, add b] -> y``. It runs after :func:`fuse_activations` (the affines
    read only by unpadded convs have folded into their weights before, ``fold_forward``), and
    fires when the producer has a fused activation and no affine yet, ``t`` and ``u`` are read
    by the chain alone and are no network outputs, and the chain runs in the producer's output
    type. The unfused chain rounded to that type after the activation and after each step; the
    fused epilogue rounds once, at its store. Example: hard swish 1.125, ``s = 0.5, b = 0.25``:
    0.8125 stored directly.
    """
    count = 0
    # from the end: a mul is taken with the add after it
    for x, s, b, chain in affine_chains(graph, graph.nodes[::-1]):
        main = graph.producer(x)
        if main is None or not is_a(main, ACTIVATION_OPS) or len(main.outputs) != 1:
            continue
        act = main.attrs.get("activation")
        if act is None or "mul" in act or "add" in act:
            continue
        if sole_reader(graph, x) is not chain[0] or main.output_types[0] != chain[0].precisions[0]:
            continue
        has_add = chain[-1].attrs["mode"] is IElementwise.ADD
        main.attrs["activation"] = {**act, "mul": float(s), "add": float(b) if has_add else -0.0}
        for node in chain:
            absorb(graph, main, node)
        count += 1
    return count


def compose_activations(
    first: dict[str, Any] | None, then: dict[str, Any]
) -> dict[str, Any] | None:
    """One fused activation doing ``first`` then ``then``, or None when the epilogue's formula
    cannot (:mod:`mmbuild.kernels.cpu.activate`). Beside ``first`` None: a clip after relu, a
    clip or a clip after a leaky relu with no upper bound, which narrow the one clamp (the same
    comparisons, so the same bits; NaN passes both ways); never after an affine (``"mul"``,
    ``"add"``), which the clamp would have to follow.

    >>> compose_activations({"function": "relu"}, {"function": "clip", "lo": -1.0, "hi": 6.0})
    {'function': 'clip', 'lo': 0.0, 'hi': 6.0}
    >>> compose_activations({"function": "leaky_relu", "alpha": 0.2},
    ...                     {"function": "clip", "lo": -0.4, "hi": math.inf})
    {'function': 'leaky_relu', 'alpha': 0.2, 'lo': -0.4}
    """
    if first is None:
        return then
    if then["function"] != "clip" or "mul" in first or "add" in first:
        return None
    lo, hi = then["lo"], then["hi"]
    fn = first["function"]
    if fn == "leaky_relu" and "lo" not in first and hi == math.inf:
        return {**first, "lo": lo}
    if fn in ("relu", "clip"):
        lo0, hi0 = (0.0, math.inf) if fn == "relu" else (first["lo"], first["hi"])
        new_lo, new_hi = max(lo0, lo), min(hi0, hi)
        # clip(clip(y, a, b), c, d) is clip(y, max(a, c), min(b, d)) while the two overlap
        if new_lo <= new_hi:
            return {"function": "clip", "lo": new_lo, "hi": new_hi}
    return None
