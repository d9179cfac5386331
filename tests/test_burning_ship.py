"""Burning Ship is drawn the way its renderers draw it: imaginary axis pointing down, so the
ship stands upright (hull below, masts above)."""

import json
from pathlib import Path

import numpy as np

from fractal_app import render
from fractal_app.scene import parse_scene

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "burning_ship.json"


def test_row_zero_holds_the_smallest_imaginary_part():
    scene = parse_scene({"fractal": "burning_ship", "resolution": [5, 9], "center": [-1.76, -0.03],
                         "width": 0.1, "max_iter": 300, "output": "counts"})
    px = 0.1 / 5
    rows = render.render_band(scene, 0, 9)
    for row in (0, 4, 8):
        im = -0.03 + (row - 4) * px
        point = parse_scene({"fractal": "burning_ship", "resolution": [1, 1], "center": [-1.76, im],
                             "width": px, "max_iter": 300, "output": "counts"})
        assert rows[row, 2] == render.render_band(point, 0, 1)[0, 0]
    assert not np.array_equal(rows, rows[::-1])  # the check above can tell up from down


def test_the_example_ship_stands_upright():
    """The ship's hull is its bulk: in the example view most of the set lies below the
    middle row, its masts above."""
    params = json.loads(EXAMPLE.read_text())
    params.update(resolution=[192, 108], supersample=1, output="counts", max_iter=300)
    counts = render.render_band(parse_scene(params), 0, 108)
    rows_inside = np.nonzero(counts == 300)[0]
    assert rows_inside.size > 100
    assert rows_inside.mean() > 108 / 2
