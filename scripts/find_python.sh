#!/usr/bin/env bash
# Print a command that runs the Python named ($1: python3.12, a path, ...), or fail quietly.
#
# The name itself when it runs. Otherwise, for a pythonX.Y name, the newest X.Y that pyenv has
# installed but not enabled: its shim is on PATH and answers "command not found", while the
# interpreter itself lies under $(pyenv root)/versions/X.Y.Z/bin and works.
#
#   scripts/find_python.sh python3.13    ->  /root/.pyenv/versions/3.13.0/bin/python3.13
set -uo pipefail
name=${1:?usage: $0 PYTHON}

runs() { "$1" -c pass >/dev/null 2>&1; }

if runs "$name"; then
  echo "$name"
  exit 0
fi
[[ "$name" =~ ^python([0-9]+\.[0-9]+)$ ]] || exit 1
minor=${BASH_REMATCH[1]}
root=${PYENV_ROOT:-}
if [[ -z "$root" ]] && command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null)
fi
[[ -n "$root" && -d "$root/versions" ]] || exit 1
# Final releases only (3.13.0, not 3.13.0rc1 or 3.13t), newest patch first.
newest_first=$(find "$root/versions" -mindepth 1 -maxdepth 1 -printf '%f\n' \
  | grep -E "^${minor//./\\.}\.[0-9]+$" | sort -t. -k3,3nr)
for version in $newest_first; do
  candidate="$root/versions/$version/bin/$name"
  if runs "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done
exit 1
