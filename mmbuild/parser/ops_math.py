"""Handlers of arithmetic ops: binary elementwise, activations, clip, softmax.

Exact rewrites stand in where mmbuild has no node: ``Neg`` is ``x * -1``, ``Reciprocal`` is
``1 / x``, ``Abs`` is ``max(x, -x)``, ``Pow`` by 2 is ``x * x``, ``PRelu`` is
``max(x, 0) + slope * min(x, 0)``; each is the same IEEE operation as the ONNX op. ``Mul`` of a
tensor by ``Sigmoid`` of itself imports as SiLU, by ``HardSigmoid(1/6, 1/2)`` of itself as hard
swish.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import Dims
from mmbuild.ops.activation import IActivation
from mmbuild.ops.elementwise import IElementwise
from mmbuild.parser.table import imports
from mmbuild.parser.walk import NodeContext

_BINARY = {
    "Add": IElementwise.ADD,
    "Sub": IElementwise.SUB,
    "Mul": IElementwise.MUL,
    "Div": IElementwise.DIV,
    "Max": IElementwise.MAX,
    "Min": IElementwise.MIN,
    "Sum": IElementwise.ADD,
}


def const_like(ctx: NodeContext, like: ITensor, value: Any) -> ITensor:
    """A scalar-or-array constant in the data type of ``like``."""
    arr = np.asarray(value, dtype=like.get_data_type().numpy_dtype)
    return ctx.net.add_i_const_node(like.get_data_type(), Dims(list(arr.shape)), arr).get_output(0)


def binary(ctx: NodeContext, a: ITensor, b: ITensor, mode: IElementwise) -> ITensor:
    return ctx.net.add_i_elementwise_node(a, b, mode).get_output(0)


def activation(ctx: NodeContext, x: ITensor, mode: IActivation, **params: float) -> ITensor:
    node = ctx.net.add_i_activation_node(x, mode)
    if "alpha" in params:
        node.set_alpha(params["alpha"])  # type: ignore[attr-defined]
    if "beta" in params:
        node.set_beta(params["beta"])  # type: ignore[attr-defined]
    return node.get_output(0)


@imports(
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum",
    notes="numpy broadcasting; Max, Min and Sum of any number of inputs; float inputs",
    limits={"integer": "integer arithmetic on run-time tensors is not imported"},
)  # fmt: skip
def import_binary(ctx: NodeContext) -> list[Any]:
    mode = _BINARY[ctx.op_type]
    ts = [ctx.tensor(i) for i in range(len(ctx.inputs)) if ctx.has(i)]
    if any(not t.get_data_type().is_float for t in ts):
        ctx.refuse("integer")
    if ctx.op_type == "Mul" and len(ts) == 2:
        fused = _gated(ctx, ts[0], ts[1]) or _gated(ctx, ts[1], ts[0])
        if fused is not None:
            return [fused]
    y = ts[0]
    if len(ts) == 1:  # a one-input Max / Min / Sum is a copy
        return [ctx.net.add_i_reshape_node(y, [0] * len(y.get_dimension())).get_output(0)]
    for t in ts[1:]:
        y = binary(ctx, y, t, mode)
    return [y]


def _gated(ctx: NodeContext, x: ITensor, gate: ITensor) -> ITensor | None:
    """``x * sigmoid(x)`` as SiLU, ``x * hard_sigmoid(x)`` (alpha 1/6, beta 1/2) as hard swish."""
    p = gate.get_producer()
    if p is None or p.op != "activation" or p.get_input(0) is not x:
        return None
    mode = p.attrs["mode"]
    if mode is IActivation.SIGMOID:
        return activation(ctx, x, IActivation.SILU)
    if (
        mode is IActivation.HARD_SIGMOID
        and np.isclose(p.attrs["alpha"], 1 / 6, rtol=1e-6, atol=0)
        and p.attrs["beta"] == 0.5
    ):
        return activation(ctx, x, IActivation.HARD_SWISH)
    return None


@imports("Mean", notes="the mean of any number of float inputs, as their sum divided by the count")
def import_mean(ctx: NodeContext) -> list[Any]:
    ts = [ctx.tensor(i) for i in range(len(ctx.inputs)) if ctx.has(i)]
    y = ts[0]
    for t in ts[1:]:
        y = binary(ctx, y, t, IElementwise.ADD)
    return [binary(ctx, y, const_like(ctx, y, len(ts)), IElementwise.DIV)]


@imports("Neg", notes="x * -1")
def import_neg(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    return [binary(ctx, x, const_like(ctx, x, -1), IElementwise.MUL)]


@imports("Reciprocal", notes="1 / x")
def import_reciprocal(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    return [binary(ctx, const_like(ctx, x, 1), x, IElementwise.DIV)]


@imports("Abs", notes="max(x, -x)")
def import_abs(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    neg = binary(ctx, x, const_like(ctx, x, -1), IElementwise.MUL)
    return [binary(ctx, x, neg, IElementwise.MAX)]


@imports(
    "Pow",
    notes="a constant exponent of 1 or 2 (x, x * x)",
    limits={"exponent": "only a constant exponent of 1 or 2 is imported"},
)
def import_pow(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    e = ctx.array(1, "exponent") if ctx.value(1).is_known or _is_const(ctx, 1) else None
    if e is None or e.size != 1 or float(e.ravel()[0]) not in (1.0, 2.0):
        ctx.refuse("exponent")
    if float(e.ravel()[0]) == 1.0:  # type: ignore[union-attr]
        return [ctx.net.add_i_reshape_node(x, [0] * len(x.get_dimension())).get_output(0)]
    return [binary(ctx, x, x, IElementwise.MUL)]


def _is_const(ctx: NodeContext, i: int) -> bool:
    t = ctx.value(i).tensor
    p = t.get_producer() if t is not None else None
    return p is not None and p.op == "const"


_SIMPLE = {
    "Relu": IActivation.RELU,
    "Sigmoid": IActivation.SIGMOID,
    "Tanh": IActivation.TANH,
    "Exp": IActivation.EXP,
    "Log": IActivation.LOG,
    "Sqrt": IActivation.SQRT,
    "Erf": IActivation.ERF,
    "Softplus": IActivation.SOFTPLUS,
    "Mish": IActivation.MISH,
}


@imports(*_SIMPLE, notes="float inputs")
def import_simple_activation(ctx: NodeContext) -> list[Any]:
    return [activation(ctx, ctx.tensor(0), _SIMPLE[ctx.op_type])]


@imports("LeakyRelu", notes="alpha (default 0.01)")
def import_leaky_relu(ctx: NodeContext) -> list[Any]:
    return [activation(ctx, ctx.tensor(0), IActivation.LEAKY_RELU, alpha=ctx.attr("alpha", 0.01))]


@imports("Elu", notes="alpha (default 1.0)")
def import_elu(ctx: NodeContext) -> list[Any]:
    return [activation(ctx, ctx.tensor(0), IActivation.ELU, alpha=ctx.attr("alpha", 1.0))]


@imports("HardSigmoid", notes="alpha (default 0.2), beta (default 0.5)")
def import_hard_sigmoid(ctx: NodeContext) -> list[Any]:
    a, b = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    return [activation(ctx, ctx.tensor(0), IActivation.HARD_SIGMOID, alpha=a, beta=b)]


@imports("HardSwish", notes="x * max(0, min(1, x * (1/6) + 1/2)) in float32", since=14)
def import_hard_swish(ctx: NodeContext) -> list[Any]:
    return [activation(ctx, ctx.tensor(0), IActivation.HARD_SWISH)]


@imports(
    "Gelu",
    notes="approximate='none' (the erf form)",
    since=20,
    limits={"tanh": "approximate='tanh' is not imported"},
)
def import_gelu(ctx: NodeContext) -> list[Any]:
    if ctx.attr("approximate", "none") != "none":
        ctx.refuse("tanh")
    return [activation(ctx, ctx.tensor(0), IActivation.GELU)]


@imports(
    "PRelu",
    notes="a constant slope; one slope value imports as LeakyRelu",
    limits={"runtime_slope": "a slope computed at run time is not imported"},
)
def import_prelu(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    slope = ctx.array(1, "slope")
    if slope.size == 1:
        return [activation(ctx, x, IActivation.LEAKY_RELU, alpha=float(slope.ravel()[0]))]
    zero = const_like(ctx, x, 0)
    pos = binary(ctx, x, zero, IElementwise.MAX)
    neg = binary(ctx, x, zero, IElementwise.MIN)
    scaled = binary(ctx, neg, ctx.tensor(1), IElementwise.MUL)
    return [binary(ctx, pos, scaled, IElementwise.ADD)]


@imports(
    "Clip",
    notes="bounds as attributes (opset < 11) or constant inputs; Clip(0, 6) imports as Relu6",
    limits={"runtime_bound": "bounds computed at run time are not imported"},
)
def import_clip(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    if ctx.opset < 11:
        lo, hi = ctx.attr("min", -np.inf), ctx.attr("max", np.inf)
    else:
        lo = float(ctx.array(1, "bound").ravel()[0]) if ctx.has(1) else -np.inf
        hi = float(ctx.array(2, "bound").ravel()[0]) if ctx.has(2) else np.inf
    if (lo, hi) == (0.0, 6.0):
        return [activation(ctx, x, IActivation.RELU6)]
    if lo > hi:  # ONNX: every output is max
        lo = hi
    return [ctx.net.add_i_clip_node(x, lo, hi).get_output(0)]


@imports(
    "Softmax",
    notes="any axis; before opset 13 the input is flattened to 2-D at axis, as ONNX defines",
    limits={"flatten": "opset < 13 with run-time dimensions after the axis is not imported"},
)
def import_softmax(ctx: NodeContext) -> list[Any]:
    x = ctx.tensor(0)
    dims = x.get_dimension().get_dims()
    rank = len(dims)
    axis = ctx.attr("axis", -1 if ctx.opset >= 13 else 1)
    axis = axis % rank if rank else 0
    if ctx.opset >= 13 or axis == rank - 1:
        return [ctx.net.add_i_softmax_node(x, axis).get_output(0)]
    tail = dims[axis:]
    if -1 in tail:
        ctx.refuse("flatten")
    flat = ctx.net.add_i_reshape_node(x, [0] * axis + [-1]).get_output(0)
    y = ctx.net.add_i_softmax_node(flat, -1).get_output(0)
    return [ctx.net.add_i_reshape_node(y, [0] * axis + tail).get_output(0)]
