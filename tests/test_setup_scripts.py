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
    for name in ("setup.sh", "find_python.sh"):
        script = tmp_path / "scripts" / name
        script.write_text((ROOT / "scripts" / name).read_text())
        script.chmod(0o755)
    return tmp_path / "scripts" / "setup.sh"


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


PYENV_SHIM = """#!/usr/bin/env bash
# pyenv's shim of a Python installed but not enabled (pyenv global names only 3.11)
echo "pyenv: $(basename "$0"): command not found" >&2
exit 127
"""


def test_setup_takes_the_newest_pyenv_python_installed_but_not_enabled(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    setup = _project(project)
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3.13").write_text(PYENV_SHIM)
    (shims / "python3.13").chmod(0o755)
    versions = tmp_path / "pyenv" / "versions"
    for version in ("3.13.1", "3.13.10", "3.13.9", "3.12.7", "3.13.11rc1"):
        (versions / version / "bin").mkdir(parents=True)
        stub = _stub(versions / version / "bin" / "python3.13", "3.13")
        stub.write_text(stub.read_text() + f"# pyenv's {version}\n")
    env = {"PATH": f"{shims}:/usr/bin:/bin", "PYENV_ROOT": str(tmp_path / "pyenv")}
    done = subprocess.run([str(setup), "--render"], capture_output=True, text=True, timeout=60,
                          env={**env, "PYTHON": "python3.13"})
    assert done.returncode == 0, done.stderr
    # 3.13.10 is newer than 3.13.9 (not a string sort), and a release candidate is no release
    assert "# pyenv's 3.13.10\n" in (project / ".venv" / "bin" / "python").read_text()

    done = subprocess.run([str(setup), "--render"], capture_output=True, text=True, timeout=60,
                          env={**env, "PYTHON": "python3.14"})  # neither on PATH nor in pyenv
    assert done.returncode == 1
    assert "no Python 3.11-3.14 found (python3.14)" in done.stderr
