"""The value types of the task parameters, each checked strictly as JSON authors write it.

Numbers (a JSON number or a decimal string, finite), integers and booleans that refuse the
look-alikes, vectors, colours and the 3D camera. The scene schema (scene.py) and the fractal
registry (fractals.py) build their fields from these.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _finite_float(value: Any) -> float:
    """A JSON number or a decimal string, as a finite float64. Booleans are not numbers."""
    if isinstance(value, bool):
        raise ValueError("must be a number or a decimal string, not a boolean")
    if isinstance(value, str):
        if len(value) > 200:
            raise ValueError("decimal string is longer than 200 characters")
        try:
            value = float(Decimal(value.strip()))
        except (InvalidOperation, ValueError, OverflowError):
            raise ValueError(f"{value!r} is not a decimal number") from None
    elif isinstance(value, int):
        value = float(value) if abs(value) < 2**1000 else math.inf
    elif not isinstance(value, float):
        raise ValueError(f"must be a number or a decimal string, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError("must be finite (NaN and infinities are not allowed)")
    return value


def strict_int(value: Any) -> Any:
    """Reject 3.0, "3" and true where an integer is asked: JSON authors should write 3."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {type(value).__name__} {value!r}")
    return value


def _strict_bool(value: Any) -> Any:
    """Only JSON true and false: "no", "t", 0 and 1 are too easily meant the other way."""
    if not isinstance(value, bool):
        raise ValueError(
            f"must be true or false (a JSON boolean), got {type(value).__name__} {value!r}"
        )
    return value


Real = Annotated[float, BeforeValidator(_finite_float)]
Vec2 = tuple[Real, Real]
Vec3 = tuple[Real, Real, Real]
Int = Annotated[int, BeforeValidator(strict_int)]
Bool = Annotated[bool, BeforeValidator(_strict_bool)]
Colour = tuple[
    Annotated[Int, Field(ge=0, le=255)],
    Annotated[Int, Field(ge=0, le=255)],
    Annotated[Int, Field(ge=0, le=255)],
]


# The width of a 2D view in the complex plane.
Width = Annotated[Real, Field(gt=0, le=1e6)]


class Camera(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    position: Vec3 = (0.0, 0.0, -3.0)
    look_at: Vec3 = (0.0, 0.0, 0.0)
    up: Vec3 = (0.0, 1.0, 0.0)
    fov: Annotated[Real, Field(gt=0, lt=180)] = 45.0

    @model_validator(mode="after")
    def _well_posed(self):
        forward = [b - a for a, b in zip(self.position, self.look_at, strict=True)]
        if math.fsum(f * f for f in forward) == 0.0:
            raise ValueError("camera.position and camera.look_at must differ")
        up = self.up
        cross = (
            forward[1] * up[2] - forward[2] * up[1],
            forward[2] * up[0] - forward[0] * up[2],
            forward[0] * up[1] - forward[1] * up[0],
        )
        if math.fsum(x * x for x in cross) == 0.0:
            raise ValueError("camera.up must not be parallel to the viewing direction")
        return self
