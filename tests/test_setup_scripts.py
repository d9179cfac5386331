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


STUB_PYTHON = """#!/usr/bin/env bash
# A stand-in Python {version}: answers setup.sh's version checks, makes a .venv of itself,
# and logs pip's commands instead of installing.
case "$*" in
  *sys.exit*) exit {unsupported} ;;
  *print*) echo {version} ;;
  "-m venv .venv") mkdir -p .venv/bin && cp "$0" .venv/bin/python ;;
  "-m pip"*) echo "$*" >> "$(dirname "$0")/../../pip.log" ;;
esac
"""


def _stub(path, version, supported=True):
    path.write_text(STUB_PYTHON.format(version=version, unsupported=0 if supported else 1))
    path.chmod(0o755)
    return path


def _project(tmp_path):
    (tmp_path / "scripts").mkdir()
    setup = tmp_path / "scripts" / "setup.sh"
    setup.write_text((ROOT / "scripts" / "setup.sh").read_text())
    setup.chmod(0o755)
    return setup


def test_setup_remakes_a_venv_of_the_wrong_python_and_installs_only_what_rendering_needs(
    tmp_path,
):
    setup = _project(tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    _stub(tmp_path / ".venv" / "bin" / "python", "3.9", supported=False)  # a stale .venv
    python = _stub(tmp_path / "python3.12", "3.12")
    done = subprocess.run([str(setup), "--render"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(python)})
    assert done.returncode == 0, done.stderr
    assert ".venv is 3.9, not Python 3.12: making it again" in done.stderr
    venv_python = (tmp_path / ".venv" / "bin" / "python").read_text()
    assert "Python 3.12" in venv_python
    installs = (tmp_path / "pip.log").read_text().splitlines()
    assert installs[-1].endswith("-c constraints.txt -e .")  # no [dev]: no tests, no CUDA

    done = subprocess.run([str(setup)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})  # no PYTHON: the good .venv stays
    assert done.returncode == 0, done.stderr
    assert "making it again" not in done.stderr
    assert (tmp_path / "pip.log").read_text().splitlines()[-1].endswith("-e .[dev]")


def test_setup_remakes_a_venv_that_does_not_run(tmp_path):
    setup = _project(tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to("/no/such/python3.11")
    python = _stub(tmp_path / "python3.13", "3.13")
    done = subprocess.run([str(setup), "--render"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(python)})
    assert done.returncode == 0, done.stderr
    assert ".venv is broken, not Python 3.13: making it again" in done.stderr
