"""Posters: the page's "render" button runs the one-machine Golem lifecycle on its scene.

Each poster is a job with an id the page polls for progress (bands accepted of all bands)
and, once done, downloads. Jobs run one at a time, in the order they were asked for: each
already keeps every core busy with its providers. Results live in a temporary folder that
is removed when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fractal_app.errors import AppError, NotFound
from fractal_app.local import output_path_for, render_locally
from fractal_app.scene import parse_scene

logger = logging.getLogger(__name__)

# Finished jobs (and their files) kept for download; the oldest goes when one more finishes.
KEEP_FINISHED = 8


@dataclass
class PosterJob:
    id: str
    scene_json: str
    fractal: str
    output_kind: str  # the scene's "output": image (PNG) or counts (TIFF)
    state: str = "queued"  # queued, rendering, done, failed
    bands_done: int = 0
    bands_total: int = 0
    error: str | None = None
    seconds: float | None = None
    output: Path | None = None
    created: float = field(default_factory=time.monotonic)

    def describe(self) -> dict[str, Any]:
        """What the page shows: state, progress, and where to download the result."""
        answer: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "bands_done": self.bands_done,
            "bands_total": self.bands_total,
        }
        if self.error is not None:
            answer["error"] = self.error
        if self.seconds is not None:
            answer["seconds"] = round(self.seconds, 2)
        if self.state == "done":
            answer["download"] = f"/api/render/{self.id}/result"
        return answer

    @property
    def download_name(self) -> str:
        suffix = self.output.suffix if self.output is not None else ".png"
        return f"{self.fractal}-{self.id}{suffix}"


class PosterStudio:
    """Runs poster jobs through ``render_locally``, one at a time."""

    def __init__(self, providers: int = 2) -> None:
        self.providers = providers
        self.jobs: dict[str, PosterJob] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._folder = tempfile.TemporaryDirectory(prefix="fractal-explore-")

    def submit(self, scene_json: str) -> PosterJob:
        """Validate the scene (InvalidArgument names the bad field) and queue its render."""
        scene = parse_scene(scene_json)
        job = PosterJob(
            id=str(next(self._ids)),
            scene_json=scene_json,
            fractal=scene.fractal,
            output_kind=scene.output,
        )
        self.jobs[job.id] = job
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str) -> PosterJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no render {job_id[:40]!r}: it never existed or was cleared")
        return job

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._folder.cleanup()

    async def _run(self, job: PosterJob) -> None:
        async with self._lock:
            job.state = "rendering"
            started = time.monotonic()

            def progress(done: int, total: int) -> None:
                job.bands_done, job.bands_total = done, total

            output = output_path_for(Path(self._folder.name) / f"{job.id}.png", job.output_kind)
            try:
                report = await render_locally(
                    job.scene_json,
                    output,
                    providers=self.providers,
                    show_progress=False,
                    on_progress=progress,
                )
            except AppError as error:
                job.state, job.error = "failed", str(error)
            except Exception as error:  # the page shows it; the log keeps the traceback
                logger.exception("render %s failed", job.id)
                job.state, job.error = "failed", f"{type(error).__name__}: {error}"
            else:
                job.output = report.output
                job.state = "done"
            job.seconds = time.monotonic() - started
            self._forget_old()

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.state in ("done", "failed")]
        for job in sorted(finished, key=lambda j: j.created)[:-KEEP_FINISHED]:
            if job.output is not None:
                with contextlib.suppress(OSError):
                    job.output.unlink()
            del self.jobs[job.id]
