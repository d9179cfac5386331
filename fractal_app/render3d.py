"""Render 3D ray-marched scenes (Mandelbulb, Mandelbox): a band of rows or a list of pixels.

This module turns a validated scene into the kernels' inputs (the named parameters of
raymarch.RayParams, floats in the scene's precision, and the image-plane coordinates of
every sub-pixel column and row, computed once in float64) and hands them to the CPU or CUDA
kernels.
Numba is imported only when a kernel is first needed, so importing this module is cheap.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass

import numpy as np

from fractal_app.errors import InvalidArgument
from fractal_app.kernels import raymarch as rm
from fractal_app.kernels.color import srgb_to_linear
from fractal_app.palettes import PALETTES

BACKENDS = ("cpu", "cuda")

# Per fractal, how it is lit and coloured. ``size``: rough size of its features, which sets
# the lengths of the shadow and occlusion probes; ``step_factor`` < 1 guards against an
# estimator that overshoots. The Mandelbox's flat faces turn full to the key light, where
# the Mandelbulb's rounded ones seldom do: it takes less exposure (its faces washed out to
# white), and a slower orbit-trap gradient (its colour changed at every fold: busy).
@dataclass(frozen=True)
class Look:
    size: float
    trap_scale: float
    step_factor: float
    exposure: float


# Over-relaxation of the march's steps (raymarch.march); 1 turns it off.
RELAX = 1.3


@dataclass(frozen=True)
class KernelInputs:
    """What the kernels need for one scene: parameters and sub-pixel coordinates."""

    p: rm.RayParams  # floats in the scene's precision
    us: np.ndarray  # image-plane x of each sub-pixel column, W * s values
    vs: np.ndarray  # image-plane y of each sub-pixel row, H * s values
    out_dtype: type


def _unit(v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / math.sqrt(float(a @ a))


def camera_basis(camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, right, up) orthonormal, float64: right = up x forward, screen x to the right."""
    forward = _unit(np.subtract(camera.look_at, camera.position))
    right = _unit(np.cross(camera.up, forward))
    up = np.cross(forward, right)
    return forward, right, up


def subpixel_coordinates(width: int, height: int, supersample: int, fov: float):
    """Image-plane coordinates (at distance 1) of sub-pixel centres, float64.

    Column i, sub-column b sits at i - 0.5 + (b + 0.5) / s; row j, sub-row a at
    j - 0.5 + (a + 0.5) / s; the image centre is on the axis, row 0 at the top.
    """
    s = supersample
    pixel = 2.0 * math.tan(math.radians(fov) / 2.0) / height
    sub = (np.arange(s, dtype=np.float64) + 0.5) / s - 0.5
    cols = (np.arange(width, dtype=np.float64)[:, None] + sub[None, :]).ravel()
    rows = (np.arange(height, dtype=np.float64)[:, None] + sub[None, :]).ravel()
    us = (cols - (width - 1) / 2.0) * pixel
    vs = ((height - 1) / 2.0 - rows) * pixel
    return us, vs


def _mandelbulb(scene, dtype) -> tuple[dict, float, Look]:
    """The Mandelbulb's parameters, the radius of a ball that holds it, and its look."""
    power = float(scene.power)
    # An orbit that leaves radius 2^(1/(n-1)) escapes: that ball holds the whole set.
    bound = 1.1 * 2.0 ** (1.0 / (power - 1.0))
    # Escape radius as large as the precision allows, for an accurate estimate: r^power
    # must stay far below float32's range.
    bailout = min(16.0, 2.0 ** (60.0 / power))
    fields = {
        "kind": rm.KIND_MANDELBULB,
        "power": power,
        "fast8": 1 if power == 8.0 else 0,
        # (x^2 + z^2)^3.5 must stay a normal number: 1e-11 in float32, far less in float64;
        # below that the point is within 3e-6 of the axis, where w^8 has no x or z part.
        "axis_k3": 1e-11 if dtype == np.float32 else 1e-80,
        "bailout2": bailout * bailout,
    }
    return fields, bound, Look(size=1.0, trap_scale=1.0, step_factor=1.0, exposure=1.7)


def _mandelbox(scene, dtype) -> tuple[dict, float, Look]:
    """The Mandelbox's parameters, the radius of a ball that holds it, and its look."""
    scale = float(scene.scale)
    reach = math.sqrt(sum(c * c for c in scene.camera.position)) + scene.max_distance
    bound = reach
    if scale > 1.0:
        # For scale > 1 the set lies in the cube of half-side 2 (s + 1) / (s - 1).
        bound = min(1.05 * math.sqrt(3.0) * 2.0 * (scale + 1.0) / (scale - 1.0), reach)
    fields = {
        "kind": rm.KIND_MANDELBOX,
        "box_scale": scale,
        "box_abs_scale": abs(scale),
        "box_min_r2": 0.25,
        "box_min_factor": 4.0,
        "bailout2": 1.0e4,
    }
    return fields, bound, Look(size=2.0, trap_scale=0.6, step_factor=1.0, exposure=1.0)


# Each 3D fractal's part of the parameters, by name (fractals.py lists the fractals).
_FRACTAL_PARAMS = {"mandelbulb": _mandelbulb, "mandelbox": _mandelbox}

# The fields of RayParams that are integers (the others are floats).
_INT_FIELDS = frozenset(
    name for name, kind in typing.get_type_hints(rm.RayParams).items() if kind is int
)


def kernel_inputs(scene) -> KernelInputs:
    """The kernels' parameters for a Mandelbulb or Mandelbox scene."""
    dtype = np.float32 if scene.precision == "float32" else np.float64
    if scene.fractal not in _FRACTAL_PARAMS:
        raise InvalidArgument(
            f"render3d renders {' and '.join(_FRACTAL_PARAMS)}, not {scene.fractal!r}"
        )
    fractal, bound, look = _FRACTAL_PARAMS[scene.fractal](scene, dtype)
    forward, right, up = camera_basis(scene.camera)
    values = {
        # the other fractals' parameters, unused
        "power": 0.0, "fast8": 0, "axis_k3": 0.0, "box_scale": 0.0, "box_abs_scale": 0.0,
        "box_min_r2": 0.0, "box_min_factor": 0.0,
        **fractal,
        "zero": 0.0, "one": 1.0, "half": 0.5, "two": 2.0, "six": 6.0, "eight": 8.0,
        "sixteen": 16.0, "twenty_eight": 28.0, "sixty_four": 64.0, "seventy": 70.0,
        "iterations": scene.iterations,
        "bound_r2": bound * bound,
        "epsilon": scene.epsilon,
        "max_distance": scene.max_distance,
        "max_steps": scene.max_steps,
        "step_factor": look.step_factor,
        "relax": RELAX,
        "origin": scene.camera.position,
        "forward": forward,
        "right": right,
        "up": up,
        "light": _unit(scene.light_direction),
        "normal_h": 0.5,
        "shadow_softness": 10.0,
        "shadow_min_step": 0.01 * look.size,
        "shadow_max_step": 0.25 * look.size,
        "shadow_max_t": 4.0 * look.size,
        "shadow_steps": min(48, scene.max_steps),
        "shadow_dark": 0.002,
        "ao_step": 0.03 * look.size,
        "ao_samples": 5,
        "object_size": look.size,
        "background": [srgb_to_linear(c / 255.0) for c in scene.background],
        "fog": scene.fog,
        "trap_scale": look.trap_scale,
        "palette_cycles": scene.palette_cycles,
        "palette_offset": scene.palette_offset,
        "palette": PALETTES[scene.palette].cosine,
        "exposure": look.exposure,
        "supersample": scene.supersample,
        "max_value": 255 if scene.bit_depth == 8 else 65535,
    }  # fmt: skip
    p = rm.RayParams(
        **{name: _typed(name, value, dtype) for name, value in _by_component(values).items()}
    )
    us, vs = subpixel_coordinates(
        scene.width_px, scene.height_px, scene.supersample, scene.camera.fov
    )
    return KernelInputs(
        p=p,
        us=us.astype(dtype),
        vs=vs.astype(dtype),
        out_dtype=np.uint8 if scene.bit_depth == 8 else np.uint16,
    )


# The vector parameters, by the names of their components in RayParams.
_COMPONENTS = {
    "origin": "xyz", "forward": "xyz", "right": "xyz", "up": "xyz", "light": "xyz",
    "background": "rgb",
}  # fmt: skip


def _by_component(values: dict) -> dict:
    """The parameters with each vector split into its components ("origin" -> "origin_x",
    ...; the palette's (a, b, c, d) RGB triples -> "palette_a_r", ...)."""
    flat = {}
    for name, value in values.items():
        if name == "palette":
            for term, triple in zip("abcd", value, strict=True):
                flat.update({f"palette_{term}_{c}": v for c, v in zip("rgb", triple, strict=True)})
        elif name in _COMPONENTS:
            flat.update({f"{name}_{c}": v for c, v in zip(_COMPONENTS[name], value, strict=True)})
        else:
            flat[name] = value
    return flat


def _typed(name: str, value, dtype):
    """A parameter as the kernels take it: int64, or a float rounded from float64 to dtype."""
    if name in _INT_FIELDS:
        return np.int64(value)
    return dtype(np.float64(value))


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


def render_band_3d(scene, row_start: int, row_stop: int, backend: str = "cpu") -> np.ndarray:
    """Rows [row_start, row_stop) of the image: (rows, W, 3) uint8/uint16, sRGB-encoded."""
    _check_backend(backend)
    height = scene.height_px
    if not 0 <= row_start < row_stop <= height:
        raise InvalidArgument(
            f"row range [{row_start}, {row_stop}) is not a non-empty part of [0, {height})"
        )
    inputs = kernel_inputs(scene)
    out = np.empty((row_stop - row_start, scene.width_px, 3), dtype=inputs.out_dtype)
    if backend == "cpu":
        from fractal_app.kernels import cpu_raymarch

        cpu_raymarch.render_band(out, row_start, inputs.us, inputs.vs, inputs.p)
    else:
        from fractal_app.kernels import cuda_raymarch

        cuda_raymarch.render_band(out, row_start, inputs.us, inputs.vs, inputs.p)
    return out


def render_pixels_3d(scene, rows: np.ndarray, cols: np.ndarray, backend: str = "cpu") -> np.ndarray:
    """RGB of the listed pixels, (N, 3) uint8/uint16: the same values render_band_3d gives."""
    _check_backend(backend)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    if rows.ndim != 1 or rows.shape != cols.shape:
        raise InvalidArgument(
            f"rows and cols must be 1-D of equal length, got {rows.shape}, {cols.shape}"
        )
    if rows.size and (
        rows.min() < 0
        or rows.max() >= scene.height_px
        or cols.min() < 0
        or cols.max() >= scene.width_px
    ):
        raise InvalidArgument(f"pixel outside the {scene.width_px}x{scene.height_px} image")
    inputs = kernel_inputs(scene)
    out = np.empty((rows.size, 3), dtype=inputs.out_dtype)
    if rows.size == 0:
        return out
    if backend == "cpu":
        from fractal_app.kernels import cpu_raymarch

        cpu_raymarch.render_pixels(out, rows, cols, inputs.us, inputs.vs, inputs.p)
    else:
        from fractal_app.kernels import cuda_raymarch

        cuda_raymarch.render_pixels(out, rows, cols, inputs.us, inputs.vs, inputs.p)
    return out
