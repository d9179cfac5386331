"""Benchmark fixtures: a JIT-warmed benchmark, and a summary printed at the end of the run.

``warmed_benchmark`` calls the timed function once before pytest-benchmark times it, so
Numba's compile (or cache load) never lands in a measurement (datashader's benchmarks do
the same). ``summary`` collects one-line results (speed-ups, percentages of a reference)
that are printed together after the run, so the figures an issue asks for appear in one
place without ``-s``. ``tmp_path`` is replaced by a private temporary folder (see its
docstring).
"""

import os
import platform
import tempfile
from pathlib import Path

import pytest

_SUMMARY: list[str] = []


class _Warmed:
    """pytest-benchmark's fixture, with a first untimed call of the function."""

    def __init__(self, benchmark):
        self._benchmark = benchmark

    def __call__(self, function, *args, **kwargs):
        function(*args, **kwargs)
        return self._benchmark(function, *args, **kwargs)

    def pedantic(self, function, args=(), kwargs=None, **options):
        function(*args, **(kwargs or {}))
        return self._benchmark.pedantic(function, args=args, kwargs=kwargs, **options)

    def __getattr__(self, name):
        return getattr(self._benchmark, name)


@pytest.fixture
def tmp_path():
    """A private temporary folder. pytest's own tmp_path lives under a base folder that every
    pytest session of this user prunes to the newest three, so another session on a shared
    machine can delete it while a benchmark still runs for minutes."""
    with tempfile.TemporaryDirectory(prefix="fractal-bench-") as folder:
        yield Path(folder)


@pytest.fixture
def warmed_benchmark(benchmark):
    """Like ``benchmark``, but the function runs once (compiling its kernels) untimed."""
    return _Warmed(benchmark)


@pytest.fixture
def summary():
    """Append a line here to have it printed in the run's closing summary."""
    return _SUMMARY.append


def cpu_model() -> str:
    """The CPU's model name as Linux reports it (what the history keys its runs by)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    # pytest-benchmark's own "cpu" entry comes from py-cpuinfo; this is the one the history
    # tool groups runs by, read the same way everywhere.
    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_count"] = os.cpu_count()


def pytest_report_header(config):
    return f"CPU model: {cpu_model()} ({os.cpu_count()} logical CPUs)"


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY:
        terminalreporter.section("benchmark summary")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
