"""CUDA kernels: the scalar cores of escape.py compiled with numba.cuda.

Same host-side contract as kernels/cpu.py (``iterate_grid``, ``iterate_points``): sample
coordinates in, escape counts (uint32) and |z|^2 (float64, read past escape for smooth
colouring: escape.colour_tail) out, so render.py colours GPU
and CPU samples with the same CPU colouring kernel. One thread per sample; the grid comes
from kernels.launch.grid_for, the one place that decides launch geometry.

Imported only when the cuda backend is chosen (render.resolve_backend), so a CPU-only
process never loads numba.cuda. Under NUMBA_ENABLE_CUDASIM=1 the same kernels run in
Numba's simulator, which is how the tests check them bit for bit against the CPU.

A real GPU contracts multiply-adds into FMAs (NVVM's default), which would move escape
counts at the sets' boundaries. Here it does not: the Mandelbrot, Julia and burning-ship
cores contract only into an FMA that rounds like the separate operations, and the
Multibrot core's products are libdevice's __dmul_rn/__fmul_rn (correctly rounded, never
fused); pixel coordinates come from the host. tests/test_cuda2d.py checks the PTX.
"""

import numpy as np
from numba import cuda
from numba.core import config as numba_config

from fractal_app.kernels import escape
from fractal_app.kernels.launch import grid_for

# inline="always": compile_ptx (PTX without a driver) requires device functions inlined.
_device = cuda.jit(device=True, inline="always")

if numba_config.ENABLE_CUDASIM:
    # The simulator runs Python: nothing is fused (and libdevice is only stubs there).
    _exact_mul = {np.float64: escape.mul, np.float32: escape.mul}
else:
    from numba.cuda import libdevice

    def _mul_rn_f64(a, b):
        return libdevice.dmul_rn(a, b)

    def _mul_rn_f32(a, b):
        return libdevice.fmul_rn(a, b)

    # Correctly rounded products that NVVM and ptxas never fuse into an FMA.
    _exact_mul = {np.float64: _mul_rn_f64, np.float32: _mul_rn_f32}

# One set of cores per precision: the products Multibrot needs exact differ by type.
cores_by_dtype = {
    dtype: escape.compile_cores(_device, exact_mul=_device(mul))
    for dtype, mul in _exact_mul.items()
}
cores = cores_by_dtype[np.float64]


def _make_kernels(escape_core):
    def grid_kernel(params, re_cols, im_rows, counts, mag2):
        """Thread (x, y) = sample (row y, column x) of a grid."""
        k, r = cuda.grid(2)
        if r < im_rows.shape[0] and k < re_cols.shape[0]:
            n, m = escape_core(params, re_cols[k], im_rows[r])
            counts[r, k] = n
            mag2[r, k] = m

    def points_kernel(params, re, im, counts, mag2):
        """Thread x = sample k at (re[k], im[k])."""
        k, _ = cuda.grid(2)
        if k < re.shape[0]:
            n, m = escape_core(params, re[k], im[k])
            counts[k] = n
            mag2[k] = m

    return grid_kernel, points_kernel


# The kernels' Python functions (for compile_ptx) and launchable kernels, per precision.
python_kernels = {dtype: _make_kernels(c.escape) for dtype, c in cores_by_dtype.items()}
_kernels = {
    dtype: tuple(cuda.jit(k) for k in pair) for dtype, pair in python_kernels.items()
}


def iterate_grid(params, re_cols, im_rows, counts, mag2):
    """Same contract as kernels.cpu.iterate_grid, on the GPU."""
    d_counts = cuda.device_array(counts.shape, dtype=np.uint32)
    d_mag2 = cuda.device_array(mag2.shape, dtype=np.float64)
    blocks, threads = grid_for(counts.shape[0], counts.shape[1])
    grid_kernel = _kernels[re_cols.dtype.type][0]
    grid_kernel[blocks, threads](
        params, cuda.to_device(re_cols), cuda.to_device(im_rows), d_counts, d_mag2
    )
    d_counts.copy_to_host(counts)
    d_mag2.copy_to_host(mag2)


def iterate_points(params, re, im, counts, mag2):
    """Same contract as kernels.cpu.iterate_points, on the GPU."""
    d_counts = cuda.device_array(counts.shape, dtype=np.uint32)
    d_mag2 = cuda.device_array(mag2.shape, dtype=np.float64)
    blocks, threads = grid_for(1, re.shape[0])
    points_kernel = _kernels[re.dtype.type][1]
    points_kernel[blocks, threads](
        params, cuda.to_device(re), cuda.to_device(im), d_counts, d_mag2
    )
    d_counts.copy_to_host(counts)
    d_mag2.copy_to_host(mag2)
