"""Cold compile time of a fractal's CPU kernels, per source tree: CPU seconds, alternating trees.

Each measurement is a fresh process of this interpreter (so the same Numba and llvmlite)
with the tree first on its path and an empty temporary NUMBA_CACHE_DIR. It renders a small
band and two pixels of the fractal (``render_band`` and ``render_pixels``: the grid kernel
and the kernel of lists of points, and whatever they compile in), and reports the CPU time
of that, all threads together, imports excluded. The trees take turns round by round, so a
change of the machine's load falls on all of them alike; compare the ratios, not the
seconds, between runs.

    python benchmarks/compile_time.py --compare old=../old-tree new=. --rounds 3 \
        --fractal mandelbrot --precision f64

A tree is a checkout of this repository (``git worktree add PATH COMMIT`` for an old
commit); its ``fractal_app`` must import under this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Run in the child, with the tree first on sys.path: the public render functions exist in
# every tree since the lane kernels did, whatever the kernels' own signatures.
CHILD = r"""
import json, sys, time
import numpy as np
import fractal_app
from fractal_app import render
from fractal_app.scene import parse_scene

scene = parse_scene(json.loads(sys.argv[1]))
start = time.process_time()
band = render.render_band(scene, 0, 8)
pixels = render.render_pixels(scene, np.array([0, 7]), np.array([3, 63]))
cpu_s = time.process_time() - start
print(json.dumps({"cpu_s": cpu_s, "package": fractal_app.__file__,
                  "checksum": int(band.sum()) + int(pixels.sum())}))
"""

PRECISIONS = {"f64": "float64", "f32": "float32"}


def scene_of(fractal: str, precision: str) -> dict:
    """A small scene: the counts of 64 x 8 samples, enough iterations for every pass."""
    return {"fractal": fractal, "resolution": [64, 8], "max_iter": 300,
            "precision": PRECISIONS[precision], "output": "counts"}


def cold_compile(tree: Path, scene: dict) -> dict:
    """One cold run in a fresh process: {"cpu_s", "package", "checksum"}."""
    with tempfile.TemporaryDirectory(prefix="fractal-app-compile-time-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(tree)}
        env.pop("NUMBA_CACHE_LOCATOR_CLASSES", None)
        result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(scene)], cwd=tree,
                                env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cold compile in {tree} failed:\n{result.stderr}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    package = Path(measured["package"]).resolve()
    if tree.resolve() not in package.parents:
        raise RuntimeError(f"{tree}: the child imported fractal_app from {package}, not from "
                           "the tree (an installed copy shadows PYTHONPATH?)")
    return measured


def machine() -> str:
    """The CPU model and the load averages, as the figures should be reported with."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu_model()}, {os.cpu_count()} CPUs, load average {load}"


def parse_trees(specs: list[str]) -> dict[str, Path]:
    trees = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--compare takes NAME=PATH, got {spec!r}")
        trees[name] = Path(path).resolve()
    return trees


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", nargs="+", default=[f"this={REPO}"], metavar="NAME=PATH",
                        help="source trees to measure (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fractal", default="mandelbrot")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="f64")
    args = parser.parse_args(argv)
    trees = parse_trees(args.compare)
    scene = scene_of(args.fractal, args.precision)
    print(f"{args.fractal} {args.precision}, cold compile CPU seconds; {machine()}", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    checksums: dict[str, int] = {}
    order = list(trees)
    for round_number in range(args.rounds):
        # Alternate which tree goes first, so neither always meets the same neighbour.
        for name in order if round_number % 2 == 0 else order[::-1]:
            measured = cold_compile(trees[name], scene)
            seconds[name].append(measured["cpu_s"])
            checksums.setdefault(name, measured["checksum"])
            print(f"  round {round_number + 1} {name}: {measured['cpu_s']:.1f} s", flush=True)
    if len(set(checksums.values())) > 1:
        print(f"  WARNING: the trees' counts differ: {checksums}")
    first = order[0]
    for name in order:
        median = statistics.median(seconds[name])
        ratio = median / statistics.median(seconds[first])
        print(f"{name}: median {median:.1f} s (min {min(seconds[name]):.1f}), "
              f"{ratio:.2f}x {first}")
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
