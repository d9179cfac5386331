"""The perturbation core compiled for the CPU: a grid kernel (bands) and a points kernel
(verification's samples), both parallel over Numba's threads and releasing the GIL.

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


@cached
@numba.njit(parallel=True, nogil=True)
def _grid(
    dc_cols, dc_rows, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    for r in prange(dc_rows.shape[0]):
        for k in range(dc_cols.shape[0]):
            n, m2 = _perturbed(
                dc_cols[k],
                dc_rows[r],
                dce,
                zr,
                zi,
                mr,
                mi,
                e,
                bla_f,
                bla_e,
                bla_off,
                layout,
                max_iter,
            )
            counts[r, k] = n
            mag2[r, k] = m2


@cached
@numba.njit(parallel=True, nogil=True)
def _points(
    dcr, dci, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    for k in prange(dcr.shape[0]):
        n, m2 = _perturbed(
            dcr[k], dci[k], dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter
        )
        counts[k] = n
        mag2[k] = m2


def perturb_grid(
    dc_cols, dc_rows, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    """Sample (r, k) is c = C + (dc_cols[k] + i dc_rows[r]) * 2^dce."""
    # Rows differ wildly in cost at depth: threads take them one at a time.
    with threads.chunks_of(1):
        _grid(
            dc_cols,
            dc_rows,
            dce,
            zr,
            zi,
            mr,
            mi,
            e,
            bla_f,
            bla_e,
            bla_off,
            layout,
            max_iter,
            counts,
            mag2,
        )


def perturb_points(
    dcr, dci, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
):
    """Sample k is c = C + (dcr[k] + i dci[k]) * 2^dce."""
    with threads.chunks_of(1):
        _points(
            dcr, dci, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter, counts, mag2
        )
