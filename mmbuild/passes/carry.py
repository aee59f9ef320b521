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

A tensor is carried when its producer is a quantized conv (static input or not), it is no
network output, every reader is a quantized conv of the same type reading it as its input 0
with static ranges (``activation_quant_mode: "static"``), and it has a range.

The numbers change in one place only: the readers used to quantize the producer's output as
rounded to its float type (fp16), and now quantize the float32 value before that rounding, one
rounding fewer. Example: a QINT8 1x1 conv whose output (range [-2, 2], scale 2/127) feeds a
QINT8 depthwise conv stores ``rint(y / scale) + 128`` in uint8; the depthwise conv sums
``(q - 128) * w`` from that buffer with no quantization step of its own.
"""

from __future__ import annotations

from mmbuild.graph import Graph, Node
from mmbuild.ir.types import DataType

__all__ = ["CARRIED_NOTE", "carry_quantized"]

#: The note on a producer whose output is carried.
CARRIED_NOTE = "output travels as {type} to its quantized readers ({readers})"

#: The ops whose kernels write a quantized output and read a carried input 0.
CARRYING_OPS = ("conv",)


def carry_quantized(graph: Graph) -> int:
    """Carry every tensor whose producer and readers all allow it (module docstring); returns
    how many. Before: ``conv[QINT8] -> t (FLOAT16) -> conv[QINT8]``. After: ``t`` is QINT8 and
    the first conv's output type is QINT8."""
    if graph.options.get("activation_quant_mode", "static") == "dynamic":
        return 0
    count = 0
    for node in graph.nodes:
        qtype = _carried_type(graph, node)
        if qtype is None:
            continue
        t = node.outputs[0]
        node.output_types[0] = qtype
        graph.tensors[t].dtype = qtype
        readers = ", ".join(r.name for r in graph.consumers(t))
        node.notes.append(CARRIED_NOTE.format(type=qtype.name, readers=readers))
        count += 1
    return count


def _carried_type(graph: Graph, producer: Node) -> DataType | None:
    """The quantized type ``producer``'s output can travel in, or None."""
    qtype = producer.compute_precision
    if producer.op not in CARRYING_OPS or not qtype.is_quantized or len(producer.outputs) != 1:
        return None
    t = producer.outputs[0]
    readers = graph.consumers(t)
    if not readers or t in graph.outputs or graph.tensors[t].range is None:
        return None
    for reader in readers:
        if reader.op not in CARRYING_OPS or reader.compute_precision is not qtype:
            return None
        if reader.inputs[0] != t or t in reader.inputs[1:] or reader.precisions[0] is not qtype:
            return None
    return qtype
