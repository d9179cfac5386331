"""The Golem app definition: the JSON object that registers fractal-app with a Golem node.

``fractal-app app-definition`` prints it; a node operator saves it in the node's apps folder.
Fields as PROTOCOL.md ("How a Golem node runs the app") lists them.
"""

from __future__ import annotations

from fractal_app import __version__, images
from fractal_app.fractals import FRACTALS
from fractal_app.protocol.constants import DOCKER_CPU_ENV_ID

APP_NAME = "fractal-app"

# RunBenchmark reports millions of escape-time iterations per second (render.run_benchmark),
# in float64, on the CPU or a GPU. The node caps providers' scores at this value, so it must
# sit above any honest machine yet stay finite (an unbounded score lets a lying provider
# claim any speed). Measured: about 670 on this shared 2-core Zen 5 (250 inside a container
# under heavy load); the fastest exact float64 CPU kernels reach about 7,500 per core
# (NUMBA-FACTS.md), so a 192-core server stays under 1.5e6; the fastest float64 GPU today
# (H100/H200, ~67 TFLOP/s float64 at ~8 flops an iteration) peaks near 8e6. 1e7 leaves
# headroom for both without being open-ended.
MAX_BENCHMARK_SCORE = 1.0e7


def _titles(family: str) -> str:
    """The registered fractals of one family, as prose names them."""
    return ", ".join(f.title for f in FRACTALS.values() if f.family == family)


DESCRIPTION = (
    f"Renders 2D escape-time fractals ({_titles('escape_time')}) and 3D ray-marched fractals "
    f"({_titles('raymarch')}) across many providers: the requestor splits the image into row "
    "bands, providers render bands with Numba kernels on CPU or CUDA, and the requestor "
    "verifies each band by recomputing random pixels before merging them."
)


def app_definition() -> dict:
    """The app definition as a JSON-ready dict; the requestor runs in the ``docker_cpu``
    environment from the same image that CreateTask names for CPU providers."""
    return {
        "name": APP_NAME,
        "requestor_env": DOCKER_CPU_ENV_ID,
        "requestor_prereq": images.image_for_env(DOCKER_CPU_ENV_ID),
        "max_benchmark_score": MAX_BENCHMARK_SCORE,
        "version": __version__,
        "description": DESCRIPTION,
        "author": "fractal-app developers",
        "license": "MIT",
        "market_strategy": "brass",
    }
