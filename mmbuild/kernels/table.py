"""The kernel table: one entry per (op, precision), looked up when a graph node is lowered.

A kernel entry is a :class:`Kernel` subclass declared once with ``@register_kernel``. It names
the ops and precisions it serves and does three things:

* ``lower(node, graph)`` at build time: prepares what the step needs once (weights quantized and
  packed, scales, fused epilogue constants) as a :class:`Lowered`: JSON attributes plus numpy
  arrays, which is exactly what the model file stores for the step;
* ``bind(step)`` when a model is built or loaded: returns a :class:`Runner`, the callable the
  runtime invokes with the step's input and output buffers, whose arithmetic is all in the
  numba functions it lists in ``fns``;
* ``reference(step, inputs)``: the numpy oracle of the same precision (bit-exact for integer
  paths), which the validate mode compares with the runner.

Buffers: float32 tensors are float32 arrays, float16 tensors uint16 arrays holding IEEE half
bits (kernels convert inside), integer tensors their own dtype. Output buffers arrive allocated
with the shapes the op's ``infer`` gave; a runner writes every element of them and never keeps
a buffer between calls, so one runner serves many contexts at once.

Registering a (op, precision) twice, or two kernels under one name, is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmbuild.errors import Code, MMError
from mmbuild.ir.types import DataType

if TYPE_CHECKING:
    from mmbuild.graph import Graph, Node

Buffers = Sequence[np.ndarray]
# The types of the buffers that kernels moving or converting any data take (their precisions);
# quantized tensors travel only between the quantized nodes that read them.
BUFFER_TYPES: tuple[DataType, ...] = tuple(d for d in DataType if not d.is_quantized)


@dataclass
class Lowered:
    """What lowering prepared for one step: JSON-able attributes and named arrays."""

    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Step:
    """One step of a plan: a graph node, the kernel that runs it and what that kernel prepared.

    ``op_attrs`` are the node's attributes (with a fused ``activation``), which rebuild the
    op's declaration for shape inference at run time; ``lowered`` is the kernel's own data.
    """

    name: str
    op: str
    kernel: str
    op_attrs: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    precisions: list[DataType]
    output_types: list[DataType]
    lowered: Lowered
    notes: list[str] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)

    def node(self) -> Node:
        """The graph node this step was lowered from: its ``declaration()`` gives the op's
        ``infer`` and reference, its ``compute_precision`` the kernel's key."""
        from mmbuild.graph import Node

        return Node(self.name, self.op, dict(self.op_attrs), list(self.inputs),
                    list(self.outputs), list(self.precisions), list(self.output_types))  # fmt: skip


@dataclass(frozen=True)
class Runner:
    """A bound step: ``run(inputs, outputs)``; ``fns`` are the numba functions it calls.

    ``prepare(inputs, outputs)``, when a kernel gives it, returns the step as a call without
    arguments for buffers that stay the same from run to run: whatever ``run`` would check,
    flatten or look up on every call is done once there, so the call is the numba call alone.
    The runtime binds each step once per set of input shapes through :meth:`bound`.
    """

    run: Callable[[Buffers, Buffers], None]
    fns: tuple[Any, ...]
    prepare: Callable[[Buffers, Buffers], Callable[[], None]] | None = None

    def __call__(self, inputs: Buffers, outputs: Buffers) -> None:
        self.run(inputs, outputs)

    @classmethod
    def from_prepare(
        cls, prepare: Callable[[Buffers, Buffers], Callable[[], None]], fns: tuple[Any, ...]
    ) -> Runner:
        """The runner of a kernel written as ``prepare`` alone: ``run`` prepares and calls."""

        def run(inputs: Buffers, outputs: Buffers) -> None:
            prepare(inputs, outputs)()

        return cls(run, fns, prepare)

    def bound(self, inputs: Buffers, outputs: Buffers) -> Callable[[], None]:
        """The step on these buffers as a call without arguments (``prepare``'s, else ``run``
        with the buffers given)."""
        if self.prepare is not None:
            return self.prepare(inputs, outputs)
        return partial(self.run, inputs, outputs)


class Kernel:
    """Base of kernel entries; see the module docstring."""

    name: ClassVar[str] = ""
    ops: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[DataType, ...]] = ()

    def lower(self, node: Node, graph: Graph) -> Lowered:
        """Build-time preparation; the default prepares nothing."""
        return Lowered()

    def bind(self, step: Step) -> Runner:
        raise NotImplementedError

    def reference(self, step: Step, inputs: Buffers) -> list[np.ndarray]:
        """The numpy result of this precision: inputs widened to float32, the op's reference
        (and fused activation), outputs rounded to their buffer types."""
        from mmbuild.graph import reference_outputs

        results = reference_outputs(
            step.node(), [to_numpy(a, p) for a, p in zip(inputs, step.precisions)]
        )
        return [from_float(r, t) for r, t in zip(results, step.output_types)]


KERNELS: dict[tuple[str, DataType], Kernel] = {}
KERNELS_BY_NAME: dict[str, Kernel] = {}


def register_kernel(cls: type[Kernel]) -> type[Kernel]:
    """Class decorator: enter a kernel for each of its (op, precision) pairs."""
    if not cls.name or not cls.ops or not cls.precisions:
        raise MMError(f"{cls.__qualname__}: a kernel declares name, ops and precisions",
                      Code.INTERNAL)  # fmt: skip
    if cls.name in KERNELS_BY_NAME:
        raise MMError(f"kernel name {cls.name!r} is registered twice", Code.INTERNAL)
    instance = cls()
    for op in cls.ops:
        for p in cls.precisions:
            if (op, p) in KERNELS:
                raise MMError(
                    f"({op!r}, {p.name}) is registered twice: by {KERNELS[op, p].name!r} and "
                    f"{cls.name!r}; each (op, precision) has one kernel",
                    Code.INTERNAL,
                )
            KERNELS[op, p] = instance
    KERNELS_BY_NAME[cls.name] = instance
    return cls


def load_kernels() -> None:
    """Import every kernel module, so that their ``@register_kernel`` entries are in the table."""
    import mmbuild.kernels.cpu.all  # noqa: F401


def find_kernel(node: Node) -> Kernel:
    """The kernel for ``node`` in the precision it computes in."""
    load_kernels()
    precision = node.compute_precision
    try:
        return KERNELS[node.op, precision]
    except KeyError:
        have = sorted(p.name for (op, p) in KERNELS if op == node.op)
        raise MMError(
            f"{node.node_type} {node.name!r}: no kernel runs op {node.op!r} in {precision.name}; "
            f"it runs in: {', '.join(have) or 'nothing yet'}. Set its precision to one of those",
            Code.UNAVAILABLE,
        ) from None


def in_order(calls: Sequence[Callable[[], None]]) -> Callable[[], None]:
    """One call without arguments that makes ``calls`` in order (the call itself for one)."""
    if len(calls) == 1:
        return calls[0]
    steps = tuple(calls)

    def call() -> None:
        for c in steps:
            c()

    return call


def kernel_named(name: str) -> Kernel:
    load_kernels()
    try:
        return KERNELS_BY_NAME[name]
    except KeyError:
        raise MMError(f"unknown kernel {name!r}", Code.NOT_FOUND) from None


# -- buffer conversions (numpy, for references and the API boundary) -------------------------
def to_numpy(buffer: np.ndarray, dtype: DataType) -> np.ndarray:
    """A buffer as numpy computes with it: fp16 bits -> float32, floats float32."""
    if buffer.dtype == np.uint16 and dtype is DataType.FLOAT16:
        return buffer.view(np.float16).astype(np.float32)
    if buffer.dtype.kind == "f":
        return buffer.astype(np.float32, copy=False)
    if dtype.is_quantized or dtype.is_float:
        return buffer.astype(np.float32)
    return buffer


def from_float(value: np.ndarray, dtype: DataType) -> np.ndarray:
    """A float32 result stored as a buffer of ``dtype`` (fp16 as uint16 bits)."""
    if dtype is DataType.FLOAT16:
        return np.asarray(value, np.float32).astype(np.float16).view(np.uint16)
    return np.asarray(value).astype(buffer_dtype(dtype), copy=False)


def value_type(dtype: DataType) -> DataType:
    """The type an op's ``infer`` sees for a tensor of ``dtype``: a carried quantized tensor
    holds real numbers (FLOAT32), every other type is itself."""
    return DataType.FLOAT32 if dtype.is_quantized else dtype


def buffer_dtype(dtype: DataType) -> np.dtype:
    """The numpy dtype of a runtime buffer of ``dtype``: fp16 as uint16 bits, and a quantized
    tensor (one that travels between quantized nodes, ``mmbuild.passes.carry``) as its carrier,
    uint8 ``q + 128`` for QINT8 and int16 for QINT16."""
    if dtype is DataType.FLOAT16:
        return np.dtype(np.uint16)
    if dtype is DataType.QINT8:
        return np.dtype(np.uint8)
    if dtype is DataType.QINT16:
        return np.dtype(np.int16)
    return np.dtype(dtype.numpy_dtype)
