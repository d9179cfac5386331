"""Render 3D ray-marched scenes (Mandelbulb, Mandelbox): a band of rows or a list of pixels.

This module turns a validated scene into the kernels' inputs (a float parameter vector in the
scene's precision, an integer one, and the image-plane coordinates of every sub-pixel
column and row, computed once in float64) and hands them to the CPU or CUDA kernels.
Numba is imported only when a kernel is first needed, so importing this module is cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fractal_app.errors import InvalidArgument
from fractal_app.kernels import raymarch as rm
from fractal_app.kernels.color import srgb_to_linear
from fractal_app.palettes import PALETTES

BACKENDS = ("cpu", "cuda")

# Per fractal: (object size, orbit-trap scale, step factor, exposure). The size sets the
# lengths of the shadow and occlusion probes; the step factor < 1 guards against an
# estimator that overshoots. The Mandelbox's flat faces turn full to the key light, where
# the Mandelbulb's rounded ones seldom do: it takes less exposure (its faces washed out to
# white), and a slower orbit-trap gradient (its colour changed at every fold: busy).
_MANDELBULB_LOOK = (1.0, 1.0, 1.0, 1.7)
_MANDELBOX_LOOK = (2.0, 0.6, 1.0, 1.0)
# Over-relaxation of the march's steps (raymarch.march); 1 turns it off.
RELAX = 1.3


@dataclass(frozen=True)
class KernelInputs:
    """What the kernels need for one scene: parameters and sub-pixel coordinates."""

    p: np.ndarray  # float parameters, in the scene's precision (slots P_* of raymarch)
    ip: np.ndarray  # int64 parameters (slots I_*)
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


def kernel_inputs(scene) -> KernelInputs:
    """The kernels' parameter vectors for a Mandelbulb or Mandelbox scene."""
    dtype = np.float32 if scene.precision == "float32" else np.float64
    p = np.zeros(rm.P_SIZE, dtype=np.float64)
    ip = np.zeros(rm.I_SIZE, dtype=np.int64)
    for slot, value in (
        (rm.P_ZERO, 0.0), (rm.P_ONE, 1.0), (rm.P_HALF, 0.5), (rm.P_TWO, 2.0), (rm.P_SIX, 6.0),
        (rm.P_EIGHT, 8.0), (rm.P_SIXTEEN, 16.0), (rm.P_TWENTY_EIGHT, 28.0),
        (rm.P_SIXTY_FOUR, 64.0), (rm.P_SEVENTY, 70.0),
    ):  # fmt: skip
        p[slot] = value

    if scene.fractal == "mandelbulb":
        ip[rm.I_KIND] = rm.KIND_MANDELBULB
        power = float(scene.power)
        p[rm.P_POWER] = power
        ip[rm.I_FAST8] = 1 if power == 8.0 else 0
        # (x^2 + z^2)^3.5 must stay a normal number: 1e-11 in float32, far less in float64;
        # below that the point is within 3e-6 of the axis, where w^8 has no x or z part.
        p[rm.P_AXIS_K3] = 1e-11 if dtype == np.float32 else 1e-80
        # An orbit that leaves radius 2^(1/(n-1)) escapes: that ball holds the whole set.
        bound = 1.1 * 2.0 ** (1.0 / (power - 1.0))
        # Escape radius as large as the precision allows, for an accurate estimate:
        # r^power must stay far below float32's range.
        bailout = min(16.0, 2.0 ** (60.0 / power))
        p[rm.P_BAILOUT2] = bailout * bailout
        size, trap_scale, step_factor, exposure = _MANDELBULB_LOOK
    elif scene.fractal == "mandelbox":
        ip[rm.I_KIND] = rm.KIND_MANDELBOX
        scale = float(scene.scale)
        p[rm.P_BOX_SCALE] = scale
        p[rm.P_BOX_ABS_SCALE] = abs(scale)
        p[rm.P_BOX_MIN_R2] = 0.25
        p[rm.P_BOX_MIN_FACTOR] = 4.0
        p[rm.P_BAILOUT2] = 1.0e4
        origin_distance = math.sqrt(sum(c * c for c in scene.camera.position))
        if scale > 1.0:
            # For scale > 1 the set lies in the cube of half-side 2 (s + 1) / (s - 1).
            bound = 1.05 * math.sqrt(3.0) * 2.0 * (scale + 1.0) / (scale - 1.0)
        else:
            bound = origin_distance + scene.max_distance
        bound = min(bound, origin_distance + scene.max_distance)
        size, trap_scale, step_factor, exposure = _MANDELBOX_LOOK
    else:
        raise InvalidArgument(f"render3d renders mandelbulb and mandelbox, not {scene.fractal!r}")

    p[rm.P_BOUND_R2] = bound * bound
    p[rm.P_EPSILON] = scene.epsilon
    p[rm.P_MAX_DISTANCE] = scene.max_distance
    p[rm.P_STEP_FACTOR] = step_factor
    p[rm.P_RELAX] = RELAX
    ip[rm.I_ITERATIONS] = scene.iterations
    ip[rm.I_MAX_STEPS] = scene.max_steps

    forward, right, up = camera_basis(scene.camera)
    p[rm.P_ORIGIN : rm.P_ORIGIN + 3] = scene.camera.position
    p[rm.P_FORWARD : rm.P_FORWARD + 3] = forward
    p[rm.P_RIGHT : rm.P_RIGHT + 3] = right
    p[rm.P_UP : rm.P_UP + 3] = up

    p[rm.P_LIGHT : rm.P_LIGHT + 3] = _unit(scene.light_direction)
    p[rm.P_NORMAL_H] = 0.5
    p[rm.P_SHADOW_SOFTNESS] = 10.0
    p[rm.P_SHADOW_MIN_STEP] = 0.01 * size
    p[rm.P_SHADOW_MAX_STEP] = 0.25 * size
    p[rm.P_SHADOW_MAX_T] = 4.0 * size
    p[rm.P_SHADOW_DARK] = 0.002
    ip[rm.I_SHADOW_STEPS] = min(48, scene.max_steps)
    p[rm.P_AO_STEP] = 0.03 * size
    p[rm.P_OBJECT_SIZE] = size
    ip[rm.I_AO_SAMPLES] = 5
    p[rm.P_BACKGROUND : rm.P_BACKGROUND + 3] = [srgb_to_linear(c / 255.0) for c in scene.background]
    p[rm.P_FOG] = scene.fog
    p[rm.P_TRAP_SCALE] = trap_scale
    p[rm.P_EXPOSURE] = exposure
    p[rm.P_PALETTE_CYCLES] = scene.palette_cycles
    p[rm.P_PALETTE_OFFSET] = scene.palette_offset
    p[rm.P_PALETTE : rm.P_PALETTE + 12] = np.ravel(PALETTES[scene.palette].cosine)

    s = scene.supersample
    ip[rm.I_SUPERSAMPLE] = s
    ip[rm.I_MAX_VALUE] = 255 if scene.bit_depth == 8 else 65535
    us, vs = subpixel_coordinates(scene.width_px, scene.height_px, s, scene.camera.fov)
    return KernelInputs(
        p=p.astype(dtype),
        ip=ip,
        us=us.astype(dtype),
        vs=vs.astype(dtype),
        out_dtype=np.uint8 if scene.bit_depth == 8 else np.uint16,
    )


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

        cpu_raymarch.render_band(out, row_start, inputs.us, inputs.vs, inputs.p, inputs.ip)
    else:
        from fractal_app.kernels import cuda_raymarch

        cuda_raymarch.render_band(out, row_start, inputs.us, inputs.vs, inputs.p, inputs.ip)
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

        cpu_raymarch.render_pixels(out, rows, cols, inputs.us, inputs.vs, inputs.p, inputs.ip)
    else:
        from fractal_app.kernels import cuda_raymarch

        cuda_raymarch.render_pixels(out, rows, cols, inputs.us, inputs.vs, inputs.p, inputs.ip)
    return out
