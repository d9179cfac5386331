"""Numba's on-disk kernel cache for the Docker images: built once, at image build time.

A provider container handles one request and exits, so anything it compiles it compiles on
every subtask. The images therefore compile every CPU kernel while they are built
(``fractal-app warm-cache`` calls :func:`warm_kernel_cache`) into ``NUMBA_CACHE_DIR``, and at
run time, as an arbitrary uid on a read-only image, only load from it. Three pieces make that
work; the Dockerfiles wire them up:

* :func:`warm_kernel_cache` renders a tiny band and a few pixels of every fractal, precision
  and output kind, through the same ``fractal_app.render`` calls the provider and the
  requestor's verification make, so every kernel signature they use is compiled and cached.
* ``ImageCacheLocator`` (named in ``NUMBA_CACHE_LOCATOR_CLASSES``): Numba's own locators give
  up on a cache folder the process cannot write (it probes with a temporary file), and with no
  writable fallback Numba refuses to decorate a ``cache=True`` kernel at all. This one loads
  from a read-only folder; loading writes nothing.
* :func:`select_cpu_target`: Numba keys cached code by the CPU it was compiled for (name and
  feature list), so a cache built on one machine misses on every other CPU. The image pins the
  target to a named x86-64 micro-architecture level (the same key on every host with that
  level), bakes the cache for several levels, and picks at start-up the best level the host
  runs. It must run before Numba is imported; the image runs it from a ``.pth`` file.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)

# Environment variable (set in the images) listing the CPU levels the cache was baked for.
CPU_TARGETS_ENV = "FRACTAL_APP_NUMBA_CPU_TARGETS"

# x86-64 micro-architecture levels (LLVM CPU names) and the /proc/cpuinfo flags each needs,
# from the x86-64 psABI. Each level includes the ones below it.
_V2_FLAGS = frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})
_V3_FLAGS = _V2_FLAGS | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4_FLAGS = _V3_FLAGS | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
X86_64_LEVELS: dict[str, frozenset[str]] = {
    "x86-64-v4": _V4_FLAGS,
    "x86-64-v3": _V3_FLAGS,
    "x86-64-v2": _V2_FLAGS,
    "x86-64": frozenset(),
}

# Small pictures with the default views and iteration limits: the point is compiling every
# kernel, and some run only when the picture needs them (the 2D block kernels resume, in
# later passes, the samples still running after the first 32 iterations), so each view
# holds points inside its set. The default Julia c (-0.8 + 0.156i) has no interior; this one
# (in the Mandelbrot set's main cardioid) has.
_WARM_RESOLUTION = (48, 32)
_WARM_OVERRIDES = {"julia": {"c": [-0.4, 0.3]}}


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


def select_cpu_target(
    environ: MutableMapping[str, str] = os.environ,
    flags: frozenset[str] | None = None,
    machine: str | None = None,
) -> str | None:
    """Pin Numba to the best CPU level the image's cache was built for that this host runs.

    Reads the baked levels from ``FRACTAL_APP_NUMBA_CPU_TARGETS`` (best first) and sets
    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` in ``environ``. Returns the chosen level, or
    None when it changes nothing: no baked levels (outside the images), an explicit
    ``NUMBA_CPU_NAME`` already set, not an x86-64 host, or no baked level this CPU runs.
    Must run before Numba is imported (Numba reads these variables once, at import).
    """
    baked = environ.get(CPU_TARGETS_ENV, "").split()
    if not baked or environ.get("NUMBA_CPU_NAME"):
        return None
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return None
    host = host_cpu_flags() if flags is None else flags
    for level in baked:
        needed = X86_64_LEVELS.get(level)
        if needed is not None and needed <= host:
            environ["NUMBA_CPU_NAME"] = level
            # Empty features: exactly the level's own instruction set, the same cache key
            # on every host (Numba would otherwise add this host's whole feature list).
            environ["NUMBA_CPU_FEATURES"] = ""
            return level
    return None


def __getattr__(name: str):
    # Numba resolves NUMBA_CACHE_LOCATOR_CLASSES with getattr(module, name). The class is
    # built on first use because it subclasses a Numba class, and this module must import
    # without Numba: select_cpu_target runs before Numba may be imported.
    if name == "ImageCacheLocator":
        return _image_cache_locator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _image_cache_locator_class():
    from numba.core import config as numba_config
    from numba.core.caching import UserProvidedCacheLocator

    class ImageCacheLocator(UserProvidedCacheLocator):
        """NUMBA_CACHE_DIR/<CPU target>/, also when this process cannot write it.

        Loading a cached kernel only reads the index and data files. A kernel missing from a
        read-only cache still compiles, but saving it fails with a message that says why:
        that is a kernel the image build did not warm (add it to fractal_app.warmup).
        """

        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            # One subtree per CPU target: the levels are warmed in parallel processes, and
            # two processes must never write the same index file.
            target = numba_config.CPU_NAME or "host"
            self._cache_path = os.path.join(
                numba_config.CACHE_DIR, target, self.get_suitable_cache_subpath(py_file)
            )

        @classmethod
        def from_function(cls, py_func, py_file):
            if not numba_config.CACHE_DIR or not os.path.exists(py_file):
                return None
            locator = cls(py_func, py_file)
            try:
                # Image build: create the folder as Numba would.
                UserProvidedCacheLocator.ensure_cache_path(locator)
            except OSError:
                pass  # read-only at run time: loading needs no writes
            return locator

        def ensure_cache_path(self):
            # Numba calls this only just before saving a newly compiled kernel.
            try:
                super().ensure_cache_path()
            except OSError as exc:
                raise RuntimeError(
                    f"Numba compiled a kernel that is not in the image's read-only cache "
                    f"{numba_config.CACHE_DIR} ({exc}); the image build did not warm this "
                    f"kernel for CPU target {numba_config.CPU_NAME or 'host'}: add its case "
                    f"to fractal_app.warmup and rebuild the image"
                ) from exc

    return ImageCacheLocator


def warm_scenes() -> Iterator:
    """One small scene per kernel variant: fractal x precision x output kind x bit depth x
    supersampling (the combinations that change the types the kernels are compiled for)."""
    from fractal_app.scene import FRACTALS, parse_scene

    for fractal in FRACTALS:
        for precision in ("float64", "float32"):
            base = {"fractal": fractal, "resolution": list(_WARM_RESOLUTION)}
            base.update(precision=precision, **_WARM_OVERRIDES.get(fractal, {}))
            is_3d = parse_scene(base).is_3d
            for bit_depth in (8, 16):
                for supersample in (1, 2):
                    image = {"output": "image", "bit_depth": bit_depth, "supersample": supersample}
                    yield parse_scene({**base, **image})
            if not is_3d:
                yield parse_scene({**base, "output": "counts"})
                yield parse_scene({**base, "output": "image", "smooth": False})
    # The deep (perturbation) path's kernels: one signature each, whatever the output.
    yield parse_scene({"fractal": "mandelbrot", "resolution": list(_WARM_RESOLUTION),
                       "center": ["-1.7497591451303665", "0"], "width": "1e-20"})


def warm_kernel_cache() -> None:
    """Compile, and so cache on disk, every CPU kernel the provider and requestor use.

    For each scene of :func:`warm_scenes`: a band (what Compute renders) and a few pixels
    (what the requestor's verification recomputes), through ``fractal_app.render``.
    """
    import numpy as np

    from fractal_app import render

    start = time.perf_counter()
    count = 0
    for scene in warm_scenes():
        height, width = scene.height_px, scene.width_px
        render.render_band(scene, 0, height)
        render.render_band(scene, 1, height - 1)
        rows = np.array([0, height - 1, height // 2], dtype=np.int64)
        cols = np.array([0, width - 1, width // 2], dtype=np.int64)
        render.render_pixels(scene, rows, cols)
        count += 1
    log.info(
        "warmed Numba kernels for %d scenes in %.1f s (cache %s, CPU target %s)",
        count, time.perf_counter() - start, os.environ.get("NUMBA_CACHE_DIR", "(none)"),
        os.environ.get("NUMBA_CPU_NAME") or "host",
    )
