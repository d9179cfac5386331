"""Ray-marching throughput on the CPU: Mandelbulb and Mandelbox, float64 and float32.

    .venv/bin/pytest benchmarks/bench_raymarch.py                         # 480x270, quick
    FRACTAL_BENCH_FULL_HD=1 .venv/bin/pytest benchmarks/bench_raymarch.py  # 1920x1080

Mrays/s (primary rays, one per pixel: supersample 1) is in each result's extra_info. The
kernels are compiled (or loaded from the disk cache) before timing.
"""

import os

import pytest

from fractal_app import render3d
from fractal_app.scene import parse_scene

FULL_HD = os.environ.get("FRACTAL_BENCH_FULL_HD") == "1"
RESOLUTION = (1920, 1080) if FULL_HD else (480, 270)

# Fixed cameras (not the scene defaults, which may change) that frame the whole fractal.
VIEWS = {
    "mandelbulb": {"camera": {"position": [0.5, 0.9, -2.8], "look_at": [0.0, 0.0, 0.0]}},
    "mandelbox": {"camera": {"position": [9.0, 8.0, -16.0], "look_at": [0.0, 0.0, 0.0]}},
}


@pytest.mark.benchmark(group="raymarch")
@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("fractal", ["mandelbulb", "mandelbox"])
def test_raymarch_cpu(benchmark, fractal, precision):
    width, height = RESOLUTION
    scene = parse_scene(
        {
            "fractal": fractal,
            "resolution": [width, height],
            "precision": precision,
            **VIEWS[fractal],
        }
    )
    render3d.render_band_3d(scene, 0, 1)  # compile or load the kernels
    image = benchmark.pedantic(
        render3d.render_band_3d, args=(scene, 0, height), rounds=3 if not FULL_HD else 2
    )
    assert image.shape == (height, width, 3)
    best = benchmark.stats.stats.min
    benchmark.extra_info["resolution"] = f"{width}x{height}"
    benchmark.extra_info["Mrays_per_s"] = round(width * height / best / 1e6, 4)
