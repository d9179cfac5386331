"""The deep path's CUDA kernels without a GPU: the same perturbation core as the CPU, run in
Numba's CUDA simulator on a tiny deep view (bit for bit against the CPU). (Compiled to real
PTX in test_ptx.py.)

The simulator must be chosen before numba is imported, so that check runs in a child
process that executes this file as a script (see the bottom).
"""

import os
import subprocess
import sys

import numpy as np


def test_deep_cuda_kernels_match_the_cpu_bit_for_bit_in_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[-1] == "checked=3"


def _simulator_checks():
    """A tiny 1e-300 view near a minibrot: the simulated CUDA kernels equal the CPU's, and so
    does the auto-coloured band rendered on them."""
    import gmpy2

    from fractal_app.deep import cpu, cuda
    from fractal_app.deep.locate import near_i
    from fractal_app.deep.render import reference_for
    from fractal_app.scene import parse_scene

    bits = 1600
    c, _ = near_i(401, bits)
    with gmpy2.context(gmpy2.get_context(), precision=bits):
        centre = [format(c.real, ".330e"), format(c.imag, ".330e")]
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [5, 4], "center": centre,
                         "width": "1e-300", "max_iter": 5000, "output": "counts"})
    geo, reference = reference_for(scene)
    cols = (np.arange(5) - 2.0) * geo.pixel_mantissa
    rows = (1.5 - np.arange(4)) * geo.pixel_mantissa
    checked = 0
    want = np.empty((4, 5), np.uint32), np.empty((4, 5))
    got = np.empty((4, 5), np.uint32), np.empty((4, 5))
    cpu.perturb_grid(cols, rows, geo.pixel_exp, *reference.arrays(), 5000, *want)
    cuda.perturb_grid(cols, rows, geo.pixel_exp, *reference.arrays(), 5000, *got)
    assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert want[0].min() > 401
    checked += 1
    re = np.repeat(cols, 4)
    im = np.tile(rows, 5)
    want_p = np.empty(20, np.uint32), np.empty(20)
    got_p = np.empty(20, np.uint32), np.empty(20)
    cpu.perturb_points(re, im, geo.pixel_exp, *reference.arrays(), 5000, *want_p)
    cuda.perturb_points(re, im, geo.pixel_exp, *reference.arrays(), 5000, *got_p)
    assert np.array_equal(want_p[0], got_p[0]) and np.array_equal(want_p[1], got_p[1])
    checked += 1
    # Coloured on the auto scale (the deep default): the same knots, the same image.
    from fractal_app import color_scale, render

    coloured = color_scale.resolve(scene.model_copy(update={"output": "image"}))
    assert coloured.color_scale == "auto" and coloured.color_knots
    image = render.render_band(coloured, 0, 4, "cuda")
    assert np.array_equal(image, render.render_band(coloured, 0, 4, "cpu"))
    checked += 1
    print(f"checked={checked}")


if __name__ == "__main__":
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"
    _simulator_checks()
