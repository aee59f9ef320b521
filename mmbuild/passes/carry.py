"""Quantized tensors that travel as integers between quantized nodes.

A quantized conv writes float (its output type: FLOAT16 in ``qint8_mixed_float16``), and a
quantized conv reading that tensor quantizes it again: ``clip(rint(x / scale) + zp)`` over the
whole tensor, a pass over memory that costs a third of some networks' conv time. Where every
reader quantizes the tensor the same way, its producer's epilogue can store those integers
directly (``gemm.OutKind.U8`` / ``I16``) and the readers take them as they are.

:func:`carry_quantized` marks such a tensor: its type and its producer's output type become
the readers' quantized type (QINT8, carried in a uint8 buffer as ``q + 128``; QINT16 in int16),
and the producer notes it. Lowering then gives the producer the readers' scale and zero point
(``kernels.cpu.qcommon.output_quantization``: the tensor's range, which gives every reader the
same ones). It runs after the conversions are inserted, when the precisions are final; the
layer report shows the tensor's type as QINT8.

A tensor is carried when its producer is a quantized conv or deconv (``CARRYING_OPS``; static
input or not) whose output type the user did not set, it is no network output, every reader is a
quantized conv or deconv of the same type reading it as its input 0 with static ranges
(``activation_quant_mode: "static"``), and it has a range. A max pool that alone reads a
quantized conv's output, and whose output such convs read, runs on the codes
(``maxpool2d.qint``): the conv quantizes with the pool output's scale and zero point, and the
max of codes is the code of the max (quantization is monotone, clipping included).

The numbers change in one place only: the readers used to quantize the producer's output as
rounded to its float type (fp16, and its bias through fp16), and now quantize the float32 value
before that rounding, one rounding fewer. Example: a QINT8 1x1 conv whose output (range
[-2, 2], scale 2/127) feeds a QINT8 depthwise conv stores ``rint(y / scale) + 128`` in uint8;
the depthwise conv sums ``(q - 128) * w`` from that buffer with no quantization step of its own.
"""

from __future__ import annotations

from mmbuild.graph import Graph, Node
from mmbuild.ir.types import DataType

__all__ = ["CARRIED_NOTE", "CARRYING_OPS", "CODE_OPS", "carry_quantized"]

#: The note on a producer whose output is carried.
CARRIED_NOTE = "output travels as {type} to its quantized readers ({readers})"

#: The ops whose kernels write a quantized output and read a carried input 0.
CARRYING_OPS = ("conv", "deconv")
#: The ops that run on the codes of a carried tensor as they are (quantization is monotone, so
#: the max of the codes is the code of the max), between a carrying producer and its readers.
CODE_OPS = ("maxpool2d",)


def carry_quantized(graph: Graph, kept: frozenset[str] = frozenset()) -> int:
    """Carry every tensor whose producer and readers all allow it (module docstring); returns
    how many. Before: ``conv[QINT8] -> t (FLOAT16) -> conv[QINT8]``. After: ``t`` is QINT8 and
    the first conv's output type is QINT8. Through a max pool: ``conv -> t -> maxpool -> u ->
    conv`` carries ``t`` and ``u``, both with ``u``'s scale (``t`` takes ``u``'s range).
    ``kept``: names of the network nodes whose output type the user set (``set_output_type``);
    a producer that is one of them, or absorbed one, keeps that type."""
    if graph.options.get("activation_quant_mode", "static") == "dynamic":
        return 0
    count = 0
    for node in list(graph.nodes):
        qtype = node.compute_precision
        if node.op not in CARRYING_OPS or not qtype.is_quantized or len(node.outputs) != 1:
            continue
        if kept & {node.name, *node.fused}:
            continue
        t = node.outputs[0]
        if _read_by_quantized_convs(graph, t, qtype):
            _carry(graph, node, qtype)
            count += 1
            continue
        pool = _sole_code_op(graph, t)
        if pool is not None and kept & {pool.name, *pool.fused}:
            continue
        if pool is not None and _read_by_quantized_convs(graph, pool.outputs[0], qtype):
            graph.tensors[t].range = graph.tensors[pool.outputs[0]].range
            pool.precisions[0] = qtype
            _carry(graph, node, qtype)
            _carry(graph, pool, qtype)
            count += 2
    return count


def _carry(graph: Graph, producer: Node, qtype: DataType) -> None:
    t = producer.outputs[0]
    producer.output_types[0] = qtype
    graph.tensors[t].dtype = qtype
    readers = ", ".join(r.name for r in graph.consumers(t))
    producer.notes.append(CARRIED_NOTE.format(type=qtype.name, readers=readers))


def _read_by_quantized_convs(graph: Graph, t: str, qtype: DataType) -> bool:
    """Whether every reader of ``t`` is a quantized conv of ``qtype`` reading it as input 0 only,
    ``t`` being no network output and having a range."""
    readers = graph.consumers(t)
    if not readers or t in graph.outputs or graph.tensors[t].range is None:
        return False
    return all(
        r.op in CARRYING_OPS and r.compute_precision is qtype and r.inputs[0] == t
        and t not in r.inputs[1:] and r.precisions[0] is qtype
        for r in readers
    )  # fmt: skip


def _sole_code_op(graph: Graph, t: str) -> Node | None:
    """The max pool that alone reads ``t`` (no network output), or None."""
    readers = graph.consumers(t)
    if len(readers) != 1 or t in graph.outputs:
        return None
    pool = readers[0]
    if pool.op not in CODE_OPS or pool.inputs != [t] or "activation" in pool.attrs:
        return None
    return pool
