"""Scalar core of the 3D fractals: distance estimators, sphere tracing, shading, one pixel.

Plain Python functions, written once. ``compiled_with(decorator)`` builds the compiled set:
``numba.njit(inline="always")`` for the CPU kernels, ``numba.cuda.jit(device=True,
inline="always")`` for the GPU ones; called uncompiled they are the slow reference the tests
use. The functions call each other by module-level name, so the compiled copies are rebound
to a namespace in which those names mean the compiled versions.

Precision: every floating-point value that reaches the distance estimator (ray origin and
direction, marching distance, the estimator's arithmetic) is in the scene's precision. Numba
types a bare float literal as float64 and would promote a float32 expression, so the
constants the estimator and the marcher need come by name in the record ``p`` (a
:class:`RayParams`, floats in the ray's dtype), with the scene's settings. Shading after the
hit runs once per sample and is written with ordinary float64 literals.
"""

import hashlib
import math
from pathlib import Path
from typing import NamedTuple

from fractal_app.kernels import color
from fractal_app.kernels.color import linear_to_srgb, quantize
from fractal_app.kernels.compiling import compiled_namespace

KIND_MANDELBULB = 0
KIND_MANDELBOX = 1


class RayParams(NamedTuple):
    """Everything the 3D kernels read besides the pixel coordinates, by name (render3d builds
    it). Every float is in the scene's precision (the ray's dtype: NumPy float32 or float64
    scalars, which Numba types as such); the integers are int64. Vectors by component.

    The scalar functions read it by name, ``p.epsilon``: uncompiled (the tests' reference)
    from this tuple, compiled from the same fields in a NumPy record (``as_record``)."""

    # constants, so that no float literal promotes float32 arithmetic
    zero: float
    one: float
    half: float
    two: float
    six: float
    eight: float
    sixteen: float
    twenty_eight: float
    sixty_four: float
    seventy: float
    # the fractal
    kind: int  # KIND_MANDELBULB or KIND_MANDELBOX
    iterations: int  # of the distance estimator's orbit
    power: float  # Mandelbulb power
    fast8: int  # 1: the Mandelbulb power is exactly 8, use the polynomial form
    axis_k3: float  # x^2 + z^2 below this counts as on the y axis (power-8 polynomial)
    bailout2: float  # squared escape radius of the estimator's orbit
    box_scale: float  # Mandelbox scale (may be negative)
    box_abs_scale: float
    box_min_r2: float  # sphere fold: inner radius squared (outer radius is 1)
    box_min_factor: float  # 1 / box_min_r2
    # marching
    bound_r2: float  # squared radius of a sphere around the origin that holds the fractal
    epsilon: float  # surface distance at one unit from the camera
    max_distance: float
    max_steps: int
    step_factor: float  # < 1 where the estimator may overshoot
    relax: float  # over-relaxation factor of the march's steps (1 = plain sphere tracing)
    # camera: origin, then an orthonormal basis (forward, right, up)
    origin_x: float
    origin_y: float
    origin_z: float
    forward_x: float
    forward_y: float
    forward_z: float
    right_x: float
    right_y: float
    right_z: float
    up_x: float
    up_y: float
    up_z: float
    # shading
    # unit vector toward the light
    light_x: float
    light_y: float
    light_z: float
    normal_h: float  # normal sampling offset, as a multiple of the hit threshold
    shadow_softness: float  # larger is a harder penumbra
    shadow_min_step: float
    shadow_max_step: float
    shadow_max_t: float
    shadow_steps: int
    shadow_dark: float  # a penumbra below this is full shadow: stop marching
    ao_step: float  # spacing of the ambient-occlusion samples along the normal
    ao_samples: int
    object_size: float  # rough size of the fractal's features: scales the occlusion
    # linear RGB
    background_r: float
    background_g: float
    background_b: float
    fog: float  # fog density per unit of distance
    trap_scale: float  # orbit trap to palette position
    palette_cycles: float
    palette_offset: float
    # cosine palette a + b cos(2 pi (c t + d)) per channel
    palette_a_r: float
    palette_a_g: float
    palette_a_b: float
    palette_b_r: float
    palette_b_g: float
    palette_b_b: float
    palette_c_r: float
    palette_c_g: float
    palette_c_b: float
    palette_d_r: float
    palette_d_g: float
    palette_d_b: float
    exposure: float  # scales all light before tone mapping, as a camera's exposure
    # output
    supersample: int
    max_value: int  # 255 or 65535


def as_record(p: RayParams):
    """``p`` as the compiled kernels take it: a one-element NumPy structured array with the
    same fields, names and scalar types; a kernel reads ``params[0].epsilon``.

    Not the tuple itself: Numba passes a tuple by value, field by field, into every call, which
    made the Mandelbulb 12-20% slower than reading an array; a record is passed as one pointer.
    And not a bare record: a parallel CPU kernel cannot take one (Numba 0.68: "arg mismatch").
    """
    import numpy as np

    dtype = np.dtype(
        [(name, np.asarray(value).dtype) for name, value in zip(p._fields, p, strict=True)],
        align=True,
    )
    return np.array([tuple(p)], dtype=dtype)


def mandelbulb_de(x, y, z, p):
    """Distance estimate and orbit trap (min |w|^2) of the Mandelbulb at (x, y, z).

    Spherical coordinates with y up: theta from the y axis, phi = atan2(x, z). The power-8
    case uses the equivalent polynomial (no acos/atan2/pow; Quilez's form).
    """
    one = p.one
    power = p.power
    bailout2 = p.bailout2
    wx = x
    wy = y
    wz = z
    dr = one
    r2 = wx * wx + wy * wy + wz * wz
    trap = r2
    for _ in range(p.iterations):
        if r2 > bailout2:
            break
        r = math.sqrt(r2)
        if p.fast8 == 1:
            dr = p.eight * (r2 * r2 * r2 * r) * dr + one
            x2 = wx * wx
            y2 = wy * wy
            z2 = wz * wz
            x4 = x2 * x2
            y4 = y2 * y2
            z4 = z2 * z2
            k3 = x2 + z2
            # 1 / k3^3.5 scales the x and z parts; it is computed beside the polynomials,
            # not before them, so the square root and the division are off the critical path
            if k3 > p.axis_k3:
                k2 = one / (k3 * k3 * k3 * math.sqrt(k3))
            else:
                # (next to) the y axis the x and z parts of w^8 vanish; this also keeps
                # k3^3.5 from underflowing to 0 in float32
                k2 = p.zero
            k1 = x4 + y4 + z4 - p.six * y2 * z2 - p.six * x2 * y2 + p.two * z2 * x2
            k4 = x2 - y2 + z2
            c = wy * k4 * k1
            px = wx * wz * (x2 - z2) * (x4 - p.six * x2 * z2 + z4)
            pz = (
                x4 * x4
                - p.twenty_eight * x4 * x2 * z2
                + p.seventy * x4 * z4
                - p.twenty_eight * x2 * z2 * z4
                + z4 * z4
            )
            nx = p.sixty_four * c * px * k2
            ny = k1 * k1 - p.sixteen * y2 * k3 * k4 * k4
            nz = -p.eight * c * pz * k2
            wx = nx + x
            wy = ny + y
            wz = nz + z
        elif r2 > p.zero:
            rp = math.pow(r, power - one)
            dr = power * rp * dr + one
            # rounding can put |wy / r| a hair above 1, where acos is NaN
            theta = math.acos(min(max(wy / r, -one), one)) * power
            phi = math.atan2(wx, wz) * power
            rp = rp * r
            st = math.sin(theta)
            wx = rp * st * math.sin(phi) + x
            wy = rp * math.cos(theta) + y
            wz = rp * st * math.cos(phi) + z
        else:
            # 0^power = 0: the orbit restarts at the point itself
            dr = one
            wx = x
            wy = y
            wz = z
        r2 = wx * wx + wy * wy + wz * wz
        trap = min(trap, r2)
    if r2 == p.zero:
        return p.zero, trap
    r = math.sqrt(r2)
    return p.half * math.log(r) * r / dr, trap


def mandelbox_de(x, y, z, p):
    """Distance estimate and orbit trap (min |w|^2) of the Mandelbox at (x, y, z).

    Each iteration: box fold (reflect through the faces of [-1, 1]^3), sphere fold (invert
    in the unit sphere, scale up by a fixed factor inside the inner radius), then
    w = scale * w + point. The running derivative dr follows the folds' scale factors.
    """
    one = p.one
    two = p.two
    scale = p.box_scale
    abs_scale = p.box_abs_scale
    min_r2 = p.box_min_r2
    bailout2 = p.bailout2
    wx = x
    wy = y
    wz = z
    dr = one
    r2 = wx * wx + wy * wy + wz * wz
    trap = r2
    for _ in range(p.iterations):
        if wx > one:
            wx = two - wx
        elif wx < -one:
            wx = -two - wx
        if wy > one:
            wy = two - wy
        elif wy < -one:
            wy = -two - wy
        if wz > one:
            wz = two - wz
        elif wz < -one:
            wz = -two - wz
        r2 = wx * wx + wy * wy + wz * wz
        if r2 < min_r2:
            f = p.box_min_factor
            wx = wx * f
            wy = wy * f
            wz = wz * f
            dr = dr * f
        elif r2 < one:
            f = one / r2
            wx = wx * f
            wy = wy * f
            wz = wz * f
            dr = dr * f
        trap = min(trap, r2)
        wx = scale * wx + x
        wy = scale * wy + y
        wz = scale * wz + z
        dr = dr * abs_scale + one
        r2 = wx * wx + wy * wy + wz * wz
        if r2 > bailout2:
            break
    return math.sqrt(r2) / dr, trap


def distance(x, y, z, p):
    """(distance estimate, orbit trap) of the scene's fractal at (x, y, z)."""
    if p.kind == KIND_MANDELBULB:
        return mandelbulb_de(x, y, z, p)
    return mandelbox_de(x, y, z, p)


def march(ox, oy, oz, dx, dy, dz, p):
    """Sphere-trace a ray (unit direction). Returns (t, steps, hit, orbit trap at t).

    Starts where the ray enters the bounding sphere, stops when the estimate drops below
    epsilon * t (the surface threshold grows with distance, like a pixel's footprint), when
    t passes the bounding sphere or max_distance (a miss), or after max_steps (counted as a
    hit: such rays graze the surface through deep crevices).
    """
    zero = p.zero
    one = p.one
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - p.bound_r2
    disc = b * b - c
    if disc < zero:
        return zero, 0, False, zero
    root = math.sqrt(disc)
    t = max(zero, -b - root)
    t_max = min(p.max_distance, -b + root)
    if t > t_max:
        return zero, 0, False, zero
    eps = p.epsilon
    step_factor = p.step_factor
    max_steps = p.max_steps
    # Over-relaxed steps (Keinert et al. 2014): step relax * d while consecutive unbounding
    # spheres overlap; once they do not, the long step may have crossed the surface, so go
    # back to the last safe point and continue with plain sphere tracing.
    relax = p.relax
    last_t = t
    last_d = zero
    trap = zero
    for step in range(max_steps):
        d, trap = distance(ox + t * dx, oy + t * dy, oz + t * dz, p)
        if relax > one and d + last_d < t - last_t:
            t = last_t + last_d * step_factor
            relax = one
            continue
        if d < eps * t:
            return t, step, True, trap
        last_t = t
        last_d = d
        t = t + d * relax * step_factor
        if t > t_max:
            return t, step, False, trap
    return t, max_steps, True, trap


def surface_normal(x, y, z, h, p):
    """Unit normal of the distance field at (x, y, z): the tetrahedron technique (4 estimates)."""
    zero = p.zero
    one = p.one
    nx = zero
    ny = zero
    nz = zero
    for k in range(4):
        # corners (+,-,-), (-,-,+), (-,+,-), (+,+,+) of a tetrahedron
        sx = one if ((k + 3) >> 1) & 1 else -one
        sy = one if (k >> 1) & 1 else -one
        sz = one if k & 1 else -one
        d, _ = distance(x + sx * h, y + sy * h, z + sz * h, p)
        nx = nx + sx * d
        ny = ny + sy * d
        nz = nz + sz * d
    length = math.sqrt(nx * nx + ny * ny + nz * nz)
    if length > zero:
        return nx / length, ny / length, nz / length
    return zero, one, zero


def soft_shadow(x, y, z, p):
    """Light visibility in [0, 1] from (x, y, z) toward the light, with a penumbra.

    March toward the light; the nearest approach relative to the distance travelled
    (softness * d / t) darkens the point: 0 in full shadow, 1 in full light.
    """
    zero = p.zero
    one = p.one
    lx = p.light_x
    ly = p.light_y
    lz = p.light_z
    softness = p.shadow_softness
    min_step = p.shadow_min_step
    max_step = p.shadow_max_step
    max_t = p.shadow_max_t
    # nothing occludes beyond the bounding sphere: stop where the shadow ray leaves it
    b = x * lx + y * ly + z * lz
    disc = b * b - (x * x + y * y + z * z - p.bound_r2)
    if disc > zero:
        max_t = min(max_t, -b + math.sqrt(disc))
    result = one
    t = min_step
    for _ in range(p.shadow_steps):
        if t > max_t:
            break
        d, _ = distance(x + t * lx, y + t * ly, z + t * lz, p)
        result = min(result, softness * d / t)
        if result < p.shadow_dark:
            return zero
        t = t + min(max(d, min_step), max_step)
    return result


def occlusion(x, y, z, nx, ny, nz, p):
    """Ambient occlusion in [0, 1] (1 = open) from a few estimates along the normal."""
    zero = p.zero
    one = p.one
    step = p.ao_step
    occluded = zero
    weight = one
    h = zero
    for _ in range(p.ao_samples):
        h = h + step
        d, _ = distance(x + h * nx, y + h * ny, z + h * nz, p)
        occluded = occluded + (h - d) * weight
        weight = weight * p.half
    return occluded


def palette_rgb(t, p):
    """The scene's cosine palette at position t (cyclic with period 1), linear RGB."""
    tau = 6.283185307179586
    r = p.palette_a_r + p.palette_b_r * math.cos(tau * (p.palette_c_r * t + p.palette_d_r))
    g = p.palette_a_g + p.palette_b_g * math.cos(
        tau * (p.palette_c_g * t + p.palette_d_g)
    )
    b = p.palette_a_b + p.palette_b_b * math.cos(
        tau * (p.palette_c_b * t + p.palette_d_b)
    )
    return min(max(r, 0.0), 1.0), min(max(g, 0.0), 1.0), min(max(b, 0.0), 1.0)


def tone_map(x):
    """Filmic curve (Narkowicz's fit of ACES): highlights roll off instead of clipping."""
    return min(max(x * (2.51 * x + 0.03) / (x * (2.43 * x + 0.59) + 0.14), 0.0), 1.0)


def sample_rgb(dx, dy, dz, p):
    """Linear RGB of one camera ray with unit direction (dx, dy, dz)."""
    ox = p.origin_x
    oy = p.origin_y
    oz = p.origin_z
    bg_r = float(p.background_r)
    bg_g = float(p.background_g)
    bg_b = float(p.background_b)
    t, steps, hit, trap = march(ox, oy, oz, dx, dy, dz, p)
    if not hit:
        # a ray that passed close to the surface took many steps: a faint glow around it
        glow = min(steps / (0.3 * p.max_steps + 1.0), 1.0)
        glow = 0.12 * glow * glow * glow
        return bg_r + 0.35 * glow, bg_g + 0.55 * glow, bg_b + glow
    hx = ox + t * dx
    hy = oy + t * dy
    hz = oz + t * dz
    threshold = p.epsilon * t
    nx, ny, nz = surface_normal(hx, hy, hz, threshold * p.normal_h, p)
    # lift the shadow and occlusion probes off the surface so they do not start inside it
    lift = threshold * p.two
    sx = hx + nx * lift
    sy = hy + ny * lift
    sz = hz + nz * lift
    lx = float(p.light_x)
    ly = float(p.light_y)
    lz = float(p.light_z)
    fnx = float(nx)
    fny = float(ny)
    fnz = float(nz)
    facing = fnx * lx + fny * ly + fnz * lz
    # a surface turned away from the light gets no direct light: no shadow ray needed
    shadow = float(soft_shadow(sx, sy, sz, p)) if facing > 0.0 else 0.0
    occluded = float(occlusion(sx, sy, sz, nx, ny, nz, p))

    # Surface colour from the orbit trap through the palette, softened: pulled a fifth of the
    # way toward its own grey and kept below 0.85, so that detail reads through the
    # lighting rather than the palette, and a lit face keeps its colour instead of washing
    # out to white.
    position = math.sqrt(float(trap)) * p.trap_scale * p.palette_cycles + p.palette_offset
    pal_r, pal_g, pal_b = palette_rgb(position, p)
    grey = 0.2126 * pal_r + 0.7152 * pal_g + 0.0722 * pal_b
    al_r = 0.85 * (grey + 0.8 * (pal_r - grey)) + 0.05
    al_g = 0.85 * (grey + 0.8 * (pal_g - grey)) + 0.05
    al_b = 0.85 * (grey + 0.8 * (pal_b - grey)) + 0.05

    # Ambient occlusion from the samples along the normal and, gently, from the march's step
    # count (rays that needed many steps ran down a crease). Gently: as the only darkening
    # of a crease it drew thin black slivers there.
    ao = min(max(1.0 - 3.0 * occluded / float(p.object_size), 0.0), 1.0)
    ao = ao * (1.0 - 0.3 * min(steps / (0.5 * p.max_steps + 1.0), 1.0))

    # Three lights, as a studio sets them: a warm key (the scene's light, with soft shadows),
    # a cool fill from the other side, low and without shadows, so the side away from the
    # key is lit but darker, and a sky dome from above. The fill and sky are occluded.
    key = max(facing, 0.0) * shadow
    fill_x = -lx
    fill_y = 0.35
    fill_z = -lz
    fill_len = math.sqrt(fill_x * fill_x + fill_y * fill_y + fill_z * fill_z)
    fill = max((fnx * fill_x + fny * fill_y + fnz * fill_z) / fill_len, 0.0) * ao
    sky = (0.55 + 0.45 * fny) * ao
    # Blinn-Phong highlight of the key, half vector between light and the direction to the
    # camera; spec^32 by squaring, spelled out (** would be libm pow in Python but repeated
    # multiplication in Numba, and the reference must round the same way)
    hvx = lx - float(dx)
    hvy = ly - float(dy)
    hvz = lz - float(dz)
    hl = math.sqrt(hvx * hvx + hvy * hvy + hvz * hvz)
    spec = 0.0
    if hl > 0.0:
        spec = max((fnx * hvx + fny * hvy + fnz * hvz) / hl, 0.0)
        for _ in range(5):
            spec = spec * spec
        spec = spec * key * 0.25

    light_r = 1.30 * key * 1.00 + 0.30 * fill * 0.80 + 0.30 * sky * 0.75
    light_g = 1.30 * key * 0.93 + 0.30 * fill * 0.90 + 0.30 * sky * 0.85
    light_b = 1.30 * key * 0.82 + 0.30 * fill * 1.10 + 0.30 * sky * 1.05
    # Filmic tone mapping of the exposed light: highlights roll off instead of clipping.
    exposure = float(p.exposure)
    r = tone_map(exposure * (al_r * light_r + spec))
    g = tone_map(exposure * (al_g * light_g + spec))
    b = tone_map(exposure * (al_b * light_b + spec))

    # fog toward the background with the distance travelled
    keep = math.exp(-float(p.fog) * float(t))
    r = r * keep + bg_r * (1.0 - keep)
    g = g * keep + bg_g * (1.0 - keep)
    b = b * keep + bg_b * (1.0 - keep)
    return r, g, b


def pixel_rgb(row, col, us, vs, p):
    """Encoded RGB (integers 0..max_value) of pixel (row, col), supersampled s x s.

    us[col * s + b] and vs[row * s + a] are the image-plane coordinates of the sub-pixel
    centres (computed once, in float64, by the caller and rounded to the precision). The
    samples are averaged in linear light, then sRGB-encoded and quantized.
    """
    s = p.supersample
    fx = p.forward_x
    fy = p.forward_y
    fz = p.forward_z
    rx = p.right_x
    ry = p.right_y
    rz = p.right_z
    ux = p.up_x
    uy = p.up_y
    uz = p.up_z
    one = p.one
    sum_r = 0.0
    sum_g = 0.0
    sum_b = 0.0
    for a in range(s):
        v = vs[row * s + a]
        for b in range(s):
            u = us[col * s + b]
            dx = fx + u * rx + v * ux
            dy = fy + u * ry + v * uy
            dz = fz + u * rz + v * uz
            inv = one / math.sqrt(dx * dx + dy * dy + dz * dz)
            r, g, b_ = sample_rgb(dx * inv, dy * inv, dz * inv, p)
            sum_r += r
            sum_g += g
            sum_b += b_
    n = float(s * s)
    max_value = p.max_value
    red = quantize(linear_to_srgb(min(max(sum_r / n, 0.0), 1.0)), max_value)
    green = quantize(linear_to_srgb(min(max(sum_g / n, 0.0), 1.0)), max_value)
    blue = quantize(linear_to_srgb(min(max(sum_b / n, 0.0), 1.0)), max_value)
    return red, green, blue


SCALAR_FUNCTIONS = (
    "mandelbulb_de",
    "mandelbox_de",
    "distance",
    "march",
    "surface_normal",
    "soft_shadow",
    "occlusion",
    "palette_rgb",
    "tone_map",
    "sample_rgb",
    "pixel_rgb",
)
_IMPORTED_LEAVES = {"linear_to_srgb": linear_to_srgb, "quantize": quantize}


def compiled_with(decorator):
    """The scalar functions (and the colour helpers they call) compiled with ``decorator``,
    as a namespace: a compiled ``pixel_rgb`` calls compiled ``sample_rgb``, and so on down
    (see compiling.compiled_namespace)."""
    functions = [*_IMPORTED_LEAVES.values(), *(globals()[name] for name in SCALAR_FUNCTIONS)]
    return compiled_namespace(functions, decorator)


def source_fingerprint() -> int:
    """A number that changes whenever this module's or color.py's source changes.

    Numba's disk cache checks only a kernel's own file for changes, not the scalar modules
    it calls; the kernel modules make this number part of their cache key.
    """
    digest = hashlib.sha256()
    for path in (__file__, color.__file__):
        digest.update(Path(path).read_bytes())
    return int.from_bytes(digest.digest()[:7], "little")
