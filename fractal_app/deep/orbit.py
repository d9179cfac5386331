"""The reference orbit: the view's centre iterated in arbitrary precision (MPFR via gmpy2).

``Z_0 = 0, Z_{n+1} = Z_n^2 + C`` until ``|Z|^2 > 4`` or ``max_iter`` steps, at the
precision the view needs (:func:`precision_bits`). MPFR rounds every operation correctly,
so the same centre, precision and ``max_iter`` give the same orbit, bit for bit, on every
machine: a provider that recomputes it gets exactly the requestor's.

Each value is kept twice: as float64 (what the perturbation loop multiplies by) and as a
normalised mantissa pair with a binary exponent (exact where float64 would underflow,
which matters where the orbit passes very close to 0 near a minibrot).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

# Guard bits beyond the pixel size: the orbit is chaotic, so rounding errors grow along it;
# 64 bits keeps them far below a pixel for the escape counts we test (max_iter <= 10^6).
GUARD_BITS = 64
# float64 values below this (as a power of two) get an exact mantissa and exponent from MPFR.
EXACT_BELOW_EXP = -960
ZERO_EXP = -(1 << 28)


def precision_bits(pixel_exponent: int) -> int:
    """MPFR precision for a view whose pixels are about 2^pixel_exponent wide."""
    return max(53, -pixel_exponent + GUARD_BITS)


@dataclass(frozen=True)
class Orbit:
    """Z_0 .. Z_N of the reference, as float64 and as (mantissa, exponent)."""

    zr: np.ndarray
    zi: np.ndarray
    mr: np.ndarray
    mi: np.ndarray
    e: np.ndarray

    @property
    def length(self) -> int:
        return self.zr.shape[0]

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.zr, self.zi, self.mr, self.mi, self.e

    def save(self, path) -> None:
        np.savez(path, zr=self.zr, zi=self.zi, mr=self.mr, mi=self.mi, e=self.e)

    @classmethod
    def load(cls, path) -> Orbit:
        with np.load(path, allow_pickle=False) as data:
            return cls(*(np.ascontiguousarray(data[k]) for k in ("zr", "zi", "mr", "mi", "e")))


def compute_orbit(
    center_re: str, center_im: str, bits: int, max_iter: int, start: tuple[str, str] = ("0", "0")
) -> Orbit:
    """The orbit of ``start`` under z <- z^2 + C, C = center_re + i center_im (decimal
    strings): the Mandelbrot reference of C from 0, a Julia view's from its centre."""
    import gmpy2

    zr = np.zeros(max_iter + 1)
    zi = np.zeros(max_iter + 1)
    exact: dict[int, tuple[float, float, int]] = {}
    with gmpy2.context(gmpy2.get_context(), precision=bits, round=gmpy2.RoundToNearest):
        cr = gmpy2.mpfr(center_re)
        ci = gmpy2.mpfr(center_im)
        x = gmpy2.mpfr(start[0])
        y = gmpy2.mpfr(start[1])
        four = gmpy2.mpfr(4)
        n = 0
        while True:
            fx = float(x)
            fy = float(y)
            zr[n] = fx
            zi[n] = fy
            if max(abs(fx), abs(fy)) < 2.0**EXACT_BELOW_EXP:
                exact[n] = _exact_mantissa(gmpy2, x, y)
            x2 = x * x
            y2 = y * y
            if n >= max_iter or x2 + y2 > four:
                break
            y = 2 * x * y + ci
            x = x2 - y2 + cr
            n += 1
    count = n + 1
    zr = zr[:count].copy()
    zi = zi[:count].copy()
    mr, mi, e = _normalise(zr, zi)
    for k, (a, b, ex) in exact.items():
        mr[k], mi[k], e[k] = a, b, ex
    return Orbit(zr, zi, mr, mi, e)


def _exact_mantissa(gmpy2, x, y) -> tuple[float, float, int]:
    if x == 0 and y == 0:
        return 0.0, 0.0, ZERO_EXP
    ex = max(gmpy2.frexp(v)[0] for v in (x, y) if v != 0)
    return float(gmpy2.mul_2exp(x, -ex)), float(gmpy2.mul_2exp(y, -ex)), int(ex)


def _normalise(zr: np.ndarray, zi: np.ndarray):
    """Mantissas with max(|re|, |im|) in [0.5, 1) and exponents (ZERO_EXP for 0)."""
    big = np.maximum(np.abs(zr), np.abs(zi))
    _, ex = np.frexp(big)
    ex = ex.astype(np.int64)
    mr = np.ldexp(zr, -ex)
    mi = np.ldexp(zi, -ex)
    ex[big == 0] = ZERO_EXP
    return mr, mi, ex


_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple, threading.Lock] = {}
CACHE_ENTRIES = 4


def remember(key: tuple, compute):
    """compute(), remembered under ``key`` for the last few keys (the requestor verifies
    many bands of one task with one orbit); concurrent callers of one key compute it once."""
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            hit = _cache.get(key)
        if hit is None:
            hit = compute()
            with _cache_lock:
                while len(_cache) >= CACHE_ENTRIES:
                    _cache.pop(next(iter(_cache)))
                _cache[key] = hit
                _key_locks.pop(key, None)
        return hit


def cached_orbit(
    center_re: str, center_im: str, bits: int, max_iter: int, start: tuple[str, str] = ("0", "0")
) -> Orbit:
    """compute_orbit, remembered for the last few views."""
    return remember(
        ("orbit", center_re, center_im, bits, max_iter, start),
        lambda: compute_orbit(center_re, center_im, bits, max_iter, start),
    )
