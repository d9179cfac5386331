"""Where a map tile sits in the complex plane, and the scene that renders it.

The page's map (Leaflet, ``static/explore.js``) uses a flat coordinate system in which
longitude is Re and latitude is Im, and zoom level z shows ``TILE_WIDTH_AT_ZOOM_0 / 2**z``
complex units per 256-pixel tile. Tile (z, x, y) covers Re in [x tw, (x + 1) tw) and Im in
(-(y + 1) tw, -y tw] (tile rows grow downwards, like pixel rows). Its scene is an ordinary
task scene whose centre is the tile's centre and whose width is the tile's width, so pixel
(row j, column i) samples exactly the point the README's geometry gives, and the tile is
rendered by ``render.render_band`` like any provider's band.

The tile width is a power of two, so every tile centre is a dyadic fraction: it is computed
exactly here (``Fraction``) and handed to the scene as a decimal string with every digit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from fractal_app.errors import InvalidArgument
from fractal_app.scene import parse_scene

TILE_SIZE = 256
# Complex units across one tile at zoom 0: the whole Mandelbrot set fits in a 2x2 tile block.
TILE_WIDTH_AT_ZOOM_0 = 4
# Tiles exist for |Re|, |Im| <= EXTENT: far beyond every fractal's interesting part.
EXTENT = 16
# The deepest zoom at which the pixels still differ: a pixel must span at least 16 units in
# the last place of a coordinate near 2 (2**-47 in float64, 2**-18 in float32). The pixel
# size at zoom z is 2**-(6 + z).
MAX_ZOOM = {"float64": 41, "float32": 12}


@dataclass(frozen=True)
class Level:
    """A rendering of a tile: full size, or a coarse preview the page shows stretched."""

    name: str
    pixels: int  # per side
    priority: int  # lower renders first


LEVELS = {
    "coarse": Level("coarse", TILE_SIZE // 4, 0),
    "full": Level("full", TILE_SIZE, 1),
}

# What every picture the page shows is, whatever the person's poster will be.
PREVIEW_FIELDS = {"output": "image", "bit_depth": 8}

# Fields of a scene that the map decides, not the person's scene.
_VIEW_FIELDS = ("center", "width", "resolution")


def decimal_string(value: Fraction) -> str:
    """The exact decimal expansion of a dyadic fraction (every tile centre is one)."""
    denominator = value.denominator
    if denominator & (denominator - 1):
        raise ValueError(f"{value} is not a dyadic fraction")
    places = denominator.bit_length() - 1
    # a / 2**n == a * 5**n / 10**n: the digits of an integer, with the point n places in.
    # (Decimal arithmetic would round to its context's 28 digits.)
    digits = str(abs(value.numerator) * 5**places).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    if places == 0:
        return sign + digits
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def tile_geometry(z: int, x: int, y: int) -> tuple[tuple[str, str], Fraction]:
    """Centre (Re, Im as exact decimal strings) and width of tile (z, x, y)."""
    width = Fraction(TILE_WIDTH_AT_ZOOM_0, 2**z)
    centre_re = (x + Fraction(1, 2)) * width
    centre_im = -(y + Fraction(1, 2)) * width
    return (decimal_string(centre_re), decimal_string(centre_im)), width


def parse_scene_object(scene_json: str | None) -> dict[str, Any]:
    """The ``scene`` query parameter as a JSON object (not yet validated as a scene).
    Raises InvalidArgument naming the problem."""
    if not scene_json:
        raise InvalidArgument("query parameter 'scene' is missing: pass the scene as JSON")
    try:
        scene = json.loads(scene_json)
    except ValueError as error:
        raise InvalidArgument(f"query parameter 'scene' is not valid JSON: {error}") from None
    if not isinstance(scene, dict):
        raise InvalidArgument("query parameter 'scene' must be a JSON object")
    return scene


def tile_scene(base: dict[str, Any], z: int, x: int, y: int, level: Level):
    """The validated scene that renders tile (z, x, y) of ``base`` at ``level``.

    ``base`` is the person's scene; its view (centre, width, resolution) is the map's to
    decide and is ignored. Tiles are 8-bit images whatever the scene asks for its poster;
    coarse previews take one sample a pixel. Raises InvalidArgument (or SceneError) naming
    the bad value.
    """
    base = {k: v for k, v in base.items() if k not in _VIEW_FIELDS}
    fractal = base.get("fractal")
    scene = parse_scene({**base, "resolution": [1, 1]})
    if scene.is_3d:
        raise InvalidArgument(
            f"fractal {fractal!r} is 3D and has no map tiles: ask /view.png for a camera view"
        )
    deepest = MAX_ZOOM[scene.precision]
    if not 0 <= z <= deepest:
        raise InvalidArgument(
            f"zoom {z} is out of range: 0 .. {deepest} for precision {scene.precision!r} "
            "(deeper, neighbouring pixels would get the same coordinates)"
        )
    limit = EXTENT * 2**z // TILE_WIDTH_AT_ZOOM_0
    for name, index in (("x", x), ("y", y)):
        if not -limit <= index < limit:
            raise InvalidArgument(
                f"tile {name}={index} is outside the explorable plane at zoom {z}: "
                f"{-limit} .. {limit - 1} (|Re|, |Im| <= {EXTENT})"
            )
    centre, width = tile_geometry(z, x, y)
    fields = {
        **base,
        "center": list(centre),
        "width": float(width),
        "resolution": [level.pixels, level.pixels],
        **PREVIEW_FIELDS,
    }
    if level.name == "coarse":
        fields["supersample"] = 1
    return parse_scene(fields)


def view_scene(base: dict[str, Any], width: int, height: int, level: Level):
    """The validated scene of the whole view (the 3D camera's, or a 2D scene's own centre
    and width) at ``width`` x ``height`` pixels; a coarse level is a quarter of each side."""
    if level.name == "coarse":
        width, height = max(1, width // 4), max(1, height // 4)
        base = {**base, "supersample": 1}
    return parse_scene({**base, "resolution": [width, height], **PREVIEW_FIELDS})
