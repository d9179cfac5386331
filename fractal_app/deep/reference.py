"""What a deep view's pixels are perturbed against: the reference orbit and its BLA tables.

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
    """The orbit and the bilinear maps along it, as the kernels take them."""

    orbit: orbits.Orbit
    bla_f: np.ndarray
    bla_e: np.ndarray
    bla_off: np.ndarray

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (*self.orbit.arrays(), self.bla_f, self.bla_e, self.bla_off)


def dc_bound(pixel_mantissa: float, width_px: int, height_px: int) -> float:
    """A bound on |dc| / 2^pixel_exp over a view's samples: supersamples lie within half a
    pixel of the edges, so |offset| <= sqrt((W/2)^2 + (H/2)^2) <= (W + H) / 2 pixels."""
    return pixel_mantissa * (width_px + height_px) / 2 * DC_BOUND_SLACK


def cached_reference(geo, length: int, width_px: int, height_px: int) -> Reference:
    """The reference of a view of ``width_px`` x ``height_px`` pixels of geometry ``geo``
    (deep/view.py) with an orbit of ``length`` iterations; remembered like the orbit."""
    orbit = orbits.cached_orbit(geo.center_re, geo.center_im, geo.bits, length)
    bound = dc_bound(geo.pixel_mantissa, width_px, height_px)

    def build() -> Reference:
        return Reference(
            orbit, *bla.build_tables(orbit.mr, orbit.mi, orbit.e, bound, geo.pixel_exp)
        )

    key = ("reference", geo.center_re, geo.center_im, geo.bits, length, bound, geo.pixel_exp)
    return orbits.remember(key, build)
