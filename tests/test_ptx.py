"""Every CUDA kernel the app launches compiles to real PTX for sm_75 and sm_90 without a GPU,
under the argument types its launcher passes (fractal_app.kernels.ptx, the list the GPU image
checks too), and ptxas accepts the PTX where the CUDA toolkit is installed."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PTXAS = shutil.which("ptxas") or (
    "/usr/local/cuda/bin/ptxas" if Path("/usr/local/cuda/bin/ptxas").exists() else None
)
CCS = [(7, 5), (9, 0)]

pytestmark = pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
    reason="compile_ptx needs the real numba.cuda, not the simulator",
)


def _kernels(family):
    from fractal_app.kernels import ptx

    return [k for k in ptx.kernels() if k.name.startswith(f"{family}-")]


def _compile(kernel, cc):
    from fractal_app.kernels import ptx

    try:
        return ptx.compile_ptx(kernel, cc)
    except Exception as exc:  # a missing libnvrtc/NVVM is an environment problem: say so
        if "nvrtc" in str(exc).lower() or "nvvm" in str(exc).lower():
            pytest.skip(f"NVVM/NVRTC not installed here ({exc})")
        raise


def _assemble(code, cc, tmp_path, name):
    if PTXAS is None:
        return
    path = tmp_path / f"{name}.ptx"
    path.write_text(code)
    result = subprocess.run([PTXAS, f"-arch=sm_{cc[0]}{cc[1]}", str(path), "-o", os.devnull],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{name}: {result.stderr}"


def test_the_list_holds_every_kernel_the_app_launches():
    from fractal_app.kernels import ptx

    names = {k.name for k in ptx.kernels()}
    for precision in ("float64", "float32"):
        assert {f"2d-grid-{precision}", f"2d-points-{precision}", f"3d-band-{precision}",
                f"3d-pixels-{precision}"} <= names
    assert {"deep-grid-float64", "deep-points-float64"} <= names


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("family", ["2d", "3d", "deep"])
def test_kernels_compile_to_ptx(family, cc, tmp_path):
    kernels = _kernels(family)
    assert kernels
    for kernel in kernels:
        code = _compile(kernel, cc)
        assert f".target sm_{cc[0]}{cc[1]}" in code, kernel.name
        assert ".entry" in code, kernel.name
        if family == "3d":
            # forceinline: every scalar function inlined, no calls but libdevice's helpers
            functions = set(re.findall(r"\.func\s+(?:\([^)]*\)\s*)?(\w+)", code))
            assert all(f.startswith("__internal") for f in functions), functions
        _assemble(code, cc, tmp_path, kernel.name)

