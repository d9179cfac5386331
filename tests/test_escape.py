"""Escape counts of every 2D fractal, both precisions, against the slow reference.

The kernels must be exact: with float64 the counts (and |z|^2 at escape) equal a pure
Python iteration on every pixel; with float32 they equal the same iteration in NumPy
float32 scalars. Views are chosen to cut through the sets' boundaries, where any
difference in rounding shows up as a different count. Widths of 37 and 70 leave partial
groups of 32 and 64 lanes, so the lane kernels' tails are checked too.
"""

import numpy as np
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st

from fractal_app import render
from fractal_app.kernels import cpu, lanes
from fractal_app.scene import parse_scene

VIEWS = reference.BOUNDARY_VIEWS
FRACTALS = list(VIEWS)
PRECISIONS = ["float64", "float32"]


def make_scene(fractal, precision="float64", resolution=(37, 9), **extra):
    params = {"fractal": fractal, "resolution": list(resolution), "precision": precision}
    params.update(VIEWS[fractal])
    params.update(extra)
    return parse_scene(params)


def kernel_samples(scene):
    """Counts and |z|^2 of the pixel centres straight from the CPU iteration kernel."""
    params = render.escape_params(scene)
    cols = np.arange(scene.width_px, dtype=np.int64)
    rows = np.arange(scene.height_px, dtype=np.int64)
    re = render.sample_coords(scene, cols, "re").reshape(-1).astype(params.dtype)
    im = render.sample_coords(scene, rows, "im").reshape(-1).astype(params.dtype)
    counts = np.empty((im.size, re.size), dtype=np.uint32)
    mag2 = np.empty(counts.shape)
    cpu.iterate_grid(params, re, im, counts, mag2)
    return counts, mag2


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fractal", FRACTALS)
@pytest.mark.parametrize("resolution", [(37, 9), (70, 5)])
def test_counts_and_final_magnitude_equal_the_reference(fractal, precision, resolution):
    scene = make_scene(fractal, precision, resolution)
    counts, mag2 = kernel_samples(scene)
    expected = np.zeros_like(counts)
    expected_mag2 = np.zeros_like(mag2)
    for row in range(scene.height_px):
        for col in range(scene.width_px):
            re, im = reference.pixel_coordinate(scene, row, col)
            expected[row, col], expected_mag2[row, col] = reference.escape(scene, re, im)
    # A view that is all inside or all outside would prove little.
    assert 0 < (expected == scene.max_iter).sum() < expected.size
    assert len(np.unique(expected)) > 5
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(mag2, expected_mag2)
    np.testing.assert_array_equal(
        render.render_band(make_scene(fractal, precision, resolution, output="counts"), 0,
                           resolution[1]),
        expected,
    )


@pytest.mark.parametrize("fractal", FRACTALS)
def test_float32_really_iterates_in_float32(fractal):
    """Zoomed in on the set's edge, single precision visibly differs from double."""
    shallow = make_scene(fractal, output="counts")
    counts = render.render_band(shallow, 0, shallow.height_px)
    # The escaping pixel with the highest count lies closest to the set.
    row, col = np.unravel_index(np.argmax(np.where(counts < shallow.max_iter, counts, 0)),
                                counts.shape)
    deep = {"center": list(reference.pixel_coordinate(shallow, row, col)),
            "width": VIEWS[fractal]["width"] / 5000, "max_iter": 400, "output": "counts"}
    c64 = render.render_band(make_scene(fractal, "float64", **deep), 0, 9)
    scene32 = make_scene(fractal, "float32", **deep)
    c32 = render.render_band(scene32, 0, 9)
    assert (c64 != c32).sum() > 0
    np.testing.assert_array_equal(c32, reference.counts_image(scene32))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fractal", FRACTALS)
def test_lane_kernels_equal_the_scalar_kernel(fractal, precision):
    """The 32/64-lane kernels (lanes.py's template) against the scalar core, 100x40
    samples."""
    scene = make_scene(fractal, precision, (100, 40))
    params = render.escape_params(scene)
    assert lanes.lane_code(params.kind) is not None
    counts, mag2 = kernel_samples(scene)
    re = render.sample_coords(scene, np.arange(100), "re").reshape(-1).astype(params.dtype)
    im = render.sample_coords(scene, np.arange(40), "im").reshape(-1).astype(params.dtype)
    scalar_counts = np.empty_like(counts)
    scalar_mag2 = np.empty_like(mag2)
    cpu.iterate_grid_scalar(params, re, im, scalar_counts, scalar_mag2)
    np.testing.assert_array_equal(counts, scalar_counts)
    np.testing.assert_array_equal(mag2, scalar_mag2)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fractal", FRACTALS)
def test_many_short_passes_give_the_same_counts(fractal, precision, monkeypatch):
    """The lane kernels can run in passes (each continuing the samples still running;
    Julia does by default); with tiny passes, many of them, for every fractal, the counts
    and |z|^2 are still the scalar core's."""
    scene = make_scene(fractal, precision, (100, 40))
    expected = kernel_samples(scene)
    monkeypatch.setattr(cpu, "FIRST_PASS_ITERATIONS", {kind: 1 for kind in range(4)})
    monkeypatch.setattr(cpu, "PASS_GROWTH", 2)
    counts, mag2 = kernel_samples(scene)
    np.testing.assert_array_equal(counts, expected[0])
    np.testing.assert_array_equal(mag2, expected[1])


def test_a_short_julia_render_compiles_both_pass_kernels():
    """An image's cache warm-up renders tiny scenes with a small max_iter; Julia's second
    kernel (resuming the samples still running) must be compiled by that too."""
    scene = parse_scene({"fractal": "julia", "resolution": [6, 4], "max_iter": 16,
                         "width": 0.01, "output": "counts"})  # all inside: nothing escapes
    counts = render.render_band(scene, 0, 4)
    np.testing.assert_array_equal(counts, reference.counts_image(scene))
    _, resume_signature = cpu.lane_kernel_signatures(render.escape_params(scene))[1]
    assert resume_signature in cpu.resume_points_lanes.overloads


def test_max_iter_one_and_escape_at_the_start():
    """Edge cases of the count: max_iter 1, and Julia pixels that start outside |z| = 2."""
    scene = make_scene("mandelbrot", resolution=(40, 3), max_iter=1, output="counts")
    assert (render.render_band(scene, 0, 3) == 1).all()
    scene = parse_scene({"fractal": "julia", "resolution": [40, 3], "width": 20.0,
                         "output": "counts"})
    counts = render.render_band(scene, 0, 3)
    assert counts[1, 0] == 0 and counts[1, -1] == 0
    np.testing.assert_array_equal(counts, reference.counts_image(scene))


# --- properties -----------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=40)


@settings(max_examples=15, deadline=None)
@given(width=sizes, height=sizes, center_re=st.floats(-2.0, 0.5), zoom=st.floats(0.01, 3.0),
       precision=st.sampled_from(PRECISIONS))
def test_mandelbrot_is_symmetric_about_the_real_axis(width, height, center_re, zoom, precision):
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [width, height],
                         "center": [center_re, 0.0], "width": zoom, "max_iter": 100,
                         "precision": precision, "output": "counts"})
    counts = render.render_band(scene, 0, height)
    np.testing.assert_array_equal(counts, counts[::-1])


@settings(max_examples=15, deadline=None)
@given(width=sizes, height=sizes, c_re=st.floats(-1.0, 0.5), c_im=st.floats(-1.0, 1.0),
       zoom=st.floats(0.05, 4.0), precision=st.sampled_from(PRECISIONS))
def test_julia_is_point_symmetric(width, height, c_re, c_im, zoom, precision):
    """z and -z have the same square, so pixel (j, i) and (H-1-j, W-1-i) iterate alike."""
    scene = parse_scene({"fractal": "julia", "resolution": [width, height], "c": [c_re, c_im],
                         "center": [0.0, 0.0], "width": zoom, "max_iter": 100,
                         "precision": precision, "output": "counts"})
    counts = render.render_band(scene, 0, height)
    np.testing.assert_array_equal(counts, counts[::-1, ::-1])


@settings(max_examples=20, deadline=None)
@given(fractal=st.sampled_from(FRACTALS), precision=st.sampled_from(PRECISIONS),
       output=st.sampled_from(["image", "counts"]), rows=st.data())
def test_a_band_equals_the_same_rows_of_the_whole_image(fractal, precision, output, rows):
    scene = make_scene(fractal, precision, (45, 12), output=output)
    whole = render.render_band(scene, 0, 12)
    r0 = rows.draw(st.integers(0, 11))
    r1 = rows.draw(st.integers(r0 + 1, 12))
    np.testing.assert_array_equal(render.render_band(scene, r0, r1), whole[r0:r1])
