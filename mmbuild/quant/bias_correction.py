"""Bias correction (Nagel et al. 2019, section 4.2): the mean output error that quantizing a
conv's or inner product's weights causes, taken out of its bias.

With ``dW = W_q - W`` (``W_q`` the dequantized int8 weight the kernel will use), the output
error of a conv is ``conv(x, dW)``; its mean over the calibration data and over every output
position is, exactly,

    E[err[o]] = sum over (kh, kw, i) of dW[o, kh, kw, i] * m[kh, kw, g(o, i)]

where ``m[kh, kw, c]`` is the mean of input channel ``c`` seen by filter tap ``(kh, kw)`` over
all batches and output positions, zero padding included (the border taps see the padding's
zeros, so ``m`` differs per tap), and ``g(o, i)`` the input channel column ``i`` of output
channel ``o`` reads (its group's). For an inner product ``m`` is the mean of the flattened
input and ``E[err] = dW @ m``. The builder sets ``b' = b - E[err]``.

Worked example, a 1x1 conv with one input channel of mean 2 and ``W = [[0.3], [1.0]]`` in
per-tensor int8: the scale is 1 / 127, ``W_q = [38 / 127, 1.0] = [0.29921, 1.0]``, ``dW =
[-0.00079, 0]``, and the biases move by ``[+0.00157, 0]``.

``input_means(node, x)`` is what the calibrator accumulates per node (``MeanObserver``), and
``correct_biases(graph, means)`` what the builder applies after the passes, when the weights
are final (batch norm folded, equalised), and before lowering. Weights with a range of their own
(a QDQ model's) keep their bias: their quantization is the file's; so does a first conv that
absorbed ``insert_bn_before_firstnode``, whose input is no longer the one the means are of.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmbuild.graph import Graph, Node
from mmbuild.ir.node import INode
from mmbuild.ir.types import DataType, Layout
from mmbuild.quant.params import choose_qparams, fake_quantize, weight_qmax

__all__ = [
    "CONFIG_KEY",
    "MeanObserver",
    "correct_biases",
    "corrected_nodes",
    "input_means",
    "quantized_weight",
]

log = logging.getLogger(__name__)

CONFIG_KEY = "precision_config.bias_correction"
_OPS = ("conv", "inner_product")
_BITS = {DataType.QINT8: 8, DataType.QINT16: 16}


def corrected_nodes(nodes: list[INode]) -> list[INode]:
    """The nodes whose input means the calibrator records: convs and inner products with a
    FLOAT32 constant weight."""
    found = []
    for n in nodes:
        if n.op not in _OPS or len(n.inputs) < 2:
            continue
        producer = n.inputs[1].get_producer()
        if producer is not None and producer.op == "const":
            found.append(n)
    return found


def input_means(node: INode, x: np.ndarray) -> tuple[np.ndarray, int]:
    """(``m``, count): the per-tap input means of ``node`` over this batch (``[Kh, Kw, Cin]``
    for a conv, zero padding included; ``[K]`` for an inner product), and the number of output
    positions they average, to weigh batches."""
    x = np.asarray(x, np.float64)
    if node.op == "inner_product":
        flat = x.reshape(x.shape[0], -1)
        return flat.mean(axis=0), flat.shape[0]
    attrs = node.attrs
    if attrs["layout"][0] is Layout.NCHW:
        x = x.transpose(0, 2, 3, 1)
    dims = node.inputs[1].get_dimension().get_dims()
    _, kh, kw, _ = node.filter_ohwi(dims)  # type: ignore[attr-defined]
    pt, pb, pl, pr = node.pads_for(x.shape[1], x.shape[2], kh, kw)  # type: ignore[attr-defined]
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    win = win[:, ::sh, ::sw, :, ::dh, ::dw]  # [N, Ho, Wo, Cin, Kh, Kw]
    count = win.shape[0] * win.shape[1] * win.shape[2]
    return win.mean(axis=(0, 1, 2)).transpose(1, 2, 0), count


@dataclass
class MeanObserver:
    """The running, count-weighted mean of ``input_means`` over batches (memory: one ``m``)."""

    total: np.ndarray | None = None
    count: int = 0

    def observe(self, means: np.ndarray, count: int) -> None:
        if self.total is None:
            self.total = np.zeros_like(means)
        self.total += means * count
        self.count += count

    @property
    def mean(self) -> np.ndarray:
        assert self.total is not None and self.count  # observed before it is read
        return self.total / self.count


def quantized_weight(
    w: np.ndarray, qtype: DataType, per_axis: bool, axis: int, qmax: int | None = None
) -> np.ndarray:
    """``W_q`` as float: the symmetric quantization of the kernels (range ``[min, max]`` per
    tensor, or per index of ``axis``, onto ``[-qmax, qmax]``), dequantized.

    >>> quantized_weight(np.array([[0.3], [1.0]]), DataType.QINT8, False, 0).ravel()
    array([0.2992126, 1.       ], dtype=float32)
    """
    w = np.asarray(w, np.float32)
    bits = _BITS[qtype]
    if per_axis:
        others = tuple(a for a in range(w.ndim) if a != axis)
        qp = choose_qparams(w.min(axis=others), w.max(axis=others), bits=bits, axis=axis,
                            qmax=qmax)  # fmt: skip
    else:
        qp = choose_qparams(float(w.min()), float(w.max()), bits=bits, qmax=qmax)
    return fake_quantize(w, qp)


def correct_biases(graph: Graph, means: dict[str, np.ndarray]) -> int:
    """``b' = b - E[err]`` for every conv and inner product of ``graph`` whose weight is
    quantized and whose input means ``means`` holds (by node name); returns how many."""
    per_axis = graph.options.get("weight_quant_granularity", "per_tensor") == "per_axis"
    count = 0
    for node in graph.nodes:
        m = means.get(node.name)
        if node.op not in _OPS or m is None or len(node.precisions) < 2:
            continue
        qtype = node.precisions[1]
        w = graph.value(node.inputs[1])
        if qtype not in _BITS or w is None or graph.tensors[node.inputs[1]].range is not None:
            continue
        if any(f.endswith("/insert_bn") for f in node.fused):
            continue  # it reads the raw model input now, not the input the means are of
        shift = _mean_error(node, np.asarray(w, np.float32), m, qtype, per_axis, graph.options)
        if shift is None:
            continue
        bias = graph.value(node.inputs[2]) if len(node.inputs) > 2 else np.zeros(len(shift))
        new = (np.asarray(bias, np.float64) - shift).astype(np.float32)
        name = graph.add_const(f"{node.name}/bias_corrected", new)
        if len(node.inputs) > 2:
            node.inputs[2] = name
        else:
            node.inputs.append(name)
            node.precisions.append(DataType.FLOAT32)
        node.notes.append(f"bias corrected: mean output error up to {np.abs(shift).max():.3g}")
        count += 1
    log.info("bias correction: %d node(s)", count)
    return count


def _mean_error(
    node: Node,
    w: np.ndarray,
    m: np.ndarray,
    qtype: DataType,
    per_axis: bool,
    options: dict[str, str],
) -> np.ndarray | None:
    """``E[err]`` per output channel (module docstring), or None when ``m`` does not fit."""
    if node.op == "inner_product":
        qmax = weight_qmax(options, _BITS[qtype])
        dw = quantized_weight(w, qtype, per_axis, 0, qmax).astype(np.float64) - w
        return dw @ m if m.shape == (w.shape[1],) else None
    decl = node.declaration()
    perm = decl.filter_ohwi((0, 1, 2, 3))  # type: ignore[attr-defined]
    w_ohwi = w.transpose(perm)
    cout, kh, kw, per = w_ohwi.shape
    group = int(node.attrs["group"])
    if m.shape != (kh, kw, per * group):
        return None
    depthwise = group > 1 and per == 1  # conv_ops runs it in its own loop, not a GEMM
    qmax = weight_qmax(options, _BITS[qtype], gemm=not depthwise)
    dw = quantized_weight(w_ohwi, qtype, per_axis, 0, qmax).astype(np.float64) - w_ohwi
    channel = (np.arange(cout)[:, None] // (cout // group)) * per + np.arange(per)[None, :]
    taps = m[:, :, channel]  # [Kh, Kw, Cout, per]: the mean each weight multiplies
    return np.einsum("ohwi,hwoi->o", dw, taps)
