"""Render a band of rows, or a list of pixels, of any scene on the CPU or a CUDA GPU.

The one entry point the provider (bands), the requestor's verification (pixels) and the
benchmark use. It turns a validated scene into sample coordinates and kernel arguments,
runs the kernels (``kernels/cpu.py`` or ``kernels/cuda.py``: escape counts and |z|^2 per
sample), and colours the samples with the CPU colouring kernel. Band and pixel paths share
the coordinate formula (float64, then rounded to the scene's precision) and every kernel,
so the same pixel gets bit-identical values on the same backend.

Importing this module is cheap: Numba, the kernels and the GPU are loaded on first use.
3D scenes are delegated to ``fractal_app.render3d``.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np

from fractal_app import config
from fractal_app.bands import row_pieces
from fractal_app.errors import FailedPrecondition, InvalidArgument
from fractal_app.outputs import COUNTS
from fractal_app.protocol.constants import DOCKER_GPU_ENV_ID

BACKENDS = ("cpu", "cuda")

# Samples iterated per kernel call (per chunk of rows): bounds the temporary count and
# |z|^2 arrays (12 bytes a sample) for large supersampled bands.
MAX_SAMPLES_PER_CHUNK = 1 << 22

# The fixed RunBenchmark workload: the Mandelbrot benchmark view at a smaller size.
_BENCHMARK_SCENE = {
    "fractal": "mandelbrot",
    "resolution": [480, 270],
    "center": [-0.75, 0.0],
    "width": 3.5,
    "max_iter": 1000,
    "output": COUNTS.name,
}


def resolve_backend(requested: str | None, env: str) -> str:
    """The backend to render with: ``requested`` if given, else "cuda" for env "docker_gpu"
    when a GPU is present, else "cpu". Raises FailedPrecondition for "cuda" without a GPU."""
    if requested is not None:
        if requested not in BACKENDS:
            raise InvalidArgument(
                f"unknown backend {requested!r}: use one of {', '.join(BACKENDS)}"
            )
        if requested == "cuda":
            reason = _cuda_unavailable_reason()
            if reason is not None:
                raise FailedPrecondition(f"no CUDA GPU found: {reason}; use backend cpu")
        return requested
    if env == DOCKER_GPU_ENV_ID and _cuda_unavailable_reason() is None:
        return "cuda"
    return "cpu"


def render_band(scene, row_start: int, row_stop: int, backend: str = "cpu") -> np.ndarray:
    """Final output values of rows [row_start, row_stop) of the whole image.

    output "image": (rows, W, 3) uint8 (bit_depth 8) or uint16 (16), sRGB-encoded;
    output "counts": (rows, W) uint32 escape counts.
    """
    if scene.is_3d:
        from fractal_app import render3d

        return render3d.render_band_3d(scene, row_start, row_stop, backend)
    height, width = scene.height_px, scene.width_px
    if not (0 <= row_start < row_stop <= height):
        raise InvalidArgument(
            f"rows [{row_start}, {row_stop}) are not a non-empty range inside the image's "
            f"{height} rows"
        )
    if scene.deep:
        from fractal_app.deep.render import render_band_deep

        return render_band_deep(scene, row_start, row_stop, _deep_backend(backend))
    kernels = _kernels(backend)
    params = escape_params(scene)
    ss = scene.supersample
    re_cols = sample_coords(scene, np.arange(width, dtype=np.int64), axis="re")
    re_cols = re_cols.reshape(-1).astype(params.dtype)
    rows_per_chunk = max(1, MAX_SAMPLES_PER_CHUNK // (width * ss * ss))
    coloured = scene.output_format.coloured
    out = scene.output_format.empty_band(row_stop - row_start, width, scene.bit_depth)
    for r0, r1 in row_pieces(row_start, row_stop, rows_per_chunk):
        im_rows = sample_coords(scene, np.arange(r0, r1, dtype=np.int64), axis="im")
        im_rows = im_rows.reshape(-1).astype(params.dtype)
        counts = np.empty((im_rows.shape[0], re_cols.shape[0]), dtype=np.uint32)
        mag2 = np.empty(counts.shape, dtype=np.float64)
        kernels.iterate_grid(params, re_cols, im_rows, counts, mag2)
        target = out[r0 - row_start : r1 - row_start]
        if coloured:
            shape = (r1 - r0, ss, width, ss)
            _colour(scene, counts.reshape(shape), mag2.reshape(shape), target)
        else:
            target[...] = counts
    return out


def render_pixels(scene, rows: np.ndarray, cols: np.ndarray, backend: str = "cpu") -> np.ndarray:
    """The values render_band gives for the pixels (rows[k], cols[k]): (N, 3) uint8/uint16,
    or (N,) uint32 escape counts, bit-identical to render_band on the same backend."""
    if scene.is_3d:
        from fractal_app import render3d

        return render3d.render_pixels_3d(scene, rows, cols, backend)
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    if rows.ndim != 1 or rows.shape != cols.shape:
        raise InvalidArgument(
            f"rows and cols must be 1-D arrays of equal length (got shapes {rows.shape} and "
            f"{cols.shape})"
        )
    rows = rows.astype(np.int64)
    cols = cols.astype(np.int64)
    if rows.size and (
        rows.min() < 0 or rows.max() >= scene.height_px or cols.min() < 0
        or cols.max() >= scene.width_px
    ):
        raise InvalidArgument(
            f"pixel outside the {scene.width_px}x{scene.height_px} image (rows "
            f"{rows.min()}..{rows.max()}, cols {cols.min()}..{cols.max()})"
        )
    if scene.deep:
        from fractal_app.deep.render import render_pixels_deep

        return render_pixels_deep(scene, rows, cols, _deep_backend(backend))
    kernels = _kernels(backend)
    params = escape_params(scene)
    ss = scene.supersample
    n = rows.shape[0]
    # Sample (a, b) of pixel k sits at row offset a and column offset b, as in render_band.
    re = sample_coords(scene, cols, axis="re")[:, None, :]
    im = sample_coords(scene, rows, axis="im")[:, :, None]
    re, im = np.broadcast_arrays(re, im)
    re = np.ascontiguousarray(re.reshape(-1), dtype=params.dtype)
    im = np.ascontiguousarray(im.reshape(-1), dtype=params.dtype)
    counts = np.empty(re.shape[0], dtype=np.uint32)
    mag2 = np.empty(re.shape[0], dtype=np.float64)
    if n:
        kernels.iterate_points(params, re, im, counts, mag2)
    if not scene.output_format.coloured:
        return counts
    out = np.empty((n, 1, 3), dtype=_image_dtype(scene))
    shape = (n, ss, 1, ss)
    if n:
        _colour(scene, counts.reshape(shape), mag2.reshape(shape), out)
    return out.reshape(n, 3)


def run_benchmark(
    target_seconds: float = config.BENCHMARK_TARGET_SECONDS, backend: str = "cpu"
) -> float:
    """Render a fixed Mandelbrot workload repeatedly for about ``target_seconds``; return
    millions of escape-time iterations per second (the sum of the escape counts).

    The score comes from the fastest repeat, not the average: other work on the machine only
    ever slows a repeat down, so the fastest one is the steadiest measure of the hardware.
    """
    from fractal_app.scene import parse_scene

    scene = parse_scene(_BENCHMARK_SCENE)
    height = scene.height_px
    iterations_per_image = int(render_band(scene, 0, height, backend).sum(dtype=np.int64))
    fastest = math.inf
    start = time.perf_counter()
    while time.perf_counter() - start < target_seconds or fastest == math.inf:
        began = time.perf_counter()
        render_band(scene, 0, height, backend)
        fastest = min(fastest, time.perf_counter() - began)
    return iterations_per_image / fastest / 1e6


def escape_params(scene):
    """The kernels' parameters of a 2D scene (an escape.EscapeParams), typed in the scene's
    precision."""
    from fractal_app.kernels.escape import KIND_OF_FRACTAL, EscapeParams

    dtype = np.float32 if scene.precision == "float32" else np.float64
    c = getattr(scene, "c", (0.0, 0.0))
    return EscapeParams(
        kind=KIND_OF_FRACTAL[scene.fractal],
        jr=dtype(c[0]),
        ji=dtype(c[1]),
        power=int(getattr(scene, "power", 2)),
        max_iter=int(scene.max_iter),
        escape2=dtype(4.0),
    )


# --- helpers --------------------------------------------------------------------------------


def sample_coords(scene, index: np.ndarray, axis: str) -> np.ndarray:
    """(len(index), s) float64 coordinates of the s sub-pixel sample centres of each pixel
    column (axis "re") or row (axis "im"): the contract's formula, in this one place."""
    from fractal_app.fractals import FRACTALS

    ss = scene.supersample
    px = scene.pixel_size
    offsets = (np.arange(ss, dtype=np.float64) + 0.5) / ss
    position = (index.astype(np.float64)[:, None] - 0.5) + offsets[None, :]
    if axis == "re":
        return scene.center[0] + (position - (scene.width_px - 1) / 2) * px
    if FRACTALS[scene.fractal].imaginary_axis_down:
        return scene.center[1] + (position - (scene.height_px - 1) / 2) * px
    return scene.center[1] + ((scene.height_px - 1) / 2 - position) * px


def _image_dtype(scene):
    return np.uint8 if scene.bit_depth == 8 else np.uint16


@functools.cache
def _encode_table(bit_depth: int) -> np.ndarray:
    from fractal_app.kernels.color import encode_table

    table = encode_table(255 if bit_depth == 8 else 65535)
    table.flags.writeable = False
    return table


@functools.cache
def _palette(name: str) -> np.ndarray:
    from fractal_app.kernels.color import palette_table

    table = palette_table(name)
    table.flags.writeable = False
    return table


def _colour(scene, counts: np.ndarray, mag2: np.ndarray, out: np.ndarray) -> None:
    """Colour (P, s, Q, s) samples into out (P, Q, 3) with the CPU colouring kernel."""
    from fractal_app import color_scale
    from fractal_app.kernels import cpu
    from fractal_app.kernels.color import srgb_to_linear
    from fractal_app.kernels.escape import tail_iterations

    power = getattr(scene, "power", 2)
    interior = np.array([srgb_to_linear(v / 255.0) for v in scene.interior_color])
    cpu.colour_pixels(
        counts, mag2, int(scene.max_iter), bool(scene.smooth), tail_iterations(power),
        1.0 / math.log(power),
        1.0 / math.log(1.0 + scene.max_iter), float(scene.palette_cycles),
        float(scene.palette_offset), color_scale.kernel_knots(scene), _palette(scene.palette),
        interior,
        _encode_table(scene.bit_depth), 255 if scene.bit_depth == 8 else 65535, out,
    )


def _deep_backend(backend: str) -> str:
    """The backend for the deep path, checked like the float64 path's."""
    _kernels(backend)
    return backend


def _kernels(backend: str):
    if backend == "cpu":
        from fractal_app.kernels import cpu

        return cpu
    if backend == "cuda":
        reason = _cuda_unavailable_reason()
        if reason is not None:
            raise FailedPrecondition(f"no CUDA GPU found: {reason}; use backend cpu")
        from fractal_app.kernels import cuda

        return cuda
    raise InvalidArgument(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


@functools.lru_cache(maxsize=1)
def _cuda_unavailable_reason() -> str | None:
    """None when numba.cuda can run kernels here, else why not (checked once)."""
    try:
        from numba import cuda
    except Exception as exc:  # numba-cuda not installed, or a broken install
        return f"numba.cuda cannot be imported ({exc})"
    try:
        if not cuda.is_available():
            return "numba.cuda reports no usable device or driver"
    except Exception as exc:
        return f"the CUDA driver failed to initialise ({exc})"
    return None
