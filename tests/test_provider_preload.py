"""The provider's preload loads the band kernels its Compute will most likely run: those of the
shipped scene, or of the default view; never by compiling, never for a GPU, deep or 3D scene."""

from __future__ import annotations

import json

import pytest

from fractal_app import render, startup, warmup


@pytest.fixture
def probed(monkeypatch):
    """The scenes warm_band_kernels renders (render_band recorded, not run); every kernel
    counted as cached unless a test says otherwise."""
    scenes = []
    monkeypatch.setattr(render, "render_band",
                        lambda scene, start, stop, backend: scenes.append((scene, backend)))
    monkeypatch.setattr(warmup, "compile_estimate_seconds", lambda scene_json, backend: 0.0)
    return scenes


def test_the_shipped_scene_is_probed_at_2x2(probed):
    shipped = {"fractal": "julia", "resolution": [800, 600], "max_iter": 300,
               "palette": "fire", "precision": "float32"}
    startup.warm_band_kernels(lambda: json.dumps(shipped), None)
    [(scene, backend)] = probed
    assert (scene.fractal, scene.precision, scene.palette) == ("julia", "float32", "fire")
    assert (scene.width_px, scene.height_px, backend) == (2, 2, "cpu")


@pytest.mark.parametrize("shipped", [lambda: None, lambda: "{not json", lambda: "[1, 2]"])
def test_without_a_readable_scene_the_default_view_is_probed(probed, shipped):
    startup.warm_band_kernels(shipped, None)
    [(scene, _)] = probed
    assert scene.fractal == "mandelbrot"


def test_a_reading_error_falls_back_to_the_default_view(probed):
    def refused():
        raise OSError("a symlink")

    startup.warm_band_kernels(refused, "cpu")
    assert [scene.fractal for scene, _ in probed] == ["mandelbrot"]


def test_kernels_missing_from_the_cache_are_not_compiled(probed, monkeypatch):
    monkeypatch.setattr(warmup, "compile_estimate_seconds", lambda scene_json, backend: 12.0)
    startup.warm_band_kernels(lambda: None, None)
    assert probed == []


@pytest.mark.parametrize(
    ("shipped", "backend"),
    [
        ({"fractal": "mandelbrot", "resolution": [64, 64]}, "cuda"),
        ({"fractal": "mandelbrot", "resolution": [64, 64], "env": "docker_gpu"}, None),
        ({"fractal": "mandelbulb", "resolution": [64, 64]}, None),
    ],
)
def test_gpu_and_3d_scenes_are_not_probed(probed, shipped, backend):
    startup.warm_band_kernels(lambda: json.dumps(shipped), backend)
    assert probed == []


def test_the_probe_loads_the_default_views_kernels():
    """Unpatched: the default view's band kernels are loaded (its failures are swallowed, so
    the kernels themselves are looked at)."""
    from fractal_app.kernels import cpu

    startup.warm_band_kernels(lambda: None, "cpu")
    assert cpu.iterate_grid_lanes.signatures and cpu.colour_pixels.signatures
