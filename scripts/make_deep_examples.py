"""Write examples/deep_*.json: views next to minibrots near c = i at widths 1e-50, 1e-300
and 1e-1000, their centres found with fractal_app.deep.locate (Newton in MPFR), and a
Julia view at 1e-100 centred on its Julia set (inverse iteration in MPFR).

    .venv/bin/python scripts/make_deep_examples.py
"""

import json
from decimal import Decimal
from pathlib import Path

import gmpy2

from fractal_app.deep.locate import julia_view_centre, near_i

# (file, width exponent, period of the minibrot at the centre, max_iter, resolution)
EXAMPLES = [
    ("deep_1e-50.json", 50, 69, 4_000, [640, 360]),
    ("deep_1e-300.json", 300, 401, 12_000, [640, 360]),
    # About 20,000 iterations a pixel: smaller, so it renders in about a minute on 2 cores.
    ("deep_1e-1000.json", 1000, 1331, 36_000, [320, 180]),
]


def main() -> None:
    root = Path(__file__).resolve().parent.parent / "examples"
    for name, exponent, period, max_iter, resolution in EXAMPLES:
        bits = int(exponent * 3.33 * 1.3) + 256
        c, size = near_i(period, bits)
        digits = exponent + 20
        with gmpy2.context(gmpy2.get_context(), precision=bits):
            re = format(c.real, f".{digits}e")
            im = format(c.imag, f".{digits}e")
        scene = {
            "fractal": "mandelbrot",
            "resolution": resolution,
            "center": [re, im],
            "width": f"1e-{exponent}",
            "max_iter": max_iter,
            "palette": "classic",
            # Counts at depth sit in a narrow band far from 0: repeat the palette more.
            "palette_cycles": 24,
        }
        (root / name).write_text(json.dumps(scene, indent=2) + "\n")
        print(name, f"period {period}, minibrot size ~1e{float(gmpy2.log10(size)):.1f}")
    # The default Julia set's c, whose exact binary value the deep path iterates.
    c = (-0.8, 0.156)
    centre = julia_view_centre(str(Decimal(c[0])), str(Decimal(c[1])), 100)
    julia = {"fractal": "julia", "c": list(c), "resolution": [640, 360],
             "center": list(centre), "width": "1e-100", "max_iter": 2_000,
             "palette": "classic", "palette_cycles": 20}
    (root / "deep_julia_1e-100.json").write_text(json.dumps(julia, indent=2) + "\n")
    print("deep_julia_1e-100.json")


if __name__ == "__main__":
    main()
