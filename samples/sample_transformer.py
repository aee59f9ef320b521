"""Build one transformer encoder block node by node and run it through the reference evaluator.

x -> layer norm -> q, k, v projections -> split heads (reshape + permute) -> q kᵀ / sqrt(d)
-> softmax -> @ v -> merge heads -> output projection -> + x -> layer norm -> FFN (gelu) -> + .

    python samples/sample_transformer.py
"""

from __future__ import annotations

import numpy as np

import mmbuild as mm


def const(net: mm.Network, value: np.ndarray) -> mm.ITensor:
    value = np.asarray(value, dtype=np.float32)
    return net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(value.shape), value).get_output(0)


def build_transformer_block(
    seq: int = 16, d_model: int = 32, heads: int = 4, d_ff: int = 64, seed: int = 0
) -> mm.Network:
    rng = np.random.default_rng(seed)
    dh = d_model // heads
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, seq, d_model]))

    def linear(t: mm.ITensor, n_in: int, n_out: int) -> mm.ITensor:
        w = const(net, rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)))
        y = net.add_i_matmul_node(t, w).get_output(0)
        b = const(net, rng.normal(0, 0.02, n_out))
        return net.add_i_elementwise_node(y, b, mm.IElementwise.ADD).get_output(0)

    def layer_norm(t: mm.ITensor) -> mm.ITensor:
        gamma, beta = const(net, np.ones(d_model)), const(net, np.zeros(d_model))
        return net.add_i_layer_norm_node(t, gamma, beta, -1, 1e-5).get_output(0)

    def heads_first(t: mm.ITensor) -> mm.ITensor:  # [B, S, D] -> [B, H, S, Dh]
        t = net.add_i_reshape_node(t, [0, seq, heads, dh]).get_output(0)
        return net.add_i_permute_node(t, [0, 2, 1, 3]).get_output(0)

    h = layer_norm(x)
    q, k, v = (heads_first(linear(h, d_model, d_model)) for _ in range(3))
    scores_node = net.add_i_matmul_node(q, k)
    scores_node.set_transpose_b(True)
    scale = const(net, np.full(1, 1 / np.sqrt(dh)))
    scores = net.add_i_elementwise_node(scores_node.get_output(0), scale, mm.IElementwise.MUL)
    attn = net.add_i_softmax_node(scores.get_output(0), -1).get_output(0)
    ctx = net.add_i_matmul_node(attn, v).get_output(0)  # [B, H, S, Dh]
    ctx = net.add_i_permute_node(ctx, [0, 2, 1, 3]).get_output(0)
    ctx = net.add_i_reshape_node(ctx, [0, seq, d_model]).get_output(0)
    y = net.add_i_elementwise_node(x, linear(ctx, d_model, d_model), mm.IElementwise.ADD)
    y = y.get_output(0)
    ff = linear(layer_norm(y), d_model, d_ff)
    ff = net.add_i_activation_node(ff, mm.IActivation.GELU).get_output(0)
    out = net.add_i_elementwise_node(y, linear(ff, d_ff, d_model), mm.IElementwise.ADD)
    out.get_output(0).set_tensor_name("block_output")
    net.mark_output(out.get_output(0))
    return net


def main() -> None:
    net = build_transformer_block()
    counts: dict[str, int] = {}
    for node in net.get_all_nodes_in_network():
        counts[node.get_node_type()] = counts.get(node.get_node_type(), 0) + 1
    print("nodes:", ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())))
    x = np.random.default_rng(1).standard_normal((2, 16, 32)).astype(np.float32)
    y = mm.run_reference(net, [x])["block_output"]
    print(
        f"input {list(x.shape)} -> output {list(y.shape)}, mean {y.mean():+.4f}, std {y.std():.4f}"
    )


if __name__ == "__main__":
    main()
