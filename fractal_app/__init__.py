"""fractal-app: a Golem Task API application that renders fractals across many machines."""

import os

__version__ = "0.1.0"

# The requestor verifies several bands at once, each on its own thread, and each check runs
# parallel Numba kernels. Numba's fallback "workqueue" threading layer aborts the process
# when two threads launch parallel kernels at the same time, so ask for a thread-safe layer
# (OpenMP or TBB) before anything imports Numba: a missing libgomp then fails with Numba's
# clear "no threading layer" error instead of killing a requestor mid-task.
os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")
