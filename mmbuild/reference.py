"""The reference evaluator: runs a whole Network in fp32 numpy, node by node.

It is the oracle for every kernel and the engine of calibration.

>>> import numpy as np, mmbuild as mm
>>> net = mm.Network()
>>> x = net.add_input(mm.DataType.FLOAT32, mm.Dims([2]))
>>> _ = net.mark_output(net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0))
>>> run_reference(net, [np.array([-1.5, 2.0], np.float32)])["activation_0:0"]
array([0., 2.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mmbuild.errors import MMError
from mmbuild.ir.network import Network
from mmbuild.ir.tensor import ITensor


def run_reference(
    network: Network,
    inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    keep_all: bool = False,
    constants: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate ``network``; returns the marked outputs by tensor name (every tensor if
    ``keep_all``). ``inputs`` are in network-input order, or a dict by input tensor name.
    ``constants`` replaces the values of constant tensors, by name (the weights of a
    cross-layer equalisation, ``mmbuild.quant.equalize``); the network is not edited."""
    constants = constants or {}
    values: dict[ITensor, np.ndarray] = dict(zip(network.inputs, check_inputs(network, inputs)))
    uses = {t: len(t.get_consumers()) for t in values}
    outputs = set(network.outputs)
    for node in network.nodes:
        args = [values[t] for t in node.inputs]
        replaced = constants.get(node.outputs[0].name) if node.op == "const" else None
        results = [replaced] if replaced is not None else node.reference(*args)
        if len(results) != len(node.outputs):
            raise node.error(f"reference gave {len(results)} outputs, expected {len(node.outputs)}")
        for t, r in zip(node.outputs, results):
            values[t] = np.asarray(r).astype(_float32_or_own(t), copy=False)
            uses[t] = len(t.get_consumers())
        if not keep_all:  # free what no later node needs
            for t in node.inputs:
                uses[t] -= 1
                if uses[t] <= 0 and t not in outputs:
                    values.pop(t, None)
    wanted = values.keys() if keep_all else network.outputs
    return {t.name: values[t] for t in wanted}


def check_inputs(
    network: Network, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """The input arrays in network order, checked against the declared shapes and types."""
    declared = network.inputs
    if isinstance(inputs, Mapping):
        missing = [t.name for t in declared if t.name not in inputs]
        extra = sorted(set(inputs) - {t.name for t in declared})
        if missing or extra:
            raise MMError(
                f"inputs: missing {missing}, unknown {extra}; the network inputs are "
                f"{[t.name for t in declared]}"
            )
        arrays = [inputs[t.name] for t in declared]
    else:
        arrays = list(inputs)
        if len(arrays) != len(declared):
            raise MMError(f"got {len(arrays)} input arrays; the network has {len(declared)} inputs")
    out = []
    for i, (t, a) in enumerate(zip(declared, arrays)):
        a = np.asarray(a)
        dims = t.get_dimension().get_dims()
        if a.ndim != len(dims) or any(d not in (-1, s) for d, s in zip(dims, a.shape)):
            raise MMError(
                f"input {i} ({t.name!r}): array of shape {list(a.shape)} does not fit the declared "
                f"dimensions {dims}"
            )
        out.append(a.astype(t.get_data_type().numpy_dtype, copy=False))
    return out


def _float32_or_own(t: ITensor) -> np.dtype:
    """The reference computes floats in float32; other types keep their own dtype."""
    dt = t.get_data_type()
    return np.dtype(np.float32) if dt.is_float or dt.is_quantized else dt.numpy_dtype
