"""The 3D ray marcher: distance estimators, marching, the camera, and the CPU kernels.

The slow reference is the scalar source itself, uncompiled: fractal_app.kernels.raymarch
called from plain Python (NumPy scalars, CPython's libm). The compiled CPU kernels must give
the same bits, since neither uses fastmath or FMA contraction.
"""

import math
import subprocess
import sys
import typing

import numpy as np
import pytest

from fractal_app import render3d
from fractal_app.errors import InvalidArgument
from fractal_app.kernels import raymarch as rm
from fractal_app.kernels.color import linear_to_srgb, quantize
from fractal_app.scene import parse_scene

# Small enough for the pure-Python reference, big enough to hold hits and misses.
TINY = {"resolution": [24, 16], "max_steps": 40, "iterations": 6}


def tiny_scene(fractal="mandelbulb", **overrides):
    return parse_scene({"fractal": fractal, **TINY, **overrides})


def reference_image(scene):
    """Every pixel through the uncompiled scalar source."""
    k = render3d.kernel_inputs(scene)
    out = np.empty((scene.height_px, scene.width_px, 3), dtype=k.out_dtype)
    for row in range(scene.height_px):
        for col in range(scene.width_px):
            out[row, col] = rm.pixel_rgb(row, col, k.us, k.vs, k.p)
    return out


@pytest.fixture(scope="module")
def cpu_core():
    from fractal_app.kernels import cpu_raymarch

    return cpu_raymarch._core


# ---- parameters ----


@pytest.mark.parametrize("fractal", ["mandelbulb", "mandelbox"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_kernels_get_every_parameter_by_name_in_the_scene_precision(fractal, precision):
    k = render3d.kernel_inputs(tiny_scene(fractal, precision=precision))
    record = rm.as_record(k.p)[0]
    float_type = np.float32 if precision == "float32" else np.float64
    kinds = typing.get_type_hints(rm.RayParams)
    for name, value in zip(k.p._fields, k.p, strict=True):
        assert type(value) is (np.int64 if kinds[name] is int else float_type), name
        assert record[name] == value and record[name].dtype == value.dtype, name
    assert k.us.dtype == k.vs.dtype == float_type


# ---- distance estimators ----


def test_power8_polynomial_equals_the_trigonometric_form():
    k = render3d.kernel_inputs(tiny_scene())
    assert k.p.fast8 == 1
    trig = k.p._replace(fast8=np.int64(0))
    rng = np.random.default_rng(7)
    for x, y, z in rng.uniform(-1.3, 1.3, size=(300, 3)):
        fast, _ = rm.mandelbulb_de(x, y, z, k.p)
        slow, _ = rm.mandelbulb_de(x, y, z, trig)
        assert fast == pytest.approx(slow, rel=1e-7, abs=1e-9)
    # on the y axis (x = z = 0) the polynomial's rescaling must not divide by zero
    on_axis, _ = rm.mandelbulb_de(0.0, 0.3, 0.0, k.p)
    assert on_axis == pytest.approx(rm.mandelbulb_de(0.0, 0.3, 0.0, trig)[0])
    assert math.isfinite(on_axis)


@pytest.mark.parametrize("fractal", ["mandelbulb", "mandelbox"])
def test_estimate_is_positive_outside_and_bounds_the_distance(fractal):
    """Outside the bounding sphere the estimate is positive and no more than the true
    distance to the sphere that holds the set (an estimator may underestimate, never
    overestimate by much)."""
    scene = tiny_scene(fractal)
    k = render3d.kernel_inputs(scene)
    bound = math.sqrt(k.p.bound_r2)
    rng = np.random.default_rng(3)
    for direction in rng.normal(size=(50, 3)):
        direction /= np.linalg.norm(direction)
        for radius in (1.2 * bound, 2.0 * bound):
            x, y, z = direction * radius
            d, _ = rm.distance(x, y, z, k.p)
            assert d > 0.0
            # the set touches the bound at most, so the distance to it is >= radius - bound
            assert d <= radius + 1e-9


def test_estimate_is_near_zero_at_a_marched_hit_and_negative_inside():
    scene = tiny_scene(iterations=12)
    k = render3d.kernel_inputs(scene)
    assert rm.distance(0.0, 0.0, 0.0, k.p)[0] <= 0.0  # the origin is in the set
    t, _, hit, _ = rm.march(0.0, 0.0, -3.0, 0.0, 0.0, 1.0, k.p)
    assert hit
    d, _ = rm.distance(0.0, 0.0, -3.0 + t, k.p)
    assert 0.0 <= d < scene.epsilon * t
    # and the hit is on the set's side of the bounding sphere
    assert 3.0 - math.sqrt(k.p.bound_r2) <= t < 3.0


def test_ray_up_the_y_axis_hits_the_known_point():
    """On the y axis the power-8 Mandelbulb is the real map y <- y^8 + c, whose set is
    [-2^(1/7), 8^(-1/7) * 7/8]; its lower end is a preperiodic point, so a ray up the axis
    from y = -3 stops 3 - 2^(1/7) away (within the surface threshold)."""
    scene = tiny_scene(iterations=30, max_steps=400, epsilon=1e-4)
    k = render3d.kernel_inputs(scene)
    expected = 3.0 - 2.0 ** (1.0 / 7.0)
    t, _, hit, _ = rm.march(0.0, -3.0, 0.0, 0.0, 1.0, 0.0, k.p)
    assert hit
    assert expected - 10 * scene.epsilon * expected < t <= expected


def test_compiled_march_equals_the_reference(cpu_core):
    scene = tiny_scene(iterations=12)
    k = render3d.kernel_inputs(scene)
    ray = (0.3, 0.2, -3.0, -0.05, 0.0, 1.0)
    n = math.sqrt(sum(c * c for c in ray[3:]))
    ray = ray[:3] + tuple(c / n for c in ray[3:])
    # the compiled functions read the record the kernels pass, the reference the tuple
    assert cpu_core.march(*ray, rm.as_record(k.p)[0]) == rm.march(*ray, k.p)


def test_float32_scenes_march_in_float32(cpu_core):
    """The estimator and marcher keep float32 all the way (no float64 promotion)."""
    k = render3d.kernel_inputs(tiny_scene(precision="float32"))
    assert type(k.p.epsilon) is np.float32 and k.us.dtype == np.float32
    f32 = np.float32
    record = rm.as_record(k.p)[0]
    cpu_core.distance(f32(0.5), f32(0.2), f32(-1.5), record)
    cpu_core.march(f32(0), f32(0), f32(-3), f32(0), f32(0), f32(1), record)
    # Other tests in the same process may have compiled other signatures too, in any order:
    # look up the one whose arguments are float32.
    assert _return_type(cpu_core.distance) == "UniTuple(float32 x 2)"
    assert _return_type(cpu_core.march) == "Tuple(float32, int64, bool, float32)"


def _return_type(dispatcher) -> str:
    for signature in dispatcher.nopython_signatures:
        if all(str(a) == "float32" for a in signature.args[:-1]):
            return str(signature.return_type)
    raise AssertionError(f"no float32 signature among {dispatcher.nopython_signatures}")


# ---- images ----


@pytest.mark.parametrize(
    ("fractal", "extra"),
    [
        ("mandelbulb", {}),
        ("mandelbulb", {"power": 5.5, "resolution": [12, 8]}),  # the trigonometric path
        ("mandelbox", {}),
        (
            "mandelbox",
            {"scale": -1.5, "camera": {"position": [0.0, 2.0, -5.0]}, "resolution": [12, 8]},
        ),
    ],
)
def test_cpu_image_equals_the_pure_python_reference(fractal, extra):
    scene = tiny_scene(fractal, **extra)
    image = render3d.render_band_3d(scene, 0, scene.height_px)
    assert image.shape == (scene.height_px, scene.width_px, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, reference_image(scene))


# The Mandelbox's default camera sits 3 units from the box's face: the view is all surface.
OUTSIDE_VIEW = {"mandelbulb": {}, "mandelbox": {"camera": {"position": [9.0, 8.0, -16.0]}}}


def hit_mask(scene, cpu_core):
    """Which pixel-centre rays hit the surface, from the compiled marcher."""
    k = render3d.kernel_inputs(scene)
    origin = (k.p.origin_x, k.p.origin_y, k.p.origin_z)
    record = rm.as_record(k.p)[0]
    hits = np.zeros((scene.height_px, scene.width_px), dtype=bool)
    for row in range(scene.height_px):
        for col in range(scene.width_px):
            direction = _pixel_centre_ray(scene, row, col)
            hits[row, col] = cpu_core.march(*origin, *direction, record)[2]
    return hits


@pytest.mark.parametrize("fractal", ["mandelbulb", "mandelbox"])
def test_view_has_hits_and_misses(fractal, cpu_core):
    scene = tiny_scene(fractal, **OUTSIDE_VIEW[fractal])
    hits = hit_mask(scene, cpu_core)
    assert 0.05 < hits.mean() < 0.95
    image = render3d.render_band_3d(scene, 0, scene.height_px)
    # rays that miss the bounding sphere show exactly the background colour; misses that
    # pass near the surface glow a little, but stay darker than the lit surface
    assert np.all(image[~hits] == np.array(scene.background), axis=-1).any()
    assert image[~hits].mean() < image[hits].mean()
    assert len(np.unique(image[hits], axis=0)) > 20  # shaded, not a flat silhouette


@pytest.mark.parametrize("fractal", ["mandelbulb", "mandelbox"])
def test_default_view_is_not_flat(fractal):
    scene = tiny_scene(fractal)
    image = render3d.render_band_3d(scene, 0, scene.height_px)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50


def test_negative_scale_mandelbox_renders(cpu_core):
    scene = tiny_scene("mandelbox", scale=-1.5, camera={"position": [0.0, 2.0, -5.0]})
    assert 0.02 < hit_mask(scene, cpu_core).mean() < 0.98
    image = render3d.render_band_3d(scene, 0, scene.height_px)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (3, 9), (15, 16), (0, 16)])
def test_band_equals_the_same_rows_of_the_whole_image(start, stop):
    scene = tiny_scene(supersample=2)
    whole = render3d.render_band_3d(scene, 0, scene.height_px)
    np.testing.assert_array_equal(render3d.render_band_3d(scene, start, stop), whole[start:stop])


@pytest.mark.parametrize("fractal", ["mandelbulb", "mandelbox"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_pixels_equal_band_values(fractal, precision):
    # float64 in 8 bits, float32 in 16: each output type once, fewer kernels to compile
    scene = tiny_scene(fractal, precision=precision, bit_depth=8 if precision == "float64" else 16)
    whole = render3d.render_band_3d(scene, 0, scene.height_px)
    rng = np.random.default_rng(11)
    rows = rng.integers(0, scene.height_px, 60)
    cols = rng.integers(0, scene.width_px, 60)
    values = render3d.render_pixels_3d(scene, rows, cols)
    assert values.shape == (60, 3) and values.dtype == whole.dtype
    np.testing.assert_array_equal(values, whole[rows, cols])


def _pixel_centre_ray(scene, row_f, col_f):
    """Unit direction through image position (row_f, col_f), from the camera alone."""
    forward, right, up = render3d.camera_basis(scene.camera)
    half = math.tan(math.radians(scene.camera.fov) / 2.0)
    size = 2.0 * half / scene.height_px
    u = (col_f - (scene.width_px - 1) / 2.0) * size
    v = ((scene.height_px - 1) / 2.0 - row_f) * size
    d = forward + u * right + v * up
    return d / np.linalg.norm(d)


def test_supersample_1_is_the_pixel_centre_ray_and_2_averages_four_in_linear_light():
    plain = tiny_scene()
    k = render3d.kernel_inputs(plain)
    row, col = 7, 12
    r, g, b = rm.sample_rgb(*_pixel_centre_ray(plain, row, col), k.p)
    expected = [quantize(linear_to_srgb(min(max(c, 0.0), 1.0)), 255) for c in (r, g, b)]
    got = render3d.render_pixels_3d(plain, np.array([row]), np.array([col]))[0]
    assert np.abs(got.astype(int) - expected).max() <= 1  # same ray, built another way

    ss = tiny_scene(supersample=2)
    k2 = render3d.kernel_inputs(ss)
    total = np.zeros(3)
    for a in (0.25, 0.75):
        for bb in (0.25, 0.75):
            ray = _pixel_centre_ray(ss, row - 0.5 + a, col - 0.5 + bb)
            total += rm.sample_rgb(*ray, k2.p)
    expected = [quantize(linear_to_srgb(min(max(c / 4.0, 0.0), 1.0)), 255) for c in total]
    got = render3d.render_pixels_3d(ss, np.array([row]), np.array([col]))[0]
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_float32_image_is_close_to_float64():
    # 16-bit: the kernel signatures other tests compile anyway
    f64 = render3d.render_band_3d(tiny_scene(bit_depth=16), 0, 16).astype(int)
    f32 = render3d.render_band_3d(tiny_scene(precision="float32", bit_depth=16), 0, 16)
    close = np.abs(f64 - f32.astype(int)).max(axis=-1) <= 8 * 257
    assert close.mean() > 0.85  # differences only where a ray grazes the surface


def test_16_bit_output_matches_8_bit():
    eight = render3d.render_band_3d(tiny_scene(), 0, 16).astype(int)
    sixteen = render3d.render_band_3d(tiny_scene(bit_depth=16), 0, 16)
    assert sixteen.dtype == np.uint16
    assert np.abs(sixteen.astype(int) / 257.0 - eight).max() <= 0.51


# ---- the interface ----


@pytest.mark.parametrize(("start", "stop"), [(-1, 3), (3, 3), (5, 2), (0, 17)])
def test_bad_row_range_is_rejected(start, stop):
    with pytest.raises(InvalidArgument, match="row range"):
        render3d.render_band_3d(tiny_scene(), start, stop)


def test_bad_pixels_and_backend_are_rejected():
    scene = tiny_scene()
    with pytest.raises(InvalidArgument, match="outside"):
        render3d.render_pixels_3d(scene, np.array([16]), np.array([0]))
    with pytest.raises(InvalidArgument, match="equal length"):
        render3d.render_pixels_3d(scene, np.array([1, 2]), np.array([0]))
    with pytest.raises(InvalidArgument, match="backend"):
        render3d.render_band_3d(scene, 0, 1, backend="opencl")
    assert render3d.render_pixels_3d(scene, np.array([], int), np.array([], int)).shape == (0, 3)


def test_import_is_cheap():
    code = "import sys, fractal_app.render3d; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
