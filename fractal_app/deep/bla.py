"""Bilinear approximation (BLA) tables: many perturbation steps taken as one linear map.

While ``|dz|`` is tiny against ``|Z_m|``, the step ``dz <- 2 Z_m dz + dz^2 + dc`` is linear
to float64 precision (``dz^2`` is below the rounding of ``2 Z_m dz``). ``l`` such steps from
reference index ``m`` compose into ``dz <- A dz + B dc``, valid while ``|dz| < R``:

    one step:   A = 2 Z_m,  B = 1 (0 for a Julia set),  R = 2^EPS_EXP |Z_m|
    x then y:   A = A_y A_x,  B = A_y B_x + B_y,
                R = min(R_x, max(0, (R_y - |B_x| dc_max) / |A_x|))

(Heiland-Allen, "Deep zoom theory and practice (again)", 2022, after Zhuoran's proposal).
``dc_max`` bounds ``|dc|`` over the view, so one table serves every pixel of it.

The tables are cut into segments, each with its own levels: a segment starting at ``s``
holds, for steps of ``2^l``, the maps starting at ``m = s + j 2^l`` that end at or before
the next segment's start (or the reference's last value, where the core rebases); levels
below MIN_LEVEL are not kept (a one-step map costs what a step costs). The first segment
starts at 1, not 0: the step from ``Z_0 = 0`` is never linear (``dz <- dz^2 + dc``), and
every rebased pixel restarts there. The others start one past each close pass of the
reference to 0 (``|Z_m|`` a local minimum below 2^CLOSE_EXP: once a period near a
minibrot), where the one-step radius is nearly 0 and no map reaches across. A pixel leaves
such a pass at a segment's start, where every length is aligned, and takes the longest map
that applies at once; with the maps aligned to m = 1 it climbed through 2-, 4-, 8-, ...
256-step maps after every pass (measured at 1e-300: 116 maps and 184 loop passes a pixel
with one segment, 48 and 101 with segments).

A, B and R span thousands of binary orders at depth (|A| grows like the pixel's
derivative, up to 2^3300 at 1e-1000), so every value is a float64 mantissa with an integer
exponent. Built on the host from the orbit alone, with IEEE arithmetic and no contraction:
every machine builds the same table from the same orbit (what verification relies on).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fractal_app.deep.bits import CPU_HELPERS
from fractal_app.deep.core import BLA_FIRST as FIRST
from fractal_app.deep.core import BLA_MIN_LEVEL as MIN_LEVEL
from fractal_app.deep.core import ZERO_EXP, compile_core
from fractal_app.kernels.caching import cached

# The one-step radius: dz^2 stays below 2^EPS_EXP of 2 Z_m dz (float64's rounding, 2^-53).
EPS_EXP = -53
# A close pass of the reference to 0: |Z_m| a local minimum below 2^CLOSE_EXP. A map across
# one has almost no radius (R <= 2^EPS_EXP |Z_m|), so the tables start a new segment one
# past it, with maps aligned to that start (module docstring).
CLOSE_EXP = -20
# Columns of the float table: A (re, im), B (re, im), R's mantissa squared.
A_RE, A_IM, B_RE, B_IM, R2 = range(5)
# Columns of the exponent table: A, B, R.
A_EXP, B_EXP, R_EXP = range(3)


# The core's normalisation, compiled for the table builder.
_norm = compile_core(numba.njit(inline="always"), helpers=CPU_HELPERS).fe_normalize


@numba.njit(inline="always")
def _add(ar, ai, ae, br, bi, be):
    if ar == 0.0 and ai == 0.0:
        return _norm(br, bi, be)
    if br == 0.0 and bi == 0.0:
        return _norm(ar, ai, ae)
    if ae < be:
        ar, ai, ae, br, bi, be = br, bi, be, ar, ai, ae
    d = be - ae
    if d < -1100:
        return _norm(ar, ai, ae)
    return _norm(ar + math.ldexp(br, d), ai + math.ldexp(bi, d), ae)


@numba.njit(inline="always")
def _mul(ar, ai, ae, br, bi, be):
    if (ar == 0.0 and ai == 0.0) or (br == 0.0 and bi == 0.0):
        return 0.0, 0.0, ZERO_EXP
    return _norm(ar * br - ai * bi, ar * bi + ai * br, ae + be)


@numba.njit(inline="always")
def _abs(re, im, e):
    """|re + i im| * 2^e as a real (mantissa, exponent)."""
    m, _, k = _norm(math.hypot(re, im), 0.0, e)
    return m, k


@numba.njit(inline="always")
def _radius(rxm, rxe, rym, rye, bxm, bxe, axm, axe, dcm, dce):
    """min(R_x, max(0, (R_y - |B_x| dc_max) / |A_x|)) on real (mantissa, exponent) pairs."""
    if axm == 0.0:
        return rxm, rxe
    # |B_x| dc_max
    pm, _, pe = _norm(bxm * dcm, 0.0, bxe + dce)
    # R_y - that, clamped at 0
    qm, _, qe = _add(rym, 0.0, rye, -pm, 0.0, pe)
    if qm <= 0.0:
        return 0.0, ZERO_EXP
    ym, _, ye = _norm(qm / axm, 0.0, qe - axe)
    if rxm == 0.0:
        return 0.0, ZERO_EXP
    if ye < rxe or (ye == rxe and ym < rxm):
        return ym, ye
    return rxm, rxe


@cached
@numba.njit(nogil=True)
def _build(mr, mi, e, dcm, dce, b_step, seam, min_level, f_out, e_out, offsets):
    last = mr.shape[0] - 1
    # Level 0, single steps from m = FIRST .. last - 1 (row m - FIRST), in working arrays
    # (never stored).
    count = last - FIRST
    af = np.empty((count, 5))
    ae = np.empty((count, 3), dtype=np.int64)
    for m in range(FIRST, last):
        ar, ai, aexp = _norm(mr[m], mi[m], e[m] + 1)
        rm, rexp = _abs(mr[m], mi[m], e[m] + EPS_EXP)
        row = m - FIRST
        af[row, A_RE] = ar
        af[row, A_IM] = ai
        af[row, B_RE] = 0.5 * b_step
        af[row, B_IM] = 0.0
        af[row, R2] = 0.0 if m == seam else rm
        ae[row, A_EXP] = aexp
        ae[row, B_EXP] = 1 if b_step != 0.0 else ZERO_EXP
        ae[row, R_EXP] = ZERO_EXP if m == seam else rexp
    level = 0
    while count >= 2:
        half = count // 2
        nf = np.empty((half, 5))
        ne = np.empty((half, 3), dtype=np.int64)
        for j in range(half):
            x = 2 * j
            y = x + 1
            ar, ai, aexp = _mul(
                af[y, A_RE], af[y, A_IM], ae[y, A_EXP], af[x, A_RE], af[x, A_IM], ae[x, A_EXP]
            )
            br, bi, bexp = _mul(
                af[y, A_RE], af[y, A_IM], ae[y, A_EXP], af[x, B_RE], af[x, B_IM], ae[x, B_EXP]
            )
            br, bi, bexp = _add(br, bi, bexp, af[y, B_RE], af[y, B_IM], ae[y, B_EXP])
            axm, axe = _abs(af[x, A_RE], af[x, A_IM], ae[x, A_EXP])
            bxm, bxe = _abs(af[x, B_RE], af[x, B_IM], ae[x, B_EXP])
            rm, rexp = _radius(
                af[x, R2], ae[x, R_EXP], af[y, R2], ae[y, R_EXP], bxm, bxe, axm, axe, dcm, dce
            )
            nf[j, A_RE] = ar
            nf[j, A_IM] = ai
            nf[j, B_RE] = br
            nf[j, B_IM] = bi
            nf[j, R2] = rm
            ne[j, A_EXP] = aexp
            ne[j, B_EXP] = bexp
            ne[j, R_EXP] = rexp
        af = nf
        ae = ne
        count = half
        level += 1
        if level >= min_level:
            start = offsets[level]
            for j in range(half):
                for k in range(5):
                    f_out[start + j, k] = af[j, k]
                for k in range(3):
                    e_out[start + j, k] = ae[j, k]
    # Store R's mantissa squared: the core compares it with |w|^2.
    for i in range(f_out.shape[0]):
        f_out[i, R2] = f_out[i, R2] * f_out[i, R2]


def level_offsets(orbit_length: int, min_level: int = MIN_LEVEL) -> np.ndarray:
    """offsets[l] .. offsets[l + 1]: the rows of level l (steps of 2^l) in the tables of one
    segment whose orbit slice has ``orbit_length`` values."""
    counts = [0]
    level, count = 0, max(orbit_length - 1 - FIRST, 0)
    while count >= 2:
        count //= 2
        level += 1
        counts.append(count if level >= min_level else 0)
    return np.concatenate(([0], np.cumsum(counts))).astype(np.int64)


def segment_starts(mr, mi, e, seam: int = -1) -> list[int]:
    """Where the tables' segments start: FIRST, one past every close pass of the reference
    to 0 (|Z_m| a local minimum below 2^CLOSE_EXP), and one past ``seam``."""
    last = mr.shape[0] - 1
    if last < FIRST + 2:
        return [FIRST]
    size = np.where((mr == 0.0) & (mi == 0.0), ZERO_EXP, e.astype(np.int64))
    inner = size[FIRST:last]
    close = (inner < CLOSE_EXP) & (inner <= size[FIRST - 1:last - 1]) & (
        inner <= size[FIRST + 1:last + 1])
    starts = {FIRST, *(int(m) + FIRST + 1 for m in np.flatnonzero(close))}
    if 0 <= seam:
        starts.add(seam + 1)
    return sorted(m for m in starts if m < last)


def build_tables(
    mr, mi, e, dc_max_mantissa: float, dc_max_exp: int, adds_dc: bool = True, seam: int = -1
):
    """(floats (K, 5), exponents (K, 3), segments) for a reference's mantissas and
    exponents and a bound on |dc| of dc_max_mantissa * 2^dc_max_exp. ``adds_dc``: each step
    adds dc (Mandelbrot; B = 1 a step) or nothing (Julia; B = 0). ``seam``: an index whose
    successor starts another orbit (deep/core.py's layout): no map steps across it.

    Segment i covers the maps that start at or after segments[i, 0] and end at or before
    the next segment's start (or the reference's end); its level l's rows are
    segments[i, 1 + l] .. segments[i, 2 + l], the maps starting at segments[i, 0] + j 2^l."""
    last = mr.shape[0] - 1
    dcm, _ = math.frexp(dc_max_mantissa)
    dce = int(dc_max_exp) + math.frexp(dc_max_mantissa)[1]
    b_step = 1.0 if adds_dc else 0.0
    starts = segment_starts(mr, mi, e, seam)
    parts = []
    for first, end in zip(starts, [*starts[1:], last], strict=True):
        # the orbit slice whose index FIRST is m = first, and whose last value is m = end
        low = first - FIRST
        offsets = level_offsets(end - low + 1)
        f_out = np.zeros((int(offsets[-1]), 5))
        e_out = np.full((int(offsets[-1]), 3), ZERO_EXP, dtype=np.int64)
        if end - low > FIRST + 1:
            local_seam = seam - low if low <= seam <= end else -1
            _build(mr[low:end + 1], mi[low:end + 1], e[low:end + 1], dcm, dce, b_step,
                   local_seam, MIN_LEVEL, f_out, e_out, offsets)
        parts.append((first, f_out, e_out, offsets))
    width = max(len(offsets) for *_, offsets in parts)
    segments = np.zeros((len(parts), width + 1), dtype=np.int64)
    row = 0
    for i, (first, f_out, _, offsets) in enumerate(parts):
        segments[i, 0] = first
        segments[i, 1:] = row + offsets[-1]
        segments[i, 1:1 + len(offsets)] = row + offsets
        row += f_out.shape[0]
    f_all = np.concatenate([f for _, f, _, _ in parts]) if parts else np.zeros((0, 5))
    e_all = (np.concatenate([x for _, _, x, _ in parts]) if parts
             else np.zeros((0, 3), dtype=np.int64))
    return f_all, e_all, segments
