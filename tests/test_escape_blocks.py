"""The lane kernels: written from lanes.py's template at compile time, cached without it,
really vectorised, and bit-identical on pixel lists."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference

from fractal_app import render
from fractal_app.kernels import cpu, lanes
from fractal_app.scene import parse_scene


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


VECTORISED_CHECK = """
import numpy as np
from numba.core import config
from fractal_app.kernels import cpu
from fractal_app.kernels.escape import EscapeParams

re = np.linspace(-2.0, 0.5, 40)
im = np.linspace(-1.0, 1.0, 3)
counts = np.empty((3, 40), np.uint32)
mag2 = np.empty((3, 40))
cpu.iterate_grid(EscapeParams(0, 0.0, 0.0, 2, 50, 4.0), re, im, counts, mag2)
assert config.SLP_VECTORIZE == 0, "SLP must be switched off again after the compile"
(asm,) = cpu.iterate_grid_lanes.inspect_asm().values()
print(asm.count("%zmm"), asm.count("%ymm"))
"""


def test_mandelbrot_lane_kernel_compiles_to_vector_instructions(tmp_path):
    """A fresh compile (empty cache: cached code cannot be inspected) uses 256/512-bit
    registers: the SLP vectorizer packed the lanes."""
    flags = _cpu_flags()
    if "avx2" not in flags:
        pytest.skip("this CPU has no AVX2/AVX-512, so there are no wide registers to look for")
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", VECTORISED_CHECK], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    zmm, ymm = map(int, result.stdout.split())
    if "avx512f" in flags:
        assert zmm > 50, f"expected AVX-512 code, found {zmm} zmm and {ymm} ymm references"
    else:
        assert ymm > 50, f"expected AVX2 code, found {ymm} ymm references"


CACHE_CHECK = """
import sys
import numpy as np
from fractal_app.kernels import cpu, lanes
from fractal_app.kernels.escape import EscapeParams

kernel = cpu.iterate_grid_lanes
params = EscapeParams(0, 0.0, 0.0, 2, 20, 4.0)
re, im = np.linspace(-2.0, 0.5, 40), np.linspace(-1.0, 1.0, 3)
counts, mag2, no_z = np.empty((3, 40), np.uint32), np.empty((3, 40)), np.empty((3, 0))
if sys.argv[1] == "careless":
    # straight to the kernel: compiled with Numba's default, SLP off
    kernel(lanes.lane_code(0), re, im, params, counts, mag2, False, no_z, no_z)
else:
    cpu.iterate_grid(params, re, im, counts, mag2)
print(sum(kernel.stats.cache_hits.values()), sum(kernel.stats.cache_misses.values()))
"""


def test_a_copy_compiled_without_the_vectorizer_is_never_loaded_in_its_place(tmp_path):
    """The on-disk cache of the lane kernels keys on the SLP setting: a process that
    compiled one with SLP off must not hand its slow copy to the next (it did, once)."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run(how):
        result = subprocess.run([sys.executable, "-c", CACHE_CHECK, how], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        return tuple(map(int, result.stdout.split()))

    assert run("careless") == (0, 1)  # compiled (SLP off) and saved
    assert run("vectorized") == (0, 1)  # the SLP-off copy is not a hit: compiled again
    assert run("vectorized") == (1, 0)  # and now the vectorised copy is loaded


FRESH_PROCESS = """
import json
import numpy as np
from fractal_app import render
from fractal_app.kernels import cpu, lanes
from fractal_app.scene import parse_scene

from numba.core import event

written = []
source = lanes.lane_source
lanes.lane_source = lambda *key: written.append(key) or source(*key)
# Numba compiles of lane source (its code objects are named "<lanes FRACTAL PRECISION>"):
# (fractal, precision, entry point) per compile.
compiled = []


class LaneCompiles(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        code = ev.data["dispatcher"].py_func.__code__
        if code.co_filename.startswith("<lanes "):
            compiled.append((*code.co_filename[1:-1].split()[1:], code.co_name))


event.register("numba:compile", LaneCompiles())
scene = parse_scene({"fractal": "mandelbrot", "resolution": [40, 6], "max_iter": 200,
                     "output": "counts"})
counts = render.render_band(scene, 0, 6)
pixels = render.render_pixels(scene, np.array([0, 5]), np.array([3, 39]))
stats = [kernel.stats for kernel in cpu.LANE_KERNELS]
print(json.dumps({"hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats),
                  "written": written, "compiled": compiled,
                  "sum": int(counts.sum()) + int(pixels.sum())}))
"""


def test_a_fresh_process_loads_the_lane_kernels_without_writing_their_source(tmp_path):
    """The template runs while a kernel compiles, and Numba compiles its source once per
    entry point; a later process loads the kernels' machine code from Numba's cache,
    writing and compiling no lane source at all."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run():
        result = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True,
                                text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    cold = run()
    # The band runs the grid kernel, the pixels the kernel resuming packed points.
    assert cold["misses"] == 2 and cold["hits"] == 0
    assert sorted(map(tuple, cold["written"])) == [("mandelbrot", "f64", False),
                                                   ("mandelbrot", "f64", True)]
    # Each entry point's lane source is compiled once, though its parallel kernel types
    # the loop body twice (it was compiled twice, doubling the cold compile).
    assert sorted(map(tuple, cold["compiled"])) == [("mandelbrot", "f64", "iterate_points"),
                                                    ("mandelbrot", "f64", "iterate_row")]
    warm = run()
    assert warm == {**cold, "hits": 2, "misses": 0, "written": [], "compiled": []}


def test_the_template_refuses_a_fractal_it_does_not_know():
    with pytest.raises(ValueError, match="no lane code for fractal 'mandelbulb'"):
        lanes.lane_source("mandelbulb", "f64", resume=False)
    assert lanes.lane_code(99) is None


# --- pixel lists (the verification's samples) on the block kernels -------------------------

# Views through each set's boundary, max_iter high enough for several passes of a list.
POINT_VIEWS = {
    name: {**view, "max_iter": 5 * view["max_iter"] // 2}
    for name, view in reference.BOUNDARY_VIEWS.items()
}
PRECISIONS = ["float64", "float32"]


def _point_scene(fractal, precision, **extra):
    return parse_scene({"fractal": fractal, "precision": precision, "resolution": [90, 40],
                        "output": "counts", **POINT_VIEWS[fractal], **extra})


def _scattered_pixels(scene, count=101, seed=3):
    """Pixels in random order (neighbours in a block are not neighbours in the image); 101
    leaves a partial block of 32 or 64 lanes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, scene.height_px, count), rng.integers(0, scene.width_px, count)


def _kernel_points(scene, rows, cols):
    params = render.escape_params(scene)
    re = render.sample_coords(scene, cols, "re").reshape(-1).astype(params.dtype)
    im = render.sample_coords(scene, rows, "im").reshape(-1).astype(params.dtype)
    counts = np.empty(re.size, np.uint32)
    mag2 = np.empty(re.size)
    cpu.iterate_points(params, re, im, counts, mag2)
    return counts, mag2


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fractal", list(POINT_VIEWS))
def test_pixel_lists_run_the_lane_kernels_and_equal_the_reference(fractal, precision,
                                                                  monkeypatch):
    """render_pixels' kernel: scattered points through the lane kernels in passes give the
    pure-Python reference's counts and |z|^2, never touching the scalar loop."""
    scene = _point_scene(fractal, precision)
    rows, cols = _scattered_pixels(scene)

    def no_scalar(*args):
        raise AssertionError("a pixel list ran the scalar loop")

    monkeypatch.setattr(cpu, "iterate_points_scalar", no_scalar)
    passes = []
    real_call = cpu._call_vectorized
    monkeypatch.setattr(cpu, "_call_vectorized",
                        lambda kernel, args: passes.append(args[6]) or real_call(kernel, args))
    counts, mag2 = _kernel_points(scene, rows, cols)
    expected = [reference.escape(scene, *reference.pixel_coordinate(scene, r, c))
                for r, c in zip(rows, cols, strict=True)]
    assert 0 < (counts == scene.max_iter).sum() < counts.size  # inside and outside both
    assert len(passes) >= 3 and passes[0] == 0  # from the start, then passes of survivors
    np.testing.assert_array_equal(counts, [n for n, _ in expected])
    np.testing.assert_array_equal(mag2, [m for _, m in expected])
    band = render.render_band(scene, 0, scene.height_px)
    np.testing.assert_array_equal(render.render_pixels(scene, rows, cols), band[rows, cols])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fractal", list(POINT_VIEWS))
def test_pixel_lists_in_many_tiny_passes_give_the_same_counts(fractal, precision, monkeypatch):
    scene = _point_scene(fractal, precision, max_iter=150)
    rows, cols = _scattered_pixels(scene, 300, seed=5)
    expected = _kernel_points(scene, rows, cols)
    monkeypatch.setattr(cpu, "POINTS_FIRST_PASS", 1)
    monkeypatch.setattr(cpu, "PASS_GROWTH", 2)
    counts, mag2 = _kernel_points(scene, rows, cols)
    np.testing.assert_array_equal(counts, expected[0])
    np.testing.assert_array_equal(mag2, expected[1])


def _all_signatures():
    """Every compiled signature of every CPU kernel dispatcher."""
    dispatchers = [cpu.iterate_grid_scalar, cpu.iterate_points_scalar, cpu.colour_pixels,
                   *cpu.LANE_KERNELS]
    return [tuple(d.signatures) for d in dispatchers]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fractal", list(POINT_VIEWS))
def test_a_tiny_pixel_call_compiles_every_kernel_a_big_one_runs(fractal, precision):
    """An image's cache warm-up asks for a few pixels; the read-only cache must then hold
    all that verifying a big band runs (many points, many passes)."""
    scene = _point_scene(fractal, precision, output="image", max_iter=2000)
    render.render_pixels(scene, np.array([0]), np.array([0]))
    _, resume_signature = cpu.lane_kernel_signatures(render.escape_params(scene))[1]
    assert resume_signature in cpu.resume_points_lanes.overloads
    compiled = _all_signatures()
    rows, cols = _scattered_pixels(scene, 2000, seed=11)
    render.render_pixels(scene, rows, cols)
    assert _all_signatures() == compiled
