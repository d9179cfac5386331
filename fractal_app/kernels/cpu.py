"""CPU kernels: the scalar cores of escape.py and color.py compiled with numba.njit.

Pure: arrays and numbers in, results written into caller-allocated arrays. Two steps, so
that the iteration (the hot part, vectorised by lanes.py) and the colouring (float64,
logarithms, scalar) are each compiled once and shared by the band and the pixel-list
paths, which therefore give bit-identical numbers for the same pixel:

1. ``iterate_grid`` / ``iterate_points``: escape count (uint32) and |z|^2 (float64) per
   sample, sample coordinates given (already rounded to the scene's precision), with the
   iteration's parameters as one ``escape.EscapeParams``. Both run the lane kernels below
   (32 float64 or 64 float32 samples iterated together, the code of lanes.py's template,
   vectorised by LLVM's SLP pass), bit-identical to the scalar cores: grids by rows, lists
   of samples (verification's) packed into groups of lanes, in passes. A fractal the
   template does not know runs the scalar cores.
2. ``colour_pixels``: average the s x s samples of each pixel in linear light, encode
   to sRGB once, quantise to 8 or 16 bits (color.encode: the same codes as
   quantize(linear_to_srgb(x)), by table).
"""

import threading
from dataclasses import dataclass

import numba
import numpy as np
from numba import prange
from numba.core import config as numba_config

from fractal_app.kernels import color, escape, lanes
from fractal_app.kernels.caching import cached
from fractal_app.kernels.threads import chunks_of, one_thread_if

_inline = numba.njit(inline="always")
# The colour tail is called, not inlined, as the lane kernels run it (see
# escape.compile_cores), so both give the same bits.
cores = escape.compile_cores(_inline, tail_jit=numba.njit(nogil=True))
colours = color.compile_color(_inline)
_escape = cores.escape
_sample_rgb = colours.sample_rgb
_encode = colours.encode


def iterate_grid(params, re_cols, im_rows, counts, mag2):
    """Escape counts and |z|^2 of the samples on a grid: row r at im_rows[r], column k at
    re_cols[k], into counts[r, k] (uint32) and mag2[r, k] (float64). ``params``: an
    escape.EscapeParams, of the coordinates' precision (float32 or float64)."""
    code = lanes.lane_code(params.kind)
    # Rows differ in cost: threads take them one at a time rather than in equal halves.
    with chunks_of(1):
        if code is None:
            iterate_grid_scalar(params, re_cols, im_rows, counts, mag2)
        else:
            _iterate_grid_in_passes(code, params, re_cols, im_rows, counts, mag2)


# Julia's lane kernels run in passes. A group of lanes iterates until its slowest lane
# stops, so one long-running pixel among quick ones wastes the rest of its group: at a
# Julia set's dendrites most groups are like that (median count 4, mean 46 in the default
# view). The first pass stops every sample at FIRST_PASS_ITERATIONS[kind]; each later pass
# packs the samples still running into full groups and continues them from where they
# stopped, PASS_GROWTH times further. The result is the same, bit for bit. Measured per
# core: Julia 2.5x faster; Mandelbrot 35% slower (its slow pixels sit together already,
# and a resumed group needs Im c per lane: more live registers, spills, plus the packing),
# so the other kinds run one pass.
FIRST_PASS_ITERATIONS = {escape.JULIA: 32}
PASS_GROWTH = 4


def _iterate_grid_in_passes(code, params, re_cols, im_rows, counts, mag2):
    dtype = re_cols.dtype
    max_iter = params.max_iter
    first = FIRST_PASS_ITERATIONS.get(params.kind)
    # Even a short render (max_iter >= 2: an image build's cache warm-up) runs both
    # kernels of a kind with passes, so both get compiled into the cache.
    cap = max_iter if first is None else max(1, min(first, max_iter // 2))
    keep_z = cap < max_iter
    z_shape = counts.shape if keep_z else (counts.shape[0], 0)
    zr = np.empty(z_shape, dtype=dtype)
    zi = np.empty(z_shape, dtype=dtype)
    _call_vectorized(iterate_grid_lanes, (code, re_cols, im_rows, params._replace(max_iter=cap),
                                          counts, mag2, keep_z, zr, zi))
    if not keep_z:
        return
    all_counts = counts.reshape(-1)  # views: the arrays are C-contiguous
    running = np.flatnonzero(all_counts == cap)
    rows, cols = np.divmod(running, re_cols.shape[0])
    samples = _Running(running, re_cols[cols], im_rows[rows], zr.reshape(-1)[running],
                       zi.reshape(-1)[running], cap)
    _resume_in_passes(code, params, samples, min(max_iter, cap * PASS_GROWTH), all_counts,
                      mag2.reshape(-1))


@dataclass
class _Running:
    """Samples still running: their indices into the outputs, coordinates (re, im), and z
    = (zr, zi) after ``done`` iterations without escaping."""

    index: np.ndarray
    re: np.ndarray
    im: np.ndarray
    zr: np.ndarray
    zi: np.ndarray
    done: int


def _resume_in_passes(code, params, samples, cap, all_counts, all_mag2):
    """Continue ``samples`` (a _Running) up to ``cap`` iterations, then the samples still
    running PASS_GROWTH times further, packed into full groups of lanes, and so on up to
    params.max_iter. Writes into all_counts and all_mag2 (flat outputs, by sample index).
    Runs one pass at least, also with nothing running."""
    s = samples
    index, re, im, zr, zi, done = s.index, s.re, s.im, s.zr, s.zi, s.done
    per_task = lanes.points_per_task(lanes.precision_of(zr.dtype))
    while True:
        n = index.size
        pass_counts = np.empty(n, dtype=np.uint32)
        pass_mag2 = np.empty(n)
        zr_end = np.empty(n, dtype=zr.dtype)
        zi_end = np.empty(n, dtype=zr.dtype)
        with one_thread_if(n <= per_task):
            _call_vectorized(resume_points_lanes, (code, per_task, re, im, zr, zi, done,
                                                   params._replace(max_iter=cap), pass_counts,
                                                   pass_mag2, zr_end, zi_end))
        all_counts[index] = pass_counts
        all_mag2[index] = pass_mag2
        if cap >= params.max_iter:
            return
        still = pass_counts == cap
        index, re, im, zr, zi = (a[still] for a in (index, re, im, zr_end, zi_end))
        if not index.size:
            return
        done, cap = cap, min(params.max_iter, cap * PASS_GROWTH)


# Lists of points (the verification's samples) are scattered, so the counts inside a group
# of them spread as widely as the whole image's: every list runs in passes, the first
# stopping each sample at POINTS_FIRST_PASS iterations. Every pass runs one kernel,
# resume_points_lanes (the first resumes from z's start after 0 iterations), so a call with
# one point compiles all that a call with thousands runs (an image's cache warm-up).
POINTS_FIRST_PASS = 32


def iterate_points(params, re, im, counts, mag2):
    """Escape counts and |z|^2 of samples at arbitrary points (re[k], im[k]), 1-D arrays:
    the lane kernels in passes, bit-identical to iterate_grid at the same coordinates."""
    code = lanes.lane_code(params.kind)
    with chunks_of(1):
        if code is None:
            iterate_points_scalar(params, re, im, counts, mag2)
            return
        # One layout for every call: the kernel's signature, so one compile serves them all.
        re = np.ascontiguousarray(re)
        im = np.ascontiguousarray(im)
        if params.kind == escape.JULIA:  # z starts at the sample, as in iterate_grid's lanes
            zr, zi = re, im
        else:  # z starts at 0: iterate_grid's c - c, which is +0.0 for every finite c
            zr, zi = np.zeros_like(re), np.zeros_like(im)
        samples = _Running(np.arange(re.shape[0]), re, im, zr, zi, 0)
        _resume_in_passes(code, params, samples, min(POINTS_FIRST_PASS, params.max_iter),
                          counts, mag2)


@cached
@numba.njit(parallel=True, nogil=True)
def iterate_grid_lanes(code, re_cols, im_rows, params, counts, mag2, keep_z, zr_end, zi_end):
    """Samples at (re_cols[k], im_rows[r]) from the start, up to params.max_iter
    iterations: counts, |z|^2 and, if keep_z, z (zr_end, zi_end: where a sample still
    running would resume; without keep_z they may have no columns). ``code``: the
    fractal's lanes.LaneCode."""
    for r in prange(im_rows.shape[0]):
        lanes.iterate_row(code, re_cols, im_rows[r], params, counts[r], mag2[r], keep_z,
                          zr_end[r], zi_end[r])


@cached
@numba.njit(parallel=True, nogil=True)
def resume_points_lanes(code, per_task, re, im, zr_start, zi_start, n_start, params, counts,
                        mag2, zr_end, zi_end):
    """Samples at (re[k], im[k]) that completed n_start iterations without escaping,
    continued from z = (zr_start[k], zi_start[k]) up to params.max_iter, ``per_task`` of
    them to a parallel task; outputs as iterate_grid_lanes."""
    n = re.shape[0]
    for task in prange((n + per_task - 1) // per_task):
        lo = task * per_task
        hi = min(lo + per_task, n)
        lanes.iterate_points(code, re[lo:hi], im[lo:hi], zr_start[lo:hi], zi_start[lo:hi],
                             n_start, params, counts[lo:hi], mag2[lo:hi], True, zr_end[lo:hi],
                             zi_end[lo:hi])


LANE_KERNELS = (iterate_grid_lanes, resume_points_lanes)


def lane_kernel_signatures(params):
    """(kernel, signature) of each lane kernel a render with ``params`` runs (empty for a
    fractal without lane code): what its cache entry is filed under."""
    code = lanes.lane_code(params.kind)
    if code is None:
        return []
    f = np.zeros(0, dtype=params.dtype)
    grid = (code, f, f, params, np.zeros((0, 0), np.uint32), np.zeros((0, 0)), False,
            f.reshape(0, 0), f.reshape(0, 0))
    points = (code, 0, f, f, f, f, 0, params, np.zeros(0, np.uint32), np.zeros(0), f, f)
    return [(kernel, tuple(numba.typeof(a) for a in args))
            for kernel, args in zip(LANE_KERNELS, (grid, points), strict=True)]


_SLP_LOCK = threading.Lock()


def _call_vectorized(kernel, args):
    """Call a lane kernel, compiling it (or loading it from the cache) with LLVM's SLP
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


@cached
@numba.njit(parallel=True, nogil=True)
def iterate_grid_scalar(params, re_cols, im_rows, counts, mag2):
    """Samples on a grid: row r at im_rows[r], column k at re_cols[k] (scalar loop)."""
    for r in prange(im_rows.shape[0]):
        ci = im_rows[r]
        for k in range(re_cols.shape[0]):
            n, m = _escape(params, re_cols[k], ci)
            counts[r, k] = n
            mag2[r, k] = m


@cached
@numba.njit(parallel=True, nogil=True)
def iterate_points_scalar(params, re, im, counts, mag2):
    """Samples at arbitrary points (re[k], im[k]), 1-D arrays."""
    for k in prange(re.shape[0]):
        n, m = _escape(params, re[k], im[k])
        counts[k] = n
        mag2[k] = m


@cached
@numba.njit(parallel=True, nogil=True)
def colour_pixels(
    counts, mag2, max_iter, smooth, extra, inv_log_power, inv_log_max_iter, cycles, offset,
    knots, table, interior, encoding, max_value, out,
):
    """counts, mag2: (P, s, Q, s) samples of P x Q pixels; out: (P, Q, 3) uint8/uint16;
    encoding: color.encode_table(max_value), max_value 255 or 65535; extra: the iterations
    the kernels continued past escape (escape.tail_iterations); knots: the "auto" colour
    scale's (K, 2) table, or (0, 2) for the "iterations" scale (color.sample_rgb)."""
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
                        inv_log_power, inv_log_max_iter, cycles, offset, knots, table,
                        interior,
                    )
                    r += sr
                    g += sg
                    b += sb
            out[p, q, 0] = _encode(r / n_samples, encoding, max_value)
            out[p, q, 1] = _encode(g / n_samples, encoding, max_value)
            out[p, q, 2] = _encode(b / n_samples, encoding, max_value)
