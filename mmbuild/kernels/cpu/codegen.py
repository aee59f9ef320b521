"""Source text of the register-tiled micro-kernels, and loading generated modules from disk.

A micro-kernel keeps an ``MR x NR`` tile of accumulators in registers, so each accumulator must
be a named local of a vector type: that is written out here as Python source, one function per
tile shape, instead of by hand. A generated module is written to a per-user cache directory, never
into the source tree, and imported from there with importlib, so that numba's ``cache=True``
(which needs a real file) works for it:

- the directory is ``$MMBUILD_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/mmbuild/kernels``, else
  ``~/.cache/mmbuild/kernels``, with a temporary-directory fallback when that is not writable;
- each module lives in a sub-directory named by a digest of its text, of the source of the
  modules it imports kernels from, and of the numba, llvmlite and Python versions. A change to
  any of them gives a new file, so numba (whose cache checks only the file's own time stamp)
  never loads machine code compiled from older sources;
- files are written to a temporary name and renamed into place, so concurrent processes (pytest
  workers, several services) see either no file or a complete one, and a file whose text differs
  from what it should be is rewritten.

Numba's own cache for a generated module goes wherever numba puts it: ``NUMBA_CACHE_DIR`` when set,
else ``__pycache__`` beside the generated file. Directories of older digests are left in place
(delete the cache directory to reclaim them).

Micro-kernels are compiled with ``forceinline`` into the driver that calls them once per tile:
called as a function, a numba kernel takes and drops a reference on each of its array arguments,
atomic operations that cost a fifth of the int8 throughput at 4 x 64 tiles.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import llvmlite
import numba

__all__ = [
    "CACHE_ENV",
    "JIT_OPTIONS",
    "cache_root",
    "float_tile_name",
    "float_tile_source",
    "int_tile_name",
    "int_tile_source",
    "load_module",
]

CACHE_ENV = "MMBUILD_CACHE_DIR"

# Options of every generated kernel. No fastmath: the epilogues must match numpy's float32
# arithmetic bit for bit, and fastmath's 'contract' would fuse a multiply and an add into an FMA
# and its 'reassoc' would reorder sums. The micro-kernels do not need it: their FMAs are explicit.
JIT_OPTIONS = 'cache=True, error_model="numpy", boundscheck=False'

_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}


# ---------------------------------------------------------------------------------------------
# Micro-kernel text
# ---------------------------------------------------------------------------------------------
def int_tile_name(kind: str, mr: int, nrv: int) -> str:
    return f"{kind}_tile_{mr}x{nrv}"


def float_tile_name(mr: int, nrv: int) -> str:
    return f"f32_tile_{mr}x{nrv}"


def _epilogue_lines(mr: int, nv: int, call: str, acc: str = "{acc}") -> list[str]:
    """Hand every accumulator (as the expression ``acc`` of it) to the epilogue: rows past ``mr``
    are skipped, the last vector of a row stores its first ``nn - LANES * v`` lanes only."""
    lines = []
    for r in range(mr):
        indent = "    " if r == 0 else "        "
        if r:
            lines.append(f"    if mr > {r}:")
        for v in range(nv):
            value = acc.format(acc=f"c{r}_{v}")
            args = (f"{value}, n0 + {v} * LANES, out, o_off + {r} * ldo + {v} * LANES, "
                    f"nn - {v} * LANES")  # fmt: skip
            lines.append(f"{indent}{call.format(args=args)}")
    return lines


def _tile_head(name: str, mr: int, kargs: str, extra: str) -> list[str]:
    aos = ", ".join(f"ao{r}" for r in range(mr))
    return [
        f"@njit(forceinline=True, {JIT_OPTIONS})",
        f"def {name}(A, {aos}, nseg, seg_stride, {kargs}, Bp, b_off, ldb, mr, nn, n0, {extra}"
        "ep_args, out, o_off, ldo):",
    ]


@dataclass(frozen=True)
class _IntegerProduct:
    """How an integer micro-kernel reads and multiplies one group of ``group`` K rows: the names
    (and, for the K tail, the expression) of the primitives its module binds."""

    group: int
    zero: str
    bcast: str
    tail: str  # the last, shorter group of row {p}; ``kg`` is the number of whole groups
    weights: str
    dot: str
    cols: str  # the column sums of accumulator {acc}


_INTEGER_PRODUCTS = {
    # uint8 x int8 (see .dot): four K rows per int32 lane, summed in int32
    "u8s8": _IntegerProduct(4, "vzero_acc", "vbcast4_u8",
                            "vquad_u8(load_u8_tail(A, {p} + 4 * kg, ktail), LANES)",
                            "vweights_s8", "vdot4", "vcols({acc})"),
    # uint8 x int8 within [-64, 64] on levels without VNNI: vpmaddubsw + vpmaddwd (see .dot)
    "u8s7": _IntegerProduct(4, "vnni_zero", "vnni_bcast4",
                            "vnni_quad(load_u8_tail(A, {p} + 4 * kg, ktail), LANES)",
                            "vnni_weights", "small_dot", "vnni_cols({acc})"),
    # int16 x int16: two K rows per vpmaddwd lane, recovered as int64 sums
    "s16": _IntegerProduct(2, "pair_zero", "pair_bcast2", "pair_single(A[{p} + 2 * kg], LANES)",
                           "pair_weights", "pair_dot", "pair_cols({acc})"),
}  # fmt: skip


def int_tile_source(kind: str, mr: int, nv: int, epilogue: str) -> str:
    """An integer micro-kernel (``kind`` ``"u8s8"``, ``"u8s7"`` or ``"s16"``): ``mr`` rows of A
    times ``nv``
    vectors (``LANES`` columns each) of a packed panel.

    Signature ``(A, ao_0 .. ao_{mr-1}, nseg, seg_stride, kg, ktail, Bp, b_off, ldb, mr, nn,
    n0, comp, ep_args, out, o_off, ldo)``, with ``G`` = 4 (u8s8, u8s7) or 2 (s16) K rows per
    group.
    Row ``r`` of the A operand is ``nseg`` runs of ``G * kg + ktail`` elements, the first at
    ``A[ao_r]`` and the next ``seg_stride`` elements further on (one run for a plain GEMM, one
    per kernel row for an implicit-GEMM convolution). The weights of group ``g`` are the ``G *
    LANES * nv`` elements at ``Bp[b_off + g * ldb]`` (``[columns][G]``, zero-padded). The sums
    ``sum_k A[..] * B[k, j]`` (int32 wrapping for u8s8, int64 for s16) of the first ``mr`` rows
    and ``nn`` columns go to ``epilogue(acc, n, out, o, count, comp, ep_args)``, which stores
    them. The level's module defines ``LANES`` and the primitives named in
    ``_INTEGER_PRODUCTS`` (:mod:`.dot`).
    """
    prod = _INTEGER_PRODUCTS[kind]
    rows, vecs = range(mr), range(nv)
    lines = _tile_head(int_tile_name(kind, mr, nv), mr, "kg, ktail", "comp, ")
    lines += [f"    c{r}_{v} = {prod.zero}(LANES)" for r in rows for v in vecs]
    lines += ["    bo = b_off", "    for s in range(nseg):", "        so = s * seg_stride"]
    lines += [f"        p{r} = ao{r} + so" for r in rows]

    def step_body(indent: str, a_expr: str) -> list[str]:
        body = [
            f"{indent}b{v} = {prod.weights}(Bp, bo + {prod.group * v} * LANES, LANES)" for v in vecs
        ]
        for r in rows:
            body.append(f"{indent}a = {a_expr.format(p=f'p{r}')}")
            body += [f"{indent}c{r}_{v} = {prod.dot}(c{r}_{v}, a, b{v})" for v in vecs]
        body.append(f"{indent}bo += ldb")
        return body

    lines.append("        for kk in range(kg):")
    lines += step_body(" " * 12, f"{prod.bcast}(A, {{p}} + {prod.group} * kk, LANES)")
    lines.append("        if ktail > 0:")
    lines += step_body(" " * 12, prod.tail)
    lines += _epilogue_lines(mr, nv, f"{epilogue}({{args}}, comp, ep_args)", prod.cols)
    return "\n".join(lines) + "\n"


def float_tile_source(mr: int, nv: int, epilogue: str) -> str:
    """A float micro-kernel: ``mr`` rows of A times ``nv`` vectors of a packed panel.

    Signature ``(A, ao_0 .. ao_{mr-1}, nseg, seg_stride, seg_len, Bp, b_off, ldb, mr, nn, n0,
    ep_args, out, o_off, ldo)``. A is float32 or fp16 bits; the weights of K row ``k`` are the
    ``LANES * nv`` elements at ``Bp[b_off + k * ldb]`` (float32 or fp16 bits, widened on load).
    The float32 sums, accumulated with FMA in the order of k, go to ``epilogue(acc, n, out, o,
    count, ep_args)``.
    """
    rows, vecs = range(mr), range(nv)
    lines = _tile_head(float_tile_name(mr, nv), mr, "seg_len", "")
    lines += [f"    c{r}_{v} = vzero_f32(LANES)" for r in rows for v in vecs]
    lines += ["    bo = b_off", "    for s in range(nseg):", "        so = s * seg_stride"]
    lines += [f"        p{r} = ao{r} + so" for r in rows]
    lines.append("        for k in range(seg_len):")
    lines += [f"            b{v} = vload_f32(Bp, bo + {v} * LANES, LANES)" for v in vecs]
    for r in rows:
        lines.append(f"            a = vbcast_f32(A, p{r} + k, LANES)")
        lines += [f"            c{r}_{v} = vfma(c{r}_{v}, a, b{v})" for v in vecs]
    lines.append("            bo += ldb")
    lines += _epilogue_lines(mr, nv, f"{epilogue}({{args}}, ep_args)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Writing and importing generated modules
# ---------------------------------------------------------------------------------------------
def cache_root() -> Path:
    """The per-user directory generated modules are written to (see the module docstring)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mmbuild" / "kernels"


def _fallback_root() -> Path:
    return Path(tempfile.gettempdir()) / f"mmbuild-{os.getuid()}" / "kernels"


def _digest(source: str, dependencies: Sequence[ModuleType]) -> str:
    h = hashlib.sha256()
    for part in (sys.version, numba.__version__, llvmlite.__version__, source):
        h.update(part.encode())
        h.update(b"\0")
    for dep in dependencies:
        h.update(dep.__name__.encode())
        h.update(inspect.getsource(dep).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_module(name: str, source: str, dependencies: Sequence[ModuleType] = ()) -> ModuleType:
    """Write ``source`` as ``<cache>/<digest>/<name>.py`` (if needed) and import it.

    ``dependencies`` are the modules whose jitted code the generated one calls; their source is
    part of the digest. The module is imported once per process and registered in
    ``sys.modules`` under a name that includes the digest.
    """
    digest = _digest(source, dependencies)
    module_name = f"_mmbuild_generated_{name}_{digest}"
    with _lock:
        if module_name in _loaded:
            return _loaded[module_name]
        path = cache_root() / digest / f"{name}.py"
        try:
            _write_atomically(path, source)
        except OSError:
            path = _fallback_root() / digest / f"{name}.py"
            _write_atomically(path, source)
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import the generated module {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        _loaded[module_name] = module
        return module
