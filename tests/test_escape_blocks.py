"""The generated block kernels: committed source up to date, and really vectorised."""

import subprocess
import sys
from pathlib import Path

import pytest

from fractal_app.kernels._generated import generate


@pytest.mark.parametrize("key", list(generate.BLOCK_KERNELS), ids="-".join)
def test_committed_block_kernels_are_up_to_date(key):
    fractal, precision = key
    path = Path(generate.__file__).parent / f"{generate.module_name(fractal, precision)}.py"
    expected = generate.kernel_source(fractal, precision, generate.BLOCK_KERNELS[key])
    assert path.read_text() == expected, (
        f"{path.name} is stale: run python -m fractal_app.kernels._generated.generate"
    )


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
from fractal_app.kernels._generated import block_mandelbrot_f64 as block

re = np.linspace(-2.0, 0.5, 40)
im = np.linspace(-1.0, 1.0, 3)
counts = np.empty((3, 40), np.uint32)
mag2 = np.empty((3, 40))
cpu.iterate_grid(0, re, im, 0.0, 0.0, 2, 50, 4.0, counts, mag2)
assert config.SLP_VECTORIZE == 0, "SLP must be switched off again after the compile"
(asm,) = block.iterate_grid.inspect_asm().values()
print(asm.count("%zmm"), asm.count("%ymm"))
"""


def test_mandelbrot_block_kernel_compiles_to_vector_instructions(tmp_path):
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
from fractal_app.kernels import cpu

kernel = cpu.block_module(0, np.float64).iterate_grid
re, im = np.linspace(-2.0, 0.5, 40), np.linspace(-1.0, 1.0, 3)
counts, mag2, no_z = np.empty((3, 40), np.uint32), np.empty((3, 40)), np.empty((3, 0))
if sys.argv[1] == "careless":
    # straight to the kernel: compiled with Numba's default, SLP off
    kernel(re, im, 0.0, 0.0, 2, 20, 4.0, counts, mag2, False, no_z, no_z)
else:
    cpu.iterate_grid(0, re, im, 0.0, 0.0, 2, 20, 4.0, counts, mag2)
print(sum(kernel.stats.cache_hits.values()), sum(kernel.stats.cache_misses.values()))
"""


def test_a_copy_compiled_without_the_vectorizer_is_never_loaded_in_its_place(tmp_path):
    """The on-disk cache of the block kernels keys on the SLP setting: a process that
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
