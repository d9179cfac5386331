"""The ``fractal-app`` command: one-machine render through real processes, benchmark, helpers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from grpc_helpers import read_result

from fractal_app import render
from fractal_app.local import default_subtasks, output_path_for
from fractal_app.scene import parse_scene

SCENE = {"fractal": "burning_ship", "resolution": [40, 30], "max_iter": 120}


def fractal_app(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "fractal_app.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_render_writes_the_image_through_the_whole_lifecycle(tmp_path):
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(SCENE))
    out = tmp_path / "picture.png"
    keep = tmp_path / "keep"
    done = fractal_app(
        "render",
        str(scene_file),
        "-o",
        str(out),
        "--providers",
        "2",
        "--subtasks",
        "3",
        "--keep",
        str(keep),
    )
    assert done.returncode == 0, done.stderr
    assert "3 bands" in done.stderr
    expected = render.render_band(parse_scene(SCENE), 0, 30)
    np.testing.assert_array_equal(read_result(out, SCENE), expected)
    # Separate processes with their own work dirs: one requestor folder, one provider per
    # subtask (a provider launched for a band another one took has no band).
    providers = [p for p in (keep / "providers").iterdir() if p.is_dir()]
    rendered = [p for p in providers if len(list(p.glob("*/band.png"))) == 1]
    assert len(rendered) == 3
    assert _processes_using(keep) == []
    task = next((keep / "requestor").iterdir())
    assert len(list((task / "subtask_outputs").iterdir())) == 3


def test_render_counts_goes_to_tiff(tmp_path):
    scene = {**SCENE, "output": "counts"}
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(scene))
    done = fractal_app(
        "render",
        str(scene_file),
        "-o",
        str(tmp_path / "c.png"),
        "--providers",
        "1",
        "--subtasks",
        "1",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "c.png").exists()
    expected = render.render_band(parse_scene(scene), 0, 30)
    np.testing.assert_array_equal(read_result(tmp_path / "c.tiff", scene), expected)


def test_render_gives_up_on_a_band_that_keeps_failing(tmp_path):
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(SCENE))
    # Every provider fails (an unknown backend): each band is retried, then a clear error.
    done = fractal_app(
        "render",
        str(scene_file),
        "-o",
        str(tmp_path / "x.png"),
        "--providers",
        "1",
        "--subtasks",
        "1",
        "--quiet",
        env={"FRACTAL_APP_BACKEND": "abacus"},
    )
    assert done.returncode != 0
    assert "band 0 failed 3 times" in done.stderr
    assert "abacus" in done.stderr
    assert not (tmp_path / "x.png").exists()


def _processes_using(folder) -> list[str]:
    """Command lines of the running processes that name ``folder`` (their work dirs)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if entry.name.isdigit() and str(folder) in command:
            found.append(command)
    return found


def test_render_leaves_no_process_behind_when_it_fails(tmp_path):
    """Providers launched ahead of their bands, and the requestor, are reaped on failure."""
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(SCENE))
    keep = tmp_path / "keep"
    done = fractal_app(
        "render", str(scene_file), "-o", str(tmp_path / "x.png"), "--providers", "3",
        "--subtasks", "2", "--quiet", "--keep", str(keep),
        env={"FRACTAL_APP_BACKEND": "abacus"},
    )
    assert done.returncode != 0
    assert "failed 3 times" in done.stderr
    assert _processes_using(keep) == []
    # Two bands, three slots: only two providers were launched ahead, then one a retry.
    launched = [p for p in (keep / "providers").iterdir() if p.is_dir()]
    assert 3 <= len(launched) <= 6


def test_render_stops_a_provider_that_overruns_the_band_timeout(tmp_path):
    """A provider that does not answer in time is killed and its band handed out again."""
    # Every pixel inside the set at a million iterations: minutes of work for one band.
    scene = {"fractal": "mandelbrot", "resolution": [200, 150], "center": [-0.1, 0.0],
             "width": 0.1, "max_iter": 1_000_000}
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(scene))
    keep = tmp_path / "keep"
    done = fractal_app(
        "render", str(scene_file), "-o", str(tmp_path / "x.png"), "--providers", "1",
        "--subtasks", "1", "--band-timeout", "0.5", "--quiet", "--keep", str(keep),
        timeout=120,
    )
    assert done.returncode != 0
    assert "band 0 failed 3 times" in done.stderr
    assert "longer than the band timeout (0.5 s)" in done.stderr
    assert _processes_using(keep) == []
    assert not (tmp_path / "x.png").exists()


def test_band_timeout_must_be_positive(tmp_path):
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(SCENE))
    done = fractal_app("render", str(scene_file), "-o", "x.png", "--band-timeout", "0")
    assert done.returncode == 2
    assert "--band-timeout" in done.stderr


def test_render_rejects_a_bad_scene_naming_the_field(tmp_path):
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps({**SCENE, "max_iter": -3}))
    done = fractal_app("render", str(scene_file), "-o", str(tmp_path / "x.png"), "--quiet")
    assert done.returncode != 0
    assert "max_iter" in done.stderr


def test_benchmark_prints_a_score():
    done = fractal_app("benchmark")
    assert done.returncode == 0, done.stderr
    score, unit = done.stdout.split(" ", 1)
    assert float(score) > 0
    # The unit and what was measured, not a bare number.
    assert unit.startswith("million escape-time iterations per second (mandelbrot 480x270")
    assert "backend cpu, CPU " in unit


def test_serve_is_the_entrypoint(tmp_path):
    done = fractal_app("serve", "requestor", "0", "--work-dir", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_default_subtasks_keep_bands_bounded_and_providers_busy():
    def bands(width, height, providers, **view):
        scene = parse_scene({"fractal": "mandelbrot", "resolution": [width, height], **view})
        return default_subtasks(scene, providers)

    # A small scene (worst case under SMALL_SCENE_STEPS) is one band: a second provider
    # would cost more to start than it saves. The 1080p default view is one.
    assert bands(1920, 1080, 2) == 1
    assert bands(64, 48, 2, max_iter=10_000_000) == 2
    # Otherwise one band a provider (of equal estimated cost), never an empty band, and at
    # most about 2^26 pixels a band.
    assert bands(3840, 2160, 1, max_iter=8000) == 1  # the default: one provider
    assert bands(3840, 2160, 2, max_iter=8000) == 2
    assert bands(64, 1, 2, max_iter=10_000_000) == 1
    assert bands(7680, 4320, 2, max_iter=20_000) == 2
    assert bands(7680, 4320, 3, max_iter=20_000) == 3
    assert bands(16384, 16384, 2) == 4
    assert bands(32768, 32768, 2) == 16
    assert bands(32768, 32768, 32) == 32
    mandelbulb = parse_scene({"fractal": "mandelbulb", "resolution": [1920, 1080]})
    assert default_subtasks(mandelbulb, 2) == 2  # 3D: thousands of steps a pixel


def test_counts_output_gets_a_tiff_suffix(tmp_path):
    assert output_path_for(tmp_path / "a.png", "counts") == tmp_path / "a.tiff"
    assert output_path_for(tmp_path / "a.tif", "counts") == tmp_path / "a.tif"
    assert output_path_for(tmp_path / "a.png", "image") == tmp_path / "a.png"
