"""Edits the passes share: the op families they match, and "a node absorbs its only reader".

A family is a tuple of op declarations (``mmbuild.ops``), matched by class, so that a pass names
"the convolutions" once instead of listing op names.

Absorbing is how folding and fusion end: ``conv -> t -> bn -> y`` becomes ``conv -> y``: the
main node takes over the absorbed node's output tensors (their names, ranges and readers stay)
and its output types, records the absorbed name in ``fused``, and the private tensor ``t``
between them is forgotten.
"""

from __future__ import annotations

from mmbuild.graph import Graph, Node
from mmbuild.ir.node import INode
from mmbuild.ops.conv import ConvLike
from mmbuild.ops.linear import IInnerProductNode, IMatMulNode
from mmbuild.ops.norm import IFusedBatchNormNode
from mmbuild.ops.registry import get_op

# ops lowered to a GEMM whose epilogue can apply bias and an activation
EPILOGUE_OPS: tuple[type[INode], ...] = (ConvLike, IInnerProductNode, IMatMulNode)
# ops whose kernels apply a fused activation to their result: the GEMM ones, and batch norm
ACTIVATION_OPS: tuple[type[INode], ...] = (*EPILOGUE_OPS, IFusedBatchNormNode)
# ops whose weights are scaled per output channel when a batch norm folds into them
CHANNEL_WEIGHT_OPS: tuple[type[INode], ...] = (ConvLike, IInnerProductNode)


def is_a(node: Node, family: tuple[type[INode], ...]) -> bool:
    """True when ``node``'s op declaration belongs to ``family``."""
    return issubclass(get_op(node.op), family)


def sole_reader(graph: Graph, tensor: str) -> Node | None:
    """The one node that reads ``tensor``, once, when the tensor is private to it."""
    if not graph.is_private(tensor):
        return None
    reader = graph.consumers(tensor)[0]
    return reader if reader.inputs.count(tensor) == 1 else None


def absorb(graph: Graph, main: Node, absorbed: Node) -> None:
    """``main`` takes over ``absorbed``'s outputs and output types; ``absorbed`` leaves."""
    old = main.outputs
    main.outputs = list(absorbed.outputs)
    main.output_types = list(absorbed.output_types)
    main.fused += [absorbed.name, *absorbed.fused]
    graph.remove(absorbed)
    for name in old:
        if not graph.consumers(name) and name not in graph.outputs:
            del graph.tensors[name]
