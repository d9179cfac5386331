"""deep/bits.py's exponent-bit helpers give exactly what math.frexp and math.ldexp give, on
the values where a bit trick goes wrong first: zeros of both signs, subnormals, the edges
of the normal range, infinities, and scale factors far past them."""

import math
import sys

import numba
import numpy as np

from fractal_app.deep import bits

TINY = 5e-324  # 2^-1074, the smallest subnormal
VALUES = [
    0.0, -0.0, TINY, -TINY, 3 * TINY, 2.0**-1060 + TINY, 2.0**-1023, 2.0**-1022 - TINY,
    2.0**-1022, sys.float_info.min * 1.5, 0.5, 0.75, 1.0, -1.0, 1.0 - 2.0**-53, 3.0, 65536.0,
    1.0 / 65536.0, 2.0**600 * 1.25, -(2.0**-700) * 1.75, 2.0**1023, sys.float_info.max,
    -sys.float_info.max, math.inf, -math.inf, 0.1, -7.3e-310, 1.0000000000000002,
]
SCALES = [
    0, 1, -1, 2, -2, 32, -32, 52, -52, 53, -53, 54, -54, 500, -500, 969, -969, 1022, -1022,
    1023, -1023, 1024, -1024, 1074, -1074, 1075, -1075, 1076, -1076, 1100, -1100, 2000,
    -2000, 2098, -2098, 2099, -2099, 2200, -2200, 2201, -2201, 5000, -5000, 1 << 28,
    -(1 << 28), 1 << 40, -(1 << 40),
]


@numba.njit
def _exponents(xs, out):
    for i in range(xs.shape[0]):
        out[i] = bits.exponent(xs[i])


@numba.njit
def _scaled(xs, ks, out):
    for i in range(xs.shape[0]):
        for j in range(ks.shape[0]):
            out[i, j] = bits.scale2(xs[i], ks[j])


def _same(a: float, b: float) -> bool:
    """Equal bit for bit (so 0.0 and -0.0 differ)."""
    return np.float64(a).tobytes() == np.float64(b).tobytes()


def test_exponent_is_frexps_exponent():
    xs = np.array(VALUES + [math.nan])
    got = np.empty(xs.size, dtype=np.int64)
    _exponents(xs, got)
    for x, e in zip(xs[:-1], got[:-1], strict=True):
        assert e == math.frexp(x)[1], x
    assert got[-1] == 0  # nan: frexp's exponent is 0 too


def test_exponent_of_every_power_of_two_and_its_neighbours():
    ks = np.arange(-1074, 1024)
    xs = np.ldexp(1.0, ks)
    xs = np.concatenate([xs, np.nextafter(xs, np.inf), np.nextafter(xs, 0.0), -xs])
    got = np.empty(xs.size, dtype=np.int64)
    _exponents(xs, got)
    want = np.array([math.frexp(x)[1] for x in xs])
    assert np.array_equal(got, want)


def test_scale2_is_ldexp_rounded_once():
    xs = np.array(VALUES)
    ks = np.array(SCALES, dtype=np.int64)
    got = np.empty((xs.size, ks.size))
    _scaled(xs, ks, got)
    for i, x in enumerate(xs):
        for j, k in enumerate(ks):
            try:
                want = math.ldexp(x, int(k))
            except OverflowError:
                want = math.copysign(math.inf, x)
            assert _same(got[i, j], want), (x, int(k), got[i, j], want)


def test_scale2_rounds_into_the_subnormals_like_ldexp():
    # Mantissas with low bits set, scaled to where those bits round off (ties included):
    # a second rounding on the way down would show here.
    rng = np.random.default_rng(7)
    xs = np.concatenate([1.0 + rng.integers(0, 1 << 52, 400) * 2.0**-52,
                         [1.5, 1.25, 1.75, 1.0 + 2.0**-52, 2.0 - 2.0**-52]])
    xs = np.concatenate([xs * 2.0**e for e in (900, 0, -10, -30, -45, -60, -1000)])
    xs = np.concatenate([xs, -xs])
    ks = np.concatenate([np.arange(-1130, -1000), np.arange(-2150, -1130, 23)]).astype(np.int64)
    got = np.empty((xs.size, ks.size))
    _scaled(xs, ks, got)
    want = np.array([[math.ldexp(x, int(k)) for k in ks] for x in xs])
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert (want != 0.0).any() and (np.abs(want) < 2.0**-1022).any()
