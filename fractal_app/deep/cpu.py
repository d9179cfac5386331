"""The perturbation core compiled for the CPU: one kernel for grids (bands) and lists of
points (verification's samples), parallel over Numba's threads and releasing the GIL.

Pure: the reference orbit's arrays and the pixels' offsets in, counts and |z|^2 out.
"""

import numba
from numba import prange

from fractal_app.deep.bits import CPU_HELPERS
from fractal_app.deep.core import compile_core
from fractal_app.kernels import threads
from fractal_app.kernels.caching import cached

# frexp/ldexp as exponent-bit arithmetic (deep/bits.py): libm calls were a large share of
# a pixel's time.
core = compile_core(numba.njit(inline="always"), helpers=CPU_HELPERS)
_perturbed = core.perturbed


# One kernel for grids and lists of points: the core is most of a kernel's cold compile
# (inlined into a parallel loop, it is compiled twice, for the kernel and for its gufunc),
# and two kernels compiled it four times.
@cached
@numba.njit(parallel=True, nogil=True)
def kernel(
    xs, ys, grid, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    """A grid (``grid``: sample (r, k) at (xs[k], ys[r]), counts and mag2 flat, row after
    row; a row a parallel task) or a list of points (point k at (xs[k], ys[k]); a point a
    task)."""
    # g: 1 for a grid, 0 for points, in integer arithmetic (a conditional expression inside
    # the parallel loop mistyped its index variables)
    g = 1 if grid else 0
    width = xs.shape[0]
    tasks = ys.shape[0] * g + width * (1 - g)
    per_task = width * g + (1 - g)
    for task in prange(tasks):
        for sample in range(per_task):
            column = sample * g + task * (1 - g)
            n, m2 = _perturbed(
                xs[column], ys[task], dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout,
                max_iter
            )
            counts[task * per_task + sample] = n
            mag2[task * per_task + sample] = m2


def perturb_grid(
    dc_cols, dc_rows, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    """Sample (r, k) is c = C + (dc_cols[k] + i dc_rows[r]) * 2^dce."""
    if not (counts.flags.c_contiguous and mag2.flags.c_contiguous):
        raise ValueError("counts and mag2 must be C-contiguous: the kernel fills them flat")
    # Rows differ wildly in cost at depth: threads take them one at a time.
    with threads.chunks_of(1):
        kernel(dc_cols, dc_rows, True, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout,
               max_iter, counts.reshape(-1), mag2.reshape(-1))


def perturb_points(
    dcr, dci, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    """Sample k is c = C + (dcr[k] + i dci[k]) * 2^dce."""
    with threads.chunks_of(1):
        kernel(dcr, dci, False, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout,
               max_iter, counts, mag2)
