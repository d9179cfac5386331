"""Shared test set-up: the default run without the slow tests, one Numba cache for the test
process and every server it starts, requestor fixtures.

The requestor and provider processes the tests start compile the same kernels; pointing them
all at one on-disk cache means each kernel compiles once per machine, not once per process.
An explicit NUMBA_CACHE_DIR in the environment wins.
"""

import os
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# Before anything imports numba (conftest is imported before the test modules); the server
# processes inherit it.
os.environ.setdefault(
    "NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"fractal-app-tests-numba-{os.getuid()}")
)


def pytest_collection_modifyitems(config, items):
    """The default run leaves out the tests marked slow; any -m decides instead (CI runs
    `pytest -m slow` after the default run, `-m "slow or not slow"` runs everything).

    Here rather than `-m "not slow"` in pyproject's addopts, which would also deselect the
    benchmarks marked slow that `pytest benchmarks/bench_lifecycle.py` is asked to run.
    """
    if config.option.markexpr:
        return

    def slow(item):
        return item.get_closest_marker("slow") is not None and item.path.is_relative_to(TESTS)

    config.hook.pytest_deselected(items=[item for item in items if slow(item)])
    items[:] = [item for item in items if not slow(item)]


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
