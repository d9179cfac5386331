"""Smooth colouring has no seams: the continuous count nu changes smoothly across the steps
of the escape count, in every 2D kernel and both precisions.

Along a line through the outside of a set, the step of nu from one sample to the next varies
slowly; a seam is one step several times larger than its neighbours (read at escape radius 2
they were 4-11x). The test measures the largest such jump, and shows it fails the same bound
when |z| is read at escape.
"""

import math

import numpy as np
import pytest
import reference

from fractal_app.kernels import cpu, escape

# (fractal, power, julia c, line from, line to): lines from near the set outwards, crossing
# escape-count steps (not so near that the set's own detail makes nu rough).
LINES = [
    ("mandelbrot", 2, (0.0, 0.0), (0.3, 0.0), (2.5, 0.0)),
    ("mandelbrot", 2, (0.0, 0.0), (-0.75, 0.2), (-0.75, 2.5)),
    ("julia", 2, (-0.8, 0.156), (1.45, 0.0), (2.5, 0.0)),
    ("burning_ship", 2, (0.0, 0.0), (-1.0, 0.1), (-1.0, 2.5)),
    ("multibrot", 5, (0.0, 0.0), (0.0, 0.7), (0.0, 2.5)),
]
SAMPLES = 3000
# The largest step of nu against the mean of its two neighbours' steps. Smooth: about 1.
MAX_JUMP = 1.5


def continuous_count(counts, mag2, extra, power):
    """nu = n + extra + 1 - log_p(log|z|): color.palette_index's smooth value."""
    return counts + extra + 1.0 - np.log(0.5 * np.log(mag2)) / math.log(power)


def largest_jump(nu):
    steps = np.abs(np.diff(nu))
    neighbours = 0.5 * (steps[:-2] + steps[2:])
    return float(np.max(steps[1:-1] / neighbours))


def kernel_values(fractal, power, c, start, stop, dtype):
    t = np.linspace(0.0, 1.0, SAMPLES)
    re = (start[0] + t * (stop[0] - start[0])).astype(dtype)
    im = (start[1] + t * (stop[1] - start[1])).astype(dtype)
    counts = np.empty(SAMPLES, dtype=np.uint32)
    mag2 = np.empty(SAMPLES)
    params = escape.EscapeParams(escape.KIND_OF_FRACTAL[fractal], dtype(c[0]), dtype(c[1]), power,
                                 1000, dtype(4.0))
    cpu.iterate_points(params, re, im, counts, mag2)
    assert (counts < 1000).all(), "the line must stay outside the set"
    assert counts.max() - counts.min() >= 3, "the line must cross escape-count steps"
    return counts, mag2, re, im


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("line", LINES, ids=lambda line: line[0])
def test_the_smooth_value_has_no_seams(line, dtype):
    fractal, power, c, start, stop = line
    counts, mag2, _, _ = kernel_values(fractal, power, c, start, stop, dtype)
    nu = continuous_count(counts, mag2, escape.tail_iterations(power), power)
    assert largest_jump(nu) < MAX_JUMP


@pytest.mark.parametrize("line", LINES, ids=lambda line: line[0])
def test_reading_z_at_escape_shows_the_seams_the_bound_catches(line):
    """The same measure on |z| read at escape radius 2 (as before): seams, caught."""
    fractal, power, c, start, stop = line
    counts, _, re, im = kernel_values(fractal, power, c, start, stop, np.float64)
    scene = type("Scene", (), {"fractal": fractal, "power": power, "c": c})()
    at_escape = []
    for k in range(SAMPLES):
        x, y = (re[k], im[k]) if fractal == "julia" else (0.0, 0.0)
        cr, ci = (c if fractal == "julia" else (re[k], im[k]))
        while x * x + y * y <= 4.0:
            x, y = reference.step(scene, x, y, cr, ci)
        at_escape.append(x * x + y * y)
    nu = continuous_count(counts, np.array(at_escape), 0, power)
    assert largest_jump(nu) > 3 * MAX_JUMP


def test_tail_iterations_reach_far_past_escape_without_overflow():
    for power in range(2, 17):
        k = escape.tail_iterations(power)
        assert power**k >= 8  # |z| >= 2^8 when read, from |z| > 2
        # the largest |z| after escape (2^power + |c|, |c| <= 4) still squares in float64
        assert 2 * power**k * math.log2(2**power + 4) < 1024
