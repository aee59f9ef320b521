"""What the subcommands share: usage errors, reading models and inputs, writing outputs.

A :class:`UsageError` (exit status 2) means the command line is wrong: a missing file, a
malformed value, an input name or config key that does not exist, an array that does not fit
the model. Any other ``MMError`` (exit status 1) means the work failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mmbuild._files import write_atomically
from mmbuild.errors import Code, MMError, did_you_mean
from mmbuild.ir.types import DataType
from mmbuild.runtime.engine import Model


class UsageError(MMError):
    """The command line is wrong (exit status 2)."""


@contextlib.contextmanager
def usage() -> Iterator[None]:
    """Turn an ``MMError`` raised while reading the command line into a :class:`UsageError`."""
    try:
        yield
    except UsageError:
        raise
    except MMError as e:
        raise UsageError(str(e), e.code) from e


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples of each epilog as written."""


def existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        where = "is a folder" if p.is_dir() else "does not exist"
        raise UsageError(f"{what} {path!r} {where}", Code.NOT_FOUND)
    return p


def load_model(path: str) -> Model:
    """The model of a model file; a missing file is a usage error, a bad one a failure."""
    existing_file(path, "model file")
    model = Model()
    model.deserialize_from_file(path)
    return model


_DIMS = re.compile(r"^-?\d+(x-?\d+)*$")


def parse_dims(text: str, what: str) -> list[int]:
    """``1x3x224x224`` -> [1, 3, 224, 224]."""
    text = text.strip().lower()
    if not _DIMS.match(text):
        raise UsageError(f"{what}: {text!r} is not a shape; write it as 1x3x224x224")
    return [int(d) for d in text.split("x")]


def parse_input_shapes(specs: Sequence[str], names: Sequence[str]) -> dict[str, list[int]]:
    """``NAME:1x3x224x224`` items -> {name: dims}; the name must be one of ``names``."""
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        if not sep or not name:
            raise UsageError(f"--input-shape {spec!r}: write NAME:DIMS, e.g. input:1x3x224x224")
        check_name(name, names, f"--input-shape {spec!r}")
        shapes[name] = parse_dims(dims, f"--input-shape {spec!r}")
    return shapes


def check_name(name: str, names: Sequence[str], what: str) -> None:
    if name not in names:
        raise UsageError(
            f"{what}: the model has no input {name!r}{did_you_mean(name, list(names))}; its "
            f"inputs are {list(names)}",
            Code.NOT_FOUND,
        )


def read_inputs(
    model: Model,
    specs: Sequence[str],
    random: bool = False,
    shapes: Sequence[str] = (),
    seed: int = 0,
) -> list[np.ndarray]:
    """The input arrays, in model-input order, from ``NAME=file.npy`` items or ``file.npz``
    (an array per input name); with ``random``, inputs not given are drawn from N(0, 1)
    (integers from 0..9) with ``-1`` dimensions taken from ``shapes`` (``NAME:DIMS``) or 1.
    Float arrays are converted to the input's float type; anything else must match."""
    names = model.get_input_names()
    given: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            if spec.lower().endswith(".npz"):
                given.update(_read_npz_inputs(spec, names))
                continue
            if len(names) == 1:
                name, path = names[0], spec
            else:
                raise UsageError(f"--input {spec!r}: write NAME=file.npy (inputs: {names})")
        check_name(name, names, f"--input {spec!r}")
        given[name] = _load_array(path, f"--input {spec!r}")
    wanted = parse_input_shapes(shapes, names)
    rng = np.random.default_rng(seed)
    arrays = []
    for info in model.data.inputs:
        if info.name in given:
            arrays.append(_fit(given[info.name], info.dtype, info.name))
            continue
        if not random:
            raise UsageError(
                f"no data for input {info.name!r} ({info.dtype.name} {list(info.dims)}); give "
                f"--input {info.name}=file.npy, or --random"
            )
        dims = wanted.get(info.name, [1 if d < 0 else d for d in info.dims])
        if any(d < 0 for d in dims):
            raise UsageError(
                f"--input-shape {info.name}: {dims} has a -1; random data needs "
                "every dimension, e.g. 1x3x224x224"
            )
        arrays.append(random_array(rng, dims, info.dtype))
    return arrays


def random_array(rng: np.random.Generator, dims: Sequence[int], dtype: DataType) -> np.ndarray:
    """N(0, 1) for float types, integers 0..9 otherwise, of ``dtype``'s numpy type."""
    if dtype.is_float:
        return rng.standard_normal(tuple(dims)).astype(dtype.numpy_dtype)
    return rng.integers(0, 10, tuple(dims)).astype(dtype.numpy_dtype)


def _fit(array: np.ndarray, dtype: DataType, name: str) -> np.ndarray:
    want = np.dtype(dtype.numpy_dtype)
    if array.dtype != want and array.dtype.kind == "f" and want.kind == "f":
        return array.astype(want)
    if array.dtype != want:
        raise UsageError(
            f"input {name!r}: the array is {array.dtype}; the model takes {want} ({dtype.name})"
        )
    return array


def _load_array(path: str, what: str) -> np.ndarray:
    existing_file(path, f"{what}: file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{what}: {path!r} is not a readable .npy file ({e})") from None


def _read_npz_inputs(path: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    existing_file(path, "--input file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"--input {path!r} is not a readable .npz file ({e})") from None
    for key in stored:
        check_name(key, names, f"--input {path!r}")
    return stored


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to an ``.npz`` file whole or not at all."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    write_atomically(path, buf.getvalue(), f"output file {path!r}")


def emit(text: str) -> None:
    """The command's result, on stdout."""
    import sys

    sys.stdout.write(text if text.endswith("\n") else text + "\n")
