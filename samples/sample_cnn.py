"""Build a small CNN node by node and run it through the reference evaluator.

conv -> batch norm -> relu -> max pool -> conv -> relu -> global average pool -> reshape
-> inner product -> softmax, on NHWC input [-1, 16, 16, 3] (the batch size is set at run time).

    python samples/sample_cnn.py
"""

from __future__ import annotations

import numpy as np

import mmbuild as mm


def const(net: mm.Network, value: np.ndarray) -> mm.ITensor:
    value = np.asarray(value, dtype=np.float32)
    return net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(value.shape), value).get_output(0)


def build_cnn(seed: int = 0, classes: int = 10) -> mm.Network:
    """The sample CNN with deterministic (seeded) weights."""
    rng = np.random.default_rng(seed)
    net = mm.Network()
    x = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 16, 16, 3]))

    def conv(t: mm.ITensor, cin: int, cout: int, name: str) -> mm.ITensor:
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, 3, 3, cin))  # [Cout, Kh, Kw, Cin]
        node = net.add_i_conv_node(t, const(net, w), const(net, rng.normal(0, 0.1, cout)))
        node.set_pad(1, 1, 1, 1)
        node.set_node_name(name)
        return node.get_output(0)

    t = conv(x, 3, 16, "conv1")
    bn = net.add_i_fused_batch_norm_node(
        t,
        const(net, rng.normal(0, 0.1, 16)),  # mean
        const(net, rng.uniform(0.5, 1.5, 16)),  # variance
        const(net, rng.uniform(0.8, 1.2, 16)),  # scale
        const(net, rng.normal(0, 0.1, 16)),  # offset
        3,
        1e-5,
    )
    t = net.add_i_activation_node(bn.get_output(0), mm.IActivation.RELU).get_output(0)
    pool = net.add_i_maxpool2d_node(t)
    pool.set_kernel(2, 2)
    pool.set_stride(2, 2)
    t = conv(pool.get_output(0), 16, 32, "conv2")
    t = net.add_i_activation_node(t, mm.IActivation.RELU).get_output(0)
    gap = net.add_i_avgpool2d_node(t)
    gap.set_kernel(8, 8)
    gap.set_stride(8, 8)
    t = net.add_i_reshape_node(gap.get_output(0), [0, 32]).get_output(0)  # 0: keep the batch
    fc = net.add_i_inner_product_node(
        t, const(net, rng.normal(0, 0.2, (classes, 32))), const(net, np.zeros(classes))
    )
    fc.set_node_name("classifier")
    probs = net.add_i_softmax_node(fc.get_output(0), 1)
    probs.get_output(0).set_tensor_name("probabilities")
    net.mark_output(probs.get_output(0))
    return net


def describe(net: mm.Network) -> str:
    """One line per node: name, type, input and output shapes."""
    lines = [f"{'node':<16}{'type':<22}{'inputs':<34}outputs"]
    for node in net.get_all_nodes_in_network():
        if node.get_node_type() == "IConstNode":
            continue
        ins = " ".join(
            str(t.get_dimension())
            for t in node.inputs
            if t.get_producer() is None or t.get_producer().get_node_type() != "IConstNode"
        )
        outs = " ".join(str(t.get_dimension()) for t in node.outputs)
        lines.append(f"{node.get_node_name():<16}{node.get_node_type():<22}{ins:<34}{outs}")
    return "\n".join(lines)


def main() -> None:
    net = build_cnn()
    print(describe(net))
    x = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype(np.float32)
    probs = mm.run_reference(net, [x])["probabilities"]
    print(f"\ninput {list(x.shape)} -> probabilities {list(probs.shape)}")
    for i, row in enumerate(probs):
        print(f"  sample {i}: class {int(row.argmax())} (p = {row.max():.3f}), sum {row.sum():.6f}")


if __name__ == "__main__":
    main()
