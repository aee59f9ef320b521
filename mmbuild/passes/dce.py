"""Dead-node removal: what no network output depends on is not computed.

Example: ``x -> relu -> y (output)`` and ``x -> sigmoid -> s`` (read by nobody) lose the
sigmoid and ``s``; a node with several outputs stays when any one of them is needed.
"""

from __future__ import annotations

from mmbuild.graph import Graph

__all__ = ["remove_dead_nodes"]


def remove_dead_nodes(graph: Graph) -> int:
    """Remove nodes none of whose outputs reach a network output, then unused tensors.

    Before: ``x -> a -> y (output)``, ``x -> b -> t -> c -> u`` (``u`` no output). After:
    ``x -> a -> y``; ``b`` and ``c`` are gone, and so are ``t``, ``u`` and any constant only
    they read. Walks the nodes backwards once (they are in topological order).
    """
    live = set(graph.outputs)
    dead = []
    for node in reversed(graph.nodes):
        if live.intersection(node.outputs):
            live.update(node.inputs)
        else:
            dead.append(node)
    for node in dead:
        graph.remove(node)
    graph.prune_tensors()
    return len(dead)
