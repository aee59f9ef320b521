"""Fuzzing the network API and the runtime: odd arguments anywhere give an MMError naming the
call and the argument (never a TypeError or IndexError), oversized runs are refused before they
allocate, validate agrees on equal infinities, constants beyond fp16 keep float32, 0-d tensors
run, and runs in threads never abort the process whatever numba's threading layer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzzcount import count
from hypothesis import given, settings
from hypothesis import strategies as st

import mmbuild as mm
from mmbuild.errors import MMError

F32 = mm.DataType.FLOAT32

ODD_ARGS = [
    None,
    1.5,
    -1,
    0,
    3,
    True,
    "x",
    "FLOAT32",
    [],
    [None],
    [1.0, 2.0],
    [2, 3],
    np.zeros(3),
    np.zeros((2, 2)),
    np.float64(2.0),
    np.int64(2),
    mm.DataType.INT8,
    mm.IActivation.RELU,
    mm.IElementwise.ADD,
    mm.Layout.NCHW,
    mm.Dims([2, 3]),
    {},
]

# (call, how many arguments it takes after the tensor it is given)
CALLS: list[tuple[str, Callable[..., Any], int]] = [
    ("add_input", lambda net, x, *a: net.add_input(*a), 2),
    ("activation", lambda net, x, *a: net.add_i_activation_node(*a), 2),
    ("elementwise", lambda net, x, *a: net.add_i_elementwise_node(x, *a), 2),
    ("softmax", lambda net, x, *a: net.add_i_softmax_node(*a), 2),
    ("maxpool2d", lambda net, x, *a: net.add_i_maxpool2d_node(*a), 1),
    ("split", lambda net, x, *a: net.add_i_split_node(x, *a), 2),
    ("concat", lambda net, x, *a: net.add_i_concat_node(*a), 2),
    ("reshape", lambda net, x, *a: net.add_i_reshape_node(x, *a), 1),
    ("permute", lambda net, x, *a: net.add_i_permute_node(x, *a), 1),
    ("conv", lambda net, x, *a: net.add_i_conv_node(x, *a), 2),
    ("cast", lambda net, x, *a: net.add_i_cast_node(*a), 2),
    ("set_precision", lambda net, x, *a: net.get_node(0).set_precision(*a), 2),
    ("set_output_type", lambda net, x, *a: net.get_node(0).set_output_type(*a), 2),
    ("set_dimension", lambda net, x, *a: x.set_dimension(*a), 1),
    ("set_data_type", lambda net, x, *a: x.set_data_type(*a), 1),
    ("set_dynamic_range", lambda net, x, *a: x.set_dynamic_range(*a), 1),
    ("mark_output", lambda net, x, *a: net.mark_output(*a), 1),
    ("get_input", lambda net, x, *a: net.get_input(*a), 1),
]


def _network() -> tuple[mm.Network, mm.ITensor]:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([1, 4, 4, 2]))
    net.add_i_activation_node(x, mm.IActivation.RELU)
    net.get_node = lambda i: net.get_all_nodes_in_network()[i]  # type: ignore[attr-defined]
    return net, x


def _call(call: Callable[..., Any], args: list[Any]) -> str:
    net, x = _network()
    try:
        call(net, x, *args)
    except MMError:
        return "MMError"
    return "ok"


@settings(deadline=None)
@given(
    which=st.integers(0, len(CALLS) - 1),
    args=st.lists(st.sampled_from(ODD_ARGS), min_size=0, max_size=3),
)
def test_odd_arguments_give_only_mmerror(which: int, args: list[Any]) -> None:
    name, call, _ = CALLS[which]
    try:
        outcome = _call(call, args)
    except Exception as e:
        count("network API", f"ESCAPED {type(e).__name__}")
        raise AssertionError(f"{name}{tuple(args)!r} raised {type(e).__name__}: {e}") from e
    count("network API", outcome)


@pytest.mark.slow
@settings(deadline=None, max_examples=5000)
@given(
    which=st.integers(0, len(CALLS) - 1),
    args=st.lists(st.sampled_from(ODD_ARGS), min_size=0, max_size=4),
)
def test_campaign_of_odd_arguments(which: int, args: list[Any]) -> None:
    test_odd_arguments_give_only_mmerror.hypothesis.inner_test(which, args)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda net, x: net.add_input(F32, 3.5), "argument 'dims': expected a Dims"),
        (lambda net, x: net.add_input("FLOAT32", [1]), "argument 'dtype': expected an mm.DataType"),
        (lambda net, x: net.add_i_maxpool2d_node(None), "argument 'x' is missing"),
        (lambda net, x: net.add_i_softmax_node(None, 1), "argument 'x' is missing"),
        (
            lambda net, x: net.add_i_elementwise_node(x, None, mm.IElementwise.ADD),
            "argument 'b' is missing",
        ),
        (lambda net, x: net.add_i_split_node(None, 0, 2), "argument 'x' is missing"),
        (lambda net, x: net.get_input(np.zeros(1)), "argument 'i': expected an integer"),
        (lambda net, x: net.get_input(0.0), "argument 'i': expected an integer, got float"),
        (lambda net, x: x.set_dynamic_range((0, 1)), "argument 'rng': expected a Range"),
    ],
)
def test_refusals_name_the_argument_and_the_type(call: Callable[..., Any], match: str) -> None:
    net, x = _network()
    with pytest.raises(MMError, match=match):
        call(net, x)


# -- runs ---------------------------------------------------------------------------------------
def _run(model: mm.Model, *arrays: np.ndarray) -> list[np.ndarray]:
    context = model.create_i_engine().create_i_context()
    inputs = context.create_inputs()
    for t, a in zip(inputs, arrays):
        t.from_numpy(a)
    outputs: list[mm.IRTTensor] = []
    context.enqueue(inputs, outputs)
    return [o.asnumpy() for o in outputs]


def _config(mode: str) -> mm.BuilderConfig:
    config = mm.BuilderConfig()
    config.parse_from_string(json.dumps({"precision_config": {"precision_mode": mode}}))
    return config


def test_an_output_beyond_the_limit_is_refused_before_allocating() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([-1, 1]))
    row = net.add_i_const_node(F32, mm.Dims([1, 2**16]), np.ones((1, 2**16))).get_output(0)
    net.mark_output(net.add_i_elementwise_node(x, row, mm.IElementwise.ADD).get_output(0))
    model = mm.Builder().build_model("wide", net)
    assert _run(model, np.ones((2, 1), np.float32))[0].shape == (2, 2**16)
    tracemalloc.start()
    try:
        with pytest.raises(MMError, match=r"step 'elementwise_0'.*\[65536, 65536\].*17179869184"):
            _run(model, np.ones((2**16, 1), np.float32))  # 16 GiB of output
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_validate_agrees_where_kernel_and_reference_give_the_same_infinity() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([-1, 4]))
    net.mark_output(net.add_i_elementwise_node(x, x, mm.IElementwise.ADD).get_output(0))
    model = mm.Builder().build_model("inf", net)
    x = np.array([[np.inf, -np.inf, np.nan, 1.0]], np.float32)
    report = model.validate(x)
    assert report.ok(), str(report)
    assert np.array_equal(_run(model, x)[0], x + x, equal_nan=True)


def test_a_constant_beyond_float16_keeps_float32_for_its_reader() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([1, 3]))
    big = net.add_i_const_node(F32, mm.Dims([1, 3]), [[70000.0, 1.0, -2.0]]).get_output(0)
    add = net.add_i_elementwise_node(x, big, mm.IElementwise.ADD)
    net.mark_output(add.get_output(0))
    model = mm.Builder().build_model("c", net, _config("force_float16"))
    row = model.get_layer_report().find(add.get_node_name())
    assert row.output_types == [F32]
    assert any("reaches 70000 > 65504, kept FLOAT32" in n for n in row.notes), row.notes
    assert any("70000" in w for w in model.data.warnings)
    (y,) = _run(model, np.zeros((1, 3), np.float32))
    assert y.tolist() == [[70000.0, 1.0, -2.0]]


def test_zero_dimensional_inputs_run() -> None:
    net = mm.Network()
    x = net.add_input(F32, mm.Dims([]))
    y = net.add_i_activation_node(x, mm.IActivation.RELU).get_output(0)
    net.mark_output(net.add_i_elementwise_node(y, x, mm.IElementwise.MUL).get_output(0))
    model = mm.Builder().build_model("scalar", net)
    for v in (-2.5, 3.0):
        (out,) = _run(model, np.array(v, np.float32))
        assert out.shape == () and out == max(v, 0.0) * v
    assert model.validate(np.array(3.0, np.float32)).ok()


# -- threads -------------------------------------------------------------------------------------
_THREADS_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    import numba
    sys.path.insert(0, sys.argv[1])
    from sample_cnn import build_cnn, sample_images
    import mmbuild as mm

    model = mm.Builder().build_model("cnn", build_cnn())
    engine = model.create_i_engine()
    x = sample_images(64, 0)

    def run():
        context = engine.create_i_context()
        inputs = context.create_inputs()
        inputs[0].from_numpy(x)
        outputs = []
        context.enqueue(inputs, outputs)
        return outputs[0].asnumpy().copy()

    want = run()
    results = []
    threads = [threading.Thread(target=lambda: results.extend(run() for _ in range(3)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12 and all(np.array_equal(r, want) for r in results)
    print(numba.threading_layer())
    """
)


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_runs_in_threads_never_abort_the_process(layer: str, tmp_path: Path) -> None:
    script = tmp_path / "threads.py"
    script.write_text(_THREADS_SCRIPT)
    samples = str(Path(__file__).parents[1] / "samples")
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer, "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run(
        [sys.executable, str(script), samples],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    if layer == "workqueue":
        assert done.stdout.split()[-1] == "workqueue"
    count("threads", f"{layer}: 12 runs in 4 threads, equal")
