"""A priority queue of renders in front of a pool of threads, that forgets stale requests.

When the person zooms or pans, the browser drops the tile requests it no longer needs (it
closes their connections); the server then cancels their handlers. A request still waiting
here is dropped without rendering, so the threads only ever work on tiles someone is waiting
for. Coarse previews go before full tiles, so a new view fills in quickly and then sharpens.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True)
class _Job:
    priority: int
    sequence: int
    work: Callable[[], Any] = field(compare=False)
    result: asyncio.Future = field(compare=False)


class RenderScheduler:
    """Runs ``work`` callables on ``workers`` threads, lowest priority number first, in
    arrival order within a priority. ``stats`` counts rendered, dropped (cancelled while
    waiting) and failed jobs, for tests and the benchmark."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.stats: Counter[str] = Counter()
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._sequence = itertools.count()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="explore-render")
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._serve()) for _ in range(self.workers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, priority: int, work: Callable[[], Any]) -> Any:
        """``work()``'s result, computed on a worker thread. Cancelling the caller while the
        job waits drops it; a job already running finishes, and its result is discarded."""
        result = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(priority, next(self._sequence), work, result))
        return await result

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job.result.cancelled():
                self.stats["dropped"] += 1
                continue
            try:
                value = await loop.run_in_executor(self._pool, job.work)
            except Exception as error:  # handed to the waiting request, which answers it
                self.stats["failed"] += 1
                if not job.result.done():
                    job.result.set_exception(error)
            else:
                self.stats["rendered"] += 1
                if not job.result.done():
                    job.result.set_result(value)
