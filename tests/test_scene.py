"""Task parameters: every field's bounds, and errors that name the field and what it allows."""

import json
import math

import pytest

from fractal_app.errors import InvalidArgument
from fractal_app.scene import MAX_PARAMS_BYTES, PALETTE_NAMES, SceneError, parse_scene

BASE = {
    "mandelbrot": {"fractal": "mandelbrot", "resolution": [64, 48]},
    "julia": {"fractal": "julia", "resolution": [64, 48]},
    "burning_ship": {"fractal": "burning_ship", "resolution": [64, 48]},
    "multibrot": {"fractal": "multibrot", "resolution": [64, 48]},
    "mandelbulb": {"fractal": "mandelbulb", "resolution": [64, 48]},
    "mandelbox": {"fractal": "mandelbox", "resolution": [64, 48]},
}


def scene_with(fractal="mandelbrot", **fields):
    return {**BASE[fractal], **fields}


@pytest.mark.parametrize("fractal", sorted(BASE))
def test_minimal_scene_of_every_kind_is_valid(fractal):
    scene = parse_scene(json.dumps(BASE[fractal]))
    assert scene.fractal == fractal
    assert (scene.width_px, scene.height_px) == (64, 48)
    assert scene.is_3d == (fractal in ("mandelbulb", "mandelbox"))
    # The canonical JSON round-trips to the same scene.
    assert parse_scene(scene.to_json()) == scene


# (fractal, field, bad value, what the message must say besides the field name)
BAD_FIELDS = [
    ("mandelbrot", "resolution", [0, 10], ">= 1"),
    ("mandelbrot", "resolution", [10, 65_537], "<= 65536"),
    ("mandelbrot", "resolution", [65_536, 32_768], "2^30"),
    ("mandelbrot", "resolution", [10], ""),
    ("mandelbrot", "resolution", [10.5, 10], "integer"),
    ("mandelbrot", "supersample", 0, ">= 1"),
    ("mandelbrot", "supersample", 9, "<= 8"),
    ("mandelbrot", "supersample", True, "integer"),
    ("mandelbrot", "palette", "rainbow", "classic"),
    ("mandelbrot", "palette_cycles", 0, "> 0"),
    ("mandelbrot", "palette_cycles", 10_001, "<= 10000"),
    ("mandelbrot", "palette_offset", -0.1, ">= 0"),
    ("mandelbrot", "palette_offset", 1.5, "<= 1"),
    ("mandelbrot", "interior_color", [0, 0, 256], "<= 255"),
    ("mandelbrot", "interior_color", [0, -1, 0], ">= 0"),
    ("mandelbrot", "bit_depth", 12, "8"),
    ("mandelbrot", "precision", "float16", "float64"),
    ("mandelbrot", "env", "docker_tpu", "docker_cpu"),
    ("mandelbrot", "output", "jpeg", "image"),
    ("mandelbrot", "center", [0.0], ""),
    ("mandelbrot", "center", ["abc", 0], "decimal"),
    ("mandelbrot", "center", [True, 0], "boolean"),
    ("mandelbrot", "center", ["1" * 4001, 0], "4,000 are allowed"),
    ("mandelbrot", "width", 0, "> 0"),
    ("mandelbrot", "width", -1, "> 0"),
    ("mandelbrot", "width", 1e7, "<= 1000000"),
    ("mandelbrot", "width", "NaN", "finite"),
    ("mandelbrot", "width", "Infinity", "finite"),
    ("mandelbrot", "max_iter", 0, ">= 1"),
    ("mandelbrot", "max_iter", 10_000_001, "<= 10000000"),
    ("mandelbrot", "max_iter", 100.0, "integer"),
    ("mandelbrot", "max_iter", "100", "integer"),
    ("julia", "c", [0.1], ""),
    ("julia", "c", ["x", 0.1], "decimal"),
    ("multibrot", "power", 1, ">= 2"),
    ("multibrot", "power", 17, "<= 16"),
    ("mandelbulb", "power", 1.5, ">= 2"),
    ("mandelbulb", "power", 33, "<= 32"),
    ("mandelbulb", "max_steps", 0, ">= 1"),
    ("mandelbulb", "max_steps", 10_001, "<= 10000"),
    ("mandelbulb", "epsilon", 0, "> 0"),
    ("mandelbulb", "epsilon", 2, "<= 1"),
    ("mandelbulb", "iterations", 0, ">= 1"),
    ("mandelbulb", "iterations", 1001, "<= 1000"),
    ("mandelbulb", "fog", -1, ">= 0"),
    ("mandelbulb", "fog", 11, "<= 10"),
    ("mandelbulb", "max_distance", 0, "> 0"),
    ("mandelbulb", "max_distance", 1e5, "<= 10000"),
    ("mandelbulb", "background", [0, 0, 300], "<= 255"),
    ("mandelbulb", "light_direction", [0, 0, 0], "zero vector"),
    ("mandelbulb", "output", "counts", "2D"),
    ("mandelbox", "scale", 0.5, "scale"),
    ("mandelbox", "scale", 5, "<= 4"),
    ("mandelbox", "scale", -5, ">= -4"),
]


@pytest.mark.parametrize(("fractal", "field", "value", "allowed"), BAD_FIELDS)
def test_bad_field_is_rejected_with_a_message_naming_it(fractal, field, value, allowed):
    with pytest.raises(SceneError) as caught:
        parse_scene(json.dumps(scene_with(fractal, **{field: value})))
    message = str(caught.value)
    assert field in message
    assert allowed in message
    assert isinstance(caught.value, InvalidArgument)  # so the adapter answers INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("position", [0, 0, 0], "differ"),
        ("up", [0, 0, 1], "parallel"),
        ("fov", 0, "> 0"),
        ("fov", 180, "< 180"),
        ("zoom", 2, "not a known parameter"),
    ],
)
def test_bad_camera_field_is_rejected(field, value, allowed):
    camera = {"position": [0, 0, -3], "look_at": [0, 0, 0], "up": [0, 1, 0], field: value}
    with pytest.raises(SceneError) as caught:
        parse_scene(json.dumps(scene_with("mandelbulb", camera=camera)))
    assert "camera" in str(caught.value)
    assert allowed in str(caught.value)


@pytest.mark.parametrize(
    ("fractal", "field", "value"),
    [
        ("mandelbrot", "resolution", [1, 1]),
        ("mandelbrot", "resolution", [65_536, 16_384]),
        ("mandelbrot", "supersample", 8),
        ("mandelbrot", "max_iter", 10_000_000),
        ("mandelbrot", "width", 1e6),
        ("mandelbrot", "bit_depth", 16),
        ("mandelbrot", "precision", "float32"),
        ("mandelbrot", "env", "docker_gpu"),
        ("mandelbrot", "output", "counts"),
        ("mandelbrot", "palette_offset", 1),
        ("mandelbrot", "interior_color", [255, 255, 255]),
        ("multibrot", "power", 16),
        ("mandelbox", "scale", -1),
        ("mandelbulb", "power", 32),
    ],
)
def test_boundary_values_are_accepted(fractal, field, value):
    scene = parse_scene(json.dumps(scene_with(fractal, **{field: value})))
    got = getattr(scene, field)
    assert list(got) == list(value) if isinstance(value, list) else got == value


@pytest.mark.parametrize("palette", PALETTE_NAMES)
def test_every_palette_name_is_accepted(palette):
    assert parse_scene(json.dumps(scene_with(palette=palette))).palette == palette


def test_center_takes_decimal_strings_at_full_precision():
    scene = parse_scene(
        json.dumps(scene_with(center=["-0.743643887037158704752191506114774", "0.1"]))
    )
    assert scene.center[0] == pytest.approx(-0.7436438870371587, abs=0)
    assert math.isfinite(scene.center[1])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('"mandelbrot"', "JSON object"),
        (json.dumps({"resolution": [4, 4]}), "fractal"),
        (json.dumps({"fractal": "koch", "resolution": [4, 4]}), "fractal"),
        (json.dumps({"fractal": "mandelbrot"}), "resolution"),
        (json.dumps(scene_with(colour="red")), "'colour' is not a known parameter"),
        ("[" * 100_000, "bytes"),
        ("[" * 5_000 + "]" * 5_000, ""),
    ],
)
def test_malformed_parameters_are_rejected_clearly(text, says):
    with pytest.raises(SceneError, match=None) as caught:
        parse_scene(text)
    assert says in str(caught.value)


def test_counts_output_needs_plain_pixels():
    with pytest.raises(SceneError, match="supersample"):
        parse_scene(json.dumps(scene_with(output="counts", supersample=2)))


def test_parameter_size_limit_is_stated():
    with pytest.raises(SceneError, match=str(MAX_PARAMS_BYTES)):
        parse_scene(" " * (MAX_PARAMS_BYTES + 1))


@pytest.mark.parametrize(
    "params, says",
    [
        (scene_with(max_itr=5), "'max_itr' is not a known parameter: did you mean 'max_iter'?"),
        (scene_with(palete="fire"), "did you mean 'palette'?"),
        (scene_with(power=5), "'power' is not a mandelbrot parameter: it is for multibrot and "
                              "mandelbulb; remove it"),
        (scene_with("mandelbulb", scale=2), "'scale' is not a mandelbulb parameter: it is for "
                                            "mandelbox"),
        (scene_with("julia", camera={}), "it is for mandelbulb and mandelbox"),
        (scene_with("mandelbulb", camera={"fob": 30}), "'camera.fob' is not a known parameter: "
                                                       "did you mean 'fov'?"),
        (scene_with(resolution="big"), "field 'resolution' must be a list (JSON array) "
                                       "(got the string 'big')"),
        (scene_with(resolution=[64]), "field 'resolution' has too few items: resolution[1] is "
                                      "missing"),
        (scene_with(resolution=[64, 48, 2]), "field 'resolution' must have exactly 2 items"),
        (scene_with(resolution=["a", 48]), "field 'resolution[0]'"),
        (scene_with(center=3), "field 'center' must be a list (JSON array) (got the number 3)"),
        (scene_with(bit_depth=12), "field 'bit_depth' must be 8 or 16 (got 12)"),
        (scene_with(palette="viridi"), "did you mean 'viridis'?"),
        (scene_with(camera=[1, 2]), "is not a mandelbrot parameter"),
        (scene_with("mandelbulb", camera=[1, 2]), "field 'camera' must be an object"),
    ],
)
def test_messages_speak_json_and_suggest_the_fix(params, says):
    """No pydantic wording ("Input should be a valid tuple", "resolution.0") reaches the user;
    a misspelt key gets the close name, a key of another fractal says which one it is for."""
    with pytest.raises(SceneError) as caught:
        parse_scene(params)
    message = str(caught.value)
    assert says in message
    for leak in ("Input should", "valid tuple", "resolution.0", "model_type", "dict_type"):
        assert leak not in message


def test_an_unknown_key_far_from_every_name_gets_no_guess():
    with pytest.raises(SceneError) as caught:
        parse_scene(scene_with(brightness=2))
    assert "did you mean" not in str(caught.value)
    assert "'brightness' is not a known parameter" in str(caught.value)
