"""Which instruction sets the numba kernels may use on this machine.

The explicit-SIMD kernels emit x86 intrinsics (``vpdpbusd``) and 512-bit vector operations.
Compiling an x86 intrinsic for a target that lacks it makes LLVM abort the whole process, so every
choice between a SIMD kernel and its portable twin goes through the functions here, and they answer
for the target numba really compiles for:

- normally the host CPU, as ``llvmlite.binding.get_host_cpu_features()`` reports it;
- ``NUMBA_CPU_FEATURES`` (and ``NUMBA_CPU_NAME=generic``, which implies no features) when set, as
  numba then compiles for those features and not for the host;
- ``NUMBA_ENABLE_AVX=0``, under which numba switches every AVX feature off.

Environment variable
    ``MMBUILD_PORTABLE=1`` (also ``true``/``yes``/``on``) forces the portable kernels even on a CPU
    that has AVX-512 and VNNI. The integer paths give bit-identical results either way; use it to
    reproduce what a CPU without these features computes, or to rule the SIMD kernels out when
    chasing a bug. It is read once, when the first kernel is chosen, so set it before that.
"""

from __future__ import annotations

import functools
import os

import llvmlite.binding as llvm
from numba.core import config as numba_config

PORTABLE_ENV = "MMBUILD_PORTABLE"

# The features each path needs, in LLVM's spelling.
_AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl"})
_VNNI = frozenset({"avx512vnni"})
_FLOAT_SIMD = frozenset({"fma", "f16c"})


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
    """Whether numba targets x86-64 (the only target with an explicit-SIMD path)."""
    return llvm.get_process_triple().startswith(("x86_64", "amd64"))


@functools.cache
def portable_forced() -> bool:
    """Whether ``MMBUILD_PORTABLE`` asks for the portable kernels (read once per process)."""
    return os.environ.get(PORTABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def has_avx512() -> bool:
    """AVX-512 F, BW and VL: 512-bit integer and float vectors."""
    return is_x86() and target_features() >= _AVX512


def has_vnni() -> bool:
    """AVX-512 VNNI (``vpdpbusd``) on top of :func:`has_avx512`."""
    return has_avx512() and target_features() >= _VNNI


def has_hw_half() -> bool:
    """Whether ``fpext``/``fptrunc`` between half and float compile to instructions.

    On x86 that needs F16C; without it LLVM calls runtime helpers that numba does not always
    provide (the process crashes under ``NUMBA_CPU_NAME=generic``), so the scalar conversions use
    an integer implementation instead. Other targets (aarch64) convert natively.
    """
    return not is_x86() or "f16c" in target_features()


def use_int8_simd() -> bool:
    """Run the int8 GEMM on the ``vpdpbusd`` micro-kernels."""
    return has_vnni() and not portable_forced()


def use_float_simd() -> bool:
    """Run the float GEMM on the 512-bit FMA micro-kernels."""
    return has_avx512() and target_features() >= _FLOAT_SIMD and not portable_forced()


def describe() -> str:
    """One line for logs and benchmark headers."""
    return (
        f"cpu={llvm.get_host_cpu_name()} avx512={has_avx512()} vnni={has_vnni()} "
        f"hw_half={has_hw_half()} portable_forced={portable_forced()} "
        f"int8_path={'vnni' if use_int8_simd() else 'portable'} "
        f"float_path={'avx512' if use_float_simd() else 'portable'}"
    )
