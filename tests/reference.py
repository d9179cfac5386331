"""Slow, obviously correct references for the 2D kernels: pure Python (float64) and NumPy
float32 scalars, one pixel at a time, written from the contract in the app issue rather
than from the kernels' code.

Colours use the uncompiled scalar functions of fractal_app.kernels.color (the single
source the kernels compile), so a difference points at the compiled pipeline: the sample
geometry, the averaging in linear light, the encoding or the quantisation.
"""

import math

import numpy as np

from fractal_app.fractals import FRACTALS
from fractal_app.kernels import color

# Each 2D fractal's view through its set's boundary (fractals.py), where any difference in
# rounding changes counts: the view the kernel tests compare on.
BOUNDARY_VIEWS = {name: f.boundary_view for name, f in FRACTALS.items() if f.boundary_view}


def scalar_type(precision):
    """float (IEEE double) or np.float32 (IEEE single: NumPy keeps float32 op float32)."""
    return float if precision == "float64" else np.float32


def pixel_coordinate(scene, row, col, a=0, b=0):
    """(re, im) of sample (a, b) of pixel (row, col), in float64, as the contract states."""
    s = scene.supersample
    px = scene.width / scene.resolution[0]
    x = col - 0.5 + (b + 0.5) / s
    y = row - 0.5 + (a + 0.5) / s
    re = scene.center[0] + (x - (scene.resolution[0] - 1) / 2) * px
    if FRACTALS[scene.fractal].imaginary_axis_down:  # e.g. the Burning Ship
        im = scene.center[1] + (y - (scene.resolution[1] - 1) / 2) * px
    else:
        im = scene.center[1] + ((scene.resolution[1] - 1) / 2 - y) * px
    return re, im


def tail_iterations(power):
    """How far past escape smooth colouring reads |z| (the contract): the fewest k with
    power^k >= 8."""
    k = 1
    while power**k < 8:
        k += 1
    return k


def step(scene, x, y, cr, ci):
    """One iteration z <- f(z) + c of the scene's fractal, in the type of x and y."""
    if scene.fractal == "burning_ship":
        x, y = abs(x), abs(y)
    if scene.fractal == "multibrot":
        # z^power as repeated products z * z * ... * z
        wr, wi = x, y
        for _ in range(scene.power - 1):
            wr, wi = wr * x - wi * y, wr * y + wi * x
        return wr + cr, wi + ci
    return x * x - y * y + cr, type(x)(2) * x * y + ci


def escape(scene, re, im):
    """(count, mag2) of one sample: count = completed iterations before |z|^2 > 4 is first
    seen, or max_iter, in the scene's precision; mag2 = |z|^2 tail_iterations(power) float64
    iterations later if the sample escaped (for smooth colouring), else |z|^2 where it
    stopped."""
    T = scalar_type(scene.precision)
    re, im = T(re), T(im)
    four = T(4)
    if scene.fractal == "julia":
        x, y = re, im
        cr, ci = T(scene.c[0]), T(scene.c[1])
    else:
        x, y = T(0), T(0)
        cr, ci = re, im
    n = 0
    while n < scene.max_iter and not (x * x + y * y > four):
        x, y = step(scene, x, y, cr, ci)
        n += 1
    if not (x * x + y * y > four):
        return n, float(x * x + y * y)
    x, y, cr, ci = float(x), float(y), float(cr), float(ci)
    for _ in range(tail_iterations(getattr(scene, "power", 2))):
        x, y = step(scene, x, y, cr, ci)
    return n, x * x + y * y


def counts_image(scene):
    """(H, W) uint32 escape counts of pixel centres."""
    out = np.zeros((scene.resolution[1], scene.resolution[0]), dtype=np.uint32)
    for row in range(out.shape[0]):
        for col in range(out.shape[1]):
            out[row, col] = escape(scene, *pixel_coordinate(scene, row, col))[0]
    return out


def pixel_value(scene, row, col, table=None):
    """The final (r, g, b) integers of one pixel: s x s samples coloured in linear light,
    averaged, sRGB-encoded, quantised."""
    table = color.palette_table(scene.palette) if table is None else table
    s = scene.supersample
    power = getattr(scene, "power", 2)
    interior = [color.srgb_to_linear(v / 255.0) for v in scene.interior_color]
    total = [0.0, 0.0, 0.0]
    for a in range(s):
        for b in range(s):
            n, mag2 = escape(scene, *pixel_coordinate(scene, row, col, a, b))
            if n >= scene.max_iter:
                rgb = interior
            else:
                t = color.palette_index(
                    n, mag2, scene.max_iter, scene.smooth, tail_iterations(power),
                    1.0 / math.log(power),
                    1.0 / math.log(1.0 + scene.max_iter), scene.palette_cycles,
                    scene.palette_offset,
                )
                rgb = color.palette_lookup(table, t)
            for k in range(3):
                total[k] += rgb[k]
    top = 255 if scene.bit_depth == 8 else 65535
    return [color.quantize(color.linear_to_srgb(v / (s * s)), top) for v in total]


def image(scene):
    """(H, W, 3) uint8/uint16 image, pixel by pixel."""
    table = color.palette_table(scene.palette)
    dtype = np.uint8 if scene.bit_depth == 8 else np.uint16
    out = np.zeros((scene.resolution[1], scene.resolution[0], 3), dtype=dtype)
    for row in range(out.shape[0]):
        for col in range(out.shape[1]):
            out[row, col] = pixel_value(scene, row, col, table)
    return out
