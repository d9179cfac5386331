"""CPU kernels: the scalar cores of escape.py and color.py compiled with numba.njit.

Pure: arrays and numbers in, results written into caller-allocated arrays. Two steps, so
that the iteration (the hot part, vectorised in ``_generated/``) and the
colouring (float64, logarithms, scalar) are each compiled once and shared by the band
and the pixel-list paths, which therefore give bit-identical numbers for the same pixel:

1. ``iterate_grid`` / ``iterate_points``: escape count (uint32) and |z|^2 (float64) per
   sample, sample coordinates given (already rounded to the scene's precision). Both
   run the generated block kernels of ``_generated/`` (32 float64 or 64 float32 pixels
   iterated together, vectorised by LLVM's SLP pass), bit-identical to the scalar cores:
   grids by rows, lists of pixels (verification's samples) packed into blocks, in passes;
   any fractal without a block kernel runs the scalar cores.
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

from fractal_app.kernels import color, escape
from fractal_app.kernels._generated.generate import BLOCK_KERNELS, module_name
from fractal_app.kernels.caching import cached

_inline = numba.njit(inline="always")
# The colour tail is called, not inlined, as the generated block kernels call it (see
# escape.compile_cores), so both give the same bits.
cores = escape.compile_cores(_inline, tail_jit=numba.njit(nogil=True))
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
    running = np.flatnonzero(all_counts == cap)
    rows, cols = np.divmod(running, re_cols.shape[0])
    _resume_in_passes(module, running, re_cols[cols], im_rows[rows], zr.reshape(-1)[running],
                      zi.reshape(-1)[running], cap, min(max_iter, cap * PASS_GROWTH), jr, ji,
                      power, max_iter, escape2, all_counts, mag2.reshape(-1))


def _resume_in_passes(module, running, re, im, zr, zi, done, cap, jr, ji, power, max_iter,
                      escape2, all_counts, all_mag2):
    """Continue the samples ``running`` (indices into all_counts and all_mag2; at (re, im),
    z = (zr, zi) after ``done`` iterations without escaping) up to ``cap`` iterations, then
    the samples still running PASS_GROWTH times further, packed into full blocks, and so on
    up to max_iter. Runs one pass at least, also with nothing running."""
    while True:
        n = running.size
        pass_counts = np.empty(n, dtype=np.uint32)
        pass_mag2 = np.empty(n)
        zr_end = np.empty(n, dtype=zr.dtype)
        zi_end = np.empty(n, dtype=zr.dtype)
        with _one_thread_if(n <= module.POINTS_PER_TASK):
            _call_vectorized(module.resume_points, (re, im, zr, zi, done, jr, ji, power, cap,
                                                    escape2, pass_counts, pass_mag2, zr_end,
                                                    zi_end))
        all_counts[running] = pass_counts
        all_mag2[running] = pass_mag2
        if cap >= max_iter:
            return
        still = pass_counts == cap
        running, re, im, zr, zi = (a[still] for a in (running, re, im, zr_end, zi_end))
        if not running.size:
            return
        done, cap = cap, min(max_iter, cap * PASS_GROWTH)


# Lists of points (the verification's samples) are scattered, so the counts inside a block
# of them spread as widely as the whole image's: every list runs in passes, the first
# stopping each sample at POINTS_FIRST_PASS iterations. Every pass runs one kernel,
# resume_points (the first resumes from z's start after 0 iterations), so a call with one
# point compiles all that a call with thousands runs (an image's cache warm-up).
POINTS_FIRST_PASS = 32


def iterate_points(kind, re, im, jr, ji, power, max_iter, escape2, counts, mag2):
    """Escape counts and |z|^2 of samples at arbitrary points (re[k], im[k]), 1-D arrays:
    the block kernels in passes, bit-identical to iterate_grid at the same coordinates."""
    module = block_module(kind, re.dtype)
    with _rows_one_at_a_time():
        if module is None:
            iterate_points_scalar(kind, re, im, jr, ji, power, max_iter, escape2, counts, mag2)
            return
        # One layout for every call: the kernel's signature, so one compile serves them all.
        re = np.ascontiguousarray(re)
        im = np.ascontiguousarray(im)
        if kind == escape.JULIA:  # z starts at the sample, as in iterate_grid's lanes
            zr, zi = re, im
        else:  # z starts at 0: iterate_grid's c - c, which is +0.0 for every finite c
            zr, zi = np.zeros_like(re), np.zeros_like(im)
        _resume_in_passes(module, np.arange(re.shape[0]), re, im, zr, zi, 0,
                          min(POINTS_FIRST_PASS, max_iter), jr, ji, power, max_iter, escape2,
                          counts, mag2)


def block_module(kind, dtype):
    """The generated block-kernel module for a fractal kind and precision (its kernels
    cached on disk by kernels/caching.py, under a key with the vectorizer settings), or None
    if it has none."""
    precision = "f32" if np.dtype(dtype) == np.float32 else "f64"
    for fractal, number in escape.KIND_OF_FRACTAL.items():
        if number == kind and (fractal, precision) in BLOCK_KERNELS:
            module = importlib.import_module(
                f"fractal_app.kernels._generated.{module_name(fractal, precision)}"
            )
            cached(module.iterate_grid)
            cached(module.resume_points)
            return module
    return None


_SLP_LOCK = threading.Lock()


def _call_vectorized(kernel, args):
    """Call a block kernel, compiling it (or loading it from the cache) with LLVM's SLP
    vectorizer on: Numba leaves SLP off by default, and switching it on for the whole
    process would slow every other compile."""
    signature = tuple(numba.typeof(a) for a in args)
    if signature not in kernel.overloads:
        with _SLP_LOCK:
            # The compiler rereads Numba's settings from the environment when a NUMBA_*
            # variable changed since the last read (fractal_app sets NUMBA_THREADING_LAYER
            # on import; Numba may have been imported first), resetting SLP_VECTORIZE in
            # the middle of this compile. Reread them now, so the compile keeps ours.
            numba_config.reload_config()
            previous = numba_config.SLP_VECTORIZE
            numba_config.SLP_VECTORIZE = 1
            try:
                kernel.compile(signature)
            finally:
                numba_config.SLP_VECTORIZE = previous
    kernel(*args)


class _one_thread_if:
    """Numba's thread count 1 for this thread while ``condition`` holds: for a call with
    one parallel task, which another thread could not share anyway. Waking the thread team
    for nothing cost milliseconds a call on a loaded machine, and passes make many calls."""

    def __init__(self, condition):
        self.condition = condition

    def __enter__(self):
        if self.condition:
            self.previous = numba.get_num_threads()
            numba.set_num_threads(1)

    def __exit__(self, *exc):
        if self.condition:
            numba.set_num_threads(self.previous)


class _rows_one_at_a_time:
    """Numba's parallel chunk size 1 for this thread: rows (or points) differ in cost, so
    threads take them one at a time instead of in equal contiguous shares."""

    def __enter__(self):
        self.previous = numba.set_parallel_chunksize(1)

    def __exit__(self, *exc):
        numba.set_parallel_chunksize(self.previous)


@cached
@numba.njit(parallel=True, nogil=True)
def iterate_grid_scalar(kind, re_cols, im_rows, jr, ji, power, max_iter, escape2, counts, mag2):
    """Samples on a grid: row r at im_rows[r], column k at re_cols[k] (scalar loop)."""
    for r in prange(im_rows.shape[0]):
        ci = im_rows[r]
        for k in range(re_cols.shape[0]):
            n, m = _escape(kind, re_cols[k], ci, jr, ji, power, max_iter, escape2)
            counts[r, k] = n
            mag2[r, k] = m


@cached
@numba.njit(parallel=True, nogil=True)
def iterate_points_scalar(kind, re, im, jr, ji, power, max_iter, escape2, counts, mag2):
    """Samples at arbitrary points (re[k], im[k]), 1-D arrays."""
    for k in prange(re.shape[0]):
        n, m = _escape(kind, re[k], im[k], jr, ji, power, max_iter, escape2)
        counts[k] = n
        mag2[k] = m


@cached
@numba.njit(parallel=True, nogil=True)
def colour_pixels(
    counts, mag2, max_iter, smooth, extra, inv_log_power, inv_log_max_iter, cycles, offset,
    table, interior, encoding, max_value, out,
):
    """counts, mag2: (P, s, Q, s) samples of P x Q pixels; out: (P, Q, 3) uint8/uint16;
    encoding: color.encode_table(max_value), max_value 255 or 65535; extra: the iterations
    the kernels continued past escape (escape.tail_iterations)."""
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
                        counts[p, a, q, c], mag2[p, a, q, c], max_iter, smooth, extra,
                        inv_log_power, inv_log_max_iter, cycles, offset, table, interior,
                    )
                    r += sr
                    g += sg
                    b += sb
            out[p, q, 0] = _encode(r / n_samples, encoding, max_value)
            out[p, q, 1] = _encode(g / n_samples, encoding, max_value)
            out[p, q, 2] = _encode(b / n_samples, encoding, max_value)
