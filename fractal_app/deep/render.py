"""Render a band, or a list of pixels, of a deep 2D view: perturbation against one reference.

The deep counterpart of the float64 path in ``render.py``, with the same contract (values
of rows [row_start, row_stop), or of pixels (rows[k], cols[k]); escape counts or colours)
and the same colouring. Pixel (row j, column i) is the view's exact centre plus the offset
``((i - (W - 1) / 2) * px, ((H - 1) / 2 - j) * px)``, the offset computed in float64 in
units of ``px`` and scaled by ``px``'s binary exponent, so it never underflows. Band and
pixel paths share the offsets, the orbit and the core, so a pixel gets bit-identical values
from both, on every machine that computes the same orbit (MPFR: every machine).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from fractal_app.deep.reference import cached_reference
from fractal_app.deep.view import geometry


def reference_for(scene):
    """(geometry, reference) of a deep scene; the reference (orbit and BLA tables) is
    computed once per process per view."""
    view = scene.exact_view
    geo = geometry(view, scene.width_px)
    length = min(scene.max_iter, view.orbit_iter) if view.orbit_iter else scene.max_iter
    julia_c = None
    if scene.fractal == "julia":
        # c's exact binary value: the float64 path iterates that very number
        julia_c = (str(Decimal(scene.c[0])), str(Decimal(scene.c[1])))
    return geo, cached_reference(geo, length, scene.width_px, scene.height_px, julia_c)


def nudged(scene, re_ulps: float, im_ulps: float):
    """A copy of ``scene`` whose pixel offsets are moved by the given units in the last place
    of the largest offset: verification's test of whether a pixel's value is pinned down by
    its input or by rounding (the deep counterpart of nudging the centre)."""
    copy = scene.model_copy()
    copy.__pydantic_private__ = {**scene.__pydantic_private__, "_dc_nudge": (re_ulps, im_ulps)}
    return copy


def _offsets(scene, index: np.ndarray, axis: str, mantissa: float) -> np.ndarray:
    """(len(index), s) sample offsets from the centre, in units of 2^pixel_exp."""
    ss = scene.supersample
    sub = (np.arange(ss, dtype=np.float64) + 0.5) / ss
    position = (index.astype(np.float64)[:, None] - 0.5) + sub[None, :]
    if axis == "re":
        steps = position - (scene.width_px - 1) / 2
    else:
        steps = (scene.height_px - 1) / 2 - position
    offsets = steps * mantissa
    nudge = getattr(scene, "__pydantic_private__", {}).get("_dc_nudge")
    if nudge is not None:
        largest = mantissa * max(scene.width_px, scene.height_px)
        offsets = offsets + nudge[0 if axis == "re" else 1] * np.spacing(largest)
    return offsets


def _kernels(backend: str):
    if backend == "cuda":
        from fractal_app.deep import cuda

        return cuda
    from fractal_app.deep import cpu

    return cpu


def render_band_deep(scene, row_start: int, row_stop: int, backend: str = "cpu") -> np.ndarray:
    from fractal_app import render

    geo, reference = reference_for(scene)
    kernels = _kernels(backend)
    ss = scene.supersample
    width = scene.width_px
    dc_cols = _offsets(scene, np.arange(width), "re", geo.pixel_mantissa).reshape(-1)
    dc_rows = _offsets(scene, np.arange(row_start, row_stop), "im", geo.pixel_mantissa)
    dc_rows = dc_rows.reshape(-1)
    counts = np.empty((dc_rows.shape[0], dc_cols.shape[0]), dtype=np.uint32)
    mag2 = np.empty(counts.shape, dtype=np.float64)
    kernels.perturb_grid(
        dc_cols, dc_rows, geo.pixel_exp, *reference.arrays(), int(scene.max_iter), counts, mag2
    )
    rows = row_stop - row_start
    if not scene.output_format.coloured:
        return counts
    out = np.empty((rows, width, 3), dtype=render._image_dtype(scene))
    shape = (rows, ss, width, ss)
    render._colour(scene, counts.reshape(shape), mag2.reshape(shape), out)
    return out


def render_pixels_deep(
    scene, rows: np.ndarray, cols: np.ndarray, backend: str = "cpu"
) -> np.ndarray:
    from fractal_app import render

    geo, reference = reference_for(scene)
    kernels = _kernels(backend)
    ss = scene.supersample
    n = rows.shape[0]
    re = _offsets(scene, cols, "re", geo.pixel_mantissa)[:, None, :]
    im = _offsets(scene, rows, "im", geo.pixel_mantissa)[:, :, None]
    re, im = np.broadcast_arrays(re, im)
    re = np.ascontiguousarray(re.reshape(-1))
    im = np.ascontiguousarray(im.reshape(-1))
    counts = np.empty(re.shape[0], dtype=np.uint32)
    mag2 = np.empty(re.shape[0], dtype=np.float64)
    if n:
        kernels.perturb_points(
            re, im, geo.pixel_exp, *reference.arrays(), int(scene.max_iter), counts, mag2
        )
    if not scene.output_format.coloured:
        return counts
    out = np.empty((n, 1, 3), dtype=render._image_dtype(scene))
    if n:
        render._colour(scene, counts.reshape(n, ss, 1, ss), mag2.reshape(n, ss, 1, ss), out)
    return out.reshape(n, 3)
