"""The registry of fractals and palettes: every entry is complete, and what is derived from
it (the scene schema, the kernels' choice, the app definition, the examples) agrees."""

import json
from pathlib import Path

import pytest

from fractal_app import render3d
from fractal_app.app_definition import app_definition
from fractal_app.fractals import FRACTALS
from fractal_app.kernels.escape import KIND_OF_FRACTAL
from fractal_app.palettes import PALETTES
from fractal_app.scene import FRACTALS as SCENE_FRACTALS
from fractal_app.scene import PALETTE_NAMES, parse_scene

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FLAT = [name for name, fractal in FRACTALS.items() if not fractal.is_3d]
SOLID = [name for name, fractal in FRACTALS.items() if fractal.is_3d]


def test_the_schema_offers_exactly_the_registered_fractals_and_palettes_in_order():
    assert SCENE_FRACTALS == tuple(FRACTALS)
    assert PALETTE_NAMES == tuple(PALETTES)
    assert FLAT and SOLID


@pytest.mark.parametrize("name", list(FRACTALS))
def test_every_fractal_has_an_example_that_renders_it(name):
    scene = parse_scene(json.loads((EXAMPLES / f"{name}.json").read_text()))
    assert scene.fractal == name
    assert scene.is_3d == FRACTALS[name].is_3d
    assert FRACTALS[name].title in app_definition()["description"]


@pytest.mark.parametrize("name", FLAT)
def test_every_2d_fractal_has_a_scalar_core_and_a_boundary_view(name):
    assert name in KIND_OF_FRACTAL
    view = FRACTALS[name].boundary_view
    assert {"center", "width", "max_iter"} <= set(view)
    assert parse_scene({"fractal": name, "resolution": [8, 8], **view}).fractal == name


@pytest.mark.parametrize("name", SOLID)
def test_every_3d_fractal_has_its_ray_parameters(name):
    assert FRACTALS[name].boundary_view is None
    inputs = render3d.kernel_inputs(parse_scene({"fractal": name, "resolution": [4, 3]}))
    assert inputs.p.bound_r2 > 0 and inputs.p.bailout2 > 0


@pytest.mark.parametrize("name", list(PALETTES))
def test_every_palette_has_both_forms(name):
    palette = PALETTES[name]
    positions = [position for position, _ in palette.stops]
    assert positions[0] == 0.0 and positions[-1] == 1.0 and positions == sorted(positions)
    assert all(len(colour) == 6 and int(colour, 16) >= 0 for _, colour in palette.stops)
    assert len(palette.cosine) == 4 and all(len(triple) == 3 for triple in palette.cosine)
