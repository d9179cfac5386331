"""Numba's thread control, in one place: how many threads a call runs on, and how a parallel
loop hands out its iterations.

Both are per calling thread in Numba (a thread's setting touches no other thread's calls), so
each helper sets them for the calls made inside it, on this thread, and restores them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba


@contextlib.contextmanager
def thread_count(count: int | None) -> Iterator[None]:
    """Numba kernels called inside run on ``count`` threads (None: all of them)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS if count is None else count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def one_thread_if(condition: bool) -> contextlib.AbstractContextManager:
    """One thread for the calls inside while ``condition`` holds (a call too small for a
    team: waking the thread team costs milliseconds a call on a loaded machine); otherwise
    nothing changes."""
    return thread_count(1) if condition else contextlib.nullcontext()


def use_thread_count(count: int | None) -> None:
    """From now on, Numba kernels this thread calls run on ``count`` threads (None: all)."""
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS if count is None else count)


def chunks_of(size: int) -> contextlib.AbstractContextManager:
    """Parallel loops called inside hand their iterations to threads ``size`` at a time,
    not in equal contiguous shares: for items that differ in cost (rows of an image)."""
    return numba.parallel_chunksize(size)
