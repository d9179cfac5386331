"""Shared test set-up: one Numba cache for the test process and every server it starts.

The requestor and provider processes the tests start compile the same kernels; pointing them
all at one on-disk cache means each kernel compiles once per machine, not once per process.
An explicit NUMBA_CACHE_DIR in the environment wins.
"""

import os
import sys
import tempfile
from pathlib import Path

# Before anything imports numba (conftest is imported before the test modules).
os.environ.setdefault(
    "NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"fractal-app-tests-numba-{os.getuid()}")
)
# The helpers next to the tests import as plain modules.
sys.path.insert(0, str(Path(__file__).parent))
