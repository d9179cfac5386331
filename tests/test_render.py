"""render.py: pixels equal bands, argument checks, backend choice, the benchmark, 3D."""

import subprocess
import sys
import types

import numpy as np
import pytest

import fractal_app
from fractal_app import render
from fractal_app.errors import FailedPrecondition, InvalidArgument
from fractal_app.scene import parse_scene

SCENES = [
    {"fractal": "mandelbrot", "center": [-0.74, 0.12], "width": 0.1},
    {"fractal": "mandelbrot", "precision": "float32", "supersample": 2, "bit_depth": 16},
    {"fractal": "julia", "supersample": 3, "palette": "twilight"},
    {"fractal": "julia", "precision": "float32", "output": "counts"},
    {"fractal": "burning_ship", "output": "counts"},
    {"fractal": "burning_ship", "precision": "float32", "supersample": 2},
    {"fractal": "multibrot", "power": 7, "bit_depth": 16},
    {"fractal": "multibrot", "precision": "float32", "output": "counts"},
]


@pytest.mark.parametrize("params", SCENES, ids=lambda p: "-".join(map(str, p.values()))[:60])
def test_render_pixels_equals_render_band(params):
    scene = parse_scene({"resolution": [71, 23], "max_iter": 150, **params})
    band = render.render_band(scene, 0, 23)
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 23, 300)
    cols = rng.integers(0, 71, 300)
    pixels = render.render_pixels(scene, rows, cols)
    assert pixels.dtype == band.dtype
    np.testing.assert_array_equal(pixels, band[rows, cols])


def test_render_pixels_of_nothing_is_empty():
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [8, 8]})
    empty = np.array([], dtype=np.int64)
    assert render.render_pixels(scene, empty, empty).shape == (0, 3)


def test_band_output_shapes_and_types():
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [10, 6], "bit_depth": 16})
    assert render.render_band(scene, 2, 5).shape == (3, 10, 3)
    assert render.render_band(scene, 2, 5).dtype == np.uint16
    counts = parse_scene({"fractal": "mandelbrot", "resolution": [10, 6], "output": "counts"})
    assert render.render_band(counts, 0, 6).dtype == np.uint32


@pytest.mark.parametrize("rows", [(-1, 2), (3, 3), (4, 2), (0, 7)])
def test_bad_row_ranges_are_invalid_arguments(rows):
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [10, 6]})
    with pytest.raises(InvalidArgument, match="rows"):
        render.render_band(scene, *rows)


def test_bad_pixel_lists_are_invalid_arguments():
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [10, 6]})
    with pytest.raises(InvalidArgument, match="equal length"):
        render.render_pixels(scene, np.array([1, 2]), np.array([1]))
    with pytest.raises(InvalidArgument, match="outside"):
        render.render_pixels(scene, np.array([6]), np.array([1]))
    with pytest.raises(InvalidArgument, match="outside"):
        render.render_pixels(scene, np.array([0]), np.array([-1]))


def test_unknown_backend_is_an_invalid_argument():
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [10, 6]})
    with pytest.raises(InvalidArgument, match="backend"):
        render.render_band(scene, 0, 6, backend="tpu")
    with pytest.raises(InvalidArgument, match="backend"):
        render.resolve_backend("opencl", "docker_cpu")


def test_resolve_backend_prefers_the_request_then_the_environment(monkeypatch):
    monkeypatch.setattr(render, "_cuda_unavailable_reason", lambda: None)
    assert render.resolve_backend(None, "docker_gpu") == "cuda"
    assert render.resolve_backend(None, "docker_cpu") == "cpu"
    assert render.resolve_backend("cpu", "docker_gpu") == "cpu"
    assert render.resolve_backend("cuda", "docker_cpu") == "cuda"


def test_cuda_without_a_gpu_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(render, "_cuda_unavailable_reason", lambda: "no driver")
    assert render.resolve_backend(None, "docker_gpu") == "cpu"
    with pytest.raises(FailedPrecondition, match="no CUDA GPU found: no driver.*use backend cpu"):
        render.resolve_backend("cuda", "docker_gpu")
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [10, 6]})
    with pytest.raises(FailedPrecondition, match="no CUDA GPU found"):
        render.render_band(scene, 0, 6, backend="cuda")


def test_this_machine_without_a_gpu_reports_why():
    reason = render._cuda_unavailable_reason()
    if reason is None:
        pytest.skip("a CUDA GPU is present here, so there is no failure to check")
    with pytest.raises(FailedPrecondition, match="no CUDA GPU found"):
        render.resolve_backend("cuda", "docker_cpu")


def test_import_is_cheap():
    """The provider imports render for every band; Numba must wait until a kernel runs."""
    code = "import sys, fractal_app.render; print('numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_run_benchmark_reports_iterations_per_second():
    mips = render.run_benchmark(target_seconds=0.2)
    assert 1.0 < mips < 1e6


def test_3d_scenes_are_delegated_to_render3d(monkeypatch):
    calls = []
    fake = types.ModuleType("fractal_app.render3d")
    fake.render_band_3d = lambda *a: calls.append(("band", a)) or "band"
    fake.render_pixels_3d = lambda *a: calls.append(("pixels", a)) or "pixels"
    monkeypatch.setitem(sys.modules, "fractal_app.render3d", fake)
    monkeypatch.setattr(fractal_app, "render3d", fake, raising=False)
    scene = parse_scene({"fractal": "mandelbulb", "resolution": [4, 4]})
    assert render.render_band(scene, 1, 3, "cpu") == "band"
    rows = np.array([0])
    assert render.render_pixels(scene, rows, rows, "cpu") == "pixels"
    assert calls == [("band", (scene, 1, 3, "cpu")), ("pixels", (scene, rows, rows, "cpu"))]
