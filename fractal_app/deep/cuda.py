"""The perturbation core compiled for CUDA: same scalar source as deep/cpu.py, one thread
per sample, the reference orbit copied to the device once per call.

Same host-side contract as deep/cpu.py (``perturb_grid``, ``perturb_points``). A real GPU
contracts multiply-adds into FMAs, which moves counts at chaotic pixels; verification
recognises those (tests/test_deep.py checks an FMA-contracted build is accepted).
"""

import numpy as np
from numba import cuda

from fractal_app.deep.core import compile_core
from fractal_app.kernels.launch import grid_for

# inline="always": compile_ptx (PTX without a driver) requires device functions inlined.
core = compile_core(cuda.jit(device=True, inline="always"))
_perturbed = core.perturbed


def grid_kernel(
    dc_cols, dc_rows, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    """Thread (x, y) = sample (row y, column x)."""
    k, r = cuda.grid(2)
    if r < dc_rows.shape[0] and k < dc_cols.shape[0]:
        n, m2 = _perturbed(
            dc_cols[k], dc_rows[r], dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter
        )
        counts[r, k] = n
        mag2[r, k] = m2


def points_kernel(
    dcr, dci, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    """Thread x = sample k."""
    k, _ = cuda.grid(2)
    if k < dcr.shape[0]:
        n, m2 = _perturbed(
            dcr[k], dci[k], dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter
        )
        counts[k] = n
        mag2[k] = m2


_grid = cuda.jit(grid_kernel)
_points = cuda.jit(points_kernel)


def _launch(kernel, blocks, threads, a, b, dce, orbit_arrays, max_iter, counts, mag2):
    d_counts = cuda.device_array(counts.shape, dtype=np.uint32)
    d_mag2 = cuda.device_array(mag2.shape, dtype=np.float64)
    kernel[blocks, threads](
        cuda.to_device(a),
        cuda.to_device(b),
        dce,
        *(cuda.to_device(x) for x in orbit_arrays),
        max_iter,
        d_counts,
        d_mag2,
    )
    d_counts.copy_to_host(counts)
    d_mag2.copy_to_host(mag2)


def perturb_grid(
    dc_cols, dc_rows, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    blocks, threads = grid_for(counts.shape[0], counts.shape[1])
    _launch(
        _grid,
        blocks,
        threads,
        dc_cols,
        dc_rows,
        dce,
        (zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout),
        max_iter,
        counts,
        mag2,
    )


def perturb_points(
    dcr, dci, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    blocks, threads = grid_for(1, dcr.shape[0])
    _launch(
        _points,
        blocks,
        threads,
        dcr,
        dci,
        dce,
        (zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout),
        max_iter,
        counts,
        mag2,
    )
