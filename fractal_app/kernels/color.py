"""Colouring, scalar: palettes, the sRGB transfer curve and quantisation to 8 or 16 bits.

Plain Python scalar functions, compiled by the CPU and CUDA kernels (numba.njit /
numba.cuda.jit(device=True)) and usable uncompiled by the slow references in the tests.
Supersampled pixels are averaged in linear light, then encoded once with these functions.
"""

import math


def linear_to_srgb(x):
    """The sRGB transfer curve (IEC 61966-2-1) for one channel in [0, 1]."""
    if x <= 0.0031308:
        return 12.92 * x
    return 1.055 * math.pow(x, 1.0 / 2.4) - 0.055


def srgb_to_linear(x):
    """Inverse of linear_to_srgb for one channel in [0, 1]."""
    if x <= 0.04045:
        return x / 12.92
    return math.pow((x + 0.055) / 1.055, 2.4)


def quantize(x, max_value):
    """An encoded channel in [0, 1] to an integer 0..max_value (255 or 65535), round half up."""
    if x <= 0.0:
        return 0
    if x >= 1.0:
        return max_value
    return int(math.floor(x * max_value + 0.5))


# --- Encoding: linear light to 8/16-bit sRGB codes without a pow per channel ---------------


# Buckets of the encoding table: uniform in linear light, each knowing the code at its
# lower edge, so an encode is one lookup and (almost always) zero or one step.
ENCODE_BUCKETS = 1 << 16


def encode_table(max_value):
    """The table ``encode`` uses for codes 0..max_value (255 or 65535): a float64 array
    of ``max_value`` thresholds followed by ``ENCODE_BUCKETS + 1`` bucket start codes.

    ``quantize(linear_to_srgb(x), max_value)`` is the number of k in 1..max_value with
    ``linear_to_srgb(x) >= (k - 0.5) / max_value``, that is with ``x >=
    srgb_to_linear((k - 0.5) / max_value)`` (the curve is increasing): counting thresholds
    gives the same code without a pow per channel, which cost as much as the Mandelbrot
    iteration of a whole image.
    """
    import numpy as np

    levels = (np.arange(1, max_value + 1, dtype=np.float64) - 0.5) / max_value
    thresholds = np.array([srgb_to_linear(float(v)) for v in levels])
    edges = np.arange(ENCODE_BUCKETS + 1, dtype=np.float64) / ENCODE_BUCKETS
    starts = np.searchsorted(thresholds, edges, side="right").astype(np.float64)
    return np.concatenate([thresholds, starts])


def encode(x, table, max_value):
    """The sRGB code 0..max_value of a linear-light channel value x (``encode_table``):
    the number of thresholds at or below x, counted from x's bucket."""
    buckets = table.shape[0] - max_value - 1
    position = x * buckets
    if position <= 0.0:
        bucket = 0
    elif position >= buckets:
        bucket = buckets
    else:
        bucket = int(position)
    code = int(table[max_value + bucket])
    while code < max_value and table[code] <= x:
        code += 1
    return code


# --- Palettes -------------------------------------------------------------------------------
#
# The palettes' control points are declared in fractal_app/palettes.py.

# Entries in a palette's lookup table (the table has one more, equal to position 1).
PALETTE_TABLE_SIZE = 256


def palette_table(name):
    """The palette as a (PALETTE_TABLE_SIZE + 1, 3) float64 array of LINEAR-light RGB.

    Control points are interpolated in sRGB (as the published maps are defined), then
    decoded to linear light, where the kernels interpolate and average.
    """
    import numpy as np

    from fractal_app.palettes import PALETTES

    points = PALETTES[name].stops
    positions = np.array([p for p, _ in points])
    srgb = np.array([[int(h[k : k + 2], 16) / 255.0 for k in (0, 2, 4)] for _, h in points])
    x = np.linspace(0.0, 1.0, PALETTE_TABLE_SIZE + 1)
    table = np.empty((PALETTE_TABLE_SIZE + 1, 3))
    for channel in range(3):
        encoded = np.interp(x, positions, srgb[:, channel])
        table[:, channel] = [srgb_to_linear(float(v)) for v in encoded]
    return table


def smooth_count(count, mag2, smooth, extra, inv_log_power):
    """The count colouring reads: with ``smooth``, the continuous count ``nu = count +
    extra + 1 - log_p(log|z|)`` (|z| taken ``extra`` iterations after |z|^2 first exceeded
    4: ``mag2``; the kernels continue past escape, escape.colour_tail; p is the fractal's
    power), continuous across the steps of the escape count; else the count itself."""
    nu = float(count)
    if smooth:
        nu = nu + extra + 1.0 - math.log(0.5 * math.log(mag2)) * inv_log_power
        if nu < 0.0:
            nu = 0.0
    return nu


def palette_index(
    count, mag2, max_iter, smooth, extra, inv_log_power, inv_log_max_iter, cycles, offset
):
    """Where an escaped sample falls in the palette, in [0, 1), on the "iterations" scale.

    The index grows with log(1 + nu) / log(1 + max_iter) (nu: ``smooth_count``), so one
    palette cycle spans the whole iteration range whatever max_iter is, and
    ``cycles``/``offset`` stretch and shift it. All in float64, whatever precision the
    iteration ran in.
    """
    nu = smooth_count(count, mag2, smooth, extra, inv_log_power)
    t = offset + cycles * math.log(1.0 + nu) * inv_log_max_iter
    return t - math.floor(t)


def knot_position(knots, u):
    """The "auto" scale's position at u = log(1 + nu): piecewise linear between the knots
    (``knots``: (K >= 2, 2) float64 rows (log(1 + nu_k), position_k), u strictly
    increasing); beyond either end, on the line through the first and last knots, so a
    count the view's preview never saw moves on at the view's mean pace."""
    last = knots.shape[0] - 1
    u0 = knots[0, 0]
    p0 = knots[0, 1]
    if u <= u0:
        return p0 + (u - u0) * (knots[last, 1] - p0) / (knots[last, 0] - u0)
    if u >= knots[last, 0]:
        return knots[last, 1] + (u - knots[last, 0]) * (knots[last, 1] - p0) / (
            knots[last, 0] - u0)
    lo = 0
    hi = last
    while hi - lo > 1:  # knots[lo, 0] < u < knots[hi, 0]
        mid = (lo + hi) // 2
        if knots[mid, 0] <= u:
            lo = mid
        else:
            hi = mid
    f = (u - knots[lo, 0]) / (knots[hi, 0] - knots[lo, 0])
    return knots[lo, 1] + f * (knots[hi, 1] - knots[lo, 1])


def auto_palette_index(count, mag2, smooth, extra, inv_log_power, knots, cycles, offset):
    """Where an escaped sample falls in the palette, in [0, 1), on the "auto" scale: the
    view's own distribution of counts (``knots``, color_scale.py), stretched and shifted by
    ``cycles``/``offset``. max_iter plays no part, so a count keeps its colour when max_iter
    changes and the knots do not."""
    nu = smooth_count(count, mag2, smooth, extra, inv_log_power)
    t = offset + cycles * knot_position(knots, math.log(1.0 + nu))
    return t - math.floor(t)


def palette_lookup(table, t):
    """Linear interpolation in a palette table at t in [0, 1): linear-light (r, g, b)."""
    position = t * (table.shape[0] - 1)
    i = int(math.floor(position))
    if i >= table.shape[0] - 1:
        i = table.shape[0] - 2
    f = position - i
    g = 1.0 - f
    return (
        table[i, 0] * g + table[i + 1, 0] * f,
        table[i, 1] * g + table[i + 1, 1] * f,
        table[i, 2] * g + table[i + 1, 2] * f,
    )


def sample_rgb(
    count, mag2, max_iter, smooth, extra, inv_log_power, inv_log_max_iter, cycles, offset,
    knots, table, interior,
):
    """The linear-light colour of one escape-time sample: the palette's at palette_index
    (no ``knots``: a (0, 2) array) or auto_palette_index, or ``interior`` (a linear-light
    float64 array of 3) when it never escaped."""
    if count >= max_iter:
        return interior[0], interior[1], interior[2]
    if knots.shape[0] == 0:
        t = palette_index(count, mag2, max_iter, smooth, extra, inv_log_power,
                          inv_log_max_iter, cycles, offset)
    else:
        t = auto_palette_index(count, mag2, smooth, extra, inv_log_power, knots, cycles,
                               offset)
    return palette_lookup(table, t)


def compile_color(jit):
    """The colouring functions compiled by ``jit`` (numba.njit(inline="always") or
    numba.cuda.jit(device=True, inline="always")): a namespace with ``linear_to_srgb``,
    ``quantize``, ``encode``, ``smooth_count``, ``palette_index``, ``knot_position``,
    ``auto_palette_index``, ``palette_lookup`` and ``sample_rgb``."""
    from fractal_app.kernels.compiling import compiled_namespace

    return compiled_namespace(
        [linear_to_srgb, quantize, encode, smooth_count, palette_index, knot_position,
         auto_palette_index, palette_lookup, sample_rgb], jit
    )
