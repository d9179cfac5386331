"""What a deep view's pixels are perturbed against: the reference orbits and their BLA tables.

A Mandelbrot view has one orbit, its centre's from 0 (also where rebased pixels restart).
A Julia view has two, laid end to end: the critical orbit (0, c, c^2 + c, ...: where
rebased pixels restart) and then its centre's orbit (where every pixel starts); see
deep/core.py's ``layout``.

Both follow from the view alone (centre, precision, orbit length, and a bound on the
pixels' offsets), by arithmetic that rounds the same everywhere, so the requestor and every
provider hold the same reference, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fractal_app.deep import bla
from fractal_app.deep import orbit as orbits

# |dc| bound slack: verification nudges offsets by a few units in the last place.
DC_BOUND_SLACK = 1.0 + 2.0**-20


@dataclass(frozen=True)
class Reference:
    """The orbit(s) and the bilinear maps along them, as the kernels take them."""

    orbit: orbits.Orbit
    bla_f: np.ndarray
    bla_e: np.ndarray
    bla_off: np.ndarray
    layout: np.ndarray

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (*self.orbit.arrays(), self.bla_f, self.bla_e, self.bla_off, self.layout)

    def stepping_arrays(self) -> tuple[np.ndarray, ...]:
        """The same, with no bilinear maps (no segments): the kernels step every iteration,
        what the maps are measured and checked against."""
        return (*self.orbit.arrays(), self.bla_f[:0], self.bla_e[:0], self.bla_off[:0],
                self.layout)


def dc_bound(pixel_mantissa: float, width_px: int, height_px: int) -> float:
    """A bound on |dc| / 2^pixel_exp over a view's samples: supersamples lie within half a
    pixel of the edges, so |offset| <= sqrt((W/2)^2 + (H/2)^2) <= (W + H) / 2 pixels."""
    return pixel_mantissa * (width_px + height_px) / 2 * DC_BOUND_SLACK


def cached_reference(
    geo, length: int, width_px: int, height_px: int, julia_c: tuple[str, str] | None = None
) -> Reference:
    """The reference of a view of ``width_px`` x ``height_px`` pixels of geometry ``geo``
    (deep/view.py) with orbits of ``length`` iterations, of the Mandelbrot set or (given its
    ``julia_c`` as exact decimal strings) a Julia set; remembered like the orbits."""
    bound = dc_bound(geo.pixel_mantissa, width_px, height_px)
    centre = (geo.center_re, geo.center_im)
    key = ("reference", *centre, julia_c, geo.bits, length, bound, geo.pixel_exp)
    return orbits.remember(key, lambda: _reference(geo, length, bound, julia_c))


def _reference(geo, length: int, bound: float, julia_c) -> Reference:
    centre = (geo.center_re, geo.center_im)
    if julia_c is None:
        orbit = orbits.cached_orbit(*centre, geo.bits, length)
        seam = -1
        layout = (0, orbit.length - 1, 1)
    else:
        critical = orbits.cached_orbit(*julia_c, geo.bits, length)
        own = orbits.cached_orbit(*julia_c, geo.bits, length, start=centre)
        orbit = orbits.Orbit(
            *(np.concatenate(pair) for pair in zip(critical.arrays(), own.arrays(), strict=True))
        )
        seam = critical.length - 1
        layout = (critical.length, seam, 0)
    tables = bla.build_tables(
        orbit.mr, orbit.mi, orbit.e, bound, geo.pixel_exp, adds_dc=julia_c is None, seam=seam
    )
    return Reference(orbit, *tables, np.array(layout, dtype=np.int64))
