"""The image's way of running, without a container: a kernel cache warmed by
``fractal_app.warmup``, then made read-only, serves every service path (CreateTask's estimate,
Compute's band and file, Verify of band files written with every PNG row filter, and
RunBenchmark) to another uid with nothing left to compile and nothing written.

The full walk (every fractal, precision and output) runs against the built image in
tests/test_container.py; this one walks the Mandelbrot float64 scenes, so that it stays quick
in the default run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fractal_app import cpu_levels

pytestmark = pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the image's cache is compiled for x86-64 levels"
)

NODE_UID = 4321
CHECKOUT = Path(__file__).resolve().parents[1]

# Pick the CPU level as the image's .pth does, then run the chosen warm-up steps under a
# recorder of Numba compilations (cache loads are not compilations).
WALK = r"""
import json, sys
from fractal_app import cpu_levels
level = cpu_levels.select_cpu_target()
from numba.core import event
compiles = event.RecordingListener()
event.register("numba:compile", compiles)
from fractal_app import warmup
steps = [(label, step) for label, step in warmup.warm_steps()
         if label.startswith("mandelbrot float64") or label == "RunBenchmark"]
for label, step in steps:
    step()
names = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in compiles.buffer})
print(json.dumps({"level": level, "steps": [label for label, _ in steps], "compiled": names}))
"""


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}
    env.update({
        "NUMBA_CACHE_DIR": str(cache),
        "NUMBA_CACHE_LOCATOR_CLASSES": "fractal_app.warmup.ImageCacheLocator",
        cpu_levels.CPU_TARGETS_ENV: "x86-64-v4 x86-64-v3 x86-64",
        "PYTHONPATH": str(CHECKOUT),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def _walk(cache: Path, as_node_user: bool) -> dict:
    command = [sys.executable, "-c", WALK]
    if as_node_user:  # root ignores permission bits: run as a uid the files do not belong to
        command = ["setpriv", f"--reuid={NODE_UID}", f"--regid={NODE_UID}", "--clear-groups",
                   *command]
    done = subprocess.run(command, env=_env(cache), cwd="/", capture_output=True, text=True,
                          timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def test_a_read_only_warm_cache_serves_every_service_path_to_another_uid():
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        pytest.skip("running as root, and setpriv (util-linux) is missing to drop to another uid")
    # Warmed where the test run's kernel cache lives, so a second run compiles nothing.
    warm_cache = Path(os.environ.get("NUMBA_CACHE_DIR") or tempfile.gettempdir()) / "image-walk"
    warmed = _walk(warm_cache, as_node_user=False)
    assert warmed["level"] in cpu_levels.LEVELS
    assert "RunBenchmark" in warmed["steps"] and len(warmed["steps"]) >= 5

    with tempfile.TemporaryDirectory(prefix="fractal-app-walk-") as folder:
        cache = Path(folder) / "cache"
        shutil.copytree(warm_cache, cache)
        for path in [cache, *cache.rglob("*")]:  # readable by all, writable by none
            path.chmod(0o555 if path.is_dir() else 0o444)
        Path(folder).chmod(0o755)
        before = _snapshot(cache)
        walked = _walk(cache, as_node_user=root)
        after = _snapshot(cache)
        for path in [cache, *cache.rglob("*")]:
            path.chmod(0o755)
    assert walked["level"] == warmed["level"]
    assert walked["compiled"] == [], f"compiled at run time: {walked['compiled']}"
    assert after == before, "the walk wrote into the read-only cache"
