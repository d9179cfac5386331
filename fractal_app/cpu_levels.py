"""x86-64 CPU levels: what the docker_cpu image compiles its kernels for, and which one a
host gets.

Numba keys cached machine code by the CPU it was compiled for (LLVM's CPU name and feature
list), so a cache built on one machine misses on every other CPU. The image therefore
compiles its kernels for named x86-64 micro-architecture levels (the same key on every host
of a level), several of them, and picks at start-up the best one the host runs
(:func:`select_cpu_target`, run from a ``.pth`` file before Numba is imported).

Each level names its LLVM features explicitly. An empty feature list is not "the level's
own features": Numba hands it to LLVM as is, and LLVM then drops the vector units' features
(measured: x86-64-v3 with no features ran the Mandelbrot lane kernels at a quarter of the
host build's speed). tests/test_vector_width.py disassembles each level's kernels.

This module imports nothing heavy: it runs before Numba is imported.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

# Environment variable (set in the image) listing the levels its cache was baked for.
CPU_TARGETS_ENV = "FRACTAL_APP_NUMBA_CPU_TARGETS"


@dataclass(frozen=True)
class CpuLevel:
    """A CPU to compile for: LLVM's name and features, and the /proc/cpuinfo flags a host
    needs to run the code (from the x86-64 psABI levels)."""

    name: str
    llvm_features: tuple[str, ...]
    cpuinfo_flags: frozenset[str]
    # The widest vector registers the lane kernels should use: what the vector-width test
    # asserts ("zmm" 512-bit, "ymm" 256-bit, "xmm" 128-bit).
    vector_register: str

    @property
    def feature_string(self) -> str:
        return ",".join(f"+{feature}" for feature in self.llvm_features)


_BASE = ("64bit", "cmov", "cx8", "fxsr", "mmx", "sse", "sse2")
_V2 = (*_BASE, "cx16", "sahf", "popcnt", "crc32", "sse3", "ssse3", "sse4.1", "sse4.2")
_V3 = (*_V2, "avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave")
_V4 = (*_V3, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")

_V2_FLAGS = frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})
_V3_FLAGS = _V2_FLAGS | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4_FLAGS = _V3_FLAGS | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}

# Best first. Plain x86-64 needs nothing beyond the architecture: every x86-64 host runs it.
LEVELS: dict[str, CpuLevel] = {
    level.name: level
    for level in (
        CpuLevel("x86-64-v4", _V4, _V4_FLAGS, "zmm"),
        CpuLevel("x86-64-v3", _V3, _V3_FLAGS, "ymm"),
        CpuLevel("x86-64-v2", _V2, _V2_FLAGS, "xmm"),
        CpuLevel("x86-64", _BASE, frozenset(), "xmm"),
    )
}


def host_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags Linux reports for this host (empty when unknown)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def pin(level_name: str, environ: MutableMapping[str, str] = os.environ) -> CpuLevel:
    """Make Numba compile for ``level_name`` (before Numba is imported): sets
    ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES``. ValueError for an unknown level."""
    level = LEVELS.get(level_name)
    if level is None:
        raise ValueError(
            f"unknown CPU level {level_name!r}: use one of {', '.join(LEVELS)}"
        )
    environ["NUMBA_CPU_NAME"] = level.name
    environ["NUMBA_CPU_FEATURES"] = level.feature_string
    return level


def select_cpu_target(
    environ: MutableMapping[str, str] = os.environ,
    flags: frozenset[str] | None = None,
    machine: str | None = None,
) -> str | None:
    """Pin Numba to the best CPU level the image's cache was built for that this host runs.

    Reads the baked levels from ``FRACTAL_APP_NUMBA_CPU_TARGETS`` (best first) and
    :func:`pin`\\ s the first one whose flags the host has. Returns the chosen level, or None
    when it changes nothing: no baked levels (outside the image), an explicit
    ``NUMBA_CPU_NAME`` already set, not an x86-64 host, or no baked level this CPU runs.
    """
    baked = environ.get(CPU_TARGETS_ENV, "").split()
    if not baked or environ.get("NUMBA_CPU_NAME"):
        return None
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return None
    host = host_cpu_flags() if flags is None else flags
    for name in baked:
        level = LEVELS.get(name)
        if level is not None and level.cpuinfo_flags <= host:
            pin(name, environ)
            return name
    return None
