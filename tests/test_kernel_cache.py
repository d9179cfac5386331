"""The CPU kernels' on-disk cache (fractal_app/kernels/caching.py): one key over every kernel
source, so an edit of any file a kernel compiles in is never answered with old machine code.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import pytest
from numba.core.caching import NullCache

import fractal_app
from fractal_app.kernels.caching import KernelCache

PACKAGE = Path(fractal_app.__file__).parent

# A cached parallel kernel that compiles in the Mandelbrot core of kernels/escape.py; the
# sample c = 3 escapes after one iteration.
RUN_KERNEL = """
import json
import numpy as np
from fractal_app.kernels import cpu, escape

counts = np.zeros(1, np.uint32)
mag2 = np.zeros(1)
one = np.array([3.0])
params = escape.EscapeParams(escape.MANDELBROT, 0.0, 0.0, 2, 100, 4.0)
cpu.iterate_points_scalar(params, one, one * 0, counts, mag2)
stats = cpu.iterate_points_scalar.stats
print(json.dumps({"count": int(counts[0]), "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""


def _run(root: Path, cache: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "NUMBA_CACHE_DIR": str(cache),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("NUMBA_CACHE_LOCATOR_CLASSES", None)
    result = subprocess.run([sys.executable, "-c", RUN_KERNEL], env=env, cwd=root,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_an_edit_of_a_helper_module_reaches_a_cached_kernel(tmp_path):
    """Numba alone checks only the kernel's own file (kernels/cpu.py): after an edit of
    escape.py it kept loading the old code. Here the edit must show in the next process."""
    root = tmp_path / "copy"
    shutil.copytree(PACKAGE, root / "fractal_app",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    cache = tmp_path / "cache"

    assert _run(root, cache) == {"count": 1, "hits": 0, "misses": 1}  # compiled, saved
    assert _run(root, cache) == {"count": 1, "hits": 1, "misses": 0}  # loaded: cache is live

    escape_py = root / "fractal_app" / "kernels" / "escape.py"
    source = escape_py.read_text()
    original = "    return n, colour_tail("  # the Mandelbrot core's return: the first one
    assert source.index(original) < source.index("def julia(")
    escape_py.write_text(source.replace(original, "    return n + 7, colour_tail(", 1))

    assert _run(root, cache) == {"count": 8, "hits": 0, "misses": 1}


def _cpu_dispatchers():
    """Every Numba CPU dispatcher that a module of the package holds at top level, once the
    kernel modules (and the PNG reader's lazily made kernel) exist."""
    import importlib
    import pkgutil

    import numpy as np

    from fractal_app import bandfile

    line = np.zeros(6, np.uint8)
    bandfile._unfilter_sequential(line, line, 3, 4)
    names = [info.name for info in pkgutil.walk_packages(fractal_app.__path__, "fractal_app.")
             if "cuda" not in info.name]
    modules = [importlib.import_module(name) for name in names]
    found = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, numba.core.registry.CPUDispatcher):
                found[value.py_func.__qualname__ + " in " + module.__name__] = value
    return found


def test_every_cached_cpu_kernel_uses_the_source_key():
    dispatchers = _cpu_dispatchers()
    caches = {name: type(d._cache) for name, d in dispatchers.items()}
    assert {c for c in caches.values()} <= {KernelCache, NullCache}, caches
    cached = {name.split(" in ")[0] for name, c in caches.items() if c is KernelCache}
    # The kernels called from Python, which Numba must load from disk in a fresh process.
    for expected in ("iterate_grid_lanes", "resume_points_lanes", "iterate_grid_scalar",
                     "iterate_points_scalar", "colour_pixels", "band_kernel", "pixels_kernel",
                     "_unfilter_average_paeth"):
        assert expected in cached, (expected, sorted(cached))


# What a fresh process estimates for the scene JSON in its argv.
_ESTIMATE = ("import sys; from fractal_app import warmup; "
             "print(warmup.compile_estimate_seconds(sys.argv[1]))")


def _in_fresh_process(code: str, scene: str, cache_dir) -> str:
    """The output of ``python -c CODE SCENE`` with Numba's cache in ``cache_dir``."""
    done = subprocess.run([sys.executable, "-c", code, scene],
                          env={**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_cold_render_is_announced_with_an_estimate(tmp_path):
    """With nothing cached the estimate is the kernels' compile time; once a render has
    cached them it is 0 (the CLI then says nothing). Each step is a fresh process on its own
    cache folder, as a user's renders are: the tests' shared cache is written by many
    processes at once, and Numba's index files keep the last writer's entries, so an entry
    another process wrote can be missing there."""
    from fractal_app import config

    scene = json.dumps({"fractal": "mandelbrot", "resolution": [8, 4], "max_iter": 8})
    expected = 2 * config.COMPILE_SECONDS["lanes_f64"] + config.COMPILE_SECONDS["colour"]
    assert float(_in_fresh_process(_ESTIMATE, scene, tmp_path)) == pytest.approx(expected)

    _in_fresh_process(
        "import sys; from fractal_app import render; from fractal_app.scene import "
        "parse_scene; scene = parse_scene(sys.argv[1]); render.render_band(scene, 0, 4); "
        "render.render_pixels(scene, [0], [0])", scene, tmp_path)
    assert float(_in_fresh_process(_ESTIMATE, scene, tmp_path)) == 0
    from fractal_app import warmup

    assert warmup.compile_estimate_seconds('{"fractal": "nope"}') == 0  # render says why


def test_a_cold_deep_render_counts_the_deep_kernel(tmp_path):
    """A deep view renders through deep/cpu.py's kernel, not the lane kernels: its estimate
    is that kernel's (and the colouring's) while neither is cached."""
    from fractal_app import config

    scene = json.dumps({"fractal": "mandelbrot", "resolution": [8, 4], "max_iter": 8,
                        "center": ["-1.7497591451303665", "0"], "width": "1e-20"})
    expected = config.COMPILE_SECONDS["deep"] + config.COMPILE_SECONDS["colour"]
    assert float(_in_fresh_process(_ESTIMATE, scene, tmp_path)) == pytest.approx(expected)


def test_the_cli_says_a_cold_render_compiles_first(tmp_path, monkeypatch, capsys):
    from fractal_app import cli, warmup

    scene = tmp_path / "scene.json"
    scene.write_text('{"fractal": "mandelbrot", "resolution": [8, 4]}')
    monkeypatch.setattr(warmup, "compile_estimate_seconds", lambda text, backend: 44.0)
    cli._say_if_compiling(scene, None)
    said = capsys.readouterr().err
    assert "compiling the kernels for this scene first" in said and "about 44 s" in said
    monkeypatch.setattr(warmup, "compile_estimate_seconds", lambda text, backend: 0.0)
    cli._say_if_compiling(scene, None)
    assert capsys.readouterr().err == ""


def test_warm_cache_refuses_an_unknown_cpu_level_naming_the_known_ones():
    from click.testing import CliRunner

    from fractal_app import cli

    result = CliRunner().invoke(cli.main, ["warm-cache", "--cpu-level", "avx9000"])
    assert result.exit_code == 2
    assert "--cpu-level" in result.output and "x86-64-v4" in result.output
