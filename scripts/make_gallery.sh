#!/usr/bin/env bash
# Re-render the README's pictures (docs/img/*.png) from examples/*.json at a small size,
# through the same `fractal-app render` lifecycle a user runs.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for scene in examples/*.json; do
  name=$(basename "$scene" .json)
  .venv/bin/python - "$scene" "$tmp/$name.json" <<'PY'
import json, sys
scene = json.load(open(sys.argv[1]))
three_d = scene["fractal"] in ("mandelbulb", "mandelbox")
scene["resolution"] = [640, 480] if three_d else [640, 360]
scene["supersample"] = max(2, scene.get("supersample", 1))
json.dump(scene, open(sys.argv[2], "w"))
PY
  .venv/bin/fractal-app render "$tmp/$name.json" -o "docs/img/$name.png" --quiet
  echo "docs/img/$name.png"
done
