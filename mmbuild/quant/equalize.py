"""Cross-layer equalisation (Nagel et al. 2019, "Data-Free Quantization"): balanced weights for
per-tensor int8, with the float result unchanged.

A pair ``conv1 -> [batch norm] -> [+ bias] -> [relu | leaky relu] -> conv2``, where channel ``c``
of conv1's output feeds conv2 alone, computes the same function when output channel ``c`` of
conv1 is divided by ``s[c] > 0`` and the input channel ``c`` of conv2 multiplied by it, because
the functions between are positively homogeneous: ``relu(x / s) = relu(x) / s``, likewise leaky
relu, a batch norm with ``mean / s`` and ``offset / s`` gives ``bn(x) / s``, and an added
per-channel constant (a bias kept apart, as ONNX exports of squeeze-excitation blocks have it)
``b / s`` gives ``(x + b) / s``. With ``r1[c]`` the range (largest magnitude) of conv1's output
channel ``c`` (times ``|scale / sqrt(var + eps)|`` of the batch norm) and ``r2[c]`` that of
conv2's input channel ``c``, the paper's choice

    s[c] = (1 / r2[c]) * sqrt(r1[c] * r2[c])     ( = sqrt(r1[c] / r2[c]) )

gives both channels the range ``sqrt(r1[c] * r2[c])``, so no channel of either weight is left
with a few int8 steps of a range set by another. ``W1[c] /= s[c]``, ``b1[c] /= s[c]``,
``W2[..., c, ...] *= s[c]``; a channel where either range is 0 keeps ``s = 1``. Chains
(``conv1 -> conv2 -> conv3``) are swept pair after pair until every scale of a sweep is within
``TOLERANCE`` of 1, at most ``MAX_SWEEPS`` times.

Worked example: conv1 has 2 output channels with ranges r1 = [8, 0.5], conv2 reads them with
ranges r2 = [2, 2]: s = [sqrt(8 / 2), sqrt(0.5 / 2)] = [2, 0.5]; afterwards conv1's ranges are
[4, 1] and conv2's [4, 1]: per channel both equal sqrt(r1 * r2) = [4, 1].

Not equalised (the pair is skipped): relu6, clip, hard swish, sigmoid and every other function
that is not positively homogeneous; PRelu (imported as elementwise nodes); a tensor between the
pair read by another node or marked as an output; weights, biases or batch-norm parameters that
are not FLOAT32 constants read by this node alone; a conv feeding an inner product (a reshape
lies between them); a tensor between the pair whose range the user fixed (``set_dynamic_range``
or ``custom_ranges[name]``), since that range was stated for the unequalised tensor.
Node precision settings (``set_precision``, ``set_output_type``) do not change which pairs are
equalised: they are honoured as set, on numbers equal within float rounding, and the choice
stays the same for the calibrator and the builder.

The equalisation is a pure function of the network and the config: ``equalize_network`` returns
new values for the constants by tensor name (``Equalization.values``), and both the calibrator
(which runs the reference with them) and the builder (which copies them into its graph) apply
the same values, so the calibrated ranges are those of the equalised tensors, under the same
tensor names.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mmbuild.config import BuilderConfig
from mmbuild.errors import MMError
from mmbuild.ir.network import Network
from mmbuild.ir.node import INode
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import DataType, Layout
from mmbuild.ops.activation import IActivation
from mmbuild.ops.elementwise import IElementwise

__all__ = [
    "CONFIG_KEY",
    "Equalization",
    "EqualizedPair",
    "check_calibration",
    "equalization_scales",
    "equalize_network",
]

log = logging.getLogger(__name__)

CONFIG_KEY = "precision_config.cross_layer_equalization"
MAX_SWEEPS = 100
TOLERANCE = 1e-6
# activations f with f(x / s) = f(x) / s for every s > 0
HOMOGENEOUS = (IActivation.RELU, IActivation.LEAKY_RELU)


@dataclass(frozen=True)
class EqualizedPair:
    """One equalised pair: the two node names and those of the nodes between (a batch norm,
    an activation), with the product of the scales its sweeps applied, per channel."""

    first: str
    second: str
    between: tuple[str, ...]
    scales: np.ndarray


@dataclass
class Equalization:
    """What ``equalize_network`` chose: the pairs, the new constant values by tensor name, the
    tensors between each pair (whose ranges change), and the number of sweeps."""

    pairs: list[EqualizedPair] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    rescaled: list[str] = field(default_factory=list)
    sweeps: int = 0

    @property
    def digest(self) -> str:
        """SHA-256 of the new constants ("" when no pair was equalised): what a calibration
        records, so that a build can tell whether its ranges were taken on the same weights."""
        if not self.values:
            return ""
        h = hashlib.sha256()
        for name in sorted(self.values):
            h.update(name.encode() + b"\0" + np.ascontiguousarray(self.values[name]).tobytes())
        return h.hexdigest()


def equalization_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``s = (1 / r2) * sqrt(r1 * r2)`` per channel; 1 where either range is 0 (or not finite).

    >>> equalization_scales(np.array([8.0, 0.5, 3.0]), np.array([2.0, 2.0, 0.0]))
    array([2. , 0.5, 1. ])
    """
    r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
    s = np.ones(np.broadcast(r1, r2).shape)
    ok = (r1 > 0) & (r2 > 0) & np.isfinite(r1) & np.isfinite(r2)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    return s


def equalize_network(network: Network, config: BuilderConfig | None = None) -> Equalization:
    """The equalisation of ``network`` (see the module docstring); the network is not edited.

    ``config`` supplies ``custom_ranges``: a pair whose tensors between have an exact custom
    range is skipped, as one with a ``set_dynamic_range`` range.
    """
    found = list(_pairs(network, config))
    values: dict[str, np.ndarray] = {}
    for p in found:
        for t in p.constants():
            values.setdefault(t, np.asarray(_const(network, t), np.float64).copy())
    totals = [np.ones(p.channels) for p in found]
    sweeps = 0
    while found and sweeps < MAX_SWEEPS:
        sweeps += 1
        worst = 0.0
        for k, p in enumerate(found):
            s = equalization_scales(p.r1(values), p.r2(values))
            p.apply(values, s)
            totals[k] *= s
            worst = max(worst, float(np.max(np.abs(s - 1.0))))
        if worst < TOLERANCE:
            break
    eq = Equalization(
        pairs=[
            EqualizedPair(p.first.get_node_name(), p.second.get_node_name(), p.between_names, s)
            for p, s in zip(found, totals)
        ],
        values={t: v.astype(np.float32) for t, v in values.items()},
        rescaled=[t for p in found for t in p.rescaled],
        sweeps=sweeps,
    )
    log.info("cross-layer equalisation: %d pair(s), %d sweep(s)", len(found), sweeps)
    return eq


def check_calibration(network: Network, config: BuilderConfig, eq: Equalization | None) -> None:
    """Refuse a build whose calibrated ranges were taken on other weights than it builds with
    (calibrated without ``cross_layer_equalization`` and built with it, or the reverse).

    A network never calibrated (ranges set by hand or in ``custom_ranges``) passes.
    """
    got = network._calibration_equalization
    want = eq.digest if eq is not None else ""
    if got is None or got == want:
        return
    if not got:
        what = f"without {CONFIG_KEY}, but this build sets it true"
    elif not want:
        what = f"with {CONFIG_KEY} true, but this build does not set it"
    else:
        what = (
            f"with {CONFIG_KEY} on other weights or custom_ranges than this build's, so its "
            "equalisation differs"
        )
    shown = ", ".join(repr(t) for t in (eq.rescaled if eq is not None else [])[:3])
    raise MMError(
        f"build_model: the network was calibrated {what}; the ranges of the tensors between the "
        f"equalised convolutions{f' ({shown}, ...)' if shown else ''} would not fit the weights. "
        f"Calibrate again with the config you build with (mm.Calibrator(...).calibrate(network, "
        f"config)), or give {CONFIG_KEY} the value the calibration used"
    )


# -- finding pairs -----------------------------------------------------------------------------
@dataclass
class _Pair:
    first: INode
    second: INode
    bn: INode | None
    add: INode | None  # + a per-channel constant (a bias kept apart from its conv)
    act: INode | None
    channels: int

    @property
    def between(self) -> list[INode]:
        return [n for n in (self.bn, self.add, self.act) if n is not None]

    @property
    def between_names(self) -> tuple[str, ...]:
        return tuple(n.get_node_name() for n in self.between)

    @property
    def rescaled(self) -> list[str]:
        return [n.outputs[0].get_tensor_name() for n in (self.first, *self.between)]

    def constants(self) -> list[str]:
        names = [t.get_tensor_name() for t in self.first.inputs[1:]]
        names.append(self.second.inputs[1].get_tensor_name())
        if self.bn is not None:
            names += [self.bn.inputs[k].get_tensor_name() for k in range(1, 5)]
        if self.add is not None:
            names.append(self.add.inputs[1].get_tensor_name())
        return names

    def _bn_gain(self, values: dict[str, np.ndarray]) -> np.ndarray:
        if self.bn is None:
            return np.ones(self.channels)
        var, gamma = (values[self.bn.inputs[k].get_tensor_name()] for k in (2, 3))
        return np.abs(gamma) / np.sqrt(var + float(self.bn.attrs["eps"]))

    def r1(self, values: dict[str, np.ndarray]) -> np.ndarray:
        w = _ohwi(self.first, values[self.first.inputs[1].get_tensor_name()])
        return np.abs(w).max(axis=(1, 2, 3)) * self._bn_gain(values)

    def r2(self, values: dict[str, np.ndarray]) -> np.ndarray:
        w = _ohwi(self.second, values[self.second.inputs[1].get_tensor_name()])
        per = np.abs(w).max(axis=(1, 2))  # [Cout2, Cin2 / g]
        r2 = np.zeros(self.channels)
        np.maximum.at(r2, _input_channel(self.second, per.shape), per)
        return r2

    def apply(self, values: dict[str, np.ndarray], s: np.ndarray) -> None:
        name1 = self.first.inputs[1].get_tensor_name()
        w1 = _ohwi(self.first, values[name1])
        values[name1] = _from_ohwi(self.first, w1 / s[:, None, None, None])
        for t in self.first.inputs[2:]:
            values[t.get_tensor_name()] = values[t.get_tensor_name()] / s
        if self.bn is not None:
            for k in (1, 4):  # mean and offset
                name = self.bn.inputs[k].get_tensor_name()
                values[name] = values[name] / s
        if self.add is not None:  # shape [C] or [1, C, 1, 1]: one value per channel
            name = self.add.inputs[1].get_tensor_name()
            values[name] = values[name] / s.reshape(values[name].shape)
        name2 = self.second.inputs[1].get_tensor_name()
        w2 = _ohwi(self.second, values[name2])
        m = s[_input_channel(self.second, (w2.shape[0], w2.shape[3]))]
        values[name2] = _from_ohwi(self.second, w2 * m[:, None, None, :])


def _pairs(network: Network, config: BuilderConfig | None) -> Iterator[_Pair]:
    """Every pair of the module docstring, in network order."""
    pinned = set(config.custom_ranges) if config is not None else set()
    outputs = set(network.outputs)

    def next_node(t: ITensor) -> INode | None:
        # the one reader of t, when t is private to it (no output, no user range)
        readers = t.get_consumers()
        if t in outputs or len(readers) != 1 or t.has_user_range or t.name in pinned:
            return None
        reader = readers[0]
        return reader if reader.inputs.count(t) == 1 and reader.inputs[0] is t else None

    for first in network.nodes:
        if not _weighted(network, first, first_of_pair=True):
            continue
        node = next_node(first.outputs[0])
        bn = add = act = None
        if node is not None and node.op == "fused_batch_norm" and _bn_fits(network, first, node):
            bn, node = node, next_node(node.outputs[0])
        if node is not None and _channel_add(network, first, node):
            add, node = node, next_node(node.outputs[0])
        if node is not None and node.op == "activation" and node.attrs["mode"] in HOMOGENEOUS:
            act, node = node, next_node(node.outputs[0])
        if node is None or not _weighted(network, node, first_of_pair=False):
            continue
        if (node.op == "conv") != (first.op == "conv"):
            continue  # conv -> inner product has a reshape between; inner product -> conv too
        channels = _ohwi(first, _const(network, first.inputs[1].name)).shape[0]
        w2 = _ohwi(node, _const(network, node.inputs[1].name))
        group = int(node.attrs.get("group", 1))
        if w2.shape[3] * group != channels:
            continue
        yield _Pair(first, node, bn, add, act, channels)


def _weighted(network: Network, node: INode, first_of_pair: bool) -> bool:
    """A conv or inner product whose weights (and bias) are FLOAT32 constants it alone reads;
    without a fused activation, and, as the first of a pair, with one output."""
    if node.op not in ("conv", "inner_product") or len(node.inputs) < 2:
        return False
    consts = node.inputs[1:] if first_of_pair else node.inputs[1:2]
    return all(_private_const(network, t) for t in consts)


def _channel_axis(node: INode) -> int:
    """The output axis of a conv or inner product that holds its output channels."""
    if node.op == "conv":
        return 1 if node.attrs["layout"][2] is Layout.NCHW else 3
    return 1


def _channel_add(network: Network, main: INode, add: INode) -> bool:
    """``add`` is ``t + c`` with ``c`` a private constant of one value per channel of ``t``
    (``[C]`` on NHWC, ``[1, C, 1, 1]`` on NCHW), as a bias kept apart from its conv."""
    if add.op != "elementwise" or add.attrs["mode"] is not IElementwise.ADD:
        return False
    if len(add.inputs) != 2 or not _private_const(network, add.inputs[1]):
        return False
    c = _const(network, add.inputs[1].name)
    rank = len(add.inputs[0].get_dimension())
    shape = (1,) * (rank - c.ndim) + c.shape
    channels = add.inputs[0].get_dimension().get_dims()[_channel_axis(main)]
    others = [n for i, n in enumerate(shape) if i != _channel_axis(main)]
    return (
        c.ndim <= rank
        and channels > 1
        and shape[_channel_axis(main)] == channels
        and (all(n == 1 for n in others))
    )


def _bn_fits(network: Network, conv: INode, bn: INode) -> bool:
    rank = len(bn.inputs[0].get_dimension())
    if int(bn.attrs["axis"]) % rank != _channel_axis(conv):
        return False
    return all(_private_const(network, bn.inputs[k]) for k in range(1, 5))


def _private_const(network: Network, t: ITensor) -> bool:
    producer = t.get_producer()
    return (
        producer is not None
        and producer.op == "const"
        and t.get_data_type() is DataType.FLOAT32
        and len(t.get_consumers()) == 1
        and t not in network.outputs
    )


def _const(network: Network, name: str) -> np.ndarray:
    for node in network.nodes:
        if node.op == "const" and node.outputs[0].get_tensor_name() == name:
            return np.asarray(node.attrs["value"])
    raise MMError(f"cross-layer equalisation: no constant {name!r}")  # not reached: checked


def _perm(node: INode) -> tuple[int, ...]:
    if node.op == "inner_product":
        return (0, 1)
    return tuple(node.filter_ohwi((0, 1, 2, 3)))  # type: ignore[attr-defined]


def _ohwi(node: INode, w: np.ndarray) -> np.ndarray:
    """The weight as [Cout, Kh, Kw, Cin / group] (an inner product's [N_out, K] as [N_out, 1, 1,
    K])."""
    if node.op == "inner_product":
        return w.reshape(w.shape[0], 1, 1, w.shape[1])
    return w.transpose(_perm(node))


def _from_ohwi(node: INode, w: np.ndarray) -> np.ndarray:
    """The inverse of ``_ohwi``: the weight back in the node's own layout."""
    if node.op == "inner_product":
        return w.reshape(w.shape[0], w.shape[3])
    return w.transpose(np.argsort(_perm(node)))


def _input_channel(node: INode, shape: tuple[int, ...]) -> np.ndarray:
    """``[Cout, Cin / g]`` -> the input channel each filter column reads: ``(o // (Cout / g))
    * (Cin / g) + i`` for group ``g`` (depthwise: ``o // multiplier``)."""
    cout, per = shape
    group = int(node.attrs.get("group", 1))
    o = np.arange(cout)[:, None] // (cout // group)
    return o * per + np.arange(per)[None, :]
