"""Layout passes: every spatial node runs NHWC, and the permutes that makes cancel out.

The CPU kernels read NHWC (channels innermost, the GEMM's K axis). ``convert_layout`` gives each
NCHW conv, deconv, pooling or resize node a permute to NHWC on its data input and one back to
NCHW on its output; ``cancel_permutes`` then composes back-to-back permutes and drops the
identities, so a chain of NCHW nodes keeps one permute at each end:

    x -> conv1(NCHW) -> pool(NCHW) -> y
    x -> to_nhwc -> conv1 -> to_nchw -> to_nhwc -> pool -> to_nchw -> y     (convert_layout)
    x -> to_nhwc -> conv1 -> pool -> to_nchw -> y                           (cancel_permutes)

Composition: ``transpose(transpose(x, p1), p2) = transpose(x, c)`` with ``c[i] = p1[p2[i]]``;
NCHW -> NHWC -> NCHW is p1 = (0, 3, 1, 2), p2 = (0, 2, 3, 1), c = (0, 1, 2, 3), the identity.
"""

from __future__ import annotations

from typing import Any

from mmbuild.graph import Graph, Node, Tensor
from mmbuild.ir.types import Layout
from mmbuild.ops.conv import ConvLike
from mmbuild.ops.pool import Pool2DLike
from mmbuild.ops.registry import get_op
from mmbuild.ops.transform import IResizeNode

__all__ = ["TO_NCHW", "TO_NHWC", "cancel_permutes", "convert_layout"]

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def convert_layout(graph: Graph) -> int:
    """Run every NCHW conv, deconv, max / average pooling and resize in NHWC.

    Before: ``x -> conv_0(NCHW in, NCHW out) -> y``. After: ``x -> conv_0/to_nhwc (permute
    0, 2, 3, 1) -> conv_0(NHWC in, NHWC out) -> conv_0/to_nchw (permute 0, 3, 1, 2) -> y``.
    Only the sides that are NCHW get a permute (a conv may read NCHW and write NHWC). The
    permutes move data without arithmetic: each runs in the type of the data it moves, and its
    new tensor has the range of the tensor it copies, so a quantized reader finds one. ``y``
    keeps its name, its readers and its network-output status. Dims are re-inferred.
    """
    count = 0
    for node in list(graph.nodes):
        found = _data_layouts(node)
        if found is None or Layout.NCHW not in found[:2]:
            continue
        nchw_in, nchw_out, nhwc = found[0] is Layout.NCHW, found[1] is Layout.NCHW, found[2]
        if nchw_in:
            x = node.inputs[0]
            name = graph.unique_node_name(f"{node.name}/to_nhwc")
            node.inputs[0] = _new_tensor(graph, f"{name}:0", graph.tensors[x])
            at = graph.nodes.index(node)
            graph.nodes.insert(at, _permute(graph, name, TO_NHWC, x, node.inputs[0]))
        if nchw_out:
            y = node.outputs[0]
            name = graph.unique_node_name(f"{node.name}/to_nchw")
            node.outputs[0] = _new_tensor(graph, f"{node.name}/nhwc:0", graph.tensors[y])
            at = graph.nodes.index(node) + 1
            graph.nodes.insert(at, _permute(graph, name, TO_NCHW, node.outputs[0], y))
        node.attrs["layout"] = nhwc
        count += 1
    if count:
        graph.infer_dims()
    return count


def cancel_permutes(graph: Graph) -> int:
    """Compose back-to-back permutes and remove identity permutes, until none is left.

    Merge. Before: ``x -> p1(0, 3, 1, 2) -> t -> p2(0, 2, 3, 1) -> y``, ``t`` read by ``p2``
    alone. After: ``x -> p2(0, 1, 2, 3) -> y`` (``p2`` takes ``p1``'s input and precision).
    A ``t`` read by others too merges into a ``p2`` that composes to the identity (see
    ``_merge_into``).
    Identity. Before: ``x -> p(0, 1, 2, 3) -> y -> conv``. After: ``x -> conv``. When ``y`` is a
    network output its name must stay: the producer of ``x`` writes ``y`` directly if ``x`` is
    private to ``p``; otherwise ``p`` stays (a copy). Permutes that convert between types (an
    output type other than the input precision) are neither merged nor removed.
    """
    count = 0
    changed = True
    while changed:
        changed = False
        for node in [n for n in graph.nodes if n.op == "permute"]:
            if node in graph.nodes and (_merge_into(graph, node) or _drop_identity(graph, node)):
                count += 1
                changed = True
    return count


def _data_layouts(node: Node) -> tuple[Layout, Layout, Any] | None:
    """(input layout, output layout, the layout attribute with both set to NHWC), or None
    for an op without data layouts. The filter layout of conv and deconv, between the two in
    their attribute, is kept."""
    cls = get_op(node.op)
    layout: Any = node.attrs.get("layout")
    if issubclass(cls, ConvLike):
        return layout[0], layout[2], (Layout.NHWC, layout[1], Layout.NHWC)
    if issubclass(cls, Pool2DLike):
        return layout[0], layout[1], (Layout.NHWC, Layout.NHWC)
    if issubclass(cls, IResizeNode):
        return layout, layout, Layout.NHWC
    return None


def _permute(graph: Graph, name: str, perm: tuple[int, ...], src: str, dst: str) -> Node:
    """A permute ``src -> dst`` that runs in the type of ``src`` (data movement)."""
    dtype = graph.tensors[src].dtype
    return Node(name, "permute", {"perm": perm}, [src], [dst], [dtype], [dtype])


def _new_tensor(graph: Graph, name: str, like: Tensor) -> str:
    """A new tensor ``name`` (``name_1``, ... when taken) with the dims, type and range of
    ``like``; ``infer_dims`` corrects the dims afterwards."""
    unique, k = name, 0
    while unique in graph.tensors:
        k += 1
        unique = f"{name}_{k}"
    graph.tensors[unique] = Tensor(unique, like.dims, like.dtype, range=like.range)
    return unique


def _pure_move(graph: Graph, p: Node) -> bool:
    """The permute moves data in one type: reads it as it arrives and writes it the same."""
    return p.precisions[0] == p.output_types[0] == graph.tensors[p.inputs[0]].dtype


def _merge_into(graph: Graph, p2: Node) -> bool:
    """Compose ``p2`` with the permute ``p1`` it reads. A ``p1`` read by others too merges only
    into a ``p2`` that then undoes it (the identity, dropped next, not a network output): once
    ``sink_permutes`` carries NHWC through a residual add, ``add -> to_nchw`` is read by two
    ``to_nhwc`` permutes; each reader takes the add's output and ``to_nchw`` goes with the last."""
    t = p2.inputs[0]
    p1 = graph.producer(t)
    if p1 is None or p1.op != "permute" or not _pure_move(graph, p1):
        return False
    p1_perm, p2_perm = p1.attrs["perm"], p2.attrs["perm"]
    perm = tuple(p1_perm[i] for i in p2_perm)
    shared = not graph.is_private(t)
    if shared and (perm != tuple(range(len(perm))) or p2.outputs[0] in graph.outputs):
        return False
    p2.attrs["perm"] = perm
    p2.inputs, p2.precisions = list(p1.inputs), list(p1.precisions)
    p2.fused += [p1.name, *p1.fused]
    if not graph.consumers(t) and t not in graph.outputs:
        graph.remove(p1)
        del graph.tensors[t]
    return True


def _drop_identity(graph: Graph, p: Node) -> bool:
    perm = tuple(p.attrs["perm"])
    if perm != tuple(range(len(perm))) or not _pure_move(graph, p):
        return False
    x, y = p.inputs[0], p.outputs[0]
    if y not in graph.outputs:
        graph.remove(p)
        graph.replace_uses(y, x)
        del graph.tensors[y]
        return True
    producer = graph.producer(x)
    if producer is None or not graph.is_private(x):
        return False
    producer.outputs[producer.outputs.index(x)] = y
    graph.remove(p)
    del graph.tensors[x]
    return True
