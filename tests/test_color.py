"""Colouring: palettes, the smooth index, the transfer curve, and whole images against the
pixel-by-pixel reference (supersampling in linear light, 8 and 16 bits, interior colour)."""

import math

import numpy as np
import pytest
import reference

from fractal_app import render
from fractal_app.kernels import color
from fractal_app.scene import PALETTE_NAMES, parse_scene


@pytest.mark.parametrize("name", PALETTE_NAMES)
def test_every_named_palette_has_a_linear_light_table(name):
    table = color.palette_table(name)
    assert table.shape == (color.PALETTE_TABLE_SIZE + 1, 3)
    assert (table >= 0).all() and (table <= 1).all()
    # Distinct colours along the palette, not a constant.
    assert np.ptp(table, axis=0).max() > 0.3


@pytest.mark.parametrize("name", ["classic", "twilight"])
def test_cyclic_palettes_wrap_without_a_seam(name):
    table = color.palette_table(name)
    np.testing.assert_allclose(table[0], table[-1])
    steps = np.abs(np.diff(table, axis=0)).max()
    assert np.abs(table[-1] - table[0]).max() <= steps


def test_viridis_follows_matplotlib_and_grows_in_lightness():
    table = color.palette_table("viridis")
    encoded = [[round(color.linear_to_srgb(v) * 255) for v in table[k]] for k in (0, -1)]
    assert encoded == [[0x44, 0x01, 0x54], [0xFD, 0xE7, 0x25]]
    # Perceptually ordered: relative luminance rises monotonically along the map.
    luminance = table @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(luminance) > 0).all()


def test_grayscale_is_neutral_and_monotone():
    table = color.palette_table("grayscale")
    np.testing.assert_allclose(table[:, 0], table[:, 1])
    np.testing.assert_allclose(table[:, 1], table[:, 2])
    assert (np.diff(table[:, 0]) > 0).all()


def test_transfer_curve_round_trips_and_quantises_half_up():
    for x in np.linspace(0, 1, 101):
        assert color.srgb_to_linear(color.linear_to_srgb(x)) == pytest.approx(x, abs=1e-12)
    assert color.quantize(-0.1, 255) == 0
    assert color.quantize(1.5, 255) == 255
    assert color.quantize(0.5 / 255, 255) == 1
    assert color.quantize(0.49 / 255, 255) == 0
    assert color.quantize(1.0, 65535) == 65535


def test_smooth_index_is_the_continuous_count():
    """nu = n + extra + 1 - log2(log|z|) (|z| read ``extra`` iterations past escape): with
    extra 0 and |z| = 2 (just escaped) nu = n + 1 - log2(log 2)."""
    inv_log2 = 1.0 / math.log(2.0)
    inv_log_max = 1.0 / math.log(1.0 + 100)
    t = color.palette_index(10, 4.0, 100, True, 0, inv_log2, inv_log_max, 1.0, 0.0)
    nu = 10 + 1 - math.log2(math.log(2.0))
    assert t == pytest.approx(math.log(1 + nu) * inv_log_max)
    # Continuity across a count boundary: escaping at count n with |z| = 2 matches
    # escaping one iteration later with |z| = 4 (about 2 squared).
    a = color.palette_index(10, 4.0, 100, True, 0, inv_log2, inv_log_max, 1.0, 0.0)
    b = color.palette_index(11, 16.0, 100, True, 0, inv_log2, inv_log_max, 1.0, 0.0)
    assert a == pytest.approx(b, abs=1e-9)
    flat = color.palette_index(10, 16.0, 100, False, 0, inv_log2, inv_log_max, 1.0, 0.0)
    assert flat == pytest.approx(math.log(11) * inv_log_max)


def test_cycles_and_offset_wrap_the_index():
    args = (7, 9.0, 50, True, 0, 1 / math.log(2), 1 / math.log(51))
    base = color.palette_index(*args, 1.0, 0.0)
    assert 0 <= base < 1
    shifted = color.palette_index(*args, 1.0, 0.25)
    assert shifted == pytest.approx((base + 0.25) % 1.0)
    doubled = color.palette_index(*args, 2.0, 0.0)
    assert doubled == pytest.approx((2 * base) % 1.0)


CASES = [
    {"fractal": "mandelbrot", "palette": "classic"},
    {"fractal": "mandelbrot", "palette": "viridis", "supersample": 3, "bit_depth": 16},
    {"fractal": "julia", "palette": "twilight", "palette_cycles": 3.5, "palette_offset": 0.3,
     "supersample": 2},
    {"fractal": "burning_ship", "palette": "fire", "smooth": False, "bit_depth": 16},
    {"fractal": "multibrot", "palette": "ocean", "power": 4, "interior_color": [200, 30, 90],
     "supersample": 2, "precision": "float32"},
    {"fractal": "mandelbrot", "palette": "electric", "precision": "float32", "max_iter": 50},
    {"fractal": "julia", "palette": "grayscale", "c": [0.285, 0.01],
     "interior_color": [9, 99, 199]},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['fractal']}-{c['palette']}")
def test_images_equal_the_pixel_by_pixel_reference(case):
    scene = parse_scene({"resolution": [13, 7], "max_iter": 80, **case})
    image = render.render_band(scene, 0, 7)
    assert image.dtype == (np.uint8 if scene.bit_depth == 8 else np.uint16)
    assert image.shape == (7, 13, 3)
    np.testing.assert_array_equal(image, reference.image(scene))
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 5


def test_interior_colour_fills_the_inside():
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [5, 4], "center": [-0.1, 0.0],
                         "width": 0.05, "interior_color": [10, 200, 30], "supersample": 2})
    image = render.render_band(scene, 0, 4)
    assert (image == [10, 200, 30]).all()


def test_supersample_one_equals_the_plain_render():
    """With s = 1 each pixel is exactly its centre sample's palette colour, encoded once."""
    params = {"fractal": "julia", "resolution": [23, 11], "max_iter": 90, "palette": "classic"}
    scene = parse_scene({**params, "supersample": 1})
    image = render.render_band(scene, 0, 11)
    table = color.palette_table("classic")
    for row in range(11):
        for col in range(23):
            n, mag2 = reference.escape(scene, *reference.pixel_coordinate(scene, row, col))
            if n >= scene.max_iter:
                expected = list(scene.interior_color)
            else:
                t = color.palette_index(n, mag2, 90, True, 3, 1 / math.log(2),
                                        1 / math.log(91), 1.0, 0.0)
                rgb = color.palette_lookup(table, t)
                expected = [color.quantize(color.linear_to_srgb(v), 255) for v in rgb]
            assert list(image[row, col]) == expected


@pytest.mark.parametrize("max_value", [255, 65535])
def test_table_encoding_equals_quantised_transfer_curve(max_value):
    """encode (a table and a short count) gives quantize(linear_to_srgb(x)) everywhere:
    on a dense grid, at random points, just either side of every code step, and beyond
    [0, 1]."""
    table = color.encode_table(max_value)
    rng = np.random.default_rng(3)
    steps = table[:max_value]
    xs = np.concatenate([
        np.linspace(0.0, 1.0, 20001), rng.random(20000), rng.random(2000) ** 6,
        steps * (1 - 1e-12), steps * (1 + 1e-12), [-0.5, -1e-300, 0.0, 1.0, 1.0 + 1e-9, 7.0],
    ])
    if max_value == 65535:  # every step for 8 bits; a sample of the 65535 for 16
        xs = np.concatenate([xs[:42006], rng.choice(xs[42006:-6], 20000), xs[-6:]])
    for x in xs:
        expected = color.quantize(color.linear_to_srgb(float(x)), max_value)
        assert color.encode(float(x), table, max_value) == expected, x
