"""The palettes, each declared once: how 2D pictures and 3D surfaces take their colours.

The scene schema's ``palette`` choices, the 2D colouring tables (kernels/color.py) and the
3D surface colours (render3d.py) all read this dict; adding a palette is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Palette:
    """One palette in both of its forms.

    ``stops``: (position in [0, 1], sRGB hex) control points of the 2D gradient; a cyclic
    palette's first and last points are equal, so colour flows on where the index wraps.
    ``cosine``: the 3D surface palette a + b cos(2 pi (c t + d)) in linear RGB, as the
    triples (a, b, c, d); its period is 1.
    """

    stops: tuple[tuple[float, str], ...]
    cosine: tuple[RGB, RGB, RGB, RGB]


# viridis and twilight follow matplotlib's maps (perceptually uniform; twilight also
# cyclic), sampled at enough points that linear interpolation between them stays within a
# few 8-bit steps of the originals. classic is the familiar cyclic blue / white / gold.
PALETTES: dict[str, Palette] = {
    "classic": Palette(
        stops=(
            (0.0, "000764"), (0.16, "206bcb"), (0.42, "edffff"),
            (0.6425, "ffaa00"), (0.8575, "000200"), (1.0, "000764"),
        ),
        cosine=((0.55, 0.45, 0.40), (0.45, 0.40, 0.40), (1.0, 1.0, 1.0), (0.55, 0.60, 0.70)),
    ),
    "viridis": Palette(
        stops=(
            (0.0, "440154"), (0.111, "482878"), (0.222, "3e4989"), (0.333, "31688e"),
            (0.444, "26828e"), (0.556, "1f9e89"), (0.667, "35b779"), (0.778, "6ece58"),
            (0.889, "b5de2b"), (1.0, "fde725"),
        ),
        cosine=((0.40, 0.45, 0.35), (0.40, 0.35, 0.30), (0.60, 0.50, 0.60), (0.55, 0.55, 0.15)),
    ),
    "twilight": Palette(
        stops=(
            (0.0, "e2d9e2"), (0.1, "b1c4cf"), (0.2, "7ea1c6"), (0.3, "6678bb"),
            (0.4, "5f48a3"), (0.5, "2f1436"), (0.6, "742a4c"), (0.7, "a9434c"),
            (0.8, "c77c62"), (0.9, "d6b6a0"), (1.0, "e2d9e2"),
        ),
        cosine=((0.55, 0.50, 0.60), (0.40, 0.35, 0.35), (1.0, 1.0, 1.0), (0.00, 0.05, 0.10)),
    ),
    "fire": Palette(
        stops=(
            (0.0, "000000"), (0.25, "7a0403"), (0.5, "e03b0b"), (0.75, "fdb32f"),
            (1.0, "fffbe6"),
        ),
        cosine=((0.60, 0.30, 0.10), (0.45, 0.35, 0.12), (0.50, 0.50, 0.50), (0.60, 0.70, 0.80)),
    ),
    "ocean": Palette(
        stops=(
            (0.0, "000a1f"), (0.3, "063a78"), (0.6, "1f8fb0"), (0.85, "8fdbd3"),
            (1.0, "f2fffc"),
        ),
        cosine=((0.15, 0.40, 0.55), (0.15, 0.30, 0.40), (0.60, 0.70, 0.80), (0.60, 0.60, 0.55)),
    ),
    "grayscale": Palette(
        stops=((0.0, "000000"), (1.0, "ffffff")),
        cosine=((0.50, 0.50, 0.50), (0.40, 0.40, 0.40), (1.0, 1.0, 1.0), (0.50, 0.50, 0.50)),
    ),
    "electric": Palette(
        stops=(
            (0.0, "05000f"), (0.25, "3a0ca3"), (0.5, "f72585"), (0.75, "4cc9f0"),
            (1.0, "f0fbff"),
        ),
        cosine=((0.50, 0.40, 0.60), (0.50, 0.50, 0.45), (1.0, 1.0, 0.8), (0.30, 0.55, 0.75)),
    ),
}
