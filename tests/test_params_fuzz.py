"""Fuzz the task-parameter validation: every input is either a scene or a SceneError.

Never another exception, never a hang: these are the bytes a stranger sends to CreateTask.
"""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fractal_app.scene import FRACTALS, MAX_PARAMS_BYTES, PALETTE_NAMES, SceneError, parse_scene

FIELDS = [
    "fractal",
    "center",
    "width",
    "max_iter",
    "resolution",
    "supersample",
    "palette",
    "palette_cycles",
    "palette_offset",
    "interior_color",
    "bit_depth",
    "precision",
    "env",
    "output",
    "smooth",
    "color_scale",
    "color_knots",
    "c",
    "power",
    "camera",
    "max_steps",
    "epsilon",
    "iterations",
    "light_direction",
    "background",
    "fog",
    "max_distance",
    "scale",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
    | st.sampled_from(
        ["1e400", "-0", "NaN", "inf", "0x10", "1_000", " 3 ", "auto", "iterations", *FRACTALS,
         *PALETTE_NAMES]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


def _check(params) -> None:
    try:
        scene = parse_scene(params)
    except SceneError as exc:
        message = str(exc)
        assert message, "a rejection must say why"
        assert len(message) < 4000, "a rejection message must stay readable"
        return
    # Anything accepted must be a scene whose numbers are all finite and in range.
    assert 1 <= scene.width_px * scene.height_px <= 2**30
    assert json.loads(scene.to_json())["fractal"] in FRACTALS
    for value in json.loads(scene.to_json()).values():
        if isinstance(value, float):
            assert math.isfinite(value)


def _fuzz(examples: int, check, **strategies) -> None:
    """Run ``check`` on ``examples`` draws of its keyword arguments (a failure is shrunk)."""
    run = given(**strategies)(check)
    settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])(
        run
    )()


# The default run draws a tenth of the examples, the slow run (CI's `pytest -m slow`) them all.
QUICK_OR_THOROUGH = pytest.mark.parametrize(
    "share",
    [pytest.param(0.1, id="quick"), pytest.param(1.0, id="thorough", marks=pytest.mark.slow)],
)


@QUICK_OR_THOROUGH
def test_mutated_scenes_are_accepted_or_rejected_cleanly(share):
    def mutated(fractal, overrides):
        params = {"fractal": fractal, "resolution": [16, 8], **overrides}
        _check(params)
        _check(json.dumps(params, allow_nan=True))

    _fuzz(
        round(2500 * share),
        mutated,
        fractal=st.sampled_from(FRACTALS),
        overrides=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    )


@QUICK_OR_THOROUGH
def test_arbitrary_documents_are_accepted_or_rejected_cleanly(share):
    def arbitrary(document):
        if isinstance(document, str):
            _check(document)
        else:
            _check(json.dumps(document, allow_nan=True))

    _fuzz(
        round(1000 * share),
        arbitrary,
        document=st.one_of(json_values, st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
    )


def test_deep_nesting_is_rejected_not_crashing():
    # Under the size limit, so that the nesting itself reaches the JSON decoder (a larger
    # document is refused for its size before it is parsed).
    depth = MAX_PARAMS_BYTES // 2 - 100
    with pytest.raises(SceneError, match="not valid JSON"):
        parse_scene("[" * depth + "]" * depth)
    # An already decoded object (the Python API): a deep value in any field is a clean rejection,
    # never a RecursionError from describing it.
    deep_value = 1
    for _ in range(100_000):
        deep_value = [deep_value]
    # (Not "fractal": pydantic-core refuses a deep union tag cleanly but reports its own
    # RecursionError as unraisable on the way, which pytest turns into an error.)
    for fractal in FRACTALS:
        for field in set(FIELDS) - {"fractal"}:
            with pytest.raises(SceneError):
                parse_scene({"fractal": fractal, "resolution": [4, 4], field: deep_value})
    with pytest.raises(SceneError, match="field 'env' must be .* \\(got an array\\)"):
        parse_scene({"fractal": "mandelbrot", "resolution": [4, 4], "env": deep_value})
    nested = {"fractal": "mandelbrot", "resolution": [4, 4], "center": [[[[[[1]]]]], 0]}
    try:
        parse_scene(nested)
    except SceneError as exc:
        assert "center" in str(exc)
    else:
        raise AssertionError("a nested list is not a coordinate")


def test_huge_numbers_and_long_strings_are_rejected_with_the_field_named():
    cases = {
        "max_iter": 10**400,
        "width": "9" * 190,
        "palette": "x" * 10_000,
        "resolution": [2**63, 2**63],
    }
    for field, value in cases.items():
        try:
            parse_scene({"fractal": "mandelbrot", "resolution": [4, 4], field: value})
        except SceneError as exc:
            assert field in str(exc), (field, str(exc))
        else:
            raise AssertionError(f"{field}={value!r:.40} was accepted")


def test_oversized_document_is_rejected_before_parsing():
    blob = json.dumps({"fractal": "mandelbrot", "resolution": [4, 4], "pad": "x" * 100_000})
    try:
        parse_scene(blob)
    except SceneError as exc:
        assert "bytes" in str(exc)
    else:
        raise AssertionError("a 100 kB document was accepted")
