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
