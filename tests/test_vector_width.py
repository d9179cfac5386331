"""Each CPU level the docker_cpu image bakes compiles the lane kernels to vector code of its
width: packed multiplies on zmm registers (AVX-512), ymm (AVX2) or xmm (SSE2).

The image once baked its AVX2 level with an empty LLVM feature list, which switched the vector
units off: the kernels ran at a quarter of the host build's speed and no test noticed. This
one compiles, for every level, the Mandelbrot lane code of a row (lanes.py's template, where the
vector code lives) in both precisions, in a fresh process pinned to that level the way the image
pins it, and reads the machine code. The levels compile side by side.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fractal_app import cpu_levels

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile.cpu"

pytestmark = pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the CPU levels are x86-64 levels"
)

# Compile the Mandelbrot lane code of a grid row with SLP on, as kernels/cpu.py compiles its
# kernels, and count the packed multiplies per register width in its machine code.
DISASSEMBLE = r"""
import json, re
import numba
import numpy as np
from numba.core import config
from fractal_app.kernels import lanes

found = {}
for precision, name in (("f64", "pd"), ("f32", "ps")):
    row = numba.njit(lanes.lane_function("mandelbrot", precision, resume=False))
    dtype = np.float32 if precision == "f32" else np.float64
    f = np.zeros(0, dtype)
    params = lanes.escape.EscapeParams(0, dtype(0), dtype(0), 2, 10, dtype(4))
    args = (lanes.lane_code(0), f, dtype(0), params, np.zeros(0, np.uint32), np.zeros(0), True,
            f, f)
    sig = tuple(numba.typeof(a) for a in args)
    config.SLP_VECTORIZE = 1
    row.compile(sig)
    asm = row.inspect_asm(sig)
    found[name] = {reg: len(re.findall(rf"\bv?mul{name}\s[^\n]*%{reg}", asm))
                   for reg in ("zmm", "ymm", "xmm")}
print(json.dumps(found))
"""


def baked_levels() -> list[str]:
    """The levels Dockerfile.cpu compiles its kernel cache for (its CPU_LEVELS default)."""
    match = re.search(r'^ARG CPU_LEVELS="([^"]+)"', DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "Dockerfile.cpu names its CPU levels in ARG CPU_LEVELS"
    return match.group(1).split()


def test_the_image_bakes_avx512_avx2_and_a_level_every_x86_64_host_runs():
    levels = baked_levels()
    assert levels == sorted(levels, key=list(cpu_levels.LEVELS).index), "best first"
    assert {"x86-64-v4", "x86-64-v3"} <= set(levels)
    assert cpu_levels.LEVELS[levels[-1]].cpuinfo_flags == frozenset()


@pytest.mark.slow  # compiles every level afresh: about 70 CPU-s
def test_each_baked_level_s_block_kernels_use_its_vector_width():
    levels = [cpu_levels.LEVELS[name] for name in baked_levels()]
    runs = []
    with tempfile.TemporaryDirectory(prefix="fractal-app-vector-width-") as cache:
        for level in levels:
            env = {**os.environ, "NUMBA_CACHE_DIR": os.path.join(cache, level.name)}
            env.pop("NUMBA_CACHE_LOCATOR_CLASSES", None)
            cpu_levels.pin(level.name, env)
            runs.append(subprocess.Popen([sys.executable, "-c", DISASSEMBLE], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
        outputs = [run.communicate(timeout=900) for run in runs]
    for level, run, (out, err) in zip(levels, runs, outputs, strict=True):
        assert run.returncode == 0, f"{level.name}: {err[-3000:]}"
        found = json.loads(out.strip().splitlines()[-1])
        for precision, multiplies in found.items():
            wider = {"xmm": ("ymm", "zmm"), "ymm": ("zmm",), "zmm": ()}[level.vector_register]
            what = f"{level.name} {precision}: packed multiplies by register {multiplies}"
            # Most of the arithmetic at the level's width, none wider than it can run.
            assert multiplies[level.vector_register] >= 8, what
            assert all(multiplies[reg] == 0 for reg in wider), what
            if level.vector_register != "xmm":
                assert multiplies[level.vector_register] > multiplies["xmm"], what


# The lane counts a process pinned to a level writes into its lane source.
LANE_COUNTS = r"""
import json
from fractal_app.kernels import lanes
print(json.dumps({"bits": lanes.vector_bits(),
                  **{p: lanes.lane_count(p) for p in ("f64", "f32")},
                  "source_f64": lanes.lane_source("mandelbrot", "f64", False).count("zr_end[")}))
"""


@pytest.mark.parametrize(("level", "bits", "f64", "f32"), [
    ("x86-64-v4", 512, 32, 64),
    ("x86-64-v3", 256, 16, 16),
    ("x86-64", 128, 8, 8),
])
def test_each_level_gets_the_lane_counts_of_its_registers(level, bits, f64, f32):
    """32/64 lanes fill 4 zmm vectors but spill 16 ymm or xmm registers on every iteration
    (AVX2 ran 1.4-1.7x faster with 16 lanes, plain x86-64 1.2-2x with 8): each baked level
    writes its lane code for its own registers."""
    env = {**os.environ}
    cpu_levels.pin(level, env)
    done = subprocess.run([sys.executable, "-c", LANE_COUNTS], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert (found["bits"], found["f64"], found["f32"]) == (bits, f64, f32)
    assert found["source_f64"] == f64  # each lane stores its own z
