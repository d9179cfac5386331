"""The 3D scalar core compiled for CUDA: grid kernels for a band and for a pixel list.

One thread per pixel, both kernels calling the same device ``pixel_rgb``; the launch
geometry comes from ``kernels.launch.grid_for``. Importing this module imports numba.cuda,
so callers import it only when the CUDA backend is chosen.
"""

import numpy as np
from numba import cuda
from numba.core import config as numba_config

from fractal_app import config
from fractal_app.kernels import raymarch
from fractal_app.kernels.launch import grid_for

# forceinline: NVVM inlines the device functions into the kernel (one flat kernel, no
# calls). Numba-level inline="always" does the same but took 25-45 s of compile per kernel
# here (it deep-copies the callee IR at every call site); forceinline compiles in ~5 s.
# (The simulator runs the Python functions as they are and knows no forceinline.)
DEVICE = (
    cuda.jit(device=True)
    if numba_config.ENABLE_CUDASIM
    else cuda.jit(device=True, forceinline=True)
)
_core = raymarch.compiled_with(DEVICE)
_pixel_rgb = _core.pixel_rgb


def _make_kernels(fingerprint):
    """The band and pixel-list kernels as plain Python (compile them with cuda.jit).

    Closures over the scalar sources' fingerprint, so a cached kernel is recompiled when
    raymarch.py or color.py changes (see raymarch.source_fingerprint).
    """

    def band_kernel(out, row_start, us, vs, params):
        """out[k, i] = RGB of pixel (row_start + k, i); x runs along columns, y along rows."""
        if fingerprint == 0:  # never true; keeps the fingerprint in the closure
            return
        i, k = cuda.grid(2)
        if k < out.shape[0] and i < out.shape[1]:
            r, g, b = _pixel_rgb(row_start + k, i, us, vs, params[0])
            out[k, i, 0] = r
            out[k, i, 1] = g
            out[k, i, 2] = b

    def pixels_kernel(out, rows, cols, us, vs, params):
        """out[n] = RGB of pixel (rows[n], cols[n])."""
        if fingerprint == 0:
            return
        n = cuda.grid(1)
        if n < out.shape[0]:
            r, g, b = _pixel_rgb(rows[n], cols[n], us, vs, params[0])
            out[n, 0] = r
            out[n, 1] = g
            out[n, 2] = b

    return band_kernel, pixels_kernel


def _jit_kernel(kernel):
    """cuda.jit with the disk cache where a cache folder is usable, without it elsewhere
    (Numba refuses to decorate a cache=True kernel when it finds no writable folder)."""
    try:
        return cuda.jit(cache=True)(kernel)
    except RuntimeError:
        return cuda.jit(kernel)


band_kernel, pixels_kernel = _make_kernels(raymarch.source_fingerprint())
_band = _jit_kernel(band_kernel)
_pixels = _jit_kernel(pixels_kernel)


def render_band(out: np.ndarray, row_start: int, us, vs, p) -> None:
    """Fill out (rows, W, 3) with rows row_start.. of the image on the GPU."""
    blocks, threads = grid_for(out.shape[0], out.shape[1])
    d_out = cuda.device_array(out.shape, dtype=out.dtype)
    _band[blocks, threads](
        d_out,
        row_start,
        cuda.to_device(us),
        cuda.to_device(vs),
        cuda.to_device(raymarch.as_record(p)),
    )
    d_out.copy_to_host(out)


def render_pixels(out: np.ndarray, rows, cols, us, vs, p) -> None:
    """Fill out (N, 3) with the listed pixels on the GPU (a 1-D grid)."""
    tx, ty = config.CUDA_THREADS_PER_BLOCK
    blocks, threads = grid_for(1, out.shape[0], (tx * ty, 1))
    d_out = cuda.device_array(out.shape, dtype=out.dtype)
    _pixels[blocks[0], threads[0]](
        d_out,
        cuda.to_device(rows),
        cuda.to_device(cols),
        cuda.to_device(us),
        cuda.to_device(vs),
        cuda.to_device(raymarch.as_record(p)),
    )
    d_out.copy_to_host(out)
