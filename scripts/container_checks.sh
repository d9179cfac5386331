#!/usr/bin/env bash
# Build the docker_cpu and docker_gpu images and prove they run the way a Golem node runs them.
#
#   scripts/container_checks.sh
#
# 1. hadolint on both Dockerfiles;
# 2. builds both images with container.sh (podman; this machine has no Docker engine), one
#    after the other (the first build installs podman and makes the base images);
# 3. reports each image's size;
# 4. runs tests/test_container.py (marked `container`) against the fresh images: health within
#    15 s, a whole task in containers equal pixel for pixel to a render outside them (band files
#    re-encoded with every PNG row filter), the first Compute in a fresh container compiling
#    nothing, every warm-up step (each service path of each fractal, precision and output) on
#    the read-only image as a foreign uid compiling nothing, mutual TLS, the GPU image's kernels
#    compiling to PTX, and the GPU image saying clearly that there is no GPU.
#
# The CPU image's build compiles every kernel once per baked CPU level (Dockerfile.cpu's
# CPU_LEVELS): on a quiet 2-core machine several minutes, with a progress bar per level.
#
# Environment: FRACTAL_APP_CONTAINER_SH (default shared/tools/container.sh in the checkout or
# beside it), PYTHON (default .venv/bin/python), FRACTAL_APP_TEST_TAG (default "ci").
# Needs root (podman as root, and the tests hand work dirs to the containers' uid).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [[ -z ${FRACTAL_APP_CONTAINER_SH:-} ]]; then
  for candidate in "$root/shared/tools/container.sh" "$(cd "$root/.." && pwd)/shared/tools/container.sh"; do
    [[ -f $candidate ]] && { FRACTAL_APP_CONTAINER_SH=$candidate; break; }
  done
fi
container_sh=${FRACTAL_APP_CONTAINER_SH:-}
python=${PYTHON:-$root/.venv/bin/python}
tag=${FRACTAL_APP_TEST_TAG:-ci}
cpu_image=localhost/fractal-app-cpu:$tag
gpu_image=localhost/fractal-app-gpu:$tag
logs=$(mktemp -d /tmp/fractal-app-container-checks.XXXXXX)
started=$SECONDS

say() { printf '[container_checks %4ds] %s\n' "$((SECONDS - started))" "$*"; }
fail_with_log() { say "FAILED: $1 (last lines of $2)"; tail -n 40 "$2"; exit 1; }

[[ -n $container_sh && -f $container_sh ]] ||
  { say "no shared/tools/container.sh in or beside the checkout: set FRACTAL_APP_CONTAINER_SH"; exit 1; }

say "hadolint Dockerfile.cpu Dockerfile.gpu"
"$(dirname "$python")/hadolint" Dockerfile.cpu Dockerfile.gpu

# One build after the other: container.sh installs podman and makes its base images on first
# use, and two builds started together on a fresh machine race for apt's lock (seen: the GPU
# build failed "Could not get lock /var/lib/apt/lists/lock" while the CPU build installed).
say "building $cpu_image (log $logs/build-cpu.log)"
cpu_began=$SECONDS
bash "$container_sh" build Dockerfile.cpu "$cpu_image" . >"$logs/build-cpu.log" 2>&1 ||
  fail_with_log "build of $cpu_image" "$logs/build-cpu.log"
say "built $cpu_image in $((SECONDS - cpu_began)) s"
say "building $gpu_image (log $logs/build-gpu.log)"
gpu_began=$SECONDS
bash "$container_sh" build Dockerfile.gpu "$gpu_image" . >"$logs/build-gpu.log" 2>&1 ||
  fail_with_log "build of $gpu_image" "$logs/build-gpu.log"
say "built $gpu_image in $((SECONDS - gpu_began)) s"

for image in "$cpu_image" "$gpu_image"; do
  bytes=$(bash "$container_sh" podman image inspect --format '{{.Size}}' "$image")
  say "size of $image: $((bytes / 1000000)) MB"
done

say "tests/test_container.py"
tests_began=$SECONDS
FRACTAL_APP_CPU_TEST_IMAGE=$cpu_image FRACTAL_APP_GPU_TEST_IMAGE=$gpu_image \
  FRACTAL_APP_CONTAINER_SH=$container_sh PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} \
  "$python" -m pytest -p no:cacheprovider -m container -s -v tests/test_container.py
say "container tests took $((SECONDS - tests_began)) s; all container checks $((SECONDS - started)) s"
