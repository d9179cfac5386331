"""Find deep locations: the nucleus of a minibrot of a given period near a seed, and its size.

Newton's method on ``Z_p(c) = 0`` in MPFR, and the usual size estimate of the minibrot at
that nucleus (Claude Heiland-Allen's, from the derivative of the period-p orbit). The tests
use it to put their views next to minibrots of periods in the hundreds to thousands; the
examples' centres were made with it.
"""

from __future__ import annotations


def nucleus(seed_re: str, seed_im: str, period: int, bits: int, steps: int = 100):
    """(nucleus as an mpc, estimated size of its minibrot as an mpfr), at ``bits``."""
    import gmpy2
    from gmpy2 import mpc

    with gmpy2.context(gmpy2.get_context(), precision=bits):
        c = mpc(gmpy2.mpfr(seed_re), gmpy2.mpfr(seed_im))
        for _ in range(steps):
            z = mpc(0)
            dz = mpc(0)
            for _ in range(period):
                dz = 2 * z * dz + 1
                z = z * z + c
            step = z / dz
            c = c - step
            if step == 0 or gmpy2.get_exp(abs(step)) < gmpy2.get_exp(abs(c)) - bits + 8:
                break
        z = mpc(0)
        derivative = mpc(1)
        b = mpc(1)
        for _ in range(1, period):
            z = z * z + c
            derivative = 2 * z * derivative
            b = b + 1 / derivative
        return c, 1 / abs(b * derivative * derivative)


def near_i(period: int, bits: int):
    """A nucleus of the given period near the Misiurewicz point c = i (the tip of the
    upper dendrite), where minibrots of every period sit at ever smaller scales."""
    import gmpy2

    with gmpy2.context(gmpy2.get_context(), precision=bits):
        offset = gmpy2.mpfr(4 * 2**0.5) ** (-period)
        return nucleus(str(offset), str(1 + offset), period, bits)


def minibrot_view_centre(exponent: int, period: int) -> tuple[str, str]:
    """The centre, as decimal strings, of a view of width 1e-``exponent`` on the first
    minibrot near c = i from ``period`` on that is under half that width (so the view shows
    its surroundings): the test views and the benchmark's."""
    import gmpy2

    bits = int(exponent * 3.33 * 1.3) + 256
    while True:
        c, size = near_i(period, bits)
        if gmpy2.log10(size) < -exponent - 0.3:
            break
        period += 1
    with gmpy2.context(gmpy2.get_context(), precision=bits):
        return format(c.real, f".{exponent + 20}e"), format(c.imag, f".{exponent + 20}e")


def julia_view_centre(c_re: str, c_im: str, exponent: int) -> tuple[str, str]:
    """A point of the Julia set of c (decimal strings) to well within 10^-``exponent``, as
    decimal strings: inverse iteration z <- +-sqrt(z - c) from 1, which the set attracts
    (each step at least halves the distance for the sets shown here), with the signs of
    a fixed pattern so the point is the same on every run."""
    import gmpy2
    from gmpy2 import mpc

    bits = int(exponent * 3.33 * 1.3) + 256
    with gmpy2.context(gmpy2.get_context(), precision=bits):
        c = mpc(gmpy2.mpfr(c_re), gmpy2.mpfr(c_im))
        z = mpc(1)
        for k in range(bits * 2):
            z = gmpy2.sqrt(z - c)
            if (k * 2654435761) >> 7 & 1:
                z = -z
        return format(z.real, f".{exponent + 20}e"), format(z.imag, f".{exponent + 20}e")
