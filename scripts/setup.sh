#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv with the pinned versions
# the test suite was run with. Safe to run again; needs Python 3.11, 3.12, 3.13 or 3.14 with
# venv and pip (PYTHON=... picks one).
#
#   ./scripts/setup.sh            everything the tests need (CUDA compiler wheels included)
#   ./scripts/setup.sh --render   only what rendering needs (no test tools, no CUDA wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="[dev]"
case "${1:-}" in
  --render) extras="" ;;
  "") ;;
  *) echo "usage: $0 [--render]" >&2; exit 2 ;;
esac

# The Pythons the pinned dependencies support (numpy 2.4 needs >= 3.11; numba 0.68 <= 3.14).
supported() { "$1" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 14)))' 2>/dev/null; }

# A pyenv Python installed but not enabled counts: its shim does not run, find_python.sh
# finds the interpreter itself.
python=${PYTHON:-}
if [[ -n "$python" ]]; then
  python=$(scripts/find_python.sh "$python") || python=$PYTHON
fi
# Without PYTHON, a working .venv of a supported Python is kept as it is.
if [[ -z "$python" ]] && supported .venv/bin/python; then
  python=.venv/bin/python
fi
if [[ -z "$python" ]]; then
  for candidate in python3.11 python3.12 python3.13 python3.14 python3; do
    if found=$(scripts/find_python.sh "$candidate") && supported "$found"; then
      python=$found
      break
    fi
  done
fi
if [[ -z "$python" ]] || ! supported "$python"; then
  echo "setup.sh: no Python 3.11-3.14 found (${python:-none tried works}); install one, or set PYTHON" >&2
  exit 1
fi

# A .venv that does not run, or runs another Python than the one chosen (a stale or
# wrong-version environment), is made again rather than patched.
want=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [[ -e .venv && "$have" != "$want" ]]; then
  echo "setup.sh: .venv is ${have:-broken}, not Python $want: making it again" >&2
  rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
# constraints.txt pins every transitive dependency, so a fresh machine gets what we tested.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".${extras}"
