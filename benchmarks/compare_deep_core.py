"""The deep perturbation core of another checkout against this one's, alternated in one run.

    git worktree add ../base main
    .venv/bin/python benchmarks/compare_deep_core.py ../base/fractal_app/deep/core.py 40,300 64 36 3

Arguments: the other core.py, width exponents (comma-separated, bench_deepzoom.py's views
next to minibrots near c = i), image width and height, timed rounds. Each round runs both
cores on the same view, one thread each, alternately (so a machine's changing load falls on
both); the figure is the best round's effective G iterations/s and the ratio. The counts
and |z|^2 must be equal bit for bit, and the run says so.

Both cores run on this checkout's reference and BLA tables, and are compiled with this
checkout's deep/bits.py: the other core must take the same table layout (the segmented
tables of deep/bla.py since 3 Dec 2026: an older core cannot read them), and a change to
bits.py is not measured here (compare bench_deepzoom.py runs of the two checkouts).
"""

import importlib.util
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deepzoom import deep_params  # noqa: E402

from fractal_app.deep import cpu  # noqa: E402
from fractal_app.deep.render import _offsets, reference_for  # noqa: E402
from fractal_app.scene import parse_scene  # noqa: E402


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serial_grid(perturbed):
    @numba.njit(nogil=True)
    def grid(cols, rows, dce, zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout, max_iter,
             counts, mag2):
        for r in range(rows.shape[0]):
            for k in range(cols.shape[0]):
                counts[r, k], mag2[r, k] = perturbed(cols[k], rows[r], dce, zr, zi, mr, mi, e,
                                                     bla_f, bla_e, bla_off, layout, max_iter)
    return grid


def main(other: str, exponents: str, width: int, height: int, rounds: int) -> None:
    base = _load(other, "other_deep_core")
    kernels = {"other": _serial_grid(base.compile_core(numba.njit(inline="always")).perturbed),
               "this": _serial_grid(cpu.core.perturbed)}
    for exponent in (int(x) for x in exponents.split(",")):
        scene = parse_scene(deep_params(exponent, (width, height)))
        geo, reference = reference_for(scene)
        cols = _offsets(scene, np.arange(scene.width_px), "re", geo.pixel_mantissa).ravel()
        rows = _offsets(scene, np.arange(scene.height_px), "im", geo.pixel_mantissa).ravel()
        best: dict[str, float] = {}
        out = {}
        for round_ in range(rounds + 1):  # round 0 compiles
            for name, grid in kernels.items():
                counts = np.empty((rows.size, cols.size), np.uint32)
                mag2 = np.empty(counts.shape)
                began = time.perf_counter()
                grid(cols, rows, geo.pixel_exp, *reference.arrays(), scene.max_iter, counts,
                     mag2)
                if round_:
                    best[name] = min(best.get(name, np.inf), time.perf_counter() - began)
                out[name] = counts, mag2
        same = all(np.array_equal(a, b) for a, b in zip(out["other"], out["this"], strict=True))
        iterations = out["this"][0].sum(dtype=np.int64)
        print(f"1e-{exponent} {width}x{height}: other {iterations / best['other'] / 1e9:.4f} "
              f"G it/s, this {iterations / best['this'] / 1e9:.4f} G it/s, this/other "
              f"{best['other'] / best['this']:.3f}x, bit-identical {same}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
