"""Tunables in one place, so tests and benchmarks can patch them."""

import os

# CUDA launch geometry: threads per block along x and y. Tests shrink these so that the
# multi-block paths run on tiny images in the simulator.
CUDA_THREADS_PER_BLOCK = (16, 8)

# The Numba on-disk cache. Containers run as an arbitrary uid, so the image points this at a
# folder built (and made readable) at image build time.
NUMBA_CACHE_DIR = os.environ.get("NUMBA_CACHE_DIR")

# Seconds of work RunBenchmark aims for (the issue asks for 1-5 s).
BENCHMARK_TARGET_SECONDS = 2.0

# Rough seconds one cold compile of a CPU kernel takes, by kind (a 2-core AMD EPYC shared
# with other work): what a cold first render tells the user it is about to wait. The lane
# kernels are the SIMD ones of kernels/cpu.py (two per fractal and precision): half of a
# Mandelbrot pair's cold compile, benchmarks/compile_time.py at load average 6 (26.5 CPU-s
# float64, 69.8 float32; Julia's pair costs more, see benchmarks/README.md).
COMPILE_SECONDS = {
    "lanes_f64": 13.0,
    "lanes_f32": 35.0,
    "scalar": 3.0,
    "colour": 6.0,
    "raymarch": 4.0,
    # the deep path's one kernel (deep/cpu.py): 45.5-48.1 CPU-s cold on a quiet machine
    "deep": 46.0,
}
