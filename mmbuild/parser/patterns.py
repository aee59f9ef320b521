"""Decompositions recognised before the walk and imported as the one node they compute.

``layer_norm_chains`` finds the layer normalization that exporters write out as
``d = x - ReduceMean(x)``, ``y = d / Sqrt(ReduceMean(d ^ 2) + eps)`` (``Pow(d, 2)`` or
``Mul(d, d)``), over trailing axes, whose inner values nothing else reads, and replaces its
seven nodes by one ``LayerNormalization`` without scale (named as the ``Div``), so the network
gets an ``ILayerNormNode``. The affine ``* gamma + beta`` after it stays as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def layer_norm_chains(model: Any) -> tuple[list[Any], set[int]]:
    """The graph's nodes with each recognised chain replaced, and the ids of the new nodes."""
    from onnx import helper, numpy_helper, shape_inference

    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    ranks = _ranks(model, shape_inference)

    def single(name: str, count: int = 1) -> bool:
        return readers.get(name, 0) == count and name not in outputs

    def op(name: str, op_type: str) -> Any:
        n = producer.get(name)
        return n if n is not None and n.op_type == op_type else None

    def axes_of(n: Any) -> list[int] | None:
        for a in n.attribute:
            if a.name == "keepdims" and a.i == 0:
                return None
            if a.name == "axes":
                return list(a.ints)
        return (
            [int(v) for v in consts[n.input[1]].ravel()]
            if len(n.input) > 1 and n.input[1] in consts
            else None
        )

    replaced: dict[int, Any] = {}
    removed: set[int] = set()
    for div in graph.node:
        if div.op_type != "Div" or id(div) in removed:
            continue
        d, s = div.input
        sub, sqrt = op(d, "Sub"), op(s, "Sqrt")
        if sub is None or sqrt is None or not single(s):
            continue
        x, m = sub.input
        mean, add = op(m, "ReduceMean"), op(sqrt.input[0], "Add")
        if mean is None or mean.input[0] != x or add is None or not single(m):
            continue
        if not single(sqrt.input[0]) or len(add.input) != 2 or add.input[1] not in consts:
            continue
        var = op(add.input[0], "ReduceMean")
        if var is None or not single(add.input[0]):
            continue
        square = producer.get(var.input[0])
        if square is None or not single(var.input[0]) or not _squares(square, d, consts):
            continue
        if not single(d, 2 + (square.op_type == "Mul")):  # read by the square and the Div only
            continue
        axes, rank = axes_of(mean), ranks.get(x)
        if axes is None or axes != axes_of(var) or rank is None:
            continue
        norm = sorted(a % rank for a in axes)
        if norm != list(range(rank - len(norm), rank)):
            continue
        eps = float(np.asarray(consts[add.input[1]]).ravel()[0])
        ln = helper.make_node(
            "LayerNormalization", [x], list(div.output), div.name, axis=norm[0], epsilon=eps
        )
        replaced[id(div)] = ln
        removed |= {id(n) for n in (mean, sub, square, var, add, sqrt)}
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed]
    return nodes, {id(n) for n in replaced.values()}


def _squares(n: Any, d: str, consts: dict[str, np.ndarray]) -> bool:
    if n.op_type == "Mul":
        return list(n.input) == [d, d]
    if n.op_type == "Pow" and n.input[0] == d and n.input[1] in consts:
        return float(np.asarray(consts[n.input[1]]).ravel()[0]) == 2.0
    return False


def _ranks(model: Any, shape_inference: Any) -> dict[str, int]:
    """Tensor name -> rank where ONNX shape inference knows it."""
    try:
        inferred = shape_inference.infer_shapes(model).graph
    except Exception:  # shape inference is a help here, never a requirement
        inferred = model.graph
    out = {}
    for v in [*inferred.input, *inferred.value_info, *inferred.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = len(t.shape.dim)
    return out
