"""The exact view of a 2D scene: centre and width as decimals, and when it needs the deep path.

The scene model (``scene.py``) keeps ``center`` and ``width`` as float64 for the float64
kernels; this module keeps what the user wrote, exactly (decimal strings of up to
``MAX_DIGITS`` characters, widths down to ``MIN_WIDTH``), decides whether float64 can tell
the view's pixels apart (:func:`needs_deep`), and gives the deep path its geometry: the
pixel size as a float64 mantissa and a binary exponent, and the MPFR precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext

# Centre strings may carry this many characters (1e-1000 needs about 1,010 digits).
MAX_DIGITS = 4000
MIN_WIDTH = Decimal("1e-1000")
MAX_ZOOM = 1000
# A view takes the deep path when a pixel is narrower than this many units in the last
# place of the centre's coordinates: there float64 rounding of the pixel coordinates (and
# the amplification of rounding along chaotic orbits) makes neighbouring pixels collapse
# or blur. At 1024 ulps a 1920-wide view switches at width ~2e-10 near |c| ~ 1.
DEEP_BELOW_ULPS = 1024
DEEP_FRACTALS = ("mandelbrot", "julia")
# The reference orbit holds 40 bytes an iteration, computed at 1-4 us an iteration.
DEEP_MAX_ITER = 2_000_000


def parse_decimal(value, field: str) -> Decimal:
    """A JSON number or decimal string as an exact Decimal; ValueError names ``field``."""
    if isinstance(value, bool):
        raise ValueError(f"field {field!r} must be a number or a decimal string, not a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"field {field!r} must be finite")
        # float() first: a NumPy float's repr is 'np.float64(...)', not a number.
        return Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a number or a decimal string")
    if len(value) > MAX_DIGITS:
        raise ValueError(
            f"field {field!r} is a decimal string of {len(value):,} characters; at most "
            f"{MAX_DIGITS:,} are allowed"
        )
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"field {field!r}: {value[:40]!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"field {field!r} must be finite (NaN and infinities are not allowed)")
    return number


@dataclass(frozen=True)
class ExactView:
    """Centre and width exactly as given (zoom folded into the width)."""

    center_re: Decimal
    center_im: Decimal
    width: Decimal
    # The scene's max_iter as validated: the reference orbit's length, kept when a copy of
    # the scene changes max_iter (verification's cheap estimate, its longer re-checks).
    orbit_iter: int = 0

    def center_strings(self) -> tuple[str, str]:
        return str(self.center_re), str(self.center_im)


def exact_inputs(data: dict, default_center, default_width: float):
    """(data with float64 stand-ins for the fields the float model reads, ExactView).

    Returns (data, None) where the fields are missing or malformed: the model's own
    validation then reports them as usual.
    """
    raw_center = data.get("center", default_center)
    raw_width = data.get("width")
    zoom = data.get("zoom")
    if not isinstance(raw_center, list | tuple) or len(raw_center) != 2:
        return data, None
    re = parse_decimal(raw_center[0], "center.0")
    im = parse_decimal(raw_center[1], "center.1")
    if zoom is not None:
        if raw_width is not None:
            raise ValueError("give either 'width' or 'zoom', not both")
        if (
            isinstance(zoom, bool)
            or not isinstance(zoom, int | float)
            or not (0 <= zoom <= MAX_ZOOM)
        ):
            raise ValueError(
                f"field 'zoom' must be a number from 0 to {MAX_ZOOM} (the view is "
                f"10^zoom times narrower than the default width {default_width})"
            )
        with localcontext() as ctx:
            ctx.prec = 60
            width = (
                Decimal(repr(float(default_width)))
                * Decimal(10) ** Decimal(repr(float(zoom))).copy_negate()
            )
    elif raw_width is None:
        width = Decimal(repr(float(default_width)))
    else:
        width = parse_decimal(raw_width, "width")
    if width <= 0:
        return data, None
    if width < MIN_WIDTH:
        raise ValueError(f"field 'width' must be >= {MIN_WIDTH} (the deepest view supported)")
    patched = dict(data)
    patched.pop("zoom", None)
    patched["center"] = [float(re), float(im)]
    # A stand-in only: float-path code never sees a view this narrow (needs_deep routes it).
    patched["width"] = max(float(width), 1e-300)
    return patched, ExactView(re, im, width)


def needs_deep(view: ExactView, width_px: int) -> bool:
    """Whether float64 cannot tell the view's pixels apart well enough.

    The same threshold for a float32 scene: float32 is a speed choice the user made, and
    switching such views to the deep path (or refusing them for the fractals it does not
    cover yet) turned ordinary float32 zooms of width 0.2 into slow renders or errors.
    """
    pixel = view.width / width_px
    # Orbits near the sets' boundaries are of order 1 whatever the centre, so a view near
    # 0 is no finer for float64 than one near 0.25 (inside |c| < 0.25 Mandelbrot is flat).
    magnitude = max(abs(view.center_re), abs(view.center_im), view.width, Decimal("0.25"))
    # ulp of the magnitude, in float64: 2^(exponent - 52)
    exponent = math.frexp(float(magnitude))[1] - 1
    ulp = Decimal(2) ** (exponent - 52)
    return pixel < DEEP_BELOW_ULPS * ulp


@dataclass(frozen=True)
class DeepGeometry:
    """Pixel size = pixel_mantissa * 2^pixel_exp (mantissa in [0.5, 1)); MPFR bits."""

    center_re: str
    center_im: str
    pixel_mantissa: float
    pixel_exp: int
    bits: int


def geometry(view: ExactView, width_px: int) -> DeepGeometry:
    import gmpy2

    from fractal_app.deep.orbit import precision_bits

    digits = len(view.width.as_tuple().digits) + 20
    with gmpy2.context(gmpy2.get_context(), precision=max(128, int(digits * 3.33))):
        pixel = gmpy2.mpfr(str(view.width)) / width_px
        exp, mantissa = gmpy2.frexp(pixel)
    re, im = view.center_strings()
    return DeepGeometry(re, im, float(mantissa), int(exp), precision_bits(int(exp)))


def check_deep_scene(scene) -> None:
    """ValueError (INVALID_ARGUMENT) for a deep view this app cannot render faithfully."""
    if not scene.deep:
        return
    if scene.fractal not in DEEP_FRACTALS:
        pixel = scene.exact_view.width / scene.resolution[0]
        raise ValueError(
            f"this {scene.fractal} view's pixels ({pixel:.3e} wide) are too narrow for float64"
            f" and deep zoom is implemented for {', '.join(DEEP_FRACTALS)} only: widen "
            f"'width' (or lower 'zoom') until a pixel is at least {DEEP_BELOW_ULPS} units in "
            "the last place of the centre"
        )
    if scene.max_iter > DEEP_MAX_ITER:
        raise ValueError(
            f"field 'max_iter' must be <= {DEEP_MAX_ITER:,} for a deep zoom (the reference "
            "orbit is kept in memory and computed in arbitrary precision)"
        )
