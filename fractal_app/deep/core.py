"""Perturbation of one Mandelbrot or Julia pixel against a reference: the deep path's scalar core.

Written once as plain Python, compiled by ``deep/cpu.py`` with ``numba.njit`` and by
``deep/cuda.py`` with ``numba.cuda.jit(device=True)`` (see :func:`compile_core`).

The pixel is ``c = C + dc``, where ``C`` is the view's centre, iterated in arbitrary
precision once (``deep/orbit.py``: ``Z_0 = 0, Z_1, ...``). The pixel's orbit is
``z_n = Z_m + dz`` and only the small difference is iterated, in float64:

    dz <- 2 Z_m dz + dz^2 + dc,    m <- m + 1

Rebasing (Zhuoran, 2021): when ``|z| < |dz|`` or the reference runs out, continue from the
start of the reference with ``dz = z, m = 0`` (valid because ``Z_0 = 0``). This keeps
``dz`` small against ``z`` and so avoids the precision loss ("glitches") of plain
perturbation, with one reference for the whole image.

Rescaled doubles: past about 1e-300 ``dz`` and ``dc`` underflow float64. The pixel keeps
``dz = w * 2^S`` with ``w`` a float64 pair near 1 and ``S`` an integer, and iterates

    w <- 2 Z_m w + 2^S w^2 + dc * 2^-S

where ``2^S`` (``s`` below) may itself underflow to 0: then ``dz^2`` is below 2^-1074
relative to ``2 Z dz`` and dropping it is exact in float64 terms. That holds while ``|Z_m|``
is not tiny; iterations where both ``Z_m`` and ``dz`` are below 2^TINY_EXP (just after a
rebase, where ``Z_0 = 0``, and where the reference passes close to 0 near a minibrot) run
in full float-with-exponent arithmetic ("careful" steps, rare), using the reference's own
mantissa and exponent so no tiny ``Z_m`` is lost to underflow.

A Julia pixel is ``z_0 = Z_0 + dc`` with ``Z`` the orbit of the view's centre under the fixed
``c``; it iterates ``dz <- 2 Z_m dz + dz^2`` from ``dz = dc`` and rebases onto the critical
orbit (``0, c, c^2 + c, ...``), the one orbit that starts at 0.

The escape count is the one of ``kernels/escape.py``: completed iterations before
``|z|^2 > 4`` is first observed, or ``max_iter``; the second result is that ``|z|^2``.
"""

import math

from fractal_app.kernels.compiling import compiled_namespace

# Below 2^TINY_EXP a reference value or a perturbation is "tiny": its products may
# underflow float64, so steps where both are tiny run in float-with-exponent arithmetic.
TINY_EXP = -400
# Where |w| leaves [2^-RENORM_EXP, 2^RENORM_EXP], fold its exponent into S.
RENORM_EXP = 16
# With S at or above this, |dz|^2 is a normal float64 and the rebase test runs in doubles.
DOUBLE_TEST_EXP = -480
# An exponent standing for zero.
ZERO_EXP = -(1 << 28)
# The shortest BLA map kept (deep/bla.py builds the tables): 2^BLA_MIN_LEVEL steps.
BLA_MIN_LEVEL = 1
# Where the BLA tables' first segment starts: its level l's maps start at BLA_FIRST + j 2^l
# (deep/bla.py says why not 0, and where the other segments start).
BLA_FIRST = 1
# A pixel's tail: after TAIL_AFTER single steps in a row where no map applied, with |dz|^2
# >= TAIL_MIN_D2 (dz no longer tiny), up to TAIL_SPAN single steps with no map search, or
# until a rebase. Past its last map a pixel takes tens of single steps to escape, and each
# search there failed after testing every level down from the last map's; a pixel that took
# its tail too early loses at most TAIL_SPAN steps to single steps where maps applied.
TAIL_AFTER = 4
TAIL_SPAN = 128
TAIL_MIN_D2 = 2.0**-700


def frexp_exponent(x):
    """math.frexp(x)[1]. The CPU build compiles in deep/bits.py's branch-free equal."""
    return math.frexp(x)[1]


def ldexp(x, k):
    """math.ldexp(x, k). The CPU build compiles in deep/bits.py's branch-free equal."""
    return math.ldexp(x, k)


def madd(a, b, c):
    """a * b + c, rounded twice. Every multiply-add a GPU would fuse goes through here, so a
    test can compile the core with a fused one (one rounding) and see what a GPU sends."""
    return a * b + c


def fe_normalize(re, im, e):
    """(re, im) * 2^e with max(|re|, |im|) in [0.5, 1), or (0, 0, ZERO_EXP)."""
    big = max(abs(re), abs(im))
    if big == 0.0:
        return 0.0, 0.0, ZERO_EXP
    k = frexp_exponent(big)
    return ldexp(re, -k), ldexp(im, -k), e + k


def fe_add(ar, ai, ae, br, bi, be):
    """(ar, ai) * 2^ae + (br, bi) * 2^be, normalised. Mantissas must be normalised (or zero
    with ZERO_EXP); a term more than 1100 binary orders below the other is dropped."""
    if ae >= be:
        d = be - ae
        if d < -1100:
            return fe_normalize(ar, ai, ae)
        return fe_normalize(ar + ldexp(br, d), ai + ldexp(bi, d), ae)
    d = ae - be
    if d < -1100:
        return fe_normalize(br, bi, be)
    return fe_normalize(br + ldexp(ar, d), bi + ldexp(ai, d), be)


def fe_less(ar, ai, ae, br, bi, be):
    """|a| < |b| for float-with-exponent complex numbers."""
    ar, ai, ae = fe_normalize(ar, ai, ae)
    br, bi, be = fe_normalize(br, bi, be)
    a2 = ar * ar + ai * ai
    b2 = br * br + bi * bi
    if a2 == 0.0:
        return b2 > 0.0
    if b2 == 0.0:
        return False
    # Normalised mantissas: |mantissa|^2 lies in [0.25, 2), so exponents decide beyond 1.
    if ae + 1 < be:
        return True
    if be + 1 < ae:
        return False
    return a2 < ldexp(b2, 2 * (be - ae))


def bla_map_exists(bla_off, seg, k, level, n, max_iter):
    """Whether segment seg of the tables holds a map of 2^level steps from k steps past its
    start that ends within the segment and within max_iter of a pixel n iterations in."""
    j = k >> level
    return (j << level) == k and n + (1 << level) <= max_iter and (
        bla_off[seg, 1 + level] + j < bla_off[seg, 2 + level])


def bla_map_applies(bla_f, bla_e, row, w2, lw, S):
    """|dz| < R for the map in ``row``: dz = w * 2^S, w2 = |w|^2, 2^(lw - 1) <= w2 < 2^lw."""
    r2 = bla_f[row, 4]
    if r2 == 0.0:
        return False
    # |dz| < R  <=>  w2 < r2 * 2^d2, with r2 (R's mantissa squared) in [0.25, 1):
    # exponents alone decide most tests
    d2 = 2 * (int(bla_e[row, 2]) - S)
    if lw - 1 >= d2:
        return False
    return lw <= d2 - 2 or w2 < ldexp(r2, d2)


def bla_segment(bla_off, seg, m):
    """The segment of the tables (deep/bla.py) whose maps start at reference index m, given
    one at or before it (a pixel only moves forward between rebases)."""
    while seg + 1 < bla_off.shape[0] and bla_off[seg + 1, 0] <= m:
        seg += 1
    return seg


def bla_level(bla_f, bla_e, bla_off, seg, m, n, max_iter, wr, wi, S, hint):
    """The row of the longest bilinear map (deep/bla.py) that may start at reference index
    m, in segment seg, with dz = (wr, wi) * 2^S, as (row, level), or (-1, 0).

    From one start, a longer map exists only where the shorter ones do, and its radius is no
    larger (deep/bla.py composes it so), so the levels that apply are MIN_LEVEL .. some L.
    The search looks for L from ``hint`` + 1, hint being the level of the pixel's last map:
    along the orbit a pixel takes maps of about the same length one after the other, so
    this finds L in one or two tests where counting up from MIN_LEVEL took L (and a
    mispredicted exit from a loop of varying length). Any hint gives the same L."""
    if seg >= bla_off.shape[0]:
        # no tables (stepping every iteration)
        return -1, 0
    k = m - bla_off[seg, 0]
    if k < 0 or k & ((1 << BLA_MIN_LEVEL) - 1) != 0:
        # no map starts here (half of all steps): skip the radius arithmetic
        return -1, 0
    levels = bla_off.shape[1] - 2
    if levels <= BLA_MIN_LEVEL:
        return -1, 0
    w2 = wr * wr + wi * wi
    lw = frexp_exponent(w2)
    level = max(BLA_MIN_LEVEL, min(hint + 1, levels - 1))
    # down to a level that applies ...
    while level >= BLA_MIN_LEVEL:
        if bla_map_exists(bla_off, seg, k, level, n, max_iter) and bla_map_applies(
                bla_f, bla_e, bla_off[seg, 1 + level] + (k >> level), w2, lw, S):
            break
        level -= 1
    if level < BLA_MIN_LEVEL:
        return -1, 0
    # ... then up while the next one applies too
    while level + 1 < levels and bla_map_exists(bla_off, seg, k, level + 1, n, max_iter):
        if not bla_map_applies(bla_f, bla_e, bla_off[seg, 2 + level] + (k >> (level + 1)),
                               w2, lw, S):
            break
        level += 1
    return bla_off[seg, 1 + level] + (k >> level), level


def start(dcr, dci, dce, layout):
    """The state of the pixel at offset (dcr, dci) * 2^dce before its first iteration, as
    :func:`advance` takes it: (m, wr, wi, S, s, dr, di, gr, gi, ge, dce), dc normalised."""
    # int(): exponents are Python ints in the CUDA simulator too (math.ldexp insists).
    dcr, dci, dce = fe_normalize(dcr, dci, int(dce))
    if layout[2] != 0:
        # what each step adds, (gr, gi) * 2^ge: dc; dz = 0 at the start
        gr = dcr
        gi = dci
        ge = dce
        wr = 0.0
        wi = 0.0
    else:
        gr = 0.0
        gi = 0.0
        ge = ZERO_EXP
        wr = dcr
        wi = dci
    # S at dc's scale
    S = dce
    s = ldexp(1.0, S)
    dr = ldexp(gr, ge - S)
    di = ldexp(gi, ge - S)
    return int(layout[0]), wr, wi, S, s, dr, di, gr, gi, ge, dce


def perturbed(
    dcr, dci, dce, zr_ref, zi_ref, mr_ref, mi_ref, e_ref, bla_f, bla_e, bla_off, layout, max_iter
):
    """Escape count and |z|^2 of the pixel at offset (dcr, dci) * 2^dce from the view's centre.

    zr_ref, zi_ref: reference values as float64; mr_ref, mi_ref, e_ref: the same values as
    normalised mantissas and exponents (exact where the float64 ones underflow). Indices
    0 .. layout[1] hold the critical orbit (Z_0 = 0, what a rebase restarts from); for a
    Julia set, the orbit of the view's centre follows, from layout[0] to the end. Each
    orbit's last value escaped or is its max_iter-th. layout[2]: 1 for Mandelbrot (the
    pixel is c = C + dc, dz starts at 0 and dc is added every step), 0 for Julia (the pixel
    is z_0 = Z_0 + dc, nothing is added). bla_f, bla_e, bla_off: the reference's bilinear
    maps (deep/bla.py); empty tables take every step.
    """
    m, wr, wi, S, s, dr, di, gr, gi, ge, dce = start(dcr, dci, dce, layout)
    return advance(m, 0, wr, wi, S, s, dr, di, gr, gi, ge, dce, zr_ref, zi_ref, mr_ref,
                   mi_ref, e_ref, bla_f, bla_e, bla_off, layout, max_iter)


def advance(m, n, wr, wi, S, s, dr, di, gr, gi, ge, dce, zr_ref, zi_ref, mr_ref, mi_ref,
            e_ref, bla_f, bla_e, bla_off, layout, max_iter):
    """Escape count and |z|^2 of a pixel iterated from the state :func:`start` gives, or
    that n completed iterations of this loop left: reference index m, dz = (wr, wi) * 2^S,
    s = 2^S, (dr, di) = dc * 2^-S, dc = (gr, gi) * 2^ge (normalised; zero for a Julia set;
    dce: dc's own exponent, what S restarts from when dz is 0). The reference arrays and
    tables as :func:`perturbed` takes them."""
    critical_last = layout[1]
    last = zr_ref.shape[0] - 1
    mag2 = 0.0
    # single steps since the last map or rebase; whether the pixel is in its tail, to when
    singles = 0
    tail = False
    tail_end = 0
    # (dr, di) is behind S: a map moved S and left dc * 2^-S for the next single step
    stale = False
    # the level of the pixel's last map: where the next map search starts
    last_level = 0
    # the tables' segment of the last map search (deep/bla.py)
    seg = 0
    while True:
        Zr = zr_ref[m]
        Zi = zi_ref[m]
        ze = int(e_ref[m])
        # the end of the orbit m is on: there the pixel rebases
        end = critical_last if m <= critical_last else last
        careful = ze < TINY_EXP and S < TINY_EXP
        rebase = False
        if careful:
            # z = Z + dz is tiny: it cannot escape; test |z| < |dz| exactly.
            qr, qi, qe = fe_add(mr_ref[m], mi_ref[m], ze, wr, wi, S)
            mag2 = ldexp(qr * qr + qi * qi, 2 * qe) if qe > -600 else 0.0
            if n >= max_iter:
                return n, mag2
            rebase = m == end or fe_less(qr, qi, qe, wr, wi, S)
            singles = 0
            tail = False
        else:
            xr = madd(wr, s, Zr)
            xi = madd(wi, s, Zi)
            mag2 = madd(xr, xr, xi * xi)
            if mag2 > 4.0 or n >= max_iter:
                return n, mag2
            # |dz|^2 where it is a normal float64, else -1
            d2 = -1.0
            if m == end:
                rebase = True
            elif S >= DOUBLE_TEST_EXP:
                d2 = (wr * wr + wi * wi) * (s * s)
                rebase = mag2 < d2
            elif ze < TINY_EXP:
                qr, qi, qe = fe_add(mr_ref[m], mi_ref[m], ze, wr, wi, S)
                rebase = fe_less(qr, qi, qe, wr, wi, S)
            if tail and (rebase or n >= tail_end):
                tail = False
                singles = 0
            if rebase:
                qr, qi, qe = fe_add(mr_ref[m], mi_ref[m], ze, wr, wi, S)
            elif m > 0 and not tail:
                # While |dz| << |Z| neither the escape nor the rebase test can fire: skip
                # along a bilinear map (dz <- A dz + B dc) as far as one applies.
                seg = bla_segment(bla_off, seg, m)
                row, level = bla_level(bla_f, bla_e, bla_off, seg, m, n, max_iter, wr, wi,
                                       S, last_level)
                if row >= 0:
                    ar = bla_f[row, 0]
                    ai = bla_f[row, 1]
                    br = bla_f[row, 2]
                    bi = bla_f[row, 3]
                    # dz <- A dz + B dc, in A dz's exponent: one power of two for B dc
                    # and no normalisation unless w leaves [2^-16, 2^16] (libm calls
                    # dominate a map's cost).
                    pr = madd(ar, wr, -(ai * wi))
                    pi = madd(ar, wi, ai * wr)
                    S = int(bla_e[row, 0]) + S
                    ur = madd(br, gr, -(bi * gi))
                    ui = madd(br, gi, bi * gr)
                    d = int(bla_e[row, 1]) + ge - S
                    if d < -1100:
                        # B dc is below rounding (or zero: a Julia set adds nothing)
                        wr = pr
                        wi = pi
                    elif d < 900:
                        f = ldexp(1.0, d)
                        wr = madd(ur, f, pr)
                        wi = madd(ui, f, pi)
                    else:
                        wr, wi, S = fe_add(pr, pi, S, ur, ui, S + d)
                    big = max(abs(wr), abs(wi))
                    if not (big > 1.0 / 65536.0 and big < 65536.0):
                        wr, wi, S = fe_normalize(wr, wi, S)
                    if S == ZERO_EXP:
                        S = dce
                    s = ldexp(1.0, S)
                    # dc * 2^-S is for a single step: computed there if one comes, not
                    # after every map (maps outnumber steps at depth)
                    stale = True
                    last_level = level
                    singles = 0
                    m += 1 << level
                    n += 1 << level
                    continue
                singles += 1
                if singles >= TAIL_AFTER and d2 >= TAIL_MIN_D2:
                    tail = True
                    tail_end = n + 1 + TAIL_SPAN
        if rebase:
            wr, wi, S = qr, qi, qe
            if S == ZERO_EXP:
                S = dce
            m = 0
            seg = 0
            singles = 0
            Zr = zr_ref[0]
            Zi = zi_ref[0]
            s = ldexp(1.0, S)
            dr = ldexp(gr, ge - S)
            di = ldexp(gi, ge - S)
            stale = False
            ze = int(e_ref[0])
            careful = S < TINY_EXP
        if careful:
            # dz <- 2 Z dz + dz^2 + dc, each term with its own exponent.
            ar = mr_ref[m]
            ai = mi_ref[m]
            pr = 2.0 * (ar * wr - ai * wi)
            pi = 2.0 * (ar * wi + ai * wr)
            tr, ti, te = fe_normalize(pr, pi, ze + S)
            qr2 = wr * wr - wi * wi
            qi2 = 2.0 * wr * wi
            ur, ui, ue = fe_normalize(qr2, qi2, 2 * S)
            tr, ti, te = fe_add(tr, ti, te, ur, ui, ue)
            wr, wi, S = fe_add(tr, ti, te, gr, gi, ge)
            if S == ZERO_EXP:
                S = dce
            s = ldexp(1.0, S)
            dr = ldexp(gr, ge - S)
            di = ldexp(gi, ge - S)
            stale = False
        else:
            if stale:
                dr = ldexp(gr, ge - S)
                di = ldexp(gi, ge - S)
                stale = False
            tr = madd(Zr, wr, -(Zi * wi))
            ti = madd(Zr, wi, Zi * wr)
            qr = madd(wr, wr, -(wi * wi))
            qi = 2.0 * wr * wi
            wr = madd(2.0, tr, madd(s, qr, dr))
            wi = madd(2.0, ti, madd(s, qi, di))
            big = max(abs(wr), abs(wi))
            if big > 65536.0:
                if big < 2.0**48 and S > -1000 and S < 900:
                    # Exact power-of-two steps: no libm calls on the common path.
                    wr *= 2.0**-32
                    wi *= 2.0**-32
                    S += 32
                    s *= 2.0**32
                    dr *= 2.0**-32
                    di *= 2.0**-32
                else:
                    wr, wi, S = fe_normalize(wr, wi, S)
                    s = ldexp(1.0, S)
                    dr = ldexp(gr, ge - S)
                    di = ldexp(gi, ge - S)
            elif big < 1.0 / 65536.0 and big > 0.0:
                wr, wi, S = fe_normalize(wr, wi, S)
                s = ldexp(1.0, S)
                dr = ldexp(gr, ge - S)
                di = ldexp(gi, ge - S)
        m += 1
        n += 1


def compile_core(jit, fused_madd=None, helpers=None):
    """The core compiled by ``jit`` (numba.njit(inline="always") or a cuda device jit),
    calling its compiled helpers. ``fused_madd`` (a compiled a * b + c with one rounding)
    stands in for :func:`madd` in GPU-like tests; ``helpers`` (name: compiled function)
    for :func:`frexp_exponent` and :func:`ldexp` (deep/bits.py's CPU_HELPERS)."""
    replace = dict(helpers or {})
    if fused_madd is not None:
        replace["madd"] = fused_madd
    return compiled_namespace(
        (frexp_exponent, ldexp, madd, fe_normalize, fe_add, fe_less, bla_map_exists,
         bla_map_applies, bla_segment, bla_level, start, advance, perturbed),
        jit,
        replace=replace,
    )
