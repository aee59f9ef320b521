"""What the built model takes and gives at its edges, from MagicMind's config keys.

``model_edges(network, config)`` resolves, once and with every check, what
``convert_input_layout``, ``insert_bn_before_firstnode``, ``convert_output_layout``,
``graph_shape_mutable`` and ``dim_range`` ask of each network input and output. The builder turns
the result into graph nodes (``mmbuild.passes.io_rewrites``); the calibrator turns calibration
samples, given as the model takes them, into what the network reads
(:meth:`InputEdge.calibration_source`, :meth:`InputEdge.to_network`).

Example: an NCHW network input of dims [1, 3, 8, 8] with
``{"convert_input_layout": {"0": {"src": "NCHW", "dst": "NHWC"}},
"insert_bn_before_firstnode": {"0": {"mean": [1, 2, 3], "var": [4, 4, 4]}}}`` gives a model
input of dims [1, 8, 8, 3] (``dst``); the model computes ``(x - mean[c]) / sqrt(var[c])`` on
axis 3 (C in NHWC), so a pixel [5, 6, 7] becomes [2, 2, 2], then permutes by (0, 3, 1, 2) to the
network's NCHW.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmbuild.config.builder_config import BuilderConfig
from mmbuild.errors import MMError
from mmbuild.ir.network import Network
from mmbuild.ir.tensor import ITensor
from mmbuild.ir.types import Dims, Layout

__all__ = ["InputEdge", "ModelEdges", "OutputEdge", "model_edges"]


@dataclass(frozen=True)
class InputEdge:
    """One network input as the model takes it.

    ``perm`` moves model-layout data into the network's layout (None: same layout);
    ``mean`` / ``var`` normalise the model's data along ``channel_axis`` (of the model's layout)
    before that; ``min_dims`` / ``max_dims`` bound the shapes enqueue accepts.
    """

    index: int
    name: str
    model_dims: tuple[int, ...]
    perm: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    var: tuple[float, ...] | None = None
    channel_axis: int | None = None
    min_dims: tuple[int, ...] | None = None
    max_dims: tuple[int, ...] | None = None

    def to_network(self, array: np.ndarray) -> np.ndarray:
        """``array`` as the model takes it -> what the network reads (float32 where
        normalised): ``(x - mean[c]) / sqrt(var[c])``, then the permute."""
        out = np.asarray(array)
        if self.mean is not None and self.var is not None and self.channel_axis is not None:
            shape = [1] * out.ndim
            shape[self.channel_axis] = len(self.mean)
            mean = np.asarray(self.mean, np.float32).reshape(shape)
            std = np.sqrt(np.asarray(self.var, np.float32)).reshape(shape)
            out = ((out.astype(np.float32) - mean) / std).astype(np.float32)
        if self.perm is not None:
            out = np.ascontiguousarray(out.transpose(self.perm))
        return out

    @property
    def changes_data(self) -> bool:
        return self.perm is not None or self.mean is not None

    def calibration_source(self, source: Any) -> Any:
        """``source`` (a CalibDataInterface giving samples as the model takes them) as the
        network reads them; ``source`` itself when this edge changes nothing."""
        return NetworkInputSource(source, self) if self.changes_data else source


class NetworkInputSource:
    """A calibration data source seen through an :class:`InputEdge`: ``get_shape`` and
    ``get_sample`` give what the network reads (permuted, normalised); the rest is delegated."""

    def __init__(self, source: Any, edge: InputEdge) -> None:
        self._source, self._edge = source, edge

    def _check_rank(self, dims: Sequence[int], what: str) -> None:
        e = self._edge
        if len(dims) != len(e.model_dims):
            raise MMError(
                f"Calibrator: data source {e.index} ({type(self._source).__name__}): {what} "
                f"{list(dims)} does not fit model input {e.index} ({e.name!r}), which takes "
                f"{list(e.model_dims)} (-1 = any size) after the config's convert_input_layout"
            )

    def get_shape(self) -> Dims:
        dims = list(self._source.get_shape())
        self._check_rank(dims, "get_shape() gives")
        perm = self._edge.perm
        return Dims([dims[p] for p in perm] if perm is not None else dims)

    def get_sample(self) -> Any:
        sample = self._source.get_sample()
        if not isinstance(sample, np.ndarray):
            return sample  # the calibrator refuses it, naming the source
        self._check_rank(sample.shape, "the sample's shape")
        return self._edge.to_network(sample).astype(sample.dtype, copy=False)

    def get_data_type(self) -> Any:
        return self._source.get_data_type()

    def next(self) -> Any:
        return self._source.next()

    def reset(self) -> Any:
        return self._source.reset()


@dataclass(frozen=True)
class OutputEdge:
    """One network output as the model gives it: ``perm`` moves the network's layout into the
    model's (None: same layout)."""

    index: int
    name: str
    model_dims: tuple[int, ...]
    perm: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ModelEdges:
    inputs: tuple[InputEdge, ...]
    outputs: tuple[OutputEdge, ...]

    @property
    def changes_data(self) -> bool:
        return any(e.changes_data for e in self.inputs) or any(e.perm for e in self.outputs)


def model_edges(network: Network, config: BuilderConfig) -> ModelEdges:
    """Resolve the config's edge keys for ``network``; refuse, naming the key, what cannot fit."""
    inputs, outputs = network.inputs, network.outputs
    _check_indices(config.convert_input_layout, len(inputs), "convert_input_layout", "input")
    _check_indices(config.insert_bn_before_firstnode, len(inputs), "insert_bn_before_firstnode",
                   "input")  # fmt: skip
    _check_indices(config.dim_range, len(inputs), "dim_range", "input")
    _check_indices(config.convert_output_layout, len(outputs), "convert_output_layout", "output")
    return ModelEdges(
        tuple(_input_edge(network, i, t, config) for i, t in enumerate(inputs)),
        tuple(_output_edge(i, t, config) for i, t in enumerate(outputs)),
    )


def _input_edge(network: Network, i: int, t: ITensor, config: BuilderConfig) -> InputEdge:
    dims = tuple(t.get_dimension())
    where = f"network input {i} ({t.name!r}, dims {list(dims)})"
    if not config.graph_shape_mutable and any(d < 0 for d in dims):
        raise MMError(
            f"graph_shape_mutable is false but {where} has -1 dimensions; give the input its "
            f"fixed shape with set_dimension, or set graph_shape_mutable to true"
        )
    perm, model_dims, layout = None, dims, None
    conversion = config.convert_input_layout.get(i)
    if conversion is not None:
        src, dst = conversion
        _check_rank(src, dims, f'convert_input_layout["{i}"]', where)
        perm = tuple(dst.index(axis) for axis in src)  # model (dst) data -> network (src)
        model_dims = tuple(dims[src.index(axis)] for axis in dst)
        layout = dst
        if perm == tuple(range(len(perm))):
            perm = None
    mean = var = channel_axis = None
    normalization = config.insert_bn_before_firstnode.get(i)
    if normalization is not None:
        key = f'insert_bn_before_firstnode["{i}"]'
        if not t.get_data_type().is_float:
            raise MMError(
                f"{key}: {where} is {t.get_data_type().name}; the normalisation computes in "
                "float, so declare the input FLOAT32 or FLOAT16"
            )
        channel_axis = _channel_axis(network, t, layout, key, where)
        channels = model_dims[channel_axis]
        mean_list, var_list = normalization
        if channels < 0:
            raise MMError(
                f"{key}: the channel dimension (axis {channel_axis} of the model's input "
                f"{list(model_dims)}) is -1; give the input a fixed channel count"
            )
        if len(mean_list) != channels:
            raise MMError(
                f"{key}: mean and var have {len(mean_list)} values but {where} has {channels} "
                f"channels (axis {channel_axis} of the model's input {list(model_dims)}); give "
                f"{channels} of each"
            )
        mean, var = tuple(mean_list), tuple(var_list)
    lo = hi = None
    bounds = config.dim_range.get(i)
    if bounds is not None:
        lo, hi = (tuple(b) for b in bounds)
        _check_dim_range(lo, hi, model_dims, f'dim_range["{i}"]', where)
    return InputEdge(i, t.name, model_dims, perm, mean, var, channel_axis, lo, hi)


def _output_edge(i: int, t: ITensor, config: BuilderConfig) -> OutputEdge:
    dims = tuple(t.get_dimension())
    conversion = config.convert_output_layout.get(i)
    if conversion is None:
        return OutputEdge(i, t.name, dims)
    src, dst = conversion
    _check_rank(src, dims, f'convert_output_layout["{i}"]', f"network output {i} ({t.name!r})")
    perm = tuple(src.index(axis) for axis in dst)  # network (src) data -> model (dst)
    model_dims = tuple(dims[p] for p in perm)
    return OutputEdge(i, t.name, model_dims, None if perm == tuple(range(len(perm))) else perm)


def _check_indices(entries: Mapping[int, object], count: int, key: str, what: str) -> None:
    for index in sorted(entries):
        if index >= count:
            raise MMError(
                f'{key}["{index}"]: the network has {count} {what}(s), so the keys are '
                f"{', '.join(repr(str(k)) for k in range(count)) or 'none'}"
            )


def _check_rank(layout: str, dims: Sequence[int], key: str, where: str) -> None:
    if len(layout) != len(dims):
        raise MMError(
            f"{key}: src layout {layout!r} has {len(layout)} axes but {where} has rank "
            f"{len(dims)}; use a layout of {len(dims)} axes, or drop the key for this index"
        )


def _check_dim_range(
    lo: tuple[int, ...], hi: tuple[int, ...], dims: tuple[int, ...], key: str, where: str
) -> None:
    if len(lo) != len(dims):
        raise MMError(
            f"{key}: min and max have {len(lo)} dimensions but the model's input has rank "
            f"{len(dims)} ({where}, taken as {list(dims)}); give one size per dimension"
        )
    for a, (d, low, high) in enumerate(zip(dims, lo, hi)):
        if d >= 0 and not low <= d <= high:
            raise MMError(
                f"{key}: dimension {a} of the model's input is fixed at {d}, outside min {low} "
                f".. max {high}; make the range contain {d}, or declare that dimension -1"
            )


def _channel_axis(network: Network, t: ITensor, layout: str | None, key: str, where: str) -> int:
    """The C axis of the model's input: from ``convert_input_layout``'s ``dst``, else from the
    layout of the spatial nodes that read the input (NCHW or NHWC), else NHWC for rank 4 (the
    default of mmbuild's spatial nodes) and axis 1 for rank 2 ([N, C])."""
    if layout is not None and "C" in layout:
        return layout.index("C")
    rank = len(t.get_dimension())
    for reader in t.get_consumers():
        attr = reader.attrs.get("layout")
        first = attr[0] if isinstance(attr, tuple) else attr
        if rank == 4 and first in (Layout.NCHW, Layout.NHWC):
            return 1 if first is Layout.NCHW else 3
    if rank == 4:
        return 3
    if rank == 2:
        return 1
    raise MMError(
        f"{key}: {where} has rank {rank}; the channel axis is known for rank-4 image inputs "
        "(NCHW / NHWC) and rank-2 [N, C] inputs only. Say the layout with convert_input_layout"
    )
