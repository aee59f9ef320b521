"""The model's edges as the builder config asks for them, and the fold that makes them free.

``apply_model_edges(graph, edges, ftype)`` (run by the builder before the pass pipeline) puts
what ``mmbuild.config.model_io.model_edges`` resolved into the graph:

    input x in dst layout -> x/insert_bn (fused_batch_norm, eps 0) -> x/to_network (permute)
        -> x/network -> the network's first nodes
    ... -> y/network -> y/to_model (permute) -> output y in dst layout

The model's inputs and outputs keep the network's names; the network's own tensors are renamed
``<name>/network``. The layout passes then absorb the permutes: an NCHW network's first conv
gets a ``to_nhwc`` permute which cancels against ``x/to_network`` (NHWC -> NCHW -> NHWC is the
identity), so an NCHW network fed NHWC data runs no permute at all.

``fold_input_normalization`` (in the pipeline after ``cancel_permutes``) folds a batch norm that
feeds a convolution into its weights, where that is exact. With ``a = scale / sqrt(var + eps)``
and ``c = offset - mean * a`` per input channel:

    W'[o, kh, kw, i] = W[o, kh, kw, i] * a[i]
    b'[o]            = b[o] + sum over kh, kw, i of W[o, kh, kw, i] * c[i]

Worked example, one channel, a 1x1 filter W = 2, b = 1, mean = 3, var = 4 (scale 1, offset 0):
a = 0.5, c = -1.5, W' = 1, b' = 1 + 2 * -1.5 = -2. For x = 7: 2 * (7 - 3) / 2 + 1 = 5 and
1 * 7 - 2 = 5.
"""

from __future__ import annotations

import numpy as np

from mmbuild.config.model_io import InputEdge, ModelEdges, OutputEdge
from mmbuild.errors import MMError
from mmbuild.graph import Graph, Node, Tensor
from mmbuild.ops.conv import ConvLike, IConvNode, IPaddingMode
from mmbuild.passes._rewrite import is_a, sole_reader

__all__ = ["apply_model_edges", "fold_input_normalization"]


def apply_model_edges(graph: Graph, edges: ModelEdges) -> int:
    """Insert the normalisation and permutes ``edges`` ask for; returns the rewritten edges.

    Before: ``x -> conv``. After, for ``insert_bn_before_firstnode`` and
    ``convert_input_layout`` on input 0: ``x -> x/insert_bn -> x/to_network -> x/network ->
    conv``. The normalisation computes in the input's own float type, as preprocessing
    would: the network's first nodes then read what they would have read.
    """
    count = 0
    for e in edges.inputs:
        if e.changes_data:
            _rewrite_input(graph, e)
            count += 1
    for o in edges.outputs:
        if o.perm is not None:
            _rewrite_output(graph, o)
            count += 1
    if count:
        graph.infer_dims()
    return count


def _rewrite_input(graph: Graph, e: InputEdge) -> None:
    name = e.name
    original = graph.tensors[name]
    ftype = original.dtype  # a float type: model_edges refuses to normalise any other
    inner = _unique_tensor(graph, f"{name}/network")
    graph.tensors[inner] = Tensor(inner, original.dims, original.dtype, range=original.range)
    graph.replace_uses(name, inner)
    # the model's input: its own dims; a normalised input's raw values have no known range
    graph.tensors[name] = Tensor(
        name, e.model_dims, original.dtype, range=original.range if e.mean is None else None
    )
    inserted: list[Node] = []
    current = name
    if e.mean is not None and e.var is not None:
        if e.perm is None:  # the network's tensor, with its range
            out = inner
        else:
            out = _unique_tensor(graph, f"{name}/normalized")
            graph.tensors[out] = Tensor(out, e.model_dims, ftype, range=original.range)
        channels = len(e.mean)
        params = [
            graph.add_const(f"{name}/insert_bn_{what}", np.asarray(v, np.float32))
            for what, v in (
                ("mean", e.mean),
                ("var", e.var),
                ("scale", np.ones(channels)),
                ("offset", np.zeros(channels)),
            )
        ]
        inserted.append(
            Node(
                name=graph.unique_node_name(f"{name}/insert_bn"),
                op="fused_batch_norm",
                attrs={"axis": e.channel_axis, "eps": 0.0},
                inputs=[current, *params],
                outputs=[out],
                precisions=[ftype] * 5,
                output_types=[ftype],
                notes=["inserted: insert_bn_before_firstnode, (x - mean) / sqrt(var)"],
            )
        )
        current = out
    if e.perm is not None:
        dtype = graph.tensors[current].dtype
        graph.tensors[inner].dtype = dtype
        inserted.append(
            Node(
                name=graph.unique_node_name(f"{name}/to_network"),
                op="permute",
                attrs={"perm": e.perm},
                inputs=[current],
                outputs=[inner],
                precisions=[dtype],
                output_types=[dtype],
                notes=["inserted: convert_input_layout"],
            )
        )
    graph.nodes[:0] = inserted


def _rewrite_output(graph: Graph, o: OutputEdge) -> None:
    name = o.name
    producer = graph.producer(name)
    if producer is None:
        raise MMError(
            f'convert_output_layout["{o.index}"]: network output {o.index} ({name!r}) is a '
            "network input; convert the layout of a computed output only"
        )
    original = graph.tensors[name]
    inner = _unique_tensor(graph, f"{name}/network")
    graph.tensors[inner] = Tensor(inner, original.dims, original.dtype, range=original.range)
    producer.outputs[producer.outputs.index(name)] = inner
    for n in graph.nodes:
        n.inputs = [inner if t == name else t for t in n.inputs]
    graph.tensors[name] = Tensor(name, o.model_dims, original.dtype, range=original.range)
    graph.nodes.append(
        Node(
            name=graph.unique_node_name(f"{name}/to_model"),
            op="permute",
            attrs={"perm": o.perm},
            inputs=[inner],
            outputs=[name],
            precisions=[original.dtype],
            output_types=[original.dtype],
            notes=["inserted: convert_output_layout"],
        )
    )


def _unique_tensor(graph: Graph, name: str) -> str:
    unique, k = name, 0
    while unique in graph.tensors:
        k += 1
        unique = f"{name}_{k}"
    return unique


# -- folding a batch norm into the convolution after it --------------------------------------
def fold_input_normalization(graph: Graph) -> int:
    """Fold a ``fused_batch_norm`` into the convolution that reads it, where that is exact.

    Before: ``x -> bn(mean, var, scale, offset) -> t -> conv(W, b) -> y``. After:
    ``x -> conv(W', b') -> y`` (formulas in the module docstring; float64, stored float32), the
    conv lists the batch norm in ``fused``. A pure permute between them stays, reading ``x``:
    ``x -> bn -> permute -> conv`` becomes ``x -> permute -> conv``.

    It fires only when the conv reads ``t`` in a float precision (a quantized conv would
    quantize other values), ``t`` is read by the conv alone, the batch norm works on the conv's
    input channel axis, all weights and parameters are constants, and either the conv pads
    nothing or every ``c`` is 0 (a zero pad stands for the value 0 after the batch norm, which
    is ``-c / a`` before it). Otherwise the graph is left as it was.
    """
    count = 0
    for bn in [n for n in graph.nodes if n.op == "fused_batch_norm"]:
        via, conv, axis = _conv_after(graph, bn)
        if conv is None or not _foldable(graph, bn, conv, axis):
            continue
        mean, var, scale, offset = (_f64(graph, t) for t in bn.inputs[1:5])
        a = scale / np.sqrt(var + float(bn.attrs["eps"]))
        c = offset - mean * a
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
            continue
        if np.any(c != 0) and _pads(graph, conv) != (0, 0, 0, 0):
            continue
        _fold(graph, bn, via, conv, a, c)
        count += 1
    if count:
        graph.prune_tensors()
    return count


def _conv_after(graph: Graph, bn: Node) -> tuple[Node | None, Node | None, int]:
    """(permute between, conv, the batch norm's axis as the conv sees it) or Nones."""
    reader = sole_reader(graph, bn.outputs[0])
    rank = len(graph.tensors[bn.outputs[0]].dims)
    axis = int(bn.attrs["axis"]) % rank if rank else 0
    via = None
    if reader is not None and reader.op == "permute":
        p = reader
        if p.precisions[0] != graph.tensors[p.inputs[0]].dtype or p.output_types != p.precisions:
            return None, None, axis
        via, axis = p, tuple(p.attrs["perm"]).index(axis)
        reader = sole_reader(graph, p.outputs[0])
    if (
        reader is None
        or not is_a(reader, (IConvNode,))
        or reader.inputs[0] != (via.outputs[0] if via else bn.outputs[0])
    ):
        return None, None, axis
    return via, reader, axis


def _foldable(graph: Graph, bn: Node, conv: Node, axis: int) -> bool:
    if not conv.precisions[0].is_float or "activation" in bn.attrs:
        return False
    if any(graph.value(t) is None for t in [*conv.inputs[1:], *bn.inputs[1:]]):
        return False
    decl = conv.declaration()
    assert isinstance(decl, ConvLike)
    return axis == (1 if decl.to_nhwc((0, 1, 2, 3))[3] == 1 else 3)


def _pads(graph: Graph, conv: Node) -> tuple[int, ...]:
    decl = conv.declaration()
    assert isinstance(decl, ConvLike)
    mode = conv.attrs["padding_mode"]
    if mode is IPaddingMode.VALID:
        return (0, 0, 0, 0)
    if mode is IPaddingMode.EXPLICIT:
        return tuple(conv.attrs["pad"])
    _, h, w, _ = decl.to_nhwc(graph.tensors[conv.inputs[0]].dims)
    _, kh, kw, _ = decl.filter_ohwi(graph.tensors[conv.inputs[1]].dims)
    if h < 0 or w < 0:
        return (-1, -1, -1, -1)  # SAME pads depend on a size known only at run time
    return tuple(decl.pads_for(h, w, kh, kw))


def _fold(
    graph: Graph, bn: Node, via: Node | None, conv: Node, a: np.ndarray, c: np.ndarray
) -> None:
    decl = conv.declaration()
    assert isinstance(decl, ConvLike)
    perm = decl.filter_ohwi((0, 1, 2, 3))
    w = _f64(graph, conv.inputs[1]).transpose(perm)  # [O, Kh, Kw, I/group]
    out_ch, _, _, in_per_group = w.shape
    group = int(conv.attrs["group"])
    # input channel of filter column i for output channel o: (o // (O / group)) * I/g + i
    channel = (np.arange(out_ch) // (out_ch // group))[:, None] * in_per_group + np.arange(
        in_per_group
    )
    new_w = w * a[channel][:, None, None, :]
    b = _f64(graph, conv.inputs[2]) if len(conv.inputs) > 2 else np.zeros(out_ch)
    new_b = b + np.einsum("ohwi,oi->o", w, c[channel])
    conv.inputs[1] = graph.add_const(
        f"{conv.name}/filter_in_bn", new_w.transpose(np.argsort(perm)).astype(np.float32)
    )
    bias = graph.add_const(f"{conv.name}/bias_in_bn", new_b.astype(np.float32))
    if len(conv.inputs) > 2:
        conv.inputs[2] = bias
    else:
        conv.inputs.append(bias)
        conv.precisions.append(conv.precisions[0])
    x = bn.inputs[0]
    dtype = graph.tensors[x].dtype
    if via is not None:  # the permute now moves x itself
        via.inputs, via.precisions, via.output_types = [x], [dtype], [dtype]
        graph.tensors[via.outputs[0]].dtype = dtype
    else:
        conv.inputs[0] = x
    graph.remove(bn)
    conv.fused += [bn.name, *bn.fused]
    del graph.tensors[bn.outputs[0]]


def _f64(graph: Graph, tensor: str) -> np.ndarray:
    value = graph.value(tensor)
    assert value is not None  # checked by _foldable
    return np.asarray(value, dtype=np.float64)
