"""The fractals the app renders, each declared once.

An entry names the fractal (its JSON ``fractal`` value), the family that renders it, its own
parameters (pydantic fields: type and default, overriding the family's where they differ)
and, for a 2D fractal, a view through its set's boundary. Everything else is derived from
this dict: the scene schema and its error messages (scene.py), the app definition's
description (app_definition.py), the 2D kernels' choice of scalar core (by name, in
kernels/escape.py) and the tests' views. Palettes are declared in palettes.py.

Adding a 2D fractal is its scalar core in kernels/escape.py, an entry here and an example
in examples/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from fractal_app.fields import Camera, Int, Real, Vec2, Width

# Escape-time iteration of a point of the complex plane (kernels/escape.py), or ray marching
# of a distance estimator (kernels/raymarch.py).
Family = Literal["escape_time", "raymarch"]


@dataclass(frozen=True)
class Fractal:
    name: str
    # As prose names it ("Burning Ship").
    title: str
    family: Family
    # Its parameters: field name -> (type, default), pydantic's field definition. A family's
    # field listed here takes this fractal's type and default instead.
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # 2D: centre, width, max_iter and parameters of a small view that cuts through the set's
    # boundary, where any difference in rounding changes escape counts: the view the tests
    # compare kernels, backends and references on. None for 3D fractals.
    boundary_view: dict[str, Any] | None = None
    # Drawn with the imaginary axis pointing down (row 0 at the smallest Im): the
    # convention of Burning Ship renderers, under which the ship stands upright.
    imaginary_axis_down: bool = False

    @property
    def is_3d(self) -> bool:
        return self.family == "raymarch"

    @property
    def model_name(self) -> str:
        """The scene model's class name: "burning_ship" -> "BurningShipScene"."""
        return "".join(part.title() for part in self.name.split("_")) + "Scene"


def _box_scale_not_degenerate(value: float) -> float:
    if abs(value) < 1.0:
        raise ValueError("scale must be <= -1 or >= 1 (|scale| < 1 collapses to a point)")
    return value


_DECLARED = (
    Fractal(
        name="mandelbrot", title="Mandelbrot", family="escape_time",
        boundary_view={"center": [-0.745, 0.113], "width": 0.05, "max_iter": 300},
    ),
    Fractal(
        name="julia", title="Julia", family="escape_time",
        fields={"c": (Vec2, (-0.8, 0.156)), "center": (Vec2, (0.0, 0.0)), "width": (Width, 3.2)},
        boundary_view={"center": [0.1, 0.05], "width": 1.8, "max_iter": 200, "c": [-0.8, 0.156]},
    ),
    Fractal(
        name="burning_ship", title="Burning Ship", family="escape_time",
        fields={"center": (Vec2, (-0.4, -0.6)), "width": (Width, 3.4)},
        boundary_view={"center": [-1.76, -0.03], "width": 0.12, "max_iter": 200},
        imaginary_axis_down=True,
    ),
    Fractal(
        name="multibrot", title="Multibrot", family="escape_time",
        fields={
            "power": (Annotated[Int, Field(ge=2, le=16)], 3),
            "center": (Vec2, (0.0, 0.0)),
            "width": (Width, 3.0),
        },
        boundary_view={"center": [0.2, 0.3], "width": 1.4, "max_iter": 120, "power": 5},
    ),
    Fractal(
        name="mandelbulb", title="Mandelbulb", family="raymarch",
        fields={
            "power": (Annotated[Real, Field(ge=2, le=32)], 8.0),
            "camera": (Camera, Camera(position=(0.5, 0.9, -2.8), look_at=(0.0, -0.02, 0.0))),
        },
    ),
    Fractal(
        name="mandelbox", title="Mandelbox", family="raymarch",
        fields={
            "scale": (
                Annotated[Real, Field(ge=-4, le=4), AfterValidator(_box_scale_not_degenerate)],
                2.0,
            ),
            # Far enough back to frame the whole box (about 6 units across at scale 2).
            "camera": (Camera, Camera(position=(10.5, 8.5, -18.0), look_at=(0.0, -0.5, 0.0))),
            "max_distance": (Annotated[Real, Field(gt=0, le=1e4)], 60.0),
        },
    ),
)

FRACTALS: dict[str, Fractal] = {fractal.name: fractal for fractal in _DECLARED}
