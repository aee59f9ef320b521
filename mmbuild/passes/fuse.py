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
clip(lo, hi)               ``{"function": "clip", "lo": lo, "hi": hi}``
HARD_SIGMOID (alpha, beta) ``{"function": "hard_sigmoid", "alpha": a, "beta": b}``
HARD_SWISH                 ``{"function": "hard_swish"}``
=========================  =================================================

Example: ``conv -> [-1.5, 2.0] -> relu6 -> [0.0, 2.0]`` becomes one conv with
``{"function": "clip", "lo": 0.0, "hi": 6.0}`` that stores [0.0, 2.0] directly.
"""

from __future__ import annotations

from typing import Any

from mmbuild.graph import Graph, Node
from mmbuild.ops.activation import IActivation
from mmbuild.passes._rewrite import EPILOGUE_OPS, absorb, is_a, sole_reader

__all__ = ["epilogue_activation", "fuse_activations"]


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
    inner product or matmul that feeds them.

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
        main = graph.producer(act.inputs[0]) if fused is not None else None
        if main is None or not is_a(main, EPILOGUE_OPS) or "activation" in main.attrs:
            continue
        if len(main.outputs) != 1 or sole_reader(graph, act.inputs[0]) is not act:
            continue
        if main.output_types[0] != act.precisions[0]:
            continue
        main.attrs["activation"] = fused
        absorb(graph, main, act)
        count += 1
    return count
