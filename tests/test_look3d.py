"""The 3D examples look the way a 3D artist would keep them: lit by a key, a fill and a sky
light with tone mapping, orbit-trap colour that is calm rather than garish, no faces washed
out to white and few black slivers in creases.

Thresholds sit between the measures of the old look (flat lighting, a saturated palette;
measured on the README gallery's 640x480 renders) and of this one."""

import json
from pathlib import Path

import numpy as np
import pytest

from fractal_app import render
from fractal_app.scene import parse_scene

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def measures(name):
    params = json.loads((EXAMPLES / f"{name}.json").read_text())
    params.update(resolution=[160, 120], supersample=1)
    scene = parse_scene(params)
    rgb = render.render_band(scene, 0, 120).astype(float) / 255
    background = np.array(scene.background) / 255
    hit = np.abs(rgb - background).sum(-1) > 0.08
    lum = (rgb @ np.array([0.2126, 0.7152, 0.0722]))[hit]
    return {
        "hits": hit.mean(),
        "mean_luminance": lum.mean(),
        "dark": (lum < 0.08).mean(),
        "washed_out": (lum > 0.6).mean(),
        "saturation": (rgb[hit].max(-1) - rgb[hit].min(-1)).mean(),
    }


@pytest.fixture(scope="module")
def mandelbulb():
    return measures("mandelbulb")


@pytest.fixture(scope="module")
def mandelbox():
    return measures("mandelbox")


def test_mandelbulb_is_bright_enough_and_calm(mandelbulb):
    assert 0.3 < mandelbulb["hits"] < 0.7
    assert mandelbulb["mean_luminance"] > 0.32  # old look: 0.29, "slightly dark"
    assert mandelbulb["dark"] < 0.045  # old: 0.066 of the surface nearly black
    assert mandelbulb["saturation"] < 0.17  # old: 0.205, "garish"


def test_mandelbox_faces_keep_their_colour_and_detail(mandelbox):
    assert 0.3 < mandelbox["hits"] < 0.8
    assert mandelbox["washed_out"] < 0.08  # old: 0.11 of the surface pale as paper
    assert mandelbox["saturation"] < 0.1  # old: 0.138, "busy"
    assert mandelbox["dark"] < 0.01  # no black slivers at the creases
    assert 0.3 < mandelbox["mean_luminance"] < 0.6
