"""Poster-size images through ``fractal-app render`` (issue 6, "Poster-size images").

Targets, for a 32768x32768 image (2^30 pixels) as 8-bit, 16-bit and ``counts`` output: the
requestor's peak memory at most 2x the final image's raw size, each provider's at most 2x its
band's raw size, the final file written as a stream. Reported: wall time and every process's
peak RSS (each process reports its own ``ru_maxrss`` when it exits, through
benchmarks/rss_probe), next to those bounds.

A provider's peak includes the interpreter, NumPy, Numba and LLVM (about 170 MiB before it
holds a pixel), so the report gives both the raw peak and the peak above an idle provider's
(``baseline``: a provider that rendered a single row); the second is what the band costs.
The targets are asserted on the whole processes' peaks, baseline included.

Opt-in (it takes many minutes on two cores and writes several GB)::

    FRACTAL_POSTER=1 .venv/bin/pytest benchmarks/bench_poster.py --benchmark-autosave -s

Knobs: ``FRACTAL_POSTER_SIZE`` (default 32768), ``FRACTAL_POSTER_MAX_ITER`` (default 64: the
point is memory and streaming, not iterations), ``FRACTAL_POSTER_SUBTASKS`` (default: what
``fractal-app render`` picks, 16 bands at 32768x32768), ``FRACTAL_POSTER_OUTPUTS`` (default
"image8,image16,counts").
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import (
    check_target,
    compute_request,
    provider_work_dir,
    read_rss_reports,
    rss_probe_env,
    start_server,
    task_plan,
)

ENABLED = os.environ.get("FRACTAL_POSTER") == "1"
SIZE = int(os.environ.get("FRACTAL_POSTER_SIZE", "32768"))
MAX_ITER = int(os.environ.get("FRACTAL_POSTER_MAX_ITER", "64"))
# Bands: the local mode's default (one per 64 megapixels: 16 at 32768^2) unless set.
SUBTASKS = os.environ.get("FRACTAL_POSTER_SUBTASKS")
OUTPUTS = os.environ.get("FRACTAL_POSTER_OUTPUTS", "image8,image16,counts").split(",")
PROVIDERS = 2
MAX_RATIO = 2.0

VARIANTS = {
    "image8": {"output": "image", "bit_depth": 8},
    "image16": {"output": "image", "bit_depth": 16},
    "counts": {"output": "counts"},
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ENABLED, reason="opt-in: set FRACTAL_POSTER=1 (takes many minutes)"),
]


def poster_scene(variant: str) -> dict:
    return {
        "fractal": "mandelbrot",
        "resolution": [SIZE, SIZE],
        "center": [-0.75, 0.0],
        "width": 3.0,
        "max_iter": MAX_ITER,
        **VARIANTS[variant],
    }


def bytes_per_pixel(scene: dict) -> int:
    if scene.get("output") == "counts":
        return 4
    return 3 * scene.get("bit_depth", 8) // 8


def check_header(path: Path, scene: dict) -> None:
    """The final file's own header says SIZE x SIZE (without decoding gigabytes)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if scene.get("output") == "counts":
        assert head[:2] == b"II", head[:4]
        return
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth = struct.unpack(">IIB", head[16:25])
    assert (width, height, depth) == (SIZE, SIZE, scene.get("bit_depth", 8))


def band_rows_rendered(argv: list[str]) -> int:
    """Rows of the band a provider process (its command line) wrote: its PNG's height."""
    work = Path(argv[argv.index("--work-dir") + 1])
    (band,) = work.glob("*/band.png")
    with open(band, "rb") as f:
        head = f.read(24)
    return struct.unpack(">I", head[20:24])[0]


def idle_provider_peak(tmp_path: Path, scene: dict) -> int:
    """Peak RSS of a provider that rendered one row: what every provider pays regardless."""
    rss_dir = tmp_path / "rss-baseline"
    small = {**scene, "resolution": [SIZE, 64]}
    work = provider_work_dir(tmp_path, small)
    server = start_server("provider", work, env=rss_probe_env(rss_dir))
    server.provider().Compute(compute_request("baseline", 0, 1), timeout=600)
    assert server.wait() == 0
    (report,) = [r for r in read_rss_reports(rss_dir) if r["role"] == "provider"]
    return report["max_rss_bytes"]


@pytest.mark.benchmark(group="poster")
@pytest.mark.parametrize("variant", OUTPUTS)
def test_poster(benchmark, tmp_path, variant):
    scene = poster_scene(variant)
    scene_path = tmp_path / "scene.json"
    scene_path.write_text(json.dumps(scene))
    out = tmp_path / ("poster.tiff" if scene.get("output") == "counts" else "poster.png")
    rss_dir = tmp_path / "rss"
    keep = tmp_path / "keep"
    cli = Path(sys.executable).with_name("fractal-app")
    seconds = {}

    def render():
        started = time.perf_counter()
        subprocess.run(
            [str(cli), "render", str(scene_path), "-o", str(out), "--providers",
             str(PROVIDERS), "--quiet", "--keep", str(keep),
             *(["--subtasks", SUBTASKS] if SUBTASKS else [])],
            check=True, env={**os.environ, **rss_probe_env(rss_dir)},
        )
        seconds["wall"] = time.perf_counter() - started

    benchmark.pedantic(render, rounds=1, iterations=1)
    check_header(out, scene)

    final_raw = SIZE * SIZE * bytes_per_pixel(scene)
    plan = task_plan(keep)
    band_rows = max(b - a for a, b in plan)  # the requestor's cost plan: bands differ
    band_raw = band_rows * SIZE * bytes_per_pixel(scene)
    reports = read_rss_reports(rss_dir)
    requestor = max(r["max_rss_bytes"] for r in reports if r["role"] == "requestor")
    # Each provider against its own band (providers launched ahead and never given a band
    # are killed, and report nothing).
    providers = [
        (r["max_rss_bytes"], band_rows_rendered(r["argv"]) * SIZE * bytes_per_pixel(scene))
        for r in reports
        if r["role"] == "provider"
    ]
    worst_peak, worst_band = max(providers, key=lambda pair: pair[0] / pair[1])
    cli_peak = max(r["max_rss_bytes"] for r in reports if r["role"] == "cli")
    baseline = idle_provider_peak(tmp_path, scene)
    mib = 2**20
    info = {
        "variant": variant,
        "resolution": [SIZE, SIZE],
        "max_iter": MAX_ITER,
        "bands": len(plan),
        "wall_s": round(seconds["wall"], 1),
        "output_file_mib": round(out.stat().st_size / mib, 1),
        "final_raw_mib": round(final_raw / mib, 1),
        "requestor_peak_mib": round(requestor / mib, 1),
        "requestor_ratio": round(requestor / final_raw, 3),
        "cli_peak_mib": round(cli_peak / mib, 1),
        "band_rows_tallest": band_rows,
        "band_raw_mib_tallest": round(band_raw / mib, 1),
        "providers": len(providers),
        "provider_peak_max_mib": round(max(peak for peak, _ in providers) / mib, 1),
        "provider_baseline_mib": round(baseline / mib, 1),
        # The provider with the largest peak over its own band's raw size.
        "provider_worst_peak_mib": round(worst_peak / mib, 1),
        "provider_worst_band_raw_mib": round(worst_band / mib, 1),
        "provider_ratio_raw": round(worst_peak / worst_band, 2),
        # Every provider: [peak RSS, its band's raw size] in MiB.
        "provider_peaks_and_bands_mib": [[round(a / mib), round(b / mib)] for a, b in providers],
        "provider_ratio_above_baseline": round((worst_peak - baseline) / worst_band, 2),
        "target_ratio": MAX_RATIO,
    }
    benchmark.extra_info.update(info)
    print(f"\nposter {variant}:", json.dumps(info))
    # Gigabytes; the figures are what we keep.
    out.unlink()
    shutil.rmtree(keep)
    # Whole processes counted, the interpreter and Numba included.
    check_target(benchmark, "requestor_peak_over_final_raw", requestor / final_raw, MAX_RATIO)
    check_target(benchmark, "provider_peak_over_its_band_raw", worst_peak / worst_band, MAX_RATIO)
