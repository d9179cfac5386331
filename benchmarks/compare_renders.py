"""Alternate ``fractal-app render`` from two source trees on one scene; print the min walls.

    python benchmarks/compare_renders.py OLD_TREE NEW_TREE --rounds 5 [--scene 4k|1080p|FILE]
        [--bare]

Each tree is a checkout with its own ``.venv`` (``scripts/setup.sh``): its ``fractal-app``
console script runs that tree's code. Renders alternate (old, new, old, new, ...) so that
both sides see the same machine load, which on a shared machine changes from minute to
minute; the minimum of each side is compared (the median is printed too: on a loaded
machine one lucky render makes a minimum). The first render of each side is untimed (it
loads, or compiles, the kernels into Numba's cache and warms the page cache).
``--bare`` adds a third side to each round: the bare band renderer of bench_lifecycle.py
(``harness.BareRenderer``: one process, kernels loaded, this interpreter's tree), so that both
renders' fixed cost is measured against it in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import BareRenderer  # noqa: E402

SCENES = {
    "4k": {
        "fractal": "mandelbrot",
        "resolution": [3840, 2160],
        "center": [-0.7436, 0.1318],
        "width": 0.02,
        "max_iter": 8000,
    },
    "1080p": {"fractal": "mandelbrot", "resolution": [1920, 1080]},
}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def render(tree: Path, scene: Path, out: Path) -> tuple[float, float]:
    """(wall, CPU of every process) seconds of one ``fractal-app render`` from ``tree``."""
    cli = tree / ".venv" / "bin" / "fractal-app"
    cpu, started = children_cpu_s(), time.perf_counter()
    subprocess.run([str(cli), "render", str(scene), "-o", str(out), "--quiet"], check=True)
    return time.perf_counter() - started, children_cpu_s() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the tree to compare against (e.g. main)")
    parser.add_argument("new", type=Path, help="the tree with the change")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scene", default="4k", help="4k, 1080p or a scene JSON file")
    parser.add_argument("--bare", action="store_true", help="alternate the bare renderer too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.scene in SCENES:
            scene = tmp / "scene.json"
            scene.write_text(json.dumps(SCENES[args.scene]))
        else:
            scene = Path(args.scene)
        sides = {"old": args.old, "new": args.new}
        for tree in sides.values():  # untimed warm-up
            render(tree, scene, tmp / "warm.png")
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        bare = BareRenderer() if args.bare else None
        if bare is not None:
            times["bare"] = []
        try:
            for _ in range(args.rounds):
                if bare is not None:
                    times["bare"].append(bare.render(scene))
                for name, tree in sides.items():
                    times[name].append(render(tree, scene, tmp / f"{name}.png"))
        finally:
            if bare is not None:
                bare.close()
        same = (tmp / "old.png").read_bytes() == (tmp / "new.png").read_bytes()
    walls = {name: min(w for w, _ in runs) for name, runs in times.items()}
    cpus = {name: min(c for _, c in runs) for name, runs in times.items()}
    for name, runs in times.items():
        listed = ", ".join(f"{w:.3f} s ({c:.2f} CPU-s)" for w, c in runs)
        median = statistics.median(w for w, _ in runs)
        print(f"{name}: min {walls[name]:.3f} s, median {median:.3f} s, min {cpus[name]:.2f}"
              f" CPU-s; {listed}")
    print(f"new - old: {walls['new'] - walls['old']:+.3f} s wall, new / old "
          f"{walls['new'] / walls['old']:.3f} wall, {cpus['new'] / cpus['old']:.3f} CPU; "
          f"images identical: {same}")
    if bare is not None:
        for name in sides:
            print(f"{name} over bare: {walls[name] / walls['bare']:.3f}x wall, "
                  f"{walls[name] - walls['bare']:+.3f} s, "
                  f"{cpus[name] / cpus['bare']:.3f}x CPU")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
