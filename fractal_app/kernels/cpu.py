"""CPU kernels: the scalar cores of escape.py and color.py compiled with numba.njit.

Pure: arrays and numbers in, results written into caller-allocated arrays. Two steps, so
that the iteration (the hot part, vectorised for some fractals in ``_generated/``) and the
colouring (float64, transcendental, scalar) are each compiled once and shared by the band
and the pixel-list paths, which therefore give bit-identical numbers for the same pixel:

1. ``iterate_grid`` / ``iterate_points``: escape count (uint32) and |z|^2 (float64) per
   sample, sample coordinates given (already rounded to the scene's precision).
2. ``colour_pixels``: average the s x s samples of each pixel in linear light, encode
   to sRGB once, quantise to 8 or 16 bits.
"""

import numba
from numba import prange

from fractal_app.kernels import color, escape

_inline = numba.njit(inline="always")
cores = escape.compile_cores(_inline)
colours = color.compile_color(_inline)
_escape = cores.escape
_sample_rgb = colours.sample_rgb
_linear_to_srgb = colours.linear_to_srgb
_quantize = colours.quantize


@numba.njit(parallel=True, nogil=True, cache=True)
def iterate_grid(kind, re_cols, im_rows, jr, ji, power, max_iter, escape2, counts, mag2):
    """Samples on a grid: row r at im_rows[r], column k at re_cols[k] (scalar loop)."""
    for r in prange(im_rows.shape[0]):
        ci = im_rows[r]
        for k in range(re_cols.shape[0]):
            n, m = _escape(kind, re_cols[k], ci, jr, ji, power, max_iter, escape2)
            counts[r, k] = n
            mag2[r, k] = m


@numba.njit(parallel=True, nogil=True, cache=True)
def iterate_points(kind, re, im, jr, ji, power, max_iter, escape2, counts, mag2):
    """Samples at arbitrary points (re[k], im[k]), 1-D arrays."""
    for k in prange(re.shape[0]):
        n, m = _escape(kind, re[k], im[k], jr, ji, power, max_iter, escape2)
        counts[k] = n
        mag2[k] = m


@numba.njit(parallel=True, nogil=True, cache=True)
def colour_pixels(
    counts, mag2, max_iter, smooth, inv_log_power, inv_log_max_iter, cycles, offset, table,
    interior, max_value, out,
):
    """counts, mag2: (P, s, Q, s) samples of P x Q pixels; out: (P, Q, 3) uint8/uint16."""
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
            out[p, q, 0] = _quantize(_linear_to_srgb(r / n_samples), max_value)
            out[p, q, 1] = _quantize(_linear_to_srgb(g / n_samples), max_value)
            out[p, q, 2] = _quantize(_linear_to_srgb(b / n_samples), max_value)
