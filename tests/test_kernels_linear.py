"""The inner_product and matmul kernels against the reference of their precision: bit-exact for
QINT8 and QINT16 (and within float32 rounding of the product of quant.params' dequantized
operands), within the float GEMM's bound for FLOAT32 and FLOAT16; over the packed path (a
constant weight) and the direct loop (computed or batched operands, transposes, broadcasting)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from kernelcheck import assert_ulps, one_node_step
from ortcheck import const
from test_kernels_conv import (
    CLIP,
    F16,
    F32,
    LEAKY,
    Q8,
    Q16,
    QUANT_OPTIONS,
    RELU,
    activate,
    assert_float_within,
    input_buffers,
    quant_case,
    run_both,
)

import mmbuild as mm
from mmbuild.errors import MMError
from mmbuild.kernels.table import to_numpy
from mmbuild.ops.linear import matmul_nd
from mmbuild.quant.params import choose_qparams, fake_quantize

# every test runs on each instruction-set level this CPU can run (the `isa` fixture)
pytestmark = pytest.mark.usefixtures("isa")

# the range given to every computed operand, by input slot
RANGES = {0: (-2.5, 2.0), 1: (-1.5, 3.0)}


class Linear:
    """An inner product or a matmul: the shapes of its operands (slot -> shape), which of them
    are constants, and how to add it; ``dynamic`` declares the first computed input with -1."""

    def __init__(self, op: str, shapes: dict[int, tuple[int, ...]], consts: Sequence[int] = (),  # type: ignore[no-untyped-def]
                 *, ta=False, tb=False, act=None, dynamic=False) -> None:  # fmt: skip
        self.op, self.shapes, self.const_slots = op, shapes, tuple(consts)
        self.ta, self.tb, self.act, self.dynamic = ta, tb, act, dynamic

    def values(self, seed: int = 0) -> dict[int, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for slot, shape in self.shapes.items():
            scale = 1.0 if slot not in self.const_slots or slot == 2 else 0.3
            out[slot] = (scale * rng.standard_normal(shape)).astype(np.float32)
        return out

    def runtime_slots(self) -> list[int]:
        return [s for s in sorted(self.shapes) if s not in self.const_slots]

    def build(self, values: dict[int, np.ndarray]):  # type: ignore[no-untyped-def]
        def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
            feed = iter(xs)
            ts = []
            for slot in sorted(self.shapes):
                if slot in self.const_slots:
                    ts.append(const(net, values[slot]))
                else:
                    t = next(feed)
                    t.set_dynamic_range(mm.Range(*RANGES[slot]))
                    ts.append(t)
            if self.op == "inner_product":
                return net.add_i_inner_product_node(*ts, *([None] if len(ts) == 2 else []))
            node = net.add_i_matmul_node(*ts)
            node.set_transpose_a(self.ta)
            node.set_transpose_b(self.tb)
            return node

        return build

    def case(self, precision, out_type, options=("per_tensor", "symmetric"), seed=0):  # type: ignore[no-untyped-def]
        values = self.values(seed)
        in_type = F16 if precision is F16 else F32
        specs = []
        for i, slot in enumerate(self.runtime_slots()):
            dims = list(self.shapes[slot])
            if self.dynamic and i == 0:
                dims[0] = -1
            specs.append((tuple(dims), in_type))
        case = quant_case(self.build(values), specs, precision, out_type, self.act, options)
        return case, values

    def exact(self, v: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
        """(float64 result before the activation, sum of |terms| per output, K)."""
        f = {k: x.astype(np.float64) for k, x in v.items()}
        if self.op == "inner_product":
            x2 = f[0].reshape(f[0].shape[0], -1)
            y, mag = x2 @ f[1].T, np.abs(x2) @ np.abs(f[1]).T
            return (y + f[2] if 2 in f else y), mag, x2.shape[1]
        y = matmul_nd(f[0], f[1], self.ta, self.tb)
        mag = matmul_nd(np.abs(f[0]), np.abs(f[1]), self.ta, self.tb)
        k = f[0].shape[-2] if self.ta and f[0].ndim > 1 else f[0].shape[-1]
        return y, mag, k

    def fake_quantized(self, v: dict[int, np.ndarray], qtype, options) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
        """Each operand through quant.params' quantize and dequantize, as the node's config says
        (the bias stays float)."""
        bits = 8 if qtype is Q8 else 16
        out = dict(v)
        for slot in (0, 1):
            x = v[slot]
            if slot not in self.const_slots:
                qp = choose_qparams(*RANGES[slot], bits=bits, symmetric=options[1] == "symmetric")
            elif options[0] == "per_axis" and slot == 1 and x.ndim > 1:
                axis = 0 if self.op == "inner_product" else x.ndim - (2 if self.tb else 1)
                others = tuple(a for a in range(x.ndim) if a != axis)
                qp = choose_qparams(x.min(axis=others), x.max(axis=others), bits=bits, axis=axis)
            else:
                qp = choose_qparams(float(x.min()), float(x.max()), bits=bits)
            out[slot] = fake_quantize(x, qp)
        return out


def IP(x, nout, bias=True, **kw):  # type: ignore[no-untyped-def]
    shapes = {0: x, 1: (nout, int(np.prod(x[1:])))}
    if bias:
        shapes[2] = (nout,)
    return Linear("inner_product", shapes, (1, 2), **kw)


def MM(a, b, consts=(), **kw):  # type: ignore[no-untyped-def]
    return Linear("matmul", {0: a, 1: b}, consts, **kw)


CASES = {
    "ip-k20-b3-relu": IP((3, 20), 7, act=RELU, dynamic=True),
    "ip-flatten-wide-clip": IP((1, 3, 4, 5), 70, bias=False, act=CLIP, dynamic=True),
    "ip-n1-leaky": IP((2, 2, 3), 1, act=LEAKY),
    "mm-const-b": MM((2, 5, 12), (12, 9), (1,), dynamic=True),
    "mm-const-b-transposed": MM((3, 7), (9, 7), (1,), tb=True, act=RELU),
    "mm-const-vector-b": MM((2, 4, 6), (6,), (1,)),
    "mm-const-b-unit-batch": MM((3, 12), (1, 12, 9), (1,), act=LEAKY),
    "mm-vector-a-const-b": MM((6,), (6, 5), (1,)),
    "mm-runtime-broadcast": MM((2, 1, 4, 5), (3, 5, 6), act=CLIP),
    "mm-runtime-transposes": MM((2, 5, 4), (2, 6, 5), ta=True, tb=True),
    "mm-runtime-vector-b": MM((3, 4, 5), (5,)),
    "mm-runtime-vector-a": MM((5,), (2, 5, 3), tb=False),
    "mm-const-batched-b": MM((2, 4, 5), (2, 5, 3), (1,), act=RELU),
    "mm-const-b-transpose-a": MM((5, 4), (5, 3), (1,), ta=True),
    "mm-const-a": MM((4, 5), (2, 5, 3), (0,)),
}
CASE_PARAMS = [pytest.param(c, id=k) for k, c in CASES.items()]


@pytest.mark.parametrize("ftype", [F32, F16])
@pytest.mark.parametrize("op", CASE_PARAMS)
def test_float_linear(op: Linear, ftype: mm.DataType) -> None:
    """Kernel and reference within ``K * 2**-24 * sum|a||b|`` of the exact product of the
    values they read, and within the fp16 rounding of the operands (for FLOAT16) of the fp32
    op reference."""
    case, values = op.case(ftype, ftype)
    inputs = case.buffers([values[s] for s in op.runtime_slots()])
    got, ref = run_both(case, inputs)
    used = {slot: to_numpy(inputs[i], ftype) for i, slot in enumerate(sorted(op.shapes))}
    exact, mag, k = op.exact(used)
    bound = k * 2.0**-24 * mag
    for out in (got, ref):
        assert_float_within(out, activate(exact, op.act), bound, ftype)
    exact32, mag32, _ = op.exact(values)
    if ftype is F16:
        bound = bound + 2.0**-10 * mag32 + (2.0**-11 * np.abs(values[2]) if 2 in values else 0)
    assert_float_within(got, activate(exact32, op.act), bound, ftype)


@pytest.mark.parametrize("options", QUANT_OPTIONS)
@pytest.mark.parametrize("qtype", [Q8, Q16])
@pytest.mark.parametrize("op", CASE_PARAMS)
def test_quantized_linear(op: Linear, qtype: mm.DataType, options: Any) -> None:
    """Bit for bit the reference; and within float32 rounding of the product of the
    fake-quantized operands."""
    gran, algo, out_type, in_type = options
    case, values = op.case(qtype, out_type, (gran, algo))
    runtime = [values[s] for s in op.runtime_slots()]
    inputs = input_buffers(case, runtime, in_type)
    got, ref = run_both(case, inputs)
    assert_ulps(got, ref, out_type, ulps=0)
    used = dict(values)
    for s in op.runtime_slots():
        used[s] = to_numpy(inputs[s], in_type)
    if 2 in used and out_type is F16:  # the bias is in the node's float precision
        used[2] = used[2].astype(np.float16).astype(np.float32)
    exact, mag, _ = op.exact(op.fake_quantized(used, qtype, (gran, algo)))
    bound = 2.0**-20 * mag + (2.0**-23 * np.abs(used[2]) if 2 in used else 0)
    assert_float_within(got, activate(exact, op.act), bound, out_type)


@pytest.mark.parametrize("precision", [F32, Q8])
def test_large_direct_matmul_runs_on_all_threads(precision: mm.DataType) -> None:
    op = MM((4, 64, 48), (4, 40, 48), tb=True)
    case, values = op.case(precision, F32, ("per_tensor", "asymmetric"))
    inputs = input_buffers(case, [values[0], values[1]], F32)
    got, ref = run_both(case, inputs)
    if precision is Q8:
        assert_ulps(got, ref, F32, ulps=0)
    else:
        exact, mag, k = op.exact(values)
        assert_float_within(got, exact, k * 2.0**-24 * mag, F32)


def test_dynamic_batch_reuses_one_runner() -> None:
    op = CASES["ip-k20-b3-relu"]
    case, values = op.case(Q8, F32, ("per_axis", "asymmetric"))
    runner = case.runner()
    for n in (1, 3, 2):
        inputs = input_buffers(case, [values[0][:n]], F32)
        out = np.empty((n, 7), np.float32)
        runner(inputs, [out])
        assert_ulps(out, case.reference(inputs)[0], F32, ulps=0)


def test_packed_and_direct_paths_are_chosen_by_the_operands() -> None:
    paths = {k: CASES[k].case(F32, F32)[0].step.lowered.attrs["path"] for k in CASES}
    assert paths["mm-const-b"] == paths["ip-n1-leaky"] == paths["mm-const-vector-b"] == "packed"
    assert paths["mm-const-b-unit-batch"] == "packed"
    for k in ("mm-runtime-broadcast", "mm-const-batched-b", "mm-const-b-transpose-a", "mm-const-a"):
        assert paths[k] == "direct", k


def test_worked_example_of_the_module_docstring() -> None:
    op = MM((1, 2), (2, 1), (1,))
    w = np.array([[0.5], [0.25]], np.float32)

    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        xs[0].set_dynamic_range(mm.Range(-1.0, 1.0))
        return net.add_i_matmul_node(xs[0], const(net, w))

    assert op.op == "matmul"
    case = quant_case(build, [((1, 2), F32)], Q8, F32)
    got, ref = run_both(case, input_buffers(case, [np.array([[1.0, -0.5]], np.float32)], F32))
    mult = np.float32(1 / 127) * np.float32(0.5 / 127)
    assert got.item() == ref.item() == np.float32(12033) * mult
    assert got.item() == pytest.approx(0.37302375)


def test_a_computed_inner_product_weight_is_refused() -> None:
    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        return net.add_i_inner_product_node(xs[0], xs[1], None)

    with pytest.raises(MMError, match="weight .* must be a constant; use add_i_matmul_node"):
        one_node_step(build, [((2, 3), F32), ((4, 3), F32)], F32)


def test_a_computed_matmul_operand_needs_a_range() -> None:
    def build(net: mm.Network, xs: list[mm.ITensor]) -> mm.INode:
        xs[0].set_dynamic_range(mm.Range(-1.0, 1.0))
        return net.add_i_matmul_node(xs[0], xs[1])

    with pytest.raises(MMError, match="'input_1' runs in QINT16 but has no range"):
        quant_case(build, [((2, 3), F32), ((3, 4), F32)], Q16, F32)
