"""Shared test set-up: one Numba cache for the test process and every server it starts.

The requestor and provider processes the tests start compile the same kernels; pointing them
all at one on-disk cache means each kernel compiles once per machine, not once per process.
An explicit NUMBA_CACHE_DIR in the environment wins.
"""

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports numba (conftest is imported before the test modules); the server
# processes inherit it.
os.environ.setdefault(
    "NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"fractal-app-tests-numba-{os.getuid()}")
)


@pytest.fixture
def requestor(tmp_path):
    """A requestor process on 127.0.0.1, plaintext, with its own work dir; stopped after."""
    from grpc_helpers import start_server

    server = start_server("requestor", tmp_path / "requestor")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_requestor(tmp_path_factory):
    """One requestor for a whole module of tests that use distinct task ids."""
    from grpc_helpers import start_server

    server = start_server("requestor", tmp_path_factory.mktemp("shared") / "requestor")
    yield server
    server.stop()
