"""Escape-time cores, scalar: one pixel sample of each 2D fractal.

Plain Python functions, written once. ``kernels/cpu.py`` compiles them with
``numba.njit(inline="always")`` and ``kernels/cuda.py`` with
``numba.cuda.jit(device=True, inline="always")``; the slow references in the tests
re-derive the same numbers independently.

Every core returns ``(count, mag2)``: the escape count as defined in the app issue
(completed iterations before ``|z|^2 > escape2`` is first observed, or ``max_iter``)
and ``|z|^2`` at that moment, for smooth colouring. The escape radius is 2
(``escape2 = 4``) in every caller.

Precision follows the arguments: pass float32 coordinates and a float32 ``escape2`` and
the whole iteration stays in float32. That is why no bare float literal appears below
(Numba would promote float32 to float64 around one), why zero is written ``cr - cr``,
and why ``2xy`` is written ``xy + xy`` (exactly equal to ``2 * (x * y)`` in IEEE).
"""

from types import FunctionType, SimpleNamespace

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
    return n, x2 + y2


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
    return n, x2 + y2


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
    return n, x2 + y2


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
    return n, mag2


def compile_cores(jit, exact_mul=None):
    """The cores compiled by ``jit`` (a decorator: numba.njit(inline="always") or
    numba.cuda.jit(device=True, inline="always")), plus ``escape``, which dispatches on
    the fractal kind (a constant above) so one kernel serves every 2D fractal.

    ``exact_mul``: a target function standing in for ``mul`` (default: ``jit(mul)``). The
    CUDA build passes a correctly rounded product that NVVM and ptxas cannot contract,
    which keeps the GPU's Multibrot bit-identical to the CPU's. (The other cores need
    none: the only contraction NVVM finds there, xy + xy -> fma(x, y, x*y), rounds exactly
    like 2 * (x*y); tests/test_cuda2d.py checks the PTX.)

    Returns a namespace with ``mandelbrot``, ``julia``, ``burning_ship``, ``multibrot``
    and ``escape(kind, cr, ci, jr, ji, power, max_iter, escape2)``, where ``jr, ji`` is
    Julia's c and ``power`` the Multibrot exponent (ignored by the other kinds).
    """
    m = jit(mandelbrot)
    j = jit(julia)
    b = jit(burning_ship)
    p = jit(_with_globals(multibrot, mul=exact_mul if exact_mul is not None else jit(mul)))

    def escape(kind, cr, ci, jr, ji, power, max_iter, escape2):
        if kind == JULIA:
            return j(cr, ci, jr, ji, max_iter, escape2)
        if kind == BURNING_SHIP:
            return b(cr, ci, max_iter, escape2)
        if kind == MULTIBROT:
            return p(cr, ci, power, max_iter, escape2)
        return m(cr, ci, max_iter, escape2)

    return SimpleNamespace(mandelbrot=m, julia=j, burning_ship=b, multibrot=p, escape=jit(escape))


def _with_globals(function, **names):
    """A copy of a plain function whose global names ``names`` resolve to other objects
    (Numba resolves a core's callees from its globals when it compiles it)."""
    scope = dict(function.__globals__, **names)
    copy = FunctionType(function.__code__, scope, function.__name__, function.__defaults__,
                        function.__closure__)
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    return copy
