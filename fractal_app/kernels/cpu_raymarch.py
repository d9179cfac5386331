"""The 3D scalar core compiled for the CPU: parallel band and pixel-list kernels.

Both kernels call the same compiled ``pixel_rgb``, so a pixel has the same value whether it is
rendered in a band or on its own. Rows are handed to threads in small chunks (see
``render_band``): rows differ a lot in cost (background rows are nearly free).
"""

from numba import njit, prange

from fractal_app.kernels import raymarch, threads
from fractal_app.kernels.caching import cached

_core = raymarch.compiled_with(njit(nogil=True))
_pixel_rgb = _core.pixel_rgb

# Rows per work item handed to a thread. Small, because row costs vary widely.
ROW_CHUNK = 1


# Cached under one key for all the kernel sources (kernels/caching.py), so an edit of
# raymarch.py or color.py, which these kernels compile in, recompiles them.
@cached
@njit(parallel=True, nogil=True)
def band_kernel(out, row_start, us, vs, params):
    """out[k, i] = RGB of pixel (row_start + k, i); out is (rows, W, 3) uint8/uint16;
    params: raymarch.as_record of the scene's RayParams."""
    for k in prange(out.shape[0]):
        row = row_start + k
        p = params[0]
        for i in range(out.shape[1]):
            r, g, b = _pixel_rgb(row, i, us, vs, p)
            out[k, i, 0] = r
            out[k, i, 1] = g
            out[k, i, 2] = b


@cached
@njit(parallel=True, nogil=True)
def pixels_kernel(out, rows, cols, us, vs, params):
    """out[n] = RGB of pixel (rows[n], cols[n]); out is (N, 3) uint8/uint16."""
    for n in prange(out.shape[0]):
        r, g, b = _pixel_rgb(rows[n], cols[n], us, vs, params[0])
        out[n, 0] = r
        out[n, 1] = g
        out[n, 2] = b


def render_band(out, row_start, us, vs, p):
    """Run band_kernel with rows handed out in chunks of ROW_CHUNK (p: a RayParams)."""
    with threads.chunks_of(ROW_CHUNK):
        band_kernel(out, row_start, us, vs, raymarch.as_record(p))


def render_pixels(out, rows, cols, us, vs, p):
    """Run pixels_kernel; the pixels of a spot check are scattered, so chunks stay small too."""
    with threads.chunks_of(ROW_CHUNK):
        pixels_kernel(out, rows, cols, us, vs, raymarch.as_record(p))
