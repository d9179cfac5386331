"""Numba's on-disk kernel cache for the Docker images: built once, at image build time.

A provider container handles one request and exits, so anything it compiles it compiles on
every subtask. The images therefore compile every CPU kernel while they are built
(``fractal-app warm-cache`` calls :func:`warm_kernel_cache`) into ``NUMBA_CACHE_DIR``, and at
run time, as an arbitrary uid on a read-only image, only load from it. Three pieces make that
work; the Dockerfiles wire them up:

* :func:`warm_kernel_cache` runs, on a small scene of every fractal, precision and output
  kind, what the services run: CreateTask's cost estimate, Compute's band and band file,
  Verify's reading and recomputing (of honest files written with each PNG row filter, since
  Average and Paeth rows have a decoding kernel of their own) and RunBenchmark. Every kernel
  signature a service can reach is so compiled and cached; tests/test_kernel_cache_walk.py
  checks that nothing is left to compile with the cache read-only.
* ``ImageCacheLocator`` (named in ``NUMBA_CACHE_LOCATOR_CLASSES``): Numba's own locators give
  up on a cache folder the process cannot write (it probes with a temporary file), and with no
  writable fallback Numba refuses to decorate a cached kernel at all. This one loads from a
  read-only folder; loading writes nothing.
* ``fractal_app.cpu_levels``: the CPU levels the cache is compiled for, and the choice of one
  at start-up.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Small pictures with the default views and iteration limits: the point is compiling every
# kernel, and some run only when the picture needs them (the 2D lane kernels resume, in
# later passes, the samples still running after the first 32 iterations), so each view
# holds points inside its set. The default Julia c (-0.8 + 0.156i) has no interior; this one
# (in the Mandelbrot set's main cardioid) has.
_WARM_RESOLUTION = (48, 32)
_WARM_OVERRIDES = {"julia": {"c": [-0.4, 0.3]}}


def __getattr__(name: str):
    # Numba resolves NUMBA_CACHE_LOCATOR_CLASSES with getattr(module, name). The class is
    # built on first use because it subclasses a Numba class: importing this module stays
    # cheap (the CLI imports it before Numba is needed).
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
    from fractal_app.outputs import COUNTS
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
                yield parse_scene({**base, "output": COUNTS.name})
                yield parse_scene({**base, "output": "image", "smooth": False})
    # The deep (perturbation) path's kernels: one signature each, whatever the output.
    yield parse_scene({"fractal": "mandelbrot", "resolution": list(_WARM_RESOLUTION),
                       "center": ["-1.7497591451303665", "0"], "width": "1e-20"})


def warm_steps() -> list[tuple[str, Callable[[], None]]]:
    """(label, step): every service path on every :func:`warm_scenes` scene, then
    RunBenchmark."""
    from fractal_app import render

    steps = [(_label(scene), functools.partial(_run_service_paths, scene))
             for scene in warm_scenes()]
    steps.append(("RunBenchmark", render.run_benchmark))
    return steps


def _label(scene) -> str:
    extra = f" ss{scene.supersample}" if scene.supersample > 1 else ""
    smooth = "" if scene.is_3d or not scene.output_format.coloured or scene.smooth else " flat"
    return f"{scene.fractal} {scene.precision} {scene.output} {scene.bit_depth}-bit{extra}{smooth}"


def warm_kernel_cache(progress: bool = True) -> float:
    """Compile, and so cache on disk, every CPU kernel the provider and requestor use.

    Shows a progress bar on stderr (scenes done, elapsed and remaining time) unless
    ``progress`` is false. Returns the seconds it took.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    steps = warm_steps()
    target = os.environ.get("NUMBA_CPU_NAME") or "this CPU"
    with tqdm(steps, desc=f"warm-cache {target}", unit="scene", disable=not progress,
              dynamic_ncols=True) as bar:
        for label, step in bar:
            bar.set_postfix_str(label, refresh=False)
            step()
    seconds = time.perf_counter() - start
    log.info(
        "warmed Numba kernels for %d steps in %.1f s (cache %s, CPU target %s)",
        len(steps), seconds, os.environ.get("NUMBA_CACHE_DIR", "(default)"), target,
    )
    return seconds


def _run_service_paths(scene) -> None:
    """What CreateTask, Compute and Verify run for ``scene``, in this process."""
    from fractal_app import bandfile, bandplan, verify
    from fractal_app.provider import band_blocks
    from fractal_app.taskdir import BAND_FILE

    bandplan.plan_bands_by_cost(scene, 2)  # CreateTask's cost estimate
    height = scene.height_px
    meta = bandfile.BandMeta("warm", "warm", 1, height - 1, scene.output)
    with tempfile.TemporaryDirectory(prefix="fractal-app-warm-") as folder:
        result = Path(folder) / BAND_FILE
        bandfile.write_band_blocks(result, band_blocks(scene, 1, height - 1, "cpu"), meta)
        verdicts = [verify.verify_band(scene, meta, Path(folder), threading.Event())]
        # A provider's PNG may use any row filter (Pillow and libpng pick one per row).
        result.write_bytes(refiltered_png(result.read_bytes(), meta.format.png_bits(
            scene.bit_depth), scene.width_px, (0, 1, 2, 3, 4)))
        verdicts.append(verify.verify_band(scene, meta, Path(folder), threading.Event()))
    for verdict in verdicts:
        if not verdict.accepted:  # an honest band: the warm-up would hide a real bug
            raise RuntimeError(f"warm-up: an honest band of {_label(scene)} was rejected: "
                               f"{verdict.reason}")


# ---- PNG row filters (the warm-up's Average and Paeth files) --------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    at = len(_PNG_SIGNATURE)
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        yield png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        at += 12 + length


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def _filter_row(kind: int, row, prev, bpp: int):
    """PNG filter ``kind`` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) of one raw scanline."""
    import numpy as np

    left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp].astype(np.int32)])
    up = prev.astype(np.int32)
    up_left = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
    if kind == 0:
        predictor = np.zeros_like(up)
    elif kind == 1:
        predictor = left
    elif kind == 2:
        predictor = up
    elif kind == 3:
        predictor = (left + up) // 2
    else:
        estimate = left + up - up_left
        d_left, d_up, d_up_left = (np.abs(estimate - v) for v in (left, up, up_left))
        predictor = np.where((d_left <= d_up) & (d_left <= d_up_left), left,
                             np.where(d_up <= d_up_left, up, up_left))
    return ((row.astype(np.int32) - predictor) & 0xFF).astype(np.uint8)


def refiltered_png(png: bytes, bits: int, width: int, kinds: tuple[int, ...]) -> bytes:
    """The same RGB PNG (same pixels and chunks) with its rows filtered by ``kinds`` in turn."""
    import numpy as np

    chunks = list(_png_chunks(png))
    raw = zlib.decompress(b"".join(payload for kind, payload in chunks if kind == b"IDAT"))
    bpp = 3 * bits // 8
    stride = width * bpp
    lines = np.frombuffer(raw, np.uint8).reshape(-1, stride + 1)
    from fractal_app.bandfile import _unfilter  # the reader's own unfiltering

    rows = _unfilter(raw, lines.shape[0], stride, bpp, np.zeros(stride, np.uint8), 0)
    out = bytearray()
    prev = np.zeros(stride, np.uint8)
    for index, row in enumerate(rows):
        kind = kinds[index % len(kinds)]
        out.append(kind)
        out += _filter_row(kind, row, prev, bpp).tobytes()
        prev = row
    idat = _chunk(b"IDAT", zlib.compress(bytes(out)))
    pieces = [_PNG_SIGNATURE]
    for kind, payload in chunks:
        if kind == b"IDAT":
            if idat:
                pieces.append(idat)
                idat = b""
        else:
            pieces.append(_chunk(kind, payload))
    return b"".join(pieces)


# ---- a cold first render ---------------------------------------------------------------------


def compile_estimate_seconds(scene_json: str, backend: str | None = None) -> float:
    """Roughly how many seconds of compiling a CPU render of ``scene_json`` needs before it
    starts: 0 when every kernel its bands and their verification run is in Numba's cache
    for this CPU (or the scene is invalid, or renders on a GPU: nothing to say here).

    Reads the caches' index files only; imports Numba and the kernel modules (about half a
    second), which the render needs anyway.
    """
    from fractal_app import config, render
    from fractal_app.errors import AppError
    from fractal_app.scene import parse_scene

    try:
        scene = parse_scene(scene_json)
        if render.resolve_backend(backend, scene.env) != "cpu":
            return 0.0
    except (AppError, ValueError):
        return 0.0
    from numba.core.registry import cpu_target

    codegen = cpu_target.target_context.codegen()
    return sum(config.COMPILE_SECONDS[group] for group, kernel, signature in _kernels_of(scene)
               if not kernel._cache.has_entry_for(codegen, signature))


def _kernels_of(scene) -> list[tuple[str, object, tuple | None]]:
    """(estimate group, dispatcher, signature or None for any) of each cached CPU kernel a
    render of ``scene`` runs."""
    if scene.is_3d:
        from fractal_app.kernels import cpu_raymarch

        return [("raymarch", cpu_raymarch.band_kernel, None),
                ("raymarch", cpu_raymarch.pixels_kernel, None)]
    from fractal_app import render
    from fractal_app.kernels import cpu

    colour = [("colour", cpu.colour_pixels, None)] if scene.output_format.coloured else []
    if scene.deep:
        from fractal_app.deep import cpu as deep_cpu

        return [("deep", deep_cpu.kernel, None), *colour]
    params = render.escape_params(scene)
    group = "lanes_f32" if scene.precision == "float32" else "lanes_f64"
    iterate = [(group, kernel, signature)
               for kernel, signature in cpu.lane_kernel_signatures(params)]
    if not iterate:
        iterate = [("scalar", cpu.iterate_grid_scalar, None),
                   ("scalar", cpu.iterate_points_scalar, None)]
    return iterate + colour
