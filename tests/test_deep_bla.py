"""The deep path's bilinear approximation (deep/bla.py): its maps are the composition of the
perturbation steps they replace, and the core really skips along them, with the counts of
stepping one iteration at a time (the views of tests/test_deep.py check those against
direct MPFR iteration)."""

from __future__ import annotations

from fractions import Fraction

import gmpy2
import numpy as np
import pytest
from test_deep import deep_scene

from fractal_app.deep import bla
from fractal_app.deep.core import TAIL_AFTER, ZERO_EXP, compile_core
from fractal_app.deep.render import _offsets, reference_for


def _fe(mantissa, exponent):
    return gmpy2.mul_2exp(gmpy2.mpfr(float(mantissa)), int(exponent))


@pytest.fixture(scope="module")
def view_1e300():
    scene = deep_scene(300, 400, (8, 6), 6_000)
    return scene, *reference_for(scene)


def _level_rows(segments, seg, level):
    """The rows of segment seg's maps of 2^level steps (deep/bla.py's layout)."""
    return int(segments[seg, 1 + level]), int(segments[seg, 2 + level])


def test_each_map_is_the_composition_of_the_steps_it_replaces(view_1e300):
    scene, geo, reference = view_1e300
    orbit = reference.orbit
    segments = reference.bla_off
    levels = segments.shape[1] - 2
    rng = np.random.default_rng(3)
    with gmpy2.context(gmpy2.get_context(), precision=200):
        z = [gmpy2.mpc(_fe(orbit.mr[m], orbit.e[m]), _fe(orbit.mi[m], orbit.e[m]))
             if orbit.mr[m] or orbit.mi[m] else gmpy2.mpc(0) for m in range(orbit.length)]
        checked = 0
        for seg in rng.integers(0, segments.shape[0], 4):
            for level in range(bla.MIN_LEVEL, levels, 2):
                low, high = _level_rows(segments, seg, level)
                for j in rng.integers(0, high - low, 2) if high > low else ():
                    a, b = gmpy2.mpc(1), gmpy2.mpc(0)
                    first = int(segments[seg, 0]) + (int(j) << level)
                    for m in range(first, first + (1 << level)):
                        a, b = 2 * z[m] * a, 2 * z[m] * b + 1
                    f, e = reference.bla_f[low + j], reference.bla_e[low + j]
                    got_a = gmpy2.mpc(_fe(f[bla.A_RE], e[bla.A_EXP]),
                                      _fe(f[bla.A_IM], e[bla.A_EXP]))
                    got_b = gmpy2.mpc(_fe(f[bla.B_RE], e[bla.B_EXP]),
                                      _fe(f[bla.B_IM], e[bla.B_EXP]))
                    assert abs(got_a - a) <= 1e-12 * abs(a), (seg, level, j)
                    assert abs(got_b - b) <= 1e-12 * abs(b), (seg, level, j)
                    # no map runs into the next segment
                    if seg + 1 < segments.shape[0]:
                        assert first + (1 << level) <= segments[seg + 1, 0]
                    checked += 1
    assert checked >= 12
    # Radii shrink as maps grow (the core's search relies on it), and spans that run past
    # a near-zero Z_m (where dz^2 is not negligible) get none.
    for seg in range(segments.shape[0]):
        for level in range(bla.MIN_LEVEL, levels - 1):
            here = slice(*_level_rows(segments, seg, level))
            up = slice(*_level_rows(segments, seg, level + 1))
            r_here = np.ldexp(np.sqrt(reference.bla_f[here, bla.R2]),
                              reference.bla_e[here, bla.R_EXP])
            r_up = np.ldexp(np.sqrt(reference.bla_f[up, bla.R2]), reference.bla_e[up, bla.R_EXP])
            assert (r_up <= r_here[: 2 * r_up.size : 2]).all()
    # Maps start after the step from Z_0 = 0 (dz <- dz^2 + dc, never linear): the first map
    # a rebased pixel can take starts at m = 1 and has a radius.
    assert bla.FIRST == 1 and segments[0, 0] == bla.FIRST
    assert reference.bla_f[segments[0, 1 + bla.MIN_LEVEL], bla.R2] > 0.0


def test_segments_start_one_past_each_close_pass_of_the_reference(view_1e300):
    """Near a minibrot of period p the reference passes close to 0 every p iterations; no
    map's radius reaches across such a pass, so a segment starts one past each, with maps
    aligned to it: a pixel leaving a pass takes the longest map that applies at once
    rather than climbing through 2-, 4-, 8-step maps aligned to m = 1."""
    scene, geo, reference = view_1e300
    orbit = reference.orbit
    starts = [int(m) for m in reference.bla_off[:, 0]]
    size = np.where((orbit.mr == 0) & (orbit.mi == 0), ZERO_EXP, orbit.e)
    assert starts[0] == bla.FIRST
    for first in starts[1:]:
        passed = first - 1
        assert size[passed] < bla.CLOSE_EXP
        assert size[passed] <= size[passed - 1] and size[passed] <= size[passed + 1]
    # every close pass starts a segment: once a period of the view's minibrot (the first
    # from period 400 on: 401)
    spacing = np.diff(starts)
    assert len(starts) >= 10 and (spacing == 401).all(), spacing
    # and every segment between two passes holds maps (a period's worth of steps)
    levels = reference.bla_off.shape[1] - 2
    for seg in range(len(starts) - 1):
        assert _level_rows(reference.bla_off, seg, levels - 1)[1] > _level_rows(
            reference.bla_off, seg, bla.MIN_LEVEL)[0]


def _core_recording_searches(searches: list):
    """The scalar core run as Python, each map search appended to ``searches`` as (m, n,
    found, length of the map found)."""
    core = compile_core(lambda f: f)  # the scalar source, run as Python: calls observable
    search = core.perturbed.__globals__["bla_level"]

    def observed(*args):
        row, level = search(*args)
        searches.append((args[4], args[5], row >= 0, 1 << level))
        return row, level

    core.perturbed.__globals__["bla_level"] = observed
    return core


def test_the_core_skips_most_iterations_and_counts_as_stepping_does(view_1e300):
    scene, geo, reference = view_1e300
    searches = []
    core = _core_recording_searches(searches)
    arrays = reference.arrays()
    no_maps = reference.stepping_arrays()
    cols = _offsets(scene, np.array([2, 5]), "re", geo.pixel_mantissa).ravel()
    rows = _offsets(scene, np.array([1, 4]), "im", geo.pixel_mantissa).ravel()
    for dcr, dci in zip(cols, rows, strict=True):
        searches.clear()
        count, _ = core.perturbed(dcr, dci, geo.pixel_exp, *arrays, scene.max_iter)
        skips = [length if found else 0 for _, _, found, length in searches]
        stepped, _ = core.perturbed(dcr, dci, geo.pixel_exp, *no_maps,
                                               scene.max_iter)
        assert count == stepped
        assert count > 400 and sum(skips) > 0.9 * count, (count, sum(skips))
        # loop passes: a map or a step each
        assert len(skips) + (count - sum(skips)) < count / 10


def _longest_map(reference, seg, m, n, max_iter, wr, wi, S):
    """The search's definition, counted up from the shortest map in exact arithmetic: the
    longest map from m in segment seg whose every shorter map from m exists and has
    |dz| < R."""
    segments = reference.bla_off
    k = m - int(segments[seg, 0])
    best = (-1, 0)
    if k < 0 or k % (1 << bla.MIN_LEVEL):
        return best
    w2 = Fraction(wr * wr + wi * wi)  # as the core rounds it
    for level in range(bla.MIN_LEVEL, segments.shape[1] - 2):
        j = k >> level
        low, high = _level_rows(segments, seg, level)
        row = low + j
        if (j << level) != k or n + (1 << level) > max_iter or row >= high:
            break
        r2 = Fraction(float(reference.bla_f[row, bla.R2]))
        radius2 = r2 * Fraction(2) ** (2 * (int(reference.bla_e[row, bla.R_EXP]) - S))
        if r2 == 0 or not w2 < radius2:
            break
        best = (row, level)
    return best


def test_the_map_search_finds_the_longest_map_from_any_hint(view_1e300):
    """The core starts its search at the level of the pixel's last map (a hint): from any
    start, dz and hint it must find the map that counting up from the shortest finds."""
    scene, geo, reference = view_1e300
    core = compile_core(lambda f: f)
    segments = reference.bla_off
    levels = segments.shape[1] - 2
    rng = np.random.default_rng(11)
    found = 0
    for _ in range(1500):
        seg = int(rng.integers(0, segments.shape[0]))
        level = int(rng.integers(bla.MIN_LEVEL, levels))
        low, high = _level_rows(segments, seg, level)
        if high == low:
            continue
        row = int(rng.integers(low, high))
        if reference.bla_f[row, bla.R2] == 0.0:
            continue  # no radius (the exponent stands for zero)
        m = int(segments[seg, 0]) + ((row - low) << level) + int(rng.choice([0, 0, 0, 1]))
        # |dz| around that map's radius, so searches end at every level
        S = int(reference.bla_e[row, bla.R_EXP]) + int(rng.integers(-3, 3))
        wr, wi = rng.uniform(-1.0, 1.0, 2)
        n = int(rng.integers(0, scene.max_iter))
        want = _longest_map(reference, seg, m, n, scene.max_iter, wr, wi, S)
        assert core.bla_segment(segments, 0, m) == seg
        for hint in (0, level - 1, level, level + 1, levels + 2):
            got = core.bla_level(reference.bla_f, reference.bla_e, segments, seg, m, n,
                                 scene.max_iter, wr, wi, S, hint)
            assert (int(got[0]), int(got[1])) == want, (seg, m, n, S, hint)
        found += want[0] >= 0
    # the draws reached maps of many lengths, and misses
    assert 300 < found < 1400


def test_the_core_stops_searching_for_maps_in_a_pixels_tail():
    """Past its last map a pixel takes tens of single steps before it escapes: after
    TAIL_AFTER searches in a row that found nothing the core stops looking (until a rebase
    or TAIL_SPAN steps later), with the counts of stepping every iteration."""
    scene = deep_scene(40, 53, (12, 9), 4_000)
    geo, reference = reference_for(scene)
    searches = []
    core = _core_recording_searches(searches)
    no_maps = reference.stepping_arrays()
    cols = _offsets(scene, np.arange(0, 12, 3), "re", geo.pixel_mantissa).ravel()
    rows = _offsets(scene, np.arange(0, 9, 2), "im", geo.pixel_mantissa).ravel()
    tail_steps = tail_searches = 0
    for dci in rows:
        for dcr in cols:
            searches.clear()
            count, _ = core.perturbed(dcr, dci, geo.pixel_exp, *reference.arrays(),
                                      scene.max_iter)
            stepped, _ = core.perturbed(dcr, dci, geo.pixel_exp, *no_maps, scene.max_iter)
            assert count == stepped
            end_of_maps = max((n + length for _, n, found, length in searches if found),
                              default=0)
            tail = [(m, n) for m, n, _, _ in searches if n >= end_of_maps]
            tail_steps += count - end_of_maps
            tail_searches += len(tail)
            # runs of searches one step apart (a rebase starts a new one at m = 1)
            run = 1
            for (m0, n0), (m1, n1) in zip(tail, tail[1:], strict=False):
                run = run + 1 if (m1, n1) == (m0 + 1, n0 + 1) else 1
                assert run <= TAIL_AFTER, (tail, count)
    # searching at every step where a map may start would be half the tail's steps or more
    assert tail_steps > 50 * len(rows) * len(cols)
    assert tail_searches < tail_steps / 5
