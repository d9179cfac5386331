"""The 2D CUDA kernels without a GPU: bit for bit against the CPU in Numba's CUDA simulator,
and its FMA contraction checked in real PTX (every kernel is compiled to PTX in test_ptx.py).

The simulator must be chosen before numba is imported, so those checks run in a child
process that executes this file as a script (see the bottom).
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fractal_app.fractals import FRACTALS as REGISTERED

FRACTALS = tuple(name for name, fractal in REGISTERED.items() if fractal.boundary_view)
PRECISIONS = ("float64", "float32")


@pytest.mark.timeout(1600)
def test_cuda_kernels_match_the_cpu_bit_for_bit_in_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    # The child compiles every CPU lane kernel it compares against that the run has not
    # cached yet (eight fractal-precision pairs, each a grid and a points kernel): 14 s
    # warm, but minutes cold on two cores shared with other work (over 300 s seen).
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                            env=env, timeout=1500)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[-1] == f"checked={len(FRACTALS) * len(PRECISIONS)}"


def _single_fractal_kernel(fractal, precision):
    """A kernel running one core alone, so its PTX shows only that core's arithmetic."""
    from numba import cuda

    from fractal_app.kernels.cuda import cores_by_dtype

    dtype = np.float64 if precision == "float64" else np.float32
    core = getattr(cores_by_dtype[dtype], fractal)
    grid = cuda.grid

    if fractal == "multibrot":
        def kernel(re, im, max_iter, escape2, counts):
            k = grid(1)
            if k < re.shape[0]:
                counts[k] = core(re[k], im[k], 5, max_iter, escape2)[0]
    elif fractal == "julia":
        def kernel(re, im, max_iter, escape2, counts):
            k = grid(1)
            if k < re.shape[0]:
                counts[k] = core(re[k], im[k], escape2, escape2, max_iter, escape2)[0]
    else:
        def kernel(re, im, max_iter, escape2, counts):
            k = grid(1)
            if k < re.shape[0]:
                counts[k] = core(re[k], im[k], max_iter, escape2)[0]
    return kernel


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fractal", FRACTALS)
def test_gpu_fma_contraction_leaves_the_iteration_exact(fractal, precision):
    """NVVM contracts multiply-adds into FMAs (a real GPU's default). In these cores the
    only contraction left is xy + xy -> fma(x, y, x*y), which rounds exactly like
    2 * (x*y) (the product's rounding error is below half an ulp of the doubled value);
    Multibrot's products are mul.rn (libdevice), which nothing fuses. So a GPU's counts
    equal the CPU's."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compile_ptx needs the real numba.cuda, not the simulator")
    from numba import cuda, types

    fl = types.float64 if precision == "float64" else types.float32
    suffix = "f64" if precision == "float64" else "f32"
    sig = (fl[::1], fl[::1], types.int64, fl, types.uint32[::1])
    ptx, _ = cuda.compile_ptx(_single_fractal_kernel(fractal, precision), sig, cc=(9, 0))
    products = {}
    for dest, a, b in re.findall(rf"mul(?:\.rn)?\.{suffix}\s+(%\w+), (%\w+), (%\w+);", ptx):
        products[dest] = {a, b}
    fmas = re.findall(rf"fma\.rn\.{suffix}\s+(%\w+), (%\w+), (%\w+), (%\w+);", ptx)
    for _, a, b, c in fmas:
        assert products.get(c) == {a, b}, f"contracted multiply-add fma({a}, {b}, {c})"
    if precision == "float32":
        # The iteration is single precision all the way: no double-precision arithmetic or
        # comparison (colour_tail, past escape, runs in float64, but not in these counts).
        assert re.findall(r"\b(?:add|sub|mul|fma|div|setp)\.[\w.]*f64\b", ptx) == []


@pytest.mark.gpu
@pytest.mark.parametrize("fractal", FRACTALS)
def test_gpu_counts_agree_with_the_cpu(fractal):
    from fractal_app import render
    from fractal_app.scene import parse_scene

    if render._cuda_unavailable_reason() is not None:
        pytest.skip(f"no CUDA GPU here: {render._cuda_unavailable_reason()}")
    scene = parse_scene({"fractal": fractal, "resolution": [480, 270], "max_iter": 1000,
                         "output": "counts"})
    cpu = render.render_band(scene, 0, 270, "cpu")
    gpu = render.render_band(scene, 0, 270, "cuda")
    # No contraction changes a rounding (see the PTX test above): every count agrees.
    np.testing.assert_array_equal(gpu, cpu)


# --- the simulator side (run as a script with NUMBA_ENABLE_CUDASIM=1) -------------------------


def _simulator_checks():
    from fractal_app import config

    # Tiny blocks so that even these tiny images span several blocks in x and y.
    config.CUDA_THREADS_PER_BLOCK = (4, 2)
    from numba.cuda import is_available

    from fractal_app import render
    from fractal_app.kernels import cpu
    from fractal_app.kernels import cuda as gpu
    from fractal_app.scene import parse_scene

    assert is_available() and render.resolve_backend("cuda", "docker_cpu") == "cuda"
    checked = 0
    for fractal in FRACTALS:
        for precision in PRECISIONS:
            scene = parse_scene({**REGISTERED[fractal].boundary_view, "fractal": fractal,
                                 "resolution": [11, 5], "max_iter": 60, "precision": precision,
                                 "supersample": 2})
            params = render.escape_params(scene)
            dtype = params.dtype
            re = render.sample_coords(scene, np.arange(11), "re").reshape(-1).astype(dtype)
            im = render.sample_coords(scene, np.arange(5), "im").reshape(-1).astype(dtype)
            results = []
            for backend in (cpu, gpu):
                counts = np.empty((im.size, re.size), np.uint32)
                mag2 = np.empty(counts.shape)
                backend.iterate_grid(params, re, im, counts, mag2)
                results.append((counts, mag2))
            (c_cpu, m_cpu), (c_gpu, m_gpu) = results
            assert len(np.unique(c_cpu)) > 3, (fractal, "view too flat to tell anything")
            assert (c_cpu == c_gpu).all() and (m_cpu == m_gpu).all(), (fractal, precision)
            pts_re = np.ascontiguousarray(np.repeat(re[:7], 2))
            pts_im = np.ascontiguousarray(np.tile(im[:7], 2))
            point_results = []
            for backend in (cpu, gpu):
                counts = np.empty(14, np.uint32)
                mag2 = np.empty(14)
                backend.iterate_points(params, pts_re, pts_im, counts, mag2)
                point_results.append((counts, mag2))
            assert (point_results[0][0] == point_results[1][0]).all(), (fractal, precision)
            assert (point_results[0][1] == point_results[1][1]).all(), (fractal, precision)
            band_cuda = render.render_band(scene, 0, 5, "cuda")
            assert (band_cuda == render.render_band(scene, 0, 5, "cpu")).all()
            rows, cols = np.array([0, 4, 2]), np.array([10, 0, 5])
            assert (render.render_pixels(scene, rows, cols, "cuda") == band_cuda[rows, cols]).all()
            checked += 1
    print(f"checked={checked}")


if __name__ == "__main__":
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"
    _simulator_checks()
