"""The instruction-set level the numba kernels use on this machine, chosen once per process.

The levels form a ladder; each kernel has one source, and the level supplies the vector width
and the few primitives that differ (the int8 dot product, see :mod:`.dot`):

==============  ============================================  =====  ==================
level           needs (LLVM's feature names)                  lanes  int8 dot product
==============  ============================================  =====  ==================
``avx512_vnni`` avx512f, avx512bw, avx512vl, avx512vnni,      16     ``vpdpbusd``
                fma, f16c
``avx512``      avx512f, avx512bw, avx512vl, fma, f16c        16     ``vpmaddwd``
``avx_vnni``    avxvnni, avx2, fma, f16c                      8      ``vpdpbusd`` (VEX)
``avx2``        avx2, fma, f16c                               8      ``vpmaddwd``
``portable``    nothing (any CPU numba runs on)               -      scalar loops
==============  ============================================  =====  ==================

Compiling an x86 intrinsic for a target that lacks it makes LLVM abort the whole process, so
the level is decided from the features numba really compiles for:

- normally the host CPU, as ``llvmlite.binding.get_host_cpu_features()`` reports it;
- ``NUMBA_CPU_FEATURES`` (and ``NUMBA_CPU_NAME=generic``, which implies no features) when set, as
  numba then compiles for those features and not for the host;
- ``NUMBA_ENABLE_AVX=0``, under which numba switches every AVX feature off.

Environment variables (read once, when the first kernel is chosen; set them before that):
    ``MMBUILD_ISA=<level>`` forces a level the CPU can run (a level it cannot run is refused
    with an MMError naming what the CPU has), to measure one level against another or to
    reproduce what another CPU computes: the integer kernels give the same bits on every level.
    ``MMBUILD_PORTABLE=1`` (also ``true``/``yes``/``on``) is a synonym of
    ``MMBUILD_ISA=portable``.

Example: on an AMD EPYC of the Zen 3 generation ``level().name`` is ``"avx2"`` and
``runnable_levels()`` is ``("avx2", "portable")``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import llvmlite.binding as llvm
from numba.core import config as numba_config

from mmbuild.errors import Code, MMError

ISA_ENV = "MMBUILD_ISA"
PORTABLE_ENV = "MMBUILD_PORTABLE"


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: what it needs and the primitives its kernels use."""

    name: str
    needs: frozenset[str]
    lanes: int  # float32 / int32 lanes of one vector register; 0 for the portable kernels
    int8_dot: str  # "vnni" or "madd" (see .dot), "" for the portable kernels

    @property
    def simd(self) -> bool:
        return self.lanes > 0


_FLOAT = frozenset({"fma", "f16c"})
_AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl"}) | _FLOAT
_AVX2 = frozenset({"avx2"}) | _FLOAT

LEVELS: tuple[Level, ...] = (
    Level("avx512_vnni", _AVX512 | {"avx512vnni"}, 16, "vnni"),
    Level("avx512", _AVX512, 16, "madd"),
    Level("avx_vnni", _AVX2 | {"avxvnni"}, 8, "vnni"),
    Level("avx2", _AVX2, 8, "madd"),
    Level("portable", frozenset(), 0, ""),
)
_BY_NAME = {lv.name: lv for lv in LEVELS}


def _parse_feature_string(text: str) -> frozenset[str]:
    """``"+avx2,-avx512f,+fma"`` -> ``{"avx2", "fma"}``."""
    enabled = set()
    for item in text.split(","):
        item = item.strip()
        if item.startswith("+"):
            enabled.add(item[1:])
    return frozenset(enabled)


@functools.cache
def target_features() -> frozenset[str]:
    """The CPU features numba compiles for in this process (names as LLVM spells them)."""
    forced = getattr(numba_config, "CPU_FEATURES", None)
    if forced is not None:
        return _parse_feature_string(forced)
    try:
        host = llvm.get_host_cpu_features()
    except RuntimeError:
        return frozenset()
    enabled = {name for name, on in host.items() if on}
    if not getattr(numba_config, "ENABLE_AVX", True):
        enabled = {name for name in enabled if not name.startswith("avx")}
    return frozenset(enabled)


@functools.cache
def is_x86() -> bool:
    """Whether numba targets x86-64 (the only target with explicit-SIMD kernels)."""
    return llvm.get_process_triple().startswith(("x86_64", "amd64"))


def runnable_levels() -> tuple[str, ...]:
    """Every level this process can run, best first (``portable`` always)."""
    have = target_features() if is_x86() else frozenset()
    return tuple(lv.name for lv in LEVELS if not lv.simd or lv.needs <= have)


def get_level(name: str) -> Level:
    """The level called ``name``; an unknown name lists the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise MMError(f"unknown instruction-set level {name!r}; known: {known}") from None


def check_runnable(name: str) -> Level:
    """The level ``name`` if this CPU can run it; else an MMError saying what the CPU has."""
    lv = get_level(name)
    if name not in runnable_levels():
        missing = ", ".join(sorted(lv.needs - target_features())) or "an x86-64 CPU"
        raise MMError(
            f"instruction-set level {name!r} cannot run on this CPU "
            f"({llvm.get_host_cpu_name()}): it lacks {missing}. Levels this CPU runs: "
            f"{', '.join(runnable_levels())}",
            Code.UNAVAILABLE,
        )
    return lv


_chosen: list[Level] = []  # the levels of the open `using_level` blocks, innermost last


def level() -> Level:
    """The level kernels bind at: the innermost :func:`using_level` block's, else the process's
    (``MMBUILD_ISA``, else ``portable`` under ``MMBUILD_PORTABLE``, else the best level the CPU
    runs)."""
    return _chosen[-1] if _chosen else _process_level()


@contextlib.contextmanager
def using_level(name: str) -> Iterator[Level]:
    """Kernels bound inside the block take level ``name`` (refused with an MMError if this CPU
    cannot run it), so that one process can build and compare several levels; a kernel keeps
    the level it was bound at after the block. Process-wide, not per thread.

    Example: ``with using_level("avx2"): ctx.run([x])`` binds the plan's GEMMs with 8-lane
    ``vpmaddwd`` kernels on an AVX-512 CPU, and later runs of ``ctx`` at that shape reuse them.
    """
    _chosen.append(check_runnable(name))
    try:
        yield _chosen[-1]
    finally:
        _chosen.pop()


@functools.cache
def _process_level() -> Level:
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:
        try:
            return check_runnable(forced)
        except MMError as exc:
            raise MMError(f"{ISA_ENV}={forced}: {exc}", exc.status.code()) from None
    if os.environ.get(PORTABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return _BY_NAME["portable"]
    return _BY_NAME[runnable_levels()[0]]


def has_hw_half() -> bool:
    """Whether ``fpext``/``fptrunc`` between half and float compile to instructions.

    On x86 that needs F16C; without it LLVM calls runtime helpers that numba does not always
    provide (the process crashes under ``NUMBA_CPU_NAME=generic``), so the scalar conversions use
    an integer implementation instead. Other targets (aarch64) convert natively.
    """
    return not is_x86() or "f16c" in target_features()


def describe() -> str:
    """One line for logs and benchmark headers, e.g. ``isa=avx2 (8 lanes, int8 vpmaddwd) ...``."""
    lv = level()
    dot = {"vnni": "vpdpbusd", "madd": "vpmaddwd", "": "scalar"}[lv.int8_dot]
    shape = f"{lv.lanes} lanes, int8 {dot}" if lv.simd else "scalar loops"
    return (
        f"isa={lv.name} ({shape}) cpu={llvm.get_host_cpu_name()} "
        f"runnable={','.join(runnable_levels())} hw_half={has_hw_half()}"
    )
