"""CPU kernels: the scalar cores of escape.py and color.py compiled with numba.njit.

Pure: arrays and numbers in, results written into caller-allocated arrays. Two steps, so
that the iteration (the hot part, vectorised in ``_generated/``) and the
colouring (float64, logarithms, scalar) are each compiled once and shared by the band
and the pixel-list paths, which therefore give bit-identical numbers for the same pixel:

1. ``iterate_grid`` / ``iterate_points``: escape count (uint32) and |z|^2 (float64) per
   sample, sample coordinates given (already rounded to the scene's precision). Grids
   run the generated block kernels of ``_generated/`` (32 float64 or 64 float32 pixels
   iterated together, vectorised by LLVM's SLP pass), bit-identical to the scalar cores;
   lists of pixels (and any fractal without a block kernel) run the scalar cores.
2. ``colour_pixels``: average the s x s samples of each pixel in linear light, encode
   to sRGB once, quantise to 8 or 16 bits (color.encode: the same codes as
   quantize(linear_to_srgb(x)), by table).
"""

import importlib
import threading

import numba
import numpy as np
from numba import prange
from numba.core import config as numba_config
from numba.core.caching import FunctionCache

from fractal_app.kernels import color, escape
from fractal_app.kernels._generated.generate import BLOCK_KERNELS, module_name

_inline = numba.njit(inline="always")
cores = escape.compile_cores(_inline)
colours = color.compile_color(_inline)
_escape = cores.escape
_sample_rgb = colours.sample_rgb
_encode = colours.encode


def iterate_grid(kind, re_cols, im_rows, jr, ji, power, max_iter, escape2, counts, mag2):
    """Escape counts and |z|^2 of the samples on a grid: row r at im_rows[r], column k at
    re_cols[k], into counts[r, k] (uint32) and mag2[r, k] (float64). The coordinate arrays'
    dtype (float32 or float64, like jr, ji, escape2) is the iteration's precision."""
    module = block_module(kind, re_cols.dtype)
    with _rows_one_at_a_time():
        if module is None:
            iterate_grid_scalar(kind, re_cols, im_rows, jr, ji, power, max_iter, escape2,
                                counts, mag2)
        else:
            _iterate_grid_in_passes(module, kind, re_cols, im_rows, jr, ji, power, max_iter,
                                    escape2, counts, mag2)


# Julia's block kernels run in passes. A block of lanes iterates until its slowest lane
# stops, so one long-running pixel among quick ones wastes the rest of its block: at a
# Julia set's dendrites most blocks are like that (median count 4, mean 46 in the default
# view). The first pass stops every sample at FIRST_PASS_ITERATIONS[kind]; each later pass
# packs the samples still running into full blocks and continues them from where they
# stopped, PASS_GROWTH times further. The result is the same, bit for bit. Measured per
# core: Julia 2.5x faster; Mandelbrot 35% slower (its slow pixels sit together already,
# and a resumed block needs Im c per lane: more live registers, spills, plus the packing),
# so the other kinds run one pass.
FIRST_PASS_ITERATIONS = {escape.JULIA: 32}
PASS_GROWTH = 4


def _iterate_grid_in_passes(module, kind, re_cols, im_rows, jr, ji, power, max_iter, escape2,
                            counts, mag2):
    dtype = re_cols.dtype
    first = FIRST_PASS_ITERATIONS.get(kind)
    # Even a short render (max_iter >= 2: an image build's cache warm-up) runs both
    # kernels of a kind with passes, so both get compiled into the cache.
    cap = max_iter if first is None else max(1, min(first, max_iter // 2))
    keep_z = cap < max_iter
    z_shape = counts.shape if keep_z else (counts.shape[0], 0)
    zr = np.empty(z_shape, dtype=dtype)
    zi = np.empty(z_shape, dtype=dtype)
    _call_vectorized(module.iterate_grid, (re_cols, im_rows, jr, ji, power, cap, escape2,
                                           counts, mag2, keep_z, zr, zi))
    if not keep_z:
        return
    all_counts = counts.reshape(-1)  # views: the arrays are C-contiguous
    all_mag2 = mag2.reshape(-1)
    running = np.flatnonzero(all_counts == cap)
    rows, cols = np.divmod(running, re_cols.shape[0])
    re, im = re_cols[cols], im_rows[rows]
    zr, zi = zr.reshape(-1)[running], zi.reshape(-1)[running]
    while True:  # at least once, also with nothing left running (see above)
        done, cap = cap, min(max_iter, cap * PASS_GROWTH)
        n = running.size
        pass_counts = np.empty(n, dtype=np.uint32)
        pass_mag2 = np.empty(n)
        zr_end = np.empty(n, dtype=dtype)
        zi_end = np.empty(n, dtype=dtype)
        _call_vectorized(module.resume_points, (re, im, zr, zi, done, jr, ji, power, cap,
                                                escape2, pass_counts, pass_mag2, zr_end, zi_end))
        all_counts[running] = pass_counts
        all_mag2[running] = pass_mag2
        still = pass_counts == cap
        running, re, im, zr, zi = (a[still] for a in (running, re, im, zr_end, zi_end))
        if cap >= max_iter or not running.size:
            return


def iterate_points(kind, re, im, jr, ji, power, max_iter, escape2, counts, mag2):
    """Escape counts and |z|^2 of samples at arbitrary points (re[k], im[k]), 1-D arrays."""
    with _rows_one_at_a_time():
        iterate_points_scalar(kind, re, im, jr, ji, power, max_iter, escape2, counts, mag2)


def block_module(kind, dtype):
    """The generated block-kernel module for a fractal kind and precision (its kernels
    cached on disk under a key with the vectorizer settings), or None if it has none."""
    precision = "f32" if np.dtype(dtype) == np.float32 else "f64"
    for fractal, number in escape.KIND_OF_FRACTAL.items():
        if number == kind and (fractal, precision) in BLOCK_KERNELS:
            module = importlib.import_module(
                f"fractal_app.kernels._generated.{module_name(fractal, precision)}"
            )
            for kernel in (module.iterate_grid, module.resume_points):
                if not isinstance(kernel._cache, _VectorizerAwareCache):
                    kernel._cache = _VectorizerAwareCache(kernel.py_func)
            return module
    return None


class _VectorizerAwareCache(FunctionCache):
    """Numba's on-disk function cache, with the optimiser settings in the index key.

    Numba keys cached code by signature, CPU and bytecode, not by SLP_VECTORIZE or OPT, so
    one process that compiled a block kernel with the vectorizer off (or unoptimised) left
    a copy 10x slower that every later process loaded. (This happened here.) With the
    settings in the key such a copy is stored beside the vectorised one, never instead.
    """

    def _index_key(self, sig, codegen):
        settings = ("SLP_VECTORIZE", numba_config.SLP_VECTORIZE, "OPT", str(numba_config.OPT))
        return (*super()._index_key(sig, codegen), settings)


_SLP_LOCK = threading.Lock()


def _call_vectorized(kernel, args):
    """Call a block kernel, compiling it (or loading it from the cache) with LLVM's SLP
    vectorizer on: Numba leaves SLP off by default, and switching it on for the whole
    process would slow every other compile."""
    signature = tuple(numba.typeof(a) for a in args)
    if signature not in kernel.overloads:
        with _SLP_LOCK:
            previous = numba_config.SLP_VECTORIZE
            numba_config.SLP_VECTORIZE = 1
            try:
                kernel.compile(signature)
            finally:
                numba_config.SLP_VECTORIZE = previous
    kernel(*args)


class _rows_one_at_a_time:
    """Numba's parallel chunk size 1 for this thread: rows (or points) differ in cost, so
    threads take them one at a time instead of in equal contiguous shares."""

    def __enter__(self):
        self.previous = numba.set_parallel_chunksize(1)

    def __exit__(self, *exc):
        numba.set_parallel_chunksize(self.previous)


@numba.njit(parallel=True, nogil=True, cache=True)
def iterate_grid_scalar(kind, re_cols, im_rows, jr, ji, power, max_iter, escape2, counts, mag2):
    """Samples on a grid: row r at im_rows[r], column k at re_cols[k] (scalar loop)."""
    for r in prange(im_rows.shape[0]):
        ci = im_rows[r]
        for k in range(re_cols.shape[0]):
            n, m = _escape(kind, re_cols[k], ci, jr, ji, power, max_iter, escape2)
            counts[r, k] = n
            mag2[r, k] = m


@numba.njit(parallel=True, nogil=True, cache=True)
def iterate_points_scalar(kind, re, im, jr, ji, power, max_iter, escape2, counts, mag2):
    """Samples at arbitrary points (re[k], im[k]), 1-D arrays."""
    for k in prange(re.shape[0]):
        n, m = _escape(kind, re[k], im[k], jr, ji, power, max_iter, escape2)
        counts[k] = n
        mag2[k] = m


@numba.njit(parallel=True, nogil=True, cache=True)
def colour_pixels(
    counts, mag2, max_iter, smooth, inv_log_power, inv_log_max_iter, cycles, offset, table,
    interior, encoding, max_value, out,
):
    """counts, mag2: (P, s, Q, s) samples of P x Q pixels; out: (P, Q, 3) uint8/uint16;
    encoding: color.encode_table(max_value), max_value 255 or 65535."""
    s = counts.shape[1]
    n_samples = s * s
    for p in prange(counts.shape[0]):
        for q in range(counts.shape[2]):
            r = 0.0
            g = 0.0
            b = 0.0
            for a in range(s):
                for c in range(s):
                    sr, sg, sb = _sample_rgb(
                        counts[p, a, q, c], mag2[p, a, q, c], max_iter, smooth, inv_log_power,
                        inv_log_max_iter, cycles, offset, table, interior,
                    )
                    r += sr
                    g += sg
                    b += sb
            out[p, q, 0] = _encode(r / n_samples, encoding, max_value)
            out[p, q, 1] = _encode(g / n_samples, encoding, max_value)
            out[p, q, 2] = _encode(b / n_samples, encoding, max_value)
