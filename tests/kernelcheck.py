"""Run one kernel on a one-node network and compare it with the reference of its precision.

``one_node_step(build, input_specs, precision)`` builds an ``mm.Network`` whose inputs are
``input_specs`` (``(dims, DataType)`` pairs), lets ``build(net, inputs)`` add the node under
test (constants it adds become constant inputs of the step), copies the network into a
``Graph``, gives every float input slot the precision ``precision`` (the output too, unless
``output_types`` says otherwise; a cast keeps the type it was asked for), looks the kernel up in
the kernel table and lowers the node. Attributes and lowered data go through JSON on the way,
as they do through a model file. Import the kernel module under test first (otherwise the
lookup imports every kernel module).

The :class:`OneNode` it returns gives ``buffers(arrays)`` (input buffers: fp16 as uint16 bits,
constants filled in), ``outputs(inputs)`` (output buffers of the inferred shapes, filled with
poison bytes), ``runner()``, ``run(inputs)`` and ``reference(inputs)``. :func:`assert_ulps`
compares buffers in units in the last place of their type; :func:`check_dispatchers` checks
that a runner calls numba functions.

>>> import numpy as np
>>> import mmbuild as mm
>>> import mmbuild.kernels.cpu.normalize
>>> case = one_node_step(lambda net, xs: net.add_i_softmax_node(xs[0], -1),
...                      [((2, 3), mm.DataType.FLOAT32)], mm.DataType.FLOAT16)
>>> inputs = case.buffers([np.array([[1, 2, 3], [0, 0, 0]], np.float32)])
>>> got, want = case.run(inputs), case.reference(inputs)
>>> assert_ulps(got[0], want[0], case.step.output_types[0], ulps=1)
>>> check_dispatchers(case.runner())
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba.core.registry import CPUDispatcher

import mmbuild as mm
from mmbuild.graph import Graph, Node, decode_attrs, encode_attrs
from mmbuild.ir.node import TensorSpec
from mmbuild.kernels.table import (
    KERNELS,
    Kernel,
    Lowered,
    Runner,
    Step,
    buffer_dtype,
    find_kernel,
    from_float,
    to_numpy,
)

DataType = mm.DataType
Build = Callable[[mm.Network, list[mm.ITensor]], mm.INode]

_POISON = 0x5A  # every byte of a fresh output buffer: an element a kernel misses shows up


@dataclass
class OneNode:
    """A one-node step with its kernel; see the module docstring."""

    kernel: Kernel
    step: Step
    node: Node
    graph: Graph

    def buffers(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The step's input buffers: ``arrays`` feed the network inputs in order, converted to
        the slot's precision (fp16 as uint16 bits); constants come from the graph."""
        feed = dict(zip(self.graph.inputs, arrays))
        out = []
        for name, p in zip(self.step.inputs, self.step.precisions):
            value = self.graph.tensors[name].value
            out.append(from_float(np.asarray(feed[name] if value is None else value), p))
        return out

    def outputs(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Output buffers with the shapes the op's ``infer`` gives, filled with poison bytes."""
        specs = [TensorSpec(a.shape, p) for a, p in zip(inputs, self.step.precisions)]
        outs = []
        for spec, t in zip(self.node.declaration().infer(specs), self.step.output_types):
            dtype = buffer_dtype(t)
            n = int(np.prod(spec.dims, dtype=np.int64))
            outs.append(
                np.full(n * dtype.itemsize, _POISON, np.uint8).view(dtype).reshape(spec.dims)
            )
        return outs

    def runner(self) -> Runner:
        return self.kernel.bind(self.step)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The kernel's output buffers for these input buffers."""
        outs = self.outputs(inputs)
        self.runner()(inputs, outs)
        return outs

    def reference(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.kernel.reference(self.step, inputs)


def one_node_step(
    build: Build,
    input_specs: Sequence[tuple[Sequence[int], DataType]],
    precision: DataType,
    output_types: Sequence[DataType] | None = None,
    activation: dict[str, Any] | None = None,
) -> OneNode:
    """A :class:`OneNode` for the node ``build`` adds; ``activation`` is set as its fused
    activation (``node.attrs["activation"]``)."""
    net = mm.Network()
    xs = [net.add_input(dtype, mm.Dims(list(dims))) for dims, dtype in input_specs]
    inode = build(net, xs)
    for t in [inode.get_output(i) for i in range(inode.get_output_count())]:
        net.mark_output(t)
    graph = Graph.from_network(net)
    node = graph.node(inode.get_node_name())
    node.precisions = [
        precision if graph.tensors[t].dtype.is_float else graph.tensors[t].dtype
        for t in node.inputs
    ]
    if output_types is not None:
        node.output_types = list(output_types)
    elif not type(inode).fixed_output_type:
        node.output_types = [precision if t.is_float else t for t in node.output_types]
    if activation is not None:
        node.attrs["activation"] = dict(activation)
    # the table entry when the kernel's module is imported already; find_kernel imports all
    kernel = KERNELS.get((node.op, node.compute_precision)) or find_kernel(node)
    lowered = kernel.lower(node, graph)
    step = Step(
        name=node.name,
        op=node.op,
        kernel=kernel.name,
        op_attrs=decode_attrs(json.loads(json.dumps(encode_attrs(node.attrs)))),
        inputs=list(node.inputs),
        outputs=list(node.outputs),
        precisions=list(node.precisions),
        output_types=list(node.output_types),
        lowered=Lowered(
            json.loads(json.dumps(lowered.attrs)),
            {k: np.array(v) for k, v in lowered.arrays.items()},
        ),
    )
    return OneNode(kernel, step, node, graph)


# -- comparisons ------------------------------------------------------------------------------
def _ordered(values: np.ndarray) -> np.ndarray:
    """Float bits as integers that count ulps monotonically (-0.0 and +0.0 both 0)."""
    bits = values.view(np.int32 if values.dtype == np.float32 else np.int16).astype(np.int64)
    top = np.int64(1) << (8 * values.dtype.itemsize - 1)
    return np.where(bits < 0, -(bits + top), bits)


def assert_ulps(
    got: np.ndarray,
    want: np.ndarray,
    dtype: DataType,
    ulps: int = 0,
    atol: float | np.ndarray = 0.0,
    signed_zeros: bool = True,
) -> None:
    """Buffers of ``dtype`` agree: integers exactly; floats with NaN where the other has NaN
    (any payload) and otherwise within ``ulps`` units in the last place of ``dtype`` or
    ``atol``. With ``ulps == 0`` and ``signed_zeros`` a zero must have the same sign too."""
    assert got.shape == want.shape, (got.shape, want.shape)
    if not dtype.is_float:
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        bad = got != want
        assert not bad.any(), f"{bad.sum()} differ, first: {got[bad][:5]} vs {want[bad][:5]}"
        return
    g = got.view(np.float16) if dtype is DataType.FLOAT16 else got
    w = want.view(np.float16) if dtype is DataType.FLOAT16 else want
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    dist = np.abs(_ordered(g) - _ordered(w))
    ok = (nan_g & nan_w) | (~nan_g & ~nan_w & (dist <= ulps))
    with np.errstate(invalid="ignore"):
        ok |= ~nan_g & ~nan_w & (np.abs(g.astype(np.float64) - w.astype(np.float64)) <= atol)
    if ulps == 0 and signed_zeros:
        ok &= ~((g == 0) & (w == 0) & (np.signbit(g) != np.signbit(w)))
    bad = ~ok
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} differ by more than {ulps} ulp(s) / {atol}; first at "
        f"{np.argwhere(bad)[:3].tolist()}: got {g[bad][:5]} want {w[bad][:5]}"
    )


def as_float(buffer: np.ndarray, dtype: DataType) -> np.ndarray:
    """A float buffer's values as float32 (fp16 bits widened)."""
    return to_numpy(buffer, dtype)


def check_dispatchers(runner: Runner) -> None:
    """Every function a runner lists is a numba CPU dispatcher."""
    assert runner.fns, "a runner lists the numba functions it calls"
    for fn in runner.fns:
        assert isinstance(fn, CPUDispatcher), f"{fn!r} is not a numba dispatcher"
