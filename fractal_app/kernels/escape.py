"""Escape-time cores, scalar: one pixel sample of each 2D fractal.

Plain Python functions, written once. ``kernels/cpu.py`` compiles them with
``numba.njit(inline="always")`` and ``kernels/cuda.py`` with
``numba.cuda.jit(device=True, inline="always")``; the slow references in the tests
re-derive the same numbers independently.

Every core returns ``(count, mag2)``: the escape count as defined in the app issue
(completed iterations before ``|z|^2 > escape2`` is first observed, or ``max_iter``)
and, for smooth colouring, ``|z|^2`` after ``tail_iterations(power)`` more iterations
past escape (``colour_tail``; for a sample that never escaped, ``|z|^2`` where it
stopped). The escape radius is 2 (``escape2 = 4``) in every caller.

Precision follows the arguments: pass float32 coordinates and a float32 ``escape2`` and
the whole iteration stays in float32. That is why no bare float literal appears below
(Numba would promote float32 to float64 around one), why zero is written ``cr - cr``,
and why ``2xy`` is written ``xy + xy`` (exactly equal to ``2 * (x * y)`` in IEEE).
"""

from typing import NamedTuple

from fractal_app.kernels.compiling import compiled_namespace

MANDELBROT = 0
JULIA = 1
BURNING_SHIP = 2
MULTIBROT = 3

KIND_OF_FRACTAL = {
    "mandelbrot": MANDELBROT,
    "julia": JULIA,
    "burning_ship": BURNING_SHIP,
    "multibrot": MULTIBROT,
}


class EscapeParams(NamedTuple):
    """The scalar parameters of one 2D escape-time iteration, passed as one record through
    render.py, the CPU and CUDA kernels (Numba types a NamedTuple field by field).

    ``jr``, ``ji`` and ``escape2`` are NumPy scalars of the iteration's precision (float32
    or float64), like the sample coordinates the kernels get with them.
    """

    kind: int  # the fractal: a constant above
    jr: float  # Julia's c (ignored by the other kinds)
    ji: float
    power: int  # Multibrot's exponent (2 for the others)
    max_iter: int
    escape2: float  # the squared escape radius

    @property
    def dtype(self) -> type:
        """The iteration's float type (numpy.float32 or numpy.float64)."""
        return type(self.escape2)


def mandelbrot(cr, ci, max_iter, escape2):
    """z <- z^2 + c from z = 0."""
    x = cr - cr
    y = ci - ci
    x2 = x * x
    y2 = y * y
    n = 0
    while n < max_iter and x2 + y2 <= escape2:
        xy = x * y
        y = xy + xy + ci
        x = x2 - y2 + cr
        x2 = x * x
        y2 = y * y
        n += 1
    return n, colour_tail(MANDELBROT, x, y, cr, ci, 2, x2 + y2, escape2)


def julia(zr, zi, cr, ci, max_iter, escape2):
    """z <- z^2 + c from z = the pixel, c fixed."""
    x = zr
    y = zi
    x2 = x * x
    y2 = y * y
    n = 0
    while n < max_iter and x2 + y2 <= escape2:
        xy = x * y
        y = xy + xy + ci
        x = x2 - y2 + cr
        x2 = x * x
        y2 = y * y
        n += 1
    return n, colour_tail(JULIA, x, y, cr, ci, 2, x2 + y2, escape2)


def burning_ship(cr, ci, max_iter, escape2):
    """z <- (|Re z| + i |Im z|)^2 + c from z = 0 (imaginary axis as in the pixel formula)."""
    x = cr - cr
    y = ci - ci
    x2 = x * x
    y2 = y * y
    n = 0
    while n < max_iter and x2 + y2 <= escape2:
        xy = abs(x * y)
        y = xy + xy + ci
        x = x2 - y2 + cr
        x2 = x * x
        y2 = y * y
        n += 1
    return n, colour_tail(BURNING_SHIP, x, y, cr, ci, 2, x2 + y2, escape2)


def mul(a, b):
    """a * b. A GPU build swaps in a product that is never fused into an FMA (see
    compile_cores); the cores use it wherever a GPU would fuse a product into a sum."""
    return a * b


def multibrot(cr, ci, power, max_iter, escape2):
    """z <- z^power + c from z = 0, power an integer >= 2 (repeated complex products)."""
    x = cr - cr
    y = ci - ci
    mag2 = mul(x, x) + mul(y, y)
    n = 0
    while n < max_iter and mag2 <= escape2:
        pr = x
        pi = y
        for _ in range(power - 1):
            t = mul(pr, x) - mul(pi, y)
            pi = mul(pr, y) + mul(pi, x)
            pr = t
        x = pr + cr
        y = pi + ci
        mag2 = mul(x, x) + mul(y, y)
        n += 1
    return n, colour_tail(MULTIBROT, x, y, cr, ci, power, mag2, escape2)


def escape(params, cr, ci):
    """(count, mag2) of the sample at cr + i ci for the fractal ``params.kind``
    (``params``: an EscapeParams), so one kernel serves every 2D fractal."""
    kind = params.kind
    if kind == JULIA:
        return julia(cr, ci, params.jr, params.ji, params.max_iter, params.escape2)
    if kind == BURNING_SHIP:
        return burning_ship(cr, ci, params.max_iter, params.escape2)
    if kind == MULTIBROT:
        return multibrot(cr, ci, params.power, params.max_iter, params.escape2)
    return mandelbrot(cr, ci, params.max_iter, params.escape2)


# The scalar core of each 2D fractal, by name (the one table of them).
SCALAR_CORES = {
    "mandelbrot": mandelbrot,
    "julia": julia,
    "burning_ship": burning_ship,
    "multibrot": multibrot,
}


# --- Past escape, for colouring only ------------------------------------------------------
#
# Smooth colouring reads a sample's escape potential from log|z|: after k more iterations
# log|z| is p^k times larger, up to a term of order |c| / |z|^p. Read at the escape radius
# 2 that term is far from small, and it jumps where the escape count steps by one: the
# faint seam arcs of every gradient, and a visible arc at |c| = 2. A few iterations later
# |z| >= 2^(p^k) >= 256 and the term is below 10^-4 (a large bailout, for colouring only:
# the escape count keeps its definition). The tail runs in float64 whatever the iteration's
# precision (a float32 z would overflow there at high powers). Its products need not be
# exact on a GPU: a fused multiply-add moves the colour by an ulp, never the count.


def tail_iterations(power):
    """Iterations continued past escape: the fewest with p^k >= 8 (|z| >= 256 after them,
    from |z| > 2), few enough that float64 cannot overflow from any escaped z (|z| <= 2^p
    + |c|)."""
    if power == 2:
        return 3
    if power < 8:
        return 2
    return 1


def colour_tail(kind, x, y, cr, ci, power, mag2, escape2):
    """|z|^2 after ``tail_iterations(power)`` more iterations of the fractal ``kind`` from
    z = x + iy (c = cr + i ci), in float64, if the sample escaped (mag2 > escape2);
    otherwise mag2 unchanged (the sample never escaped, or stopped at a pass's cap)."""
    # float(v) + 0.0: float64 in Python and in Numba alike (Numba's float() of a float32 is
    # a float32, which an inlined copy of this function then iterated in).
    if not (mag2 > escape2):
        return float(mag2) + 0.0
    tail_zr = float(x) + 0.0
    tail_zi = float(y) + 0.0
    tail_cr = float(cr) + 0.0
    tail_ci = float(ci) + 0.0
    for _tail_step in range(tail_iterations(power)):
        if kind == MULTIBROT:
            tail_pr = tail_zr
            tail_pi = tail_zi
            for _tail_factor in range(power - 1):
                tail_t = tail_pr * tail_zr - tail_pi * tail_zi
                tail_pi = tail_pr * tail_zi + tail_pi * tail_zr
                tail_pr = tail_t
            tail_zr = tail_pr + tail_cr
            tail_zi = tail_pi + tail_ci
        else:
            if kind == BURNING_SHIP:
                tail_zr = abs(tail_zr)
                tail_zi = abs(tail_zi)
            tail_t = tail_zr * tail_zr - tail_zi * tail_zi + tail_cr
            tail_zi = 2.0 * tail_zr * tail_zi + tail_ci
            tail_zr = tail_t
    return tail_zr * tail_zr + tail_zi * tail_zi

def compile_cores(jit, exact_mul=None, tail_jit=None):
    """The cores compiled by ``jit`` (a decorator: numba.njit(inline="always") or
    numba.cuda.jit(device=True, inline="always")), with ``escape(params, cr, ci)``, which
    dispatches on the fractal kind.

    ``exact_mul``: a target function standing in for ``mul`` (default: ``jit(mul)``). The
    CUDA build passes a correctly rounded product that NVVM and ptxas cannot contract,
    which keeps the GPU's Multibrot bit-identical to the CPU's. (The other cores need
    none: the only contraction NVVM finds there, xy + xy -> fma(x, y, x*y), rounds exactly
    like 2 * (x*y); tests/test_cuda2d.py checks the PTX.)

    ``tail_jit``: the decorator for ``colour_tail`` (default ``jit``). The CPU build passes a
    plain numba.njit, so that the cores call it as the CPU lane kernels run it: inlined
    into a float32 core inside a prange kernel, its float64 arithmetic came out rounded
    differently (tests/test_escape.py compares the two bit for bit).

    Returns a namespace with ``mandelbrot``, ``julia``, ``burning_ship``, ``multibrot``,
    ``colour_tail`` and ``escape``.
    """
    tail = {"colour_tail": tail_jit, "tail_iterations": tail_jit} if tail_jit else {}
    return compiled_namespace(
        [*SCALAR_CORES.values(), escape, mul, colour_tail, tail_iterations], jit,
        jit_for=tail, replace={} if exact_mul is None else {"mul": exact_mul},
    )
