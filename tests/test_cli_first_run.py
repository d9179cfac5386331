"""What a new user meets on the command line: picture formats chosen by -o's suffix, mistakes
refused before any rendering, messages and help texts that read right."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fractal_app import cli, picture_formats, render
from fractal_app.pngstream import PngStreamWriter
from fractal_app.scene import parse_scene

SCENE = {"fractal": "julia", "resolution": [24, 16], "max_iter": 60}


def fractal_app(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fractal_app.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def scene_file(tmp_path, **fields):
    path = tmp_path / "scene.json"
    path.write_text(json.dumps({**SCENE, **fields}))
    return str(path)


@pytest.mark.parametrize(
    "name, fields, extra, says",
    [
        ("x.bmp", {}, [], "the suffix chooses the format, one of .png (8/16-bit), .tif/.tiff "
                         "(8/16-bit), .jpg/.jpeg (8-bit), .webp (8-bit)"),
        ("x", {}, [], "'x' has no suffix"),
        ("x.jpg", {"bit_depth": 16}, [], "JPEG holds 8 bits per channel"),
        ("x.png", {}, ["--quality", "80"], "--quality is for JPEG and WebP, not PNG"),
        ("no/such/dir/x.png", {}, [], "does not exist: create it first"),
    ],
)
def test_a_picture_that_cannot_be_written_is_refused_before_rendering(tmp_path, name, fields,
                                                                      extra, says):
    result = CliRunner().invoke(
        cli.main, ["render", scene_file(tmp_path, **fields), "-o", str(tmp_path / name), *extra]
    )
    assert result.exit_code != 0
    assert says in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.json"]  # nothing rendered


def test_jpeg_from_one_band_and_its_message(tmp_path):
    out = tmp_path / "picture.jpg"
    done = fractal_app("render", scene_file(tmp_path), "-o", str(out), "--providers", "1",
                       "--subtasks", "1", "--quality", "95")
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (1 band in " in done.stderr  # not "1 bands"
    with Image.open(out) as picture:
        assert picture.format == "JPEG"
        pixels = np.asarray(picture.convert("RGB"), dtype=float)
    expected = render.render_band(parse_scene(SCENE), 0, 16)
    assert np.abs(pixels - expected).mean() < 12  # lossy, but the same picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.jpg", "scene.json"]


@pytest.mark.parametrize("bits", [8, 16])
def test_png_converts_to_tiff_at_full_depth(tmp_path, bits):
    values = render.render_band(parse_scene({**SCENE, "bit_depth": bits}), 0, 16)
    png = tmp_path / "r.png"
    with PngStreamWriter(png, 24, 16, bits) as writer:  # as the requestor writes result.png
        writer.write_rows(values)
    np.testing.assert_array_equal(picture_formats.read_png(png), values)
    picture_formats.convert(png, tmp_path / "r.tiff", picture_formats.TIFF, None)
    with Image.open(tmp_path / "r.tiff") as tiff:
        assert tiff.format == "TIFF"
        assert tiff.size == (24, 16)
        assert tiff.tag_v2[258] == (bits, bits, bits)
        raw = (tmp_path / "r.tiff").read_bytes()[tiff.tag_v2[273][0]:]
    np.testing.assert_array_equal(np.frombuffer(raw, dtype=f"<u{bits // 8}").reshape(16, 24, 3),
                                  values)


def test_webp_is_written_at_the_quality_asked(tmp_path):
    values = render.render_band(parse_scene(SCENE), 0, 16)
    Image.fromarray(values).save(tmp_path / "r.png")
    picture_formats.convert(tmp_path / "r.png", tmp_path / "r.webp", picture_formats.WEBP, 70)
    with Image.open(tmp_path / "r.webp") as picture:
        assert picture.format == "WEBP"


def test_cuda_without_a_gpu_fails_at_once(tmp_path):
    if render._cuda_unavailable_reason() is None:
        pytest.skip("this machine has a CUDA GPU")
    result = CliRunner().invoke(
        cli.main, ["render", scene_file(tmp_path), "-o", str(tmp_path / "x.png"), "--backend",
                   "cuda"]
    )
    assert result.exit_code != 0
    assert "no CUDA GPU found" in result.output
    assert "tries" not in result.output and "attempt" not in result.output
    result = CliRunner().invoke(cli.main, ["benchmark", "--backend", "cuda"])
    assert result.exit_code != 0
    assert "no CUDA GPU found" in result.output


def test_help_texts_are_not_cut_off():
    runner = CliRunner()
    for args in ([], ["render"], ["benchmark"], ["serve"], ["warm-cache"], ["app-definition"]):
        text = runner.invoke(cli.main, [*args, "--help"], terminal_width=80).output
        cut = [line for line in text.splitlines()
               if line.rstrip().endswith("...") and "Usage:" not in line]
        assert cut == [], text
    listing = runner.invoke(cli.main, ["--help"], terminal_width=80).output
    for command in ("render", "benchmark", "serve", "warm-cache", "app-definition"):
        assert f"  {command} " in listing


def test_serve_names_itself(tmp_path):
    done = fractal_app("serve", "--help")
    assert done.returncode == 0
    done = fractal_app("serve", "requestor")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: fractal-app serve ")
    assert "python -m fractal_app" not in done.stderr
