#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv with the pinned versions
# the test suite was run with. Safe to run again; needs only python3.11 with venv and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
# constraints.txt pins every transitive dependency, so a fresh machine gets what we tested.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
