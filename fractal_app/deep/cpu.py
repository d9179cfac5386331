"""The perturbation core compiled for the CPU: a grid kernel (bands) and a points kernel
(verification's samples), both parallel over Numba's threads and releasing the GIL.

Pure: the reference orbit's arrays and the pixels' offsets in, counts and |z|^2 out.
"""

import hashlib
from pathlib import Path

import numba
from numba import prange
from numba.core.caching import FunctionCache

from fractal_app.deep import core as _core_module
from fractal_app.deep.core import compile_core

core = compile_core(numba.njit(inline="always"))
_perturbed = core.mandelbrot_perturbed


@numba.njit(parallel=True, nogil=True, cache=True)
def _grid(dc_cols, dc_rows, dce, zr, zi, mr, mi, e, max_iter, counts, mag2):
    for r in prange(dc_rows.shape[0]):
        for k in range(dc_cols.shape[0]):
            n, m2 = _perturbed(dc_cols[k], dc_rows[r], dce, zr, zi, mr, mi, e, max_iter)
            counts[r, k] = n
            mag2[r, k] = m2


@numba.njit(parallel=True, nogil=True, cache=True)
def _points(dcr, dci, dce, zr, zi, mr, mi, e, max_iter, counts, mag2):
    for k in prange(dcr.shape[0]):
        n, m2 = _perturbed(dcr[k], dci[k], dce, zr, zi, mr, mi, e, max_iter)
        counts[k] = n
        mag2[k] = m2


class _CoreAwareCache(FunctionCache):
    """Numba's on-disk cache with core.py's source in the index key: Numba checks only the
    cached function's own file, so an edited core would otherwise load stale machine code."""

    stamp = hashlib.sha256(Path(_core_module.__file__).read_bytes()).hexdigest()[:16]

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), self.stamp)


for _kernel in (_grid, _points):
    _kernel._cache = _CoreAwareCache(_kernel.py_func)


def perturb_grid(dc_cols, dc_rows, dce, zr, zi, mr, mi, e, max_iter, counts, mag2):
    """Sample (r, k) is c = C + (dc_cols[k] + i dc_rows[r]) * 2^dce."""
    # Rows differ wildly in cost at depth: threads take them one at a time.
    previous = numba.set_parallel_chunksize(1)
    try:
        _grid(dc_cols, dc_rows, dce, zr, zi, mr, mi, e, max_iter, counts, mag2)
    finally:
        numba.set_parallel_chunksize(previous)


def perturb_points(dcr, dci, dce, zr, zi, mr, mi, e, max_iter, counts, mag2):
    """Sample k is c = C + (dcr[k] + i dci[k]) * 2^dce."""
    previous = numba.set_parallel_chunksize(1)
    try:
        _points(dcr, dci, dce, zr, zi, mr, mi, e, max_iter, counts, mag2)
    finally:
        numba.set_parallel_chunksize(previous)
