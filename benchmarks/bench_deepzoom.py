"""Deep zoom (perturbation, rescaled doubles) against the plain float64 block kernel.

    .venv/bin/pytest benchmarks/bench_deepzoom.py -s
    FRACTAL_DEEP_FULL_HD=1 .venv/bin/pytest benchmarks/bench_deepzoom.py -s -k full_hd

Effective throughput is G iterations/s: the sum of the escape counts over the best wall
time (what the pixels needed, whatever work the method actually did), for views next to
minibrots near c = i at widths 1e-40, 1e-300 and 1e-1000 (the examples' construction), and
for the plain float64 block kernel at width 3.5 in the same run. The issue's targets: deep
>= 0.5x the plain kernel at 1e-40 and >= 1.0x at 1e-300 (the run records a miss). The
reference orbit and its bilinear-approximation tables are timed on their own, and the deep
kernel is also timed with empty tables (stepping every iteration), so the run shows what
BLA gains at each depth.

The opt-in Full HD case renders 1920x1080 at 1e-300, max_iter 100,000 through
``fractal-app render`` (2 providers) and reports the wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from harness import check_target, cpu_model

from fractal_app import render
from fractal_app.deep import bla, cpu
from fractal_app.deep import orbit as orbits
from fractal_app.deep.locate import minibrot_view_centre
from fractal_app.deep.render import _offsets, reference_for
from fractal_app.scene import parse_scene

SIZE = (240, 135)
PLAIN = {"fractal": "mandelbrot", "resolution": [480, 270], "center": [-0.75, 0.0],
         "width": 3.5, "max_iter": 1000, "output": "counts"}
# width exponent -> (first period to try, max_iter); periods from tests/test_deep.py's rule
DEPTHS = {40: (53, 4_000), 300: (400, 12_000), 1000: (1330, 36_000)}
TARGETS = {40: 0.5, 300: 1.0}
_plain_rate: list[float] = []


def deep_params(exponent: int, size=SIZE) -> dict:
    period, max_iter = DEPTHS.get(exponent, (400, 100_000))
    centre = list(minibrot_view_centre(exponent, period))
    return {"fractal": "mandelbrot", "resolution": list(size), "center": centre,
            "width": f"1e-{exponent}", "max_iter": max_iter, "output": "counts"}


def _rate(benchmark, scene) -> float:
    counts = benchmark.pedantic(render.render_band, args=(scene, 0, scene.height_px), rounds=2)
    return float(counts.sum(dtype=np.int64)) / benchmark.stats.stats.min / 1e9


@pytest.mark.benchmark(group="deepzoom")
def test_plain_float64_block_kernel(warmed_benchmark, summary):
    rate = _rate(warmed_benchmark, parse_scene(PLAIN))
    _plain_rate.append(rate)
    warmed_benchmark.extra_info.update(cpu=cpu_model(), g_iterations_per_s=rate)
    summary(f"deepzoom on {cpu_model()}: plain float64 block kernel {rate:.3f} G it/s")


@pytest.mark.benchmark(group="deepzoom")
@pytest.mark.parametrize("exponent", sorted(DEPTHS))
def test_deep_zoom(warmed_benchmark, summary, exponent):
    scene = parse_scene(deep_params(exponent))
    assert scene.deep
    geo, _ = reference_for(scene)
    began = time.perf_counter()
    orbit = orbits.compute_orbit(geo.center_re, geo.center_im, geo.bits, scene.max_iter)
    orbit_s = time.perf_counter() - began
    began = time.perf_counter()
    bla.build_tables(orbit.mr, orbit.mi, orbit.e, 1.0, geo.pixel_exp)
    tables_s = time.perf_counter() - began
    rate = _rate(warmed_benchmark, scene)
    stepping = _stepping_rate(scene)
    plain = _plain_rate[0] if _plain_rate else float("nan")
    ratio = rate / plain
    warmed_benchmark.extra_info.update(
        cpu=cpu_model(), g_iterations_per_s=rate, ratio_to_plain=ratio,
        orbit_seconds=orbit_s, orbit_us_per_iteration=orbit_s / orbit.length * 1e6,
        bla_tables_seconds=tables_s, without_bla_g_iterations_per_s=stepping,
    )
    summary(f"deepzoom 1e-{exponent}: {rate:.3f} G it/s effective, {ratio:.3f}x the plain "
            f"kernel (without BLA {stepping:.3f} G it/s: BLA {rate / stepping:.1f}x); "
            f"reference orbit {orbit_s / orbit.length * 1e6:.2f} us/iteration, BLA tables "
            f"{tables_s:.2f} s")
    if exponent in TARGETS and _plain_rate:
        check_target(warmed_benchmark, f"deep_1e-{exponent}_vs_plain", ratio,
                     TARGETS[exponent], at_least=True)


def _stepping_rate(scene) -> float:
    """G it/s of the deep kernel on the same view with empty BLA tables (best of 2)."""
    geo, reference = reference_for(scene)
    no_maps = reference.stepping_arrays()
    cols = _offsets(scene, np.arange(scene.width_px), "re", geo.pixel_mantissa).ravel()
    rows = _offsets(scene, np.arange(scene.height_px), "im", geo.pixel_mantissa).ravel()
    counts = np.empty((rows.size, cols.size), dtype=np.uint32)
    mag2 = np.empty(counts.shape)
    best = float("inf")
    for _ in range(2):
        began = time.perf_counter()
        cpu.perturb_grid(cols, rows, geo.pixel_exp, *no_maps, scene.max_iter, counts, mag2)
        best = min(best, time.perf_counter() - began)
    return float(counts.sum(dtype=np.int64)) / best / 1e9


@pytest.mark.skipif(os.environ.get("FRACTAL_DEEP_FULL_HD") != "1",
                    reason="opt-in (FRACTAL_DEEP_FULL_HD=1): renders 1920x1080 at 1e-300 with "
                           "max_iter 100,000, many minutes on 2 cores")
def test_full_hd_1e300_through_render(tmp_path, summary):
    params = deep_params(300, (1920, 1080))
    params.update(max_iter=100_000, output="image")
    scene_path = tmp_path / "scene.json"
    scene_path.write_text(json.dumps(params))
    began = time.perf_counter()
    command = Path(sys.executable).parent / "fractal-app"
    subprocess.run([str(command), "render", str(scene_path), "-o", str(tmp_path / "out.png"),
                    "--quiet"], check=True)
    summary(f"deepzoom 1920x1080 1e-300 max_iter 100,000 through render: "
            f"{time.perf_counter() - began:.0f} s")
