"""The task parameters: one typed, validated model per fractal kind.

The models are derived from the fractal registry (fractals.py): a family's fields (2D
escape-time or 3D ray-marched, below) and the fractal's own. This is the app's public API
(the JSON in CreateTask's ``task_params_json``). Every field is checked here, at the edge,
so that nothing below (bands, kernels, verification) has to doubt a value. A bad value
becomes a :class:`SceneError` whose message names the field and what is allowed; the gRPC
adapter turns that into INVALID_ARGUMENT.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import json
import math
import operator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from fractal_app.errors import InvalidArgument
from fractal_app.fields import Bool, Camera, Colour, Int, Real, Vec2, Vec3, Width, strict_int
from fractal_app.fractals import FRACTALS as REGISTERED
from fractal_app.fractals import Fractal
from fractal_app.outputs import OUTPUT_NAMES, OutputFormat, output_format
from fractal_app.palettes import PALETTES

MAX_SIDE = 65_536
MAX_PIXELS = 2**30
MAX_ITER = 10_000_000
MAX_PARAMS_BYTES = 64 * 1024
# The "auto" colour scale's knots (color_scale.py resolves 34 at most).
MAX_COLOR_KNOTS = 64
# Their palette positions (3 cycles when resolved: color_scale.SPAN_CYCLES).
MAX_KNOT_POSITION = 1000

# How an escaped sample's count becomes a palette position (kernels/color.py): "iterations"
# follows log(count) / log(max_iter); "auto" follows the view's own distribution of counts.
COLOR_SCALES = ("iterations", "auto")

# The palettes declared in palettes.py.
PALETTE_NAMES = tuple(PALETTES)


class SceneError(InvalidArgument):
    """Task parameters that cannot be rendered; the message names the field and the fix."""


class _SceneBase(BaseModel):
    """Fields every fractal shares: the picture's size, colouring and output."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    resolution: tuple[
        Annotated[Int, Field(ge=1, le=MAX_SIDE)], Annotated[Int, Field(ge=1, le=MAX_SIDE)]
    ]
    supersample: Annotated[Int, Field(ge=1, le=8)] = 1
    palette: str = "classic"
    palette_cycles: Annotated[Real, Field(gt=0, le=10_000)] = 1.0
    palette_offset: Annotated[Real, Field(ge=0, le=1)] = 0.0
    interior_color: Colour = (0, 0, 0)
    bit_depth: Annotated[Literal[8, 16], BeforeValidator(strict_int)] = 8
    precision: Literal["float64", "float32"] = "float64"
    env: Literal["docker_cpu", "docker_gpu"] = "docker_cpu"
    output: Literal[OUTPUT_NAMES] = "image"  # each name in the registry (outputs.OUTPUTS)

    @field_validator("resolution")
    @classmethod
    def _pixel_budget(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] * value[1] > MAX_PIXELS:
            raise ValueError(
                f"{value[0]}x{value[1]} is {value[0] * value[1]:,} pixels; at most "
                f"{MAX_PIXELS:,} (2^30) are allowed"
            )
        return value

    @field_validator("palette")
    @classmethod
    def _known_palette(cls, value: str) -> str:
        if value not in PALETTE_NAMES:
            close = difflib.get_close_matches(value[:40], PALETTE_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown palette {value[:40]!r}{hint}; choose one of {', '.join(PALETTE_NAMES)}"
            )
        return value

    @model_validator(mode="after")
    def _counts_need_plain_pixels(self):
        if not self.output_format.coloured and self.supersample != 1:
            raise ValueError(
                f"output {self.output!r} stores one escape count per pixel: set supersample to 1"
            )
        return self

    @property
    def output_format(self) -> OutputFormat:
        return output_format(self.output)

    @property
    def width_px(self) -> int:
        return self.resolution[0]

    @property
    def height_px(self) -> int:
        return self.resolution[1]

    @property
    def is_3d(self) -> bool:
        return False

    def to_json(self) -> str:
        """Canonical JSON of the validated scene (defaults filled in)."""
        return self.model_dump_json()


class _EscapeTimeScene(_SceneBase):
    """2D escape-time fractals: a view of the complex plane."""

    center: Vec2 = (-0.5, 0.0)
    width: Width = 3.5
    max_iter: Annotated[Int, Field(ge=1, le=MAX_ITER)] = 1000
    # Smooth (continuous) colouring from the final |z|; false gives flat bands per count.
    smooth: Bool = True
    # None: "auto" for deep views, "iterations" for the others (decided at validation, so
    # the scene a provider gets names it).
    color_scale: Literal[COLOR_SCALES] | None = None
    # The "auto" scale's mapping, [[count, position], ...]: resolved once from the view's
    # preview (color_scale.resolve) and sent to every provider inside the scene, so that
    # providers and the verifier colour alike; rarely written by hand.
    color_knots: tuple[tuple[Annotated[Real, Field(ge=0, le=MAX_ITER)],
                             Annotated[Real, Field(ge=0, le=MAX_KNOT_POSITION)]], ...] | None = None
    # Deep zoom: the view is 10^zoom times narrower than the default width (instead of
    # 'width'); folded into the exact width at validation, never serialised.
    zoom: float | None = Field(default=None, exclude=True)
    # Centre and width exactly as given (decimal strings down to 1e-1000): see deep/view.py.
    _exact: Any = PrivateAttr(default=None)

    @property
    def pixel_size(self) -> float:
        """Pixels are square: width / W in the complex plane."""
        return self.width / self.resolution[0]

    @field_validator("color_knots")
    @classmethod
    def _knots_rise(cls, value):
        if value is None:
            return value
        if not 2 <= len(value) <= MAX_COLOR_KNOTS:
            raise ValueError(
                f"needs 2 .. {MAX_COLOR_KNOTS} [count, position] pairs (got {len(value)}); "
                "leave it out to have it resolved from the view"
            )
        for (count_a, position_a), (count_b, position_b) in itertools.pairwise(value):
            if not (math.log(1.0 + count_a) < math.log(1.0 + count_b) and position_a <= position_b):
                raise ValueError(
                    f"counts must rise strictly and positions must not fall: [{count_a}, "
                    f"{position_a}] then [{count_b}, {position_b}]"
                )
        if value[-1][1] == value[0][1]:
            raise ValueError("the last position must be above the first")
        return value

    def _resolve_color_scale(self) -> None:
        """Name the default colour scale, and refuse knots the scale does not use."""
        if self.color_scale is None:
            object.__setattr__(self, "color_scale", "auto" if self.deep else "iterations")
        if self.color_knots is not None and self.color_scale != "auto":
            raise ValueError(
                "field 'color_knots' is only for color_scale 'auto' (color_scale is "
                f"{self.color_scale!r}): remove color_knots or set color_scale to 'auto'"
            )

    @model_validator(mode="wrap")
    @classmethod
    def _keep_exact_view(cls, data: Any, handler):
        """Keep the centre and width as exact decimals beside their float64 values, and
        refuse a view the deep path cannot render faithfully, before any work."""
        from fractal_app.deep import view as deep_view

        exact = None
        if isinstance(data, dict):
            data, exact = deep_view.exact_inputs(
                data, cls.model_fields["center"].default, cls.model_fields["width"].default
            )
        scene = handler(data)
        if exact is not None:
            exact = dataclasses.replace(exact, orbit_iter=scene.max_iter)
            scene.__pydantic_private__["_exact"] = exact
            deep_view.check_deep_scene(scene)
        scene._resolve_color_scale()
        return scene

    @model_serializer(mode="wrap")
    def _exact_view_out(self, handler):
        """A deep view's centre and width go out as the exact decimal strings, so a provider
        re-parsing scene.json gets the very same view."""
        data = handler(self)
        if self.deep and isinstance(data, dict):
            data["center"] = list(self._exact.center_strings())
            data["width"] = str(self._exact.width)
        return data

    @property
    def exact_view(self):
        """The centre and width as given (deep/view.py ExactView), or None."""
        return self._exact

    @property
    def deep(self) -> bool:
        """Whether this view renders on the deep (perturbation) path: float64 cannot tell
        its pixels apart."""
        from fractal_app.deep import view as deep_view

        return self._exact is not None and deep_view.needs_deep(self._exact, self.resolution[0])


class _RaymarchScene(_SceneBase):
    """3D distance-estimated fractals, ray-marched from a pinhole camera."""

    camera: Camera = Camera()
    max_steps: Annotated[Int, Field(ge=1, le=10_000)] = 256
    # Surface distance at one unit from the camera; scaled with the distance along the ray.
    epsilon: Annotated[Real, Field(gt=0, le=1)] = 1e-3
    iterations: Annotated[Int, Field(ge=1, le=1000)] = 12
    light_direction: Vec3 = (-0.6, 0.8, -0.5)
    background: Colour = (12, 14, 22)
    fog: Annotated[Real, Field(ge=0, le=10)] = 0.05
    max_distance: Annotated[Real, Field(gt=0, le=1e4)] = 20.0

    @property
    def is_3d(self) -> bool:
        return True

    @model_validator(mode="after")
    def _no_counts_for_3d(self):
        if not self.output_format.coloured:
            raise ValueError(
                f"output {self.output!r} is for 2D escape-time fractals; use output 'image'"
            )
        if math.fsum(x * x for x in self.light_direction) == 0.0:
            raise ValueError("light_direction must not be the zero vector")
        return self


_FAMILIES = {"escape_time": _EscapeTimeScene, "raymarch": _RaymarchScene}


def _scene_model(fractal: Fractal) -> type[_SceneBase]:
    """The scene model of one registered fractal: its family's fields, then its own."""
    return create_model(
        fractal.model_name,
        __base__=_FAMILIES[fractal.family],
        __module__=__name__,
        fractal=(Literal[fractal.name], ...),
        **fractal.fields,
    )


_MODELS = {name: _scene_model(fractal) for name, fractal in REGISTERED.items()}
FRACTALS = tuple(_MODELS)
Scene = Annotated[functools.reduce(operator.or_, _MODELS.values()), Field(discriminator="fractal")]
_SCENE = TypeAdapter(Scene)

# What a JSON author sees for pydantic's kinds of type error ("Input should be a valid
# tuple" names a Python type the JSON does not have).
_TYPE_WORDS = {
    "tuple_type": "a list (JSON array)",
    "list_type": "a list (JSON array)",
    "string_type": "a string",
    "bool_type": "true or false",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "int_type": "an integer",
    "float_type": "a number",
}


def _field_path(loc: list[str | int]) -> str:
    """"resolution[0]", "camera.fov": the way the JSON is written."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _unknown_key(fractal: str | None, loc: list[str | int]) -> str:
    """Why a key is not known, with the likely fix: a close name, or the fractals it is for."""
    field = _field_path(loc)
    key = str(loc[-1])
    if fractal in _MODELS and len(loc) == 1:
        known = list(_MODELS[fractal].model_fields)
        owners = [name for name, model in _MODELS.items() if key in model.model_fields]
        if owners:
            where = ", ".join(owners[:-1]) + " and " + owners[-1] if len(owners) > 1 else owners[0]
            return f"field {field!r} is not a {fractal} parameter: it is for {where}; remove it"
    elif len(loc) == 2 and loc[0] == "camera":
        known = list(Camera.model_fields)
    else:
        known = []
    close = difflib.get_close_matches(key, known, n=1)
    hint = f": did you mean {close[0]!r}?" if close else ""
    return f"field {field!r} is not a known parameter{hint} (see README 'Task parameters')"


def _describe(error: dict[str, Any]) -> str:
    """One line per pydantic error: the field path, what is wrong, what is allowed."""
    # Drop the union tag pydantic puts in the location ("mandelbrot" in ("mandelbrot", "max_iter")).
    raw = list(error["loc"])
    fractal = raw[0] if raw and raw[0] in FRACTALS else None
    loc = raw[1:] if fractal else raw
    field = _field_path(loc) or "task parameters"
    kind = error["type"]
    ctx = error.get("ctx", {})
    got = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(fractal, loc)
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return f"field 'fractal' must be one of {', '.join(FRACTALS)}"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        return f"field {_field_path(loc[:-1])!r} has too few items: {field} is missing"
    if kind == "missing":
        return f"field {field!r} is required"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bounds = {
            "greater_than_equal": f">= {ctx.get('ge')}",
            "less_than_equal": f"<= {ctx.get('le')}",
            "greater_than": f"> {ctx.get('gt')}",
            "less_than": f"< {ctx.get('lt')}",
        }[kind]
        return f"field {field!r} must be {bounds} (got {got!r})"
    if kind in _TYPE_WORDS:
        return f"field {field!r} must be {_TYPE_WORDS[kind]} (got {_json_kind(got)})"
    if kind in ("too_short", "too_long"):
        wanted = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return (
            f"field {field!r} must have exactly {wanted} items (got {ctx.get('actual_length')})"
        )
    if kind == "literal_error":
        # An array or object is named by its kind: its repr can be megabytes, or recurse too deep.
        shown = _json_kind(got) if isinstance(got, list | dict) else repr(got)
        return f"field {field!r} must be {ctx.get('expected')} (got {shown})"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"field {field!r}: {message}" if loc else message


def _json_kind(value: Any) -> str:
    """How a decoded JSON value is called in JSON: number, string, array, object, ..."""
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def parse_scene(params: str | bytes | dict) -> Scene:
    """Validate task parameters (JSON text or a decoded object) into a typed scene.

    Raises SceneError with a message that names every bad field and what it allows.
    """
    if isinstance(params, str | bytes):
        if len(params) > MAX_PARAMS_BYTES:
            raise SceneError(
                f"task parameters are {len(params)} bytes; at most {MAX_PARAMS_BYTES} are allowed"
            )
        try:
            params = json.loads(params)
        except (ValueError, RecursionError) as exc:
            raise SceneError(f"task parameters are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise SceneError(
            'task parameters must be a JSON object, e.g. {"fractal": "mandelbrot", ...}'
        )
    try:
        return _SCENE.validate_python(params)
    except ValidationError as exc:
        lines = sorted({_describe(e) for e in exc.errors(include_url=False)})
        raise SceneError("; ".join(lines[:8])) from None
    except RecursionError:
        raise SceneError("task parameters are nested too deeply") from None
