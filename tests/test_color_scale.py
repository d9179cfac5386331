"""The "auto" colour scale (color_scale.py, kernels/color.py): knots from a view's own counts,
colours that do not follow max_iter, deep views that are not black, verification that
accepts the resolved knots only, and the scene fields' validation."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from fractal_app import color_scale, render, verify
from fractal_app.bandfile import BandMeta, write_band
from fractal_app.kernels import color
from fractal_app.scene import SceneError, parse_scene

# The 1e-10 view, 100 times deeper: deep by itself at this small size.
DEEP_VIEW = {"fractal": "mandelbrot", "resolution": [160, 90], "width": 1e-12,
             "center": ["-0.743643887037151", "0.131825904205330"], "max_iter": 5000}
PLAIN = {"fractal": "mandelbrot", "resolution": [48, 27], "center": [-0.74364, 0.13182],
         "width": 0.004, "max_iter": 3000}


def _knot_table(knots):
    return np.array([(math.log(1.0 + c), p) for c, p in knots], dtype=np.float64)


# --------------------------------------------------------------------------- the knots
def test_knots_equalise_the_preview_counts():
    rng = np.random.default_rng(3)
    counts = np.concatenate([rng.integers(100, 140, 600), rng.integers(140, 900, 300),
                             np.full(124, 1000)]).astype(np.uint32)  # 124 inside (at the cap)
    knots = color_scale.knots_from_counts(counts, 1000, smooth=True)
    values = np.array(knots)
    assert np.all(np.diff(np.log1p(values[:, 0])) > 0) and np.all(np.diff(values[:, 1]) > 0)
    # Positions are SPAN_CYCLES times the share of ALL samples below the knot's count.
    for count, position in knots:
        share = np.clip(count - (counts[counts < 1000] + 0.5), 0, 1).sum() / counts.size
        assert position == pytest.approx(color_scale.SPAN_CYCLES * share, abs=1e-12)
    assert knots[0][0] == 100.5 and knots[0][1] == 0.0
    assert knots[-1][1] == pytest.approx(color_scale.SPAN_CYCLES * 900 / 1024)
    # Flat colouring spreads a count over [n, n + 1): the knots move down by a half.
    flat = color_scale.knots_from_counts(counts, 1000, smooth=False)
    assert flat[0][0] == 100.0
    # Nothing escaped: a log scale over the preview's range.
    assert color_scale.knots_from_counts(np.full(50, 7), 7, True) == ((0.0, 0.0), (7.0, 3.0))


def test_knots_below_the_lower_max_iter_do_not_depend_on_max_iter():
    """Raising max_iter turns inside samples into escaped ones with higher counts: every
    knot among the counts both previews see stays put."""
    rng = np.random.default_rng(4)
    low = rng.integers(3000, 5000, 1024)
    low[rng.random(1024) < 0.3] = 5000  # inside at 5,000 ...
    high = low.copy()
    late = high == 5000
    high[late] = rng.integers(5000, 20000, late.sum())  # ... most escape by 20,000
    high[late & (rng.random(1024) < 0.5)] = 20000
    a = color_scale.knots_from_counts(low, 5000, True)
    b = color_scale.knots_from_counts(high, 20000, True)
    shared = [k for k in a if k[0] < 5000][:-1]  # the last marks where the escaped end
    assert len(shared) >= 20
    assert shared == list(b[: len(shared)])
    assert len(b) > len(a)


def test_knot_position_interpolates_in_log_count_and_extends_at_the_mean_pace():
    knots = _knot_table([(10.0, 0.0), (100.0, 1.0), (1000.0, 3.0)])
    for (u, p) in knots:
        assert color.knot_position(knots, u) == pytest.approx(p, abs=1e-15)
    middle = 0.5 * (knots[0, 0] + knots[1, 0])
    assert color.knot_position(knots, middle) == pytest.approx(0.5)
    mean_slope = 3.0 / (knots[2, 0] - knots[0, 0])
    assert color.knot_position(knots, knots[2, 0] + 1.0) == pytest.approx(3.0 + mean_slope)
    assert color.knot_position(knots, knots[0, 0] - 1.0) == pytest.approx(-mean_slope)
    # cycles and offset apply on top, and the index wraps into [0, 1)
    t = color.auto_palette_index(100, 4.0, False, 0, 1.0, knots, 1.0, 0.25)
    assert t == pytest.approx(0.25)
    t = color.auto_palette_index(100, 4.0, False, 0, 1.0, knots, 2.5, 0.0)
    assert t == pytest.approx(0.5)


def test_compiled_auto_colouring_equals_the_scalar_source():
    """The CPU colouring kernel (the one every backend's samples go through) against the
    uncompiled scalar functions, pixel by pixel, on a plain view in auto mode."""
    scene = color_scale.resolve(parse_scene({**PLAIN, "color_scale": "auto", "supersample": 1}))
    image = render.render_band(scene, 0, scene.height_px)
    counts_scene = scene.model_copy(update={"output": "counts"})
    counts = render.render_band(counts_scene, 0, scene.height_px)
    table = color.palette_table(scene.palette)
    knots = color_scale.kernel_knots(scene)
    rows, cols = np.nonzero(counts < scene.max_iter)
    assert rows.size > 500
    from fractal_app.kernels import cpu

    flat_counts = np.empty((1, 1), np.uint32)
    mag2 = np.empty((1, 1))
    params = render.escape_params(scene)
    for r, c in list(zip(rows, cols, strict=True))[::7]:
        re = render.sample_coords(scene, np.array([c]), "re").reshape(-1)
        im = render.sample_coords(scene, np.array([r]), "im").reshape(-1)
        cpu.iterate_points(params, re, im, flat_counts.reshape(-1), mag2.reshape(-1))
        t = color.auto_palette_index(int(flat_counts[0, 0]), float(mag2[0, 0]), True, 3,
                                     1 / math.log(2), knots, 1.0, 0.0)
        rgb = color.palette_lookup(table, t)
        expected = [color.quantize(color.linear_to_srgb(v), 255) for v in rgb]
        assert list(image[r, c]) == expected


# --------------------------------------------------------------------------- deep views
@pytest.fixture(scope="module")
def deep_pair():
    """The deep view at max_iter 5,000 and 20,000, auto-coloured: (counts, image) each."""
    out = []
    for max_iter in (5000, 20000):
        scene = color_scale.resolve(parse_scene({**DEEP_VIEW, "max_iter": max_iter}))
        assert scene.deep and scene.color_scale == "auto" and scene.color_knots
        counts = render.render_band(scene.model_copy(update={"output": "counts"}), 0, 90)
        out.append((scene, counts, render.render_band(scene, 0, 90)))
    return out


def test_same_counts_keep_their_colours_when_max_iter_changes(deep_pair):
    (low, counts_a, image_a), (high, counts_b, image_b) = deep_pair
    # The knots both previews can see are the same knots.
    shared = [k for k in low.color_knots if k[0] < 5000][:-1]
    assert len(shared) >= 16 and shared == list(high.color_knots[: len(shared)])
    same = (counts_a == counts_b) & (counts_a < 5000)
    assert same.mean() > 0.9
    diff = np.abs(image_a.astype(int) - image_b.astype(int)).max(axis=2)[same]
    # Measured: 99.75% of the pixels keep their count; of those 97.6% keep their colour
    # exactly, 99% within 6 levels, the worst 34: the ones in the top knot segment, which
    # at 5,000 ends where the preview's escaped samples end (0.3% are inside there).
    assert (diff == 0).mean() > 0.95
    assert np.percentile(diff, 99) <= 8


def test_deep_view_in_auto_mode_is_not_nearly_black(deep_pair):
    (scene, _, image), _ = deep_pair
    plain = render.render_band(scene.model_copy(update={"color_scale": "iterations",
                                                        "color_knots": None}), 0, 90)
    for picture, bright in ((image, True), (plain, False)):
        luminance = picture.astype(float) @ [0.2126, 0.7152, 0.0722]
        colours = len(np.unique(picture.reshape(-1, 3) // 16, axis=0))
        looks_good = luminance.mean() > 80 and luminance.std() > 50 and colours > 60
        assert looks_good == bright, (luminance.mean(), luminance.std(), colours)


def test_deep_views_default_to_auto_and_plain_ones_to_iterations():
    assert parse_scene(DEEP_VIEW).color_scale == "auto"
    plain = parse_scene({"fractal": "mandelbrot", "resolution": [8, 8]})
    assert plain.color_scale == "iterations"
    assert parse_scene(plain.to_json()) == plain
    assert parse_scene({**DEEP_VIEW, "color_scale": "iterations"}).color_scale == "iterations"


def test_resolved_knots_survive_the_scene_json_a_provider_reads():
    scene = color_scale.resolve(parse_scene(PLAIN | {"color_scale": "auto"}))
    again = parse_scene(scene.to_json())
    assert again.color_knots == scene.color_knots and not color_scale.needs_knots(again)
    assert color_scale.resolve(again) is again


# --------------------------------------------------------------------------- verification
def _band_files(tmp_path, scene, values, rows):
    meta = BandMeta("task-a", "sub-a", rows[0], rows[1], scene.output)
    folder = tmp_path / "out"
    folder.mkdir(parents=True)
    write_band(folder / "band.png", values, meta)
    return meta, folder


def test_verification_accepts_the_resolved_knots_and_rejects_others(tmp_path):
    scene = color_scale.resolve(parse_scene(PLAIN | {"color_scale": "auto",
                                                     "resolution": [96, 54]}))
    honest = render.render_band(scene, 0, 30)
    meta, folder = _band_files(tmp_path, scene, honest, (0, 30))
    verdict = verify.verify_band(scene, meta, folder, threading.Event())
    assert verdict.accepted, verdict.reason
    # Knots a provider computed for itself from another preview (shifted by 2% of a knot).
    moved = tuple((c * 1.02, p) for c, p in scene.color_knots)
    other = render.render_band(scene.model_copy(update={"color_knots": moved}), 0, 30)
    assert (other != honest).any(axis=2).mean() > 0.3
    meta, folder = _band_files(tmp_path / "b", scene, other, (0, 30))
    verdict = verify.verify_band(scene, meta, folder, threading.Event())
    assert not verdict.accepted
    # The iterations scale's colours are rejected too.
    iterations = render.render_band(scene.model_copy(update={"color_scale": "iterations",
                                                             "color_knots": None}), 0, 30)
    meta, folder = _band_files(tmp_path / "c", scene, iterations, (0, 30))
    assert not verify.verify_band(scene, meta, folder, threading.Event()).accepted


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"color_scale": "log"}, "field 'color_scale' must be 'iterations' or 'auto'"),
        ({"color_scale": "auto", "color_knots": [[1, 0]]}, "needs 2 .. 64"),
        ({"color_scale": "auto", "color_knots": [[5, 0], [3, 1]]}, "counts must rise strictly"),
        ({"color_scale": "auto", "color_knots": [[3, 1], [5, 0.5]]}, "positions must not fall"),
        ({"color_scale": "auto", "color_knots": [[3, 1], [5, 1]]}, "last position must be above"),
        ({"color_scale": "auto", "color_knots": [[-1, 0], [5, 1]]},
         "color_knots[0][0]' must be >= 0"),
        ({"color_scale": "auto", "color_knots": [[1, 0], [5, "x"]]}, "color_knots[1][1]"),
        ({"color_knots": [[1, 0], [5, 1]]}, "only for color_scale 'auto'"),
        ({"color_scale": "iterations", "color_knots": [[1, 0], [5, 1]]},
         "remove color_knots or set color_scale to 'auto'"),
    ],
)
def test_bad_colour_scale_fields_are_named_with_the_fix(fields, message):
    with pytest.raises(SceneError, match="color_"):
        parse_scene({"fractal": "mandelbrot", "resolution": [8, 8], **fields})
    try:
        parse_scene({"fractal": "mandelbrot", "resolution": [8, 8], **fields})
    except SceneError as error:
        assert message in str(error)


def test_three_d_scenes_have_no_colour_scale():
    with pytest.raises(SceneError, match="'color_scale' is not a mandelbulb parameter"):
        parse_scene({"fractal": "mandelbulb", "resolution": [8, 8], "color_scale": "auto"})
