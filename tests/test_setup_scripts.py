"""Set-up promises: every Python the pinned dependencies support, and a render set-up without
test tools or CUDA wheels."""

import subprocess
import tomllib
from importlib.metadata import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_python_the_pinned_numba_and_numpy_support_is_allowed():
    ours = SpecifierSet(PYPROJECT["project"]["requires-python"])
    theirs = [SpecifierSet(metadata(name)["Requires-Python"]) for name in ("numba", "numpy")]
    for minor in range(8, 16):
        version = f"3.{minor}"
        # numba 0.68 runs up to 3.14 (wheels from 3.10 to 3.14)
        supported = all(version in s for s in theirs) and minor <= 14
        assert (version in ours) == supported, version


def test_rendering_needs_no_test_tools_and_no_cuda_wheels():
    names = [d.split("==")[0].lower() for d in PYPROJECT["project"]["dependencies"]]
    for heavy in ("numba-cuda", "nvidia-cuda-nvrtc", "pytest", "cryptography", "grpcio-tools"):
        assert heavy not in names
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert '--render) extras="" ;;' in script


def test_setup_refuses_an_unknown_option_before_touching_anything():
    done = subprocess.run([str(ROOT / "scripts" / "setup.sh"), "--bogus"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "usage:" in done.stderr
