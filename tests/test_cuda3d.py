"""The 3D CUDA kernels without a GPU, in Numba's simulator (compiled to real PTX in test_ptx.py).

The simulator runs the kernels' Python on the CPU (no FMA contraction), so on float64 it must
match the CPU kernels bit for bit. It is slow (~0.3 M iterations/s): 8x6 images, few steps.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np

from fractal_app import render3d
from fractal_app.scene import parse_scene

SIM_SCENE = {"resolution": [8, 6], "max_steps": 40, "iterations": 6}
CASES = [
    ("mandelbulb", "float64", {}),
    ("mandelbox", "float64", {"camera": {"position": [9.0, 8.0, -16.0]}}),
    ("mandelbulb", "float32", {"supersample": 2}),
]
# 10 pixels: two blocks of the 8-thread pixel-list grid
PIXELS = (np.array([0, 5, 2, 3, 3, 1, 4, 5, 0, 2]), np.array([7, 0, 3, 4, 5, 6, 1, 7, 0, 2]))

# Runs with NUMBA_ENABLE_CUDASIM=1, set before numba is imported. Threads per block shrink
# to 4x2 (and 8 for the pixel list) so that several blocks run on an 8x6 image.
SIMULATOR_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from fractal_app import config, render3d
    from fractal_app.scene import parse_scene

    config.CUDA_THREADS_PER_BLOCK = (4, 2)
    cases, rows, cols, out = json.loads(sys.argv[1])
    results = {}
    for n, params in enumerate(cases):
        scene = parse_scene(params)
        results[f"band{n}"] = render3d.render_band_3d(scene, 1, 6, backend="cuda")
        results[f"pixels{n}"] = render3d.render_pixels_3d(
            scene, np.array(rows), np.array(cols), backend="cuda"
        )
    np.savez(out, **results)
    """
)


def _params(fractal, precision, extra):
    return {"fractal": fractal, "precision": precision, **SIM_SCENE, **extra}


def test_simulated_kernels_match_the_cpu(tmp_path):
    import json

    out = tmp_path / "sim.npz"
    cases = [_params(*case) for case in CASES]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    arg = json.dumps([cases, PIXELS[0].tolist(), PIXELS[1].tolist(), str(out)])
    subprocess.run([sys.executable, "-c", SIMULATOR_SCRIPT, arg], env=env, check=True, timeout=300)
    sim = np.load(out)
    for n, (fractal, precision, _) in enumerate(CASES):
        scene = parse_scene(cases[n])
        band = render3d.render_band_3d(scene, 1, 6)
        pixels = render3d.render_pixels_3d(scene, *PIXELS)
        assert sim[f"band{n}"].shape == band.shape
        if precision == "float64":
            np.testing.assert_array_equal(sim[f"band{n}"], band, err_msg=fractal)
            np.testing.assert_array_equal(sim[f"pixels{n}"], pixels, err_msg=fractal)
        else:
            # The simulator evaluates math.sqrt/log in float64 and rounds the result to
            # float32; the CPU calls the float32 libm functions. Nearly always the same bits.
            diff = np.abs(sim[f"band{n}"].astype(int) - band.astype(int)).max(axis=-1)
            assert (diff <= 2).mean() >= 0.9
            assert (diff == 0).mean() >= 0.5


