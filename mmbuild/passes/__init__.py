"""The graph passes: a named pipeline of small rewrites of a ``Graph`` (never of the user's
``Network``).

Each pass is a function ``graph -> number of rewrites``; ``run_passes`` runs ``PIPELINE`` in
order and returns ``{pass name: count}``, logging each through ``logging``. Every pass keeps
the graph's numbers (``graph.run_reference`` gives the same results before and after, exactly
for data movement, within float32 rounding for folding) and its precisions coherent (an inserted
node runs in the type of the data it moves; a node that absorbs another takes its output types
and lists it in ``fused``).

Example: ``x -> conv -> bn -> relu -> y`` becomes ``x -> conv[activation=relu] -> y`` with
``fused == ["fused_batch_norm_0", "activation_0"]`` and counts
``{"fold_constants": 0, "fold_batch_norm": 1, "clamp_as_clip": 0, "fuse_hard_sigmoid": 0,
"fuse_hard_swish": 0, "fuse_silu": 0, "fold_channel_affine": 0, "fold_affine_into_readers": 0,
"fold_hard_sigmoid": 0, "fuse_activations": 1, "fuse_affine_after_activation": 0,
"convert_layout": 0, "cancel_permutes": 0,
"sink_permutes": 0, "fold_input_normalization": 0, "remove_dead_nodes": 0}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from mmbuild.errors import Code, MMError
from mmbuild.graph import Graph
from mmbuild.passes.dce import remove_dead_nodes
from mmbuild.passes.fold import (
    fold_batch_norm,
    fold_channel_affine,
    fold_constants,
    fold_hard_sigmoid,
)
from mmbuild.passes.fold_forward import fold_affine_into_readers
from mmbuild.passes.fuse import epilogue_activation, fuse_activations, fuse_affine_after_activation
from mmbuild.passes.io_rewrites import fold_input_normalization
from mmbuild.passes.layout import cancel_permutes, convert_layout
from mmbuild.passes.pointwise import clamp_as_clip, fuse_hard_sigmoid, fuse_hard_swish, fuse_silu
from mmbuild.passes.sink import sink_permutes

__all__ = [
    "PIPELINE",
    "Pass",
    "cancel_permutes",
    "clamp_as_clip",
    "convert_layout",
    "epilogue_activation",
    "fold_affine_into_readers",
    "fold_batch_norm",
    "fold_channel_affine",
    "fold_constants",
    "fold_hard_sigmoid",
    "fold_input_normalization",
    "fuse_activations",
    "fuse_affine_after_activation",
    "fuse_hard_sigmoid",
    "fuse_hard_swish",
    "fuse_silu",
    "remove_dead_nodes",
    "run_passes",
    "sink_permutes",
]

log = logging.getLogger(__name__)

Pass = Callable[[Graph], int]

PIPELINE: tuple[Pass, ...] = (
    # first: weights computed by constant subgraphs become plain constants the folds can read
    fold_constants,
    # before fusion: conv -> bn -> relu must lose the bn before the relu can meet the conv
    fold_batch_norm,
    # before the fusions: a relu written max(x, 0) becomes the clip they fuse
    clamp_as_clip,
    # before the channel folds: the "+ 3" of clip(x + 3, 0, 6) / 6 must not fold into a conv
    fuse_hard_sigmoid,
    # after fuse_hard_sigmoid, which makes the gate of x * hard_sigmoid(x)
    fuse_hard_swish,
    fuse_silu,
    # after the pointwise fusions, which leave a conv's output read by one activation only
    fold_channel_affine,
    # after the backward folds, which take the affines right after a conv first
    fold_affine_into_readers,
    # after the pointwise fusions have made the hard sigmoid of a squeeze-excitation gate
    fold_hard_sigmoid,
    # before layout: the activation still reads the conv directly, not a permute after it
    fuse_activations,
    # after fuse_activations: the affine that follows a fused activation joins it
    fuse_affine_after_activation,
    # after fusion: one permute pair per spatial node, around its fused epilogue
    convert_layout,
    # right after layout: the back-to-back pairs it leaves between NCHW nodes
    cancel_permutes,
    # after the pairs between spatial nodes are gone: carry NHWC through the ops between them
    sink_permutes,
    # after the permutes cancelled: an inserted input normalisation then meets the first conv
    fold_input_normalization,
    # last: whatever the rewrites left unread
    remove_dead_nodes,
)


def run_passes(graph: Graph, skip: Iterable[str] = ()) -> dict[str, int]:
    """Run ``PIPELINE`` on ``graph`` in place; ``skip`` names passes not to run.

    Returns the number of rewrites of each pass that ran, in pipeline order. An unknown name in
    ``skip`` raises ``MMError`` listing the pass names.
    """
    names = [p.__name__ for p in PIPELINE]
    skipped = set(skip)
    unknown = sorted(skipped.difference(names))
    if unknown:
        raise MMError(
            f"unknown pass name(s) {', '.join(map(repr, unknown))} in skip; the passes are: "
            f"{', '.join(names)}",
            Code.INVALID_ARGUMENT,
        )
    counts: dict[str, int] = {}
    for name, run in zip(names, PIPELINE):
        if name in skipped:
            log.info("pass %s: skipped", name)
            continue
        counts[name] = run(graph)
        log.info("pass %s: %d rewrite(s), %d nodes left", name, counts[name], len(graph.nodes))
    return counts
