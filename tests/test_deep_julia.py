"""Deep Julia views against direct arbitrary-precision iteration of the same pixels.

Each view is centred on a point of the Julia set of the default c (found by inverse
iteration in MPFR, fractal_app.deep.locate.julia_view_centre), at widths 1e-30 .. 1e-1000.
The deep path perturbs each pixel against its centre's orbit and rebases onto the critical
orbit (0, c, c^2 + c, ...); the reference iterates z <- z^2 + c from each pixel's exact
z_0 in MPFR at the view's precision plus 64 bits.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import gmpy2
import numpy as np
import pytest

from fractal_app import render, verify
from fractal_app.bandfile import BandMeta
from fractal_app.deep.locate import julia_view_centre
from fractal_app.deep.render import _offsets
from fractal_app.deep.view import geometry
from fractal_app.scene import parse_scene

C = (-0.8, 0.156)
# (width exponent, image size, max_iter)
VIEWS = [(30, (10, 8), 2_000), (300, (8, 6), 8_000), (1000, (6, 6), 20_000)]


def julia_scene(exponent: int, size, max_iter: int, **extra):
    re, im = julia_view_centre(str(Decimal(C[0])), str(Decimal(C[1])), exponent)
    return parse_scene({"fractal": "julia", "c": list(C), "resolution": list(size),
                        "center": [re, im], "width": f"1e-{exponent}", "max_iter": max_iter,
                        "output": "counts", **extra})


def direct_counts(scene) -> np.ndarray:
    """Escape counts by plain z <- z^2 + c in MPFR from the deep path's own pixel z_0."""
    geo = geometry(scene.exact_view, scene.width_px)
    rows, cols = np.divmod(np.arange(scene.width_px * scene.height_px), scene.width_px)
    dre = _offsets(scene, cols, "re", geo.pixel_mantissa).reshape(-1)
    dim = _offsets(scene, rows, "im", geo.pixel_mantissa).reshape(-1)
    out = np.empty(rows.size, dtype=np.int64)
    with gmpy2.context(gmpy2.get_context(), precision=geo.bits + 64):
        cr, ci = gmpy2.mpfr(C[0]), gmpy2.mpfr(C[1])
        centre_re, centre_im = gmpy2.mpfr(geo.center_re), gmpy2.mpfr(geo.center_im)
        four = gmpy2.mpfr(4)
        for k in range(rows.size):
            x = centre_re + gmpy2.mul_2exp(gmpy2.mpfr(float(dre[k])), geo.pixel_exp)
            y = centre_im + gmpy2.mul_2exp(gmpy2.mpfr(float(dim[k])), geo.pixel_exp)
            n = 0
            while n < scene.max_iter:
                x2, y2 = x * x, y * y
                if x2 + y2 > four:
                    break
                y = 2 * x * y + ci
                x = x2 - y2 + cr
                n += 1
            out[k] = n
    return out.reshape(scene.height_px, scene.width_px)


@pytest.mark.parametrize("exponent, size, max_iter", VIEWS, ids=[f"1e-{v[0]}" for v in VIEWS])
def test_julia_escape_counts_equal_direct_mpfr_iteration(exponent, size, max_iter):
    scene = julia_scene(exponent, size, max_iter)
    assert scene.deep
    got = render.render_band(scene, 0, scene.height_px).astype(np.int64)
    want = direct_counts(scene)
    # Worth testing: the pixels are deep in the set's structure (counts grow with the
    # depth) and differ from each other.
    assert want.min() > 2 * exponent and np.unique(want).size >= 4, np.unique(want)
    differ = np.argwhere(got != want)
    assert differ.size == 0, [(int(r), int(c), got[r, c], want[r, c]) for r, c in differ]


def test_verification_accepts_honest_deep_julia_bands_and_rejects_cheats():
    scene = julia_scene(100, (32, 20), 3_000)
    values = render.render_band(scene, 0, scene.height_px)
    meta = BandMeta("t", "s", 0, scene.height_px, scene.output)
    rng = np.random.default_rng(1)
    cancel = threading.Event()
    honest = verify.check_values(scene, meta, values, rng, cancel)
    assert honest.accepted, honest.reason()
    shifted = np.roll(values, 1, axis=0)
    assert not verify.check_values(scene, meta, shifted, rng, cancel).accepted
    other_c = scene.model_copy(update={"c": (C[0], C[1] + 1e-9)})
    cheat = render.render_band(other_c, 0, scene.height_px)
    assert not np.array_equal(cheat, values)
    assert not verify.check_values(scene, meta, cheat, rng, cancel).accepted
