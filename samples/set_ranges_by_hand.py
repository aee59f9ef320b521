"""Give quantization ranges by hand, without calibration data, and see which range wins where.

A QINT input needs a range. Without calibration it comes from ``ITensor.set_dynamic_range`` or
from the builder config's ``custom_ranges`` (by tensor name, or ``""`` for every tensor that has
no range of its own). When several sources give a tensor a range, the first of these wins:
``set_dynamic_range`` > ``custom_ranges[name]`` > calibration > ``custom_ranges[""]``.

    python samples/set_ranges_by_hand.py
"""

from __future__ import annotations

import json
import sys

import numpy as np

import mmbuild as mm
from mmbuild.precision import plan_precision


def build_network() -> mm.Network:
    """[-1, 16, 16, 3] image in [0, 1] -> conv -> relu6 -> conv -> relu6 -> conv."""
    rng = np.random.default_rng(0)
    net = mm.Network()
    y = net.add_input(mm.DataType.FLOAT32, mm.Dims([-1, 16, 16, 3]))
    for i, (cout, cin) in enumerate(((8, 3), (8, 8), (4, 8))):
        w = (rng.standard_normal((cout, 3, 3, cin)) / np.sqrt(9 * cin)).astype(np.float32)
        w_t = net.add_i_const_node(mm.DataType.FLOAT32, mm.Dims(list(w.shape)), w).get_output(0)
        conv = net.add_i_conv_node(y, w_t, None)
        conv.set_pad(1, 1, 1, 1)
        y = conv.get_output(0)
        if i < 2:
            y = net.add_i_activation_node(y, mm.IActivation.RELU6).get_output(0)
    assert net.mark_output(y).ok()
    return net


def qint8_config(custom_ranges: dict[str, dict[str, float]]) -> mm.BuilderConfig:
    config = mm.BuilderConfig()
    text = json.dumps(
        {
            "precision_config": {"precision_mode": "qint8_mixed_float16"},
            "custom_ranges": custom_ranges,
        }
    )
    assert config.parse_from_string(text).ok()
    return config


def show(title: str, net: mm.Network, config: mm.BuilderConfig) -> None:
    plan = plan_precision(net, config)
    print(f"\n{title}")
    for node in net.get_all_nodes_in_network():
        if node.get_node_type() == "IConvNode":
            tensor = node.get_input(0).get_tensor_name()
            precisions = ", ".join(d.name for d in plan[node].inputs)
            rng = plan.ranges[tensor]
            print(
                f"  {node.get_node_name()}: inputs {precisions}; {tensor} in [{rng.min}, {rng.max}]"
            )


def main() -> int:
    net = build_network()
    try:
        plan_precision(net, qint8_config({}))
    except mm.MMError as e:
        print("without ranges the plan is refused:\n  " + str(e).splitlines()[1].strip()[:150])

    # the image is in [0, 1]; relu6 outputs are in [0, 6] by definition
    net.get_input(0).set_dynamic_range(mm.Range(0.0, 1.0))
    by_hand = qint8_config({"activation_0:0": {"min": 0, "max": 6}, "": {"min": 0, "max": 6}})
    show("set_dynamic_range on the input, custom_ranges for the rest:", net, by_hand)

    # a tensor's own custom_ranges entry outranks the "" entry; set_dynamic_range outranks both
    tighter = qint8_config(
        {
            "input_0": {"min": -1, "max": 1},
            "activation_1:0": {"min": 0, "max": 4},
            "": {"min": 0, "max": 6},
        }
    )
    show('custom_ranges["activation_1:0"] beats "", set_dynamic_range beats both:', net, tighter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
