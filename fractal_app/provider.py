"""The provider: renders one band (``Compute``) or runs the benchmark, then exits.

:class:`Provider` is the typed domain layer; its gRPC adapter is
:class:`fractal_app.servicers.ProviderServicer`.

Golem starts a fresh provider process for every subtask, so its start-up is paid every time:
this module imports only gRPC and the protocol at start; scene validation, NumPy, Numba and
the kernels load in the background once it serves (:mod:`fractal_app.startup`), and the one
request waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fractal_app.errors import Aborted, FailedPrecondition, InvalidArgument
from fractal_app.protocol.constants import DOCKER_CPU_ENV_ID
from fractal_app.startup import Preload, resume_gc_after_startup
from fractal_app.taskdir import SCENE_RESOURCE, ProviderTaskDir, check_name

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# Overrides the backend the scene's env implies (e.g. "cpu" on a GPU machine, for tests).
BACKEND_ENV_VAR = "FRACTAL_APP_BACKEND"
# Samples rendered per render_band call (see band_blocks): 1 Mi samples is a few
# milliseconds of kernel work at the least, and a few MiB of scratch.
RENDER_BLOCK_SAMPLES = 1 << 20
# ... and at most about this many inner-loop steps (bands.worst_pixel_cost per pixel): a stop
# (SIGTERM, Shutdown) is seen between blocks, so a block must take well under the 2 s a node
# waits. Measured (issue 14, loaded two-core machine, block kernels on both threads): an
# all-interior block (the worst case) of 2^27 steps took 0.05 s, of 2^29 0.21 s, so 2^30 is
# about 0.4 s. Smaller blocks cost dearly in every render: each block is a round of parallel
# kernel calls, and the 4K view at 1920x1080 in blocks of 2^27 steps (8 rows) took 1.8x the
# CPU of one call (2.76 against 1.51 CPU-s); at 2^30 (70 rows), 1.07x. A block is never
# less than a few rows, so the kernel's threads still share it.
RENDER_BLOCK_STEPS = 1 << 30
MIN_BLOCK_ROWS = 4
_PARAM_KEYS = {"subtask_id", "band_index", "row_start", "row_stop"}


@dataclass(frozen=True)
class BandParams:
    """A subtask's parameters, as the requestor's NextSubtask wrote them."""

    subtask_id: str
    band_index: int
    row_start: int
    row_stop: int


def parse_params(params_json: str) -> BandParams:
    """Validate the subtask parameters JSON; InvalidArgument names what is wrong."""
    try:
        params = json.loads(params_json)
    except (ValueError, RecursionError) as error:
        raise InvalidArgument(f"subtask_params_json is not valid JSON: {error}") from None
    if not isinstance(params, dict):
        raise InvalidArgument("subtask_params_json must be a JSON object")
    if set(params) != _PARAM_KEYS:
        raise InvalidArgument(
            f"subtask_params_json must have exactly the keys {sorted(_PARAM_KEYS)}, got"
            f" {sorted(map(str, params))[:10]}"
        )
    for key in ("band_index", "row_start", "row_stop"):
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"subtask_params_json field {key!r} must be an integer >= 0")
    if not isinstance(params["subtask_id"], str):
        raise InvalidArgument("subtask_params_json field 'subtask_id' must be a string")
    if params["row_start"] >= params["row_stop"]:
        raise InvalidArgument("subtask_params_json: row_start must be below row_stop")
    return BandParams(**params)


class Provider:
    """The domain layer: one request per process, then ``stop`` is set."""

    def __init__(self, work_dir: Path, stop: asyncio.Event, backend: str | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.task_dir = ProviderTaskDir(self.work_dir)
        self.stop = stop
        self.backend = backend or os.environ.get(BACKEND_ENV_VAR) or None
        self._handled = False
        self.preload: Preload | None = None  # started once SERVING; requests wait for it
        self.gc_paused = False  # the entrypoint's start-up pause, ended by the request

    async def _preloaded(self) -> None:
        if self.preload is not None:
            await self.preload.wait()

    def shipped_scene(self) -> str | None:
        """The task's scene if the node has shipped it already (the preload loads its
        kernels); None if not yet."""
        if not self.task_dir.resource(SCENE_RESOURCE).is_file():
            return None
        return self.task_dir.read_resource(SCENE_RESOURCE)

    def _startup_done(self) -> None:
        """Freeze start-up's objects and collect again from here on: once the request's
        kernel has loaded, or the request has ended. (Collecting while Numba loads the kernel
        from its cache, all long-lived objects, cost the Compute reply about 10%.)"""
        paused, self.gc_paused = self.gc_paused, False
        resume_gc_after_startup(paused)

    def _take_the_one_request(self) -> None:
        if self._handled:
            raise FailedPrecondition(
                "this provider process has already handled its one request; start a new one"
            )
        self._handled = True

    async def compute(self, task_id: str, subtask_id: str, params_json: str) -> str:
        """Render the band the params name into ``{work_dir}/{subtask_id}/band.png``
        (:meth:`fractal_app.taskdir.ProviderTaskDir.band_file`).

        Returns that path relative to the work dir.
        """
        self._take_the_one_request()
        try:
            return await self._compute(task_id, subtask_id, params_json)
        finally:
            self._startup_done()
            self.stop.set()

    async def _compute(self, task_id: str, subtask_id: str, params_json: str) -> str:
        check_name("task_id", task_id)
        check_name("subtask_id", subtask_id)
        params = parse_params(params_json)
        if params.subtask_id != subtask_id:
            raise InvalidArgument(
                f"subtask_params_json names subtask {params.subtask_id[:80]!r}, the request"
                f" {subtask_id!r}"
            )
        scene_json = self.task_dir.read_resource(SCENE_RESOURCE)

        from fractal_app import render
        from fractal_app.bandfile import BandMeta, write_band_blocks
        from fractal_app.color_scale import needs_knots
        from fractal_app.scene import parse_scene

        scene = parse_scene(scene_json)
        if needs_knots(scene):
            # Recomputed here, the knots could differ from the ones the verifier colours with.
            raise InvalidArgument(
                "the task's scene has color_scale 'auto' without color_knots: the requestor"
                " resolves them at CreateTask (color_scale.resolve)"
            )
        if params.row_stop > scene.height_px:
            raise InvalidArgument(
                f"rows {params.row_start}..{params.row_stop} are outside the image's"
                f" {scene.height_px} rows"
            )
        # Checking the request overlapped the preload; Numba's part must not (server.Preload).
        await self._preloaded()
        backend = render.resolve_backend(self.backend, scene.env)
        meta = BandMeta(task_id, subtask_id, params.row_start, params.row_stop, scene.output)
        out_path = self.task_dir.band_file(subtask_id, create=True)
        halt = threading.Event()

        def render_and_write() -> None:
            blocks = band_blocks(scene, params.row_start, params.row_stop, backend, halt)
            write_band_blocks(
                out_path, _after_first(rendered_ahead(blocks), self._startup_done), meta
            )

        logger.info(
            "rendering rows %d..%d of task %s on %s",
            params.row_start,
            params.row_stop,
            task_id,
            backend,
        )
        rendering = asyncio.ensure_future(asyncio.to_thread(render_and_write))
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({rendering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # SIGTERM or Shutdown (stop set), or this rpc cancelled: the render stops at the
            # next block, and the unfinished band file is removed (durable_file).
            stopping.cancel()
            if not rendering.done():
                halt.set()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(rendering)
        if halt.is_set():
            raise Aborted("the provider was stopped (SIGTERM or Shutdown) before the band was done")
        rendering.result()
        return self.task_dir.band_output(subtask_id)

    async def run_benchmark(self) -> float:
        self._take_the_one_request()
        try:
            await self._preloaded()
            from fractal_app import render

            backend = render.resolve_backend(self.backend, DOCKER_CPU_ENV_ID)
            return await asyncio.to_thread(render.run_benchmark, backend=backend)
        finally:
            self._startup_done()
            self.stop.set()


def _after_first(blocks: Iterator[np.ndarray], then: Callable[[], None]) -> Iterator[np.ndarray]:
    """The blocks, calling ``then`` once the first one is rendered."""
    for index, block in enumerate(blocks):
        if index == 0:
            then()
        yield block


def band_blocks(
    scene,
    row_start: int,
    row_stop: int,
    backend: str,
    halt: threading.Event | None = None,
) -> Iterator[np.ndarray]:
    """``render.render_band`` of rows [row_start, row_stop), rendered a block of rows at a
    time, on demand.

    Concatenated, the blocks are exactly the band's values. The band file is encoded from
    them as they come, so a provider holds one block (a few MiB) and never the whole band: a
    poster band of hundreds of MiB costs no more memory than a small one. ``halt`` set stops
    it before the next block (Aborted).
    """
    from fractal_app import render

    for start, stop in block_rows(scene, row_start, row_stop):
        if halt is not None and halt.is_set():
            raise Aborted("rendering stopped")
        yield render.render_band(scene, start, stop, backend)


def block_rows(scene, row_start: int, row_stop: int) -> Iterator[tuple[int, int]]:
    """The blocks band_blocks renders: at most RENDER_BLOCK_SAMPLES samples and about
    RENDER_BLOCK_STEPS of work at the worst, but at least MIN_BLOCK_ROWS rows."""
    from fractal_app.bands import row_pieces, worst_pixel_cost

    width = scene.width_px
    by_samples = RENDER_BLOCK_SAMPLES // (width * scene.supersample**2)
    by_work = RENDER_BLOCK_STEPS // (width * worst_pixel_cost(scene))
    block = max(1, min(by_samples, max(MIN_BLOCK_ROWS, by_work)))
    return row_pieces(row_start, row_stop, block)


def rendered_ahead(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """``blocks``, each next one rendering in a thread while the caller encodes this one.

    The PNG encode is single-threaded: done in turn with the kernels, every core but one
    idled while a block was compressed (about 0.3 s of a 4K band). The kernels and zlib
    both release the GIL, so the two overlap; one more block (a few MiB) is in memory. Only
    the rendering thread touches ``blocks``, from its first block to its last.
    """
    import queue

    handed = queue.Queue()  # (block, None), (None, error) or (None, None): the end
    stop = threading.Event()

    def render() -> None:
        try:
            for block in blocks:
                handed.put((block, None))
                handed.join()  # until the caller has taken it: one block ahead, no more
                if stop.is_set():
                    return
            handed.put((None, None))
        except BaseException as error:  # handed to the caller, who raises it
            handed.put((None, error))

    thread = threading.Thread(target=render, name="render-ahead", daemon=True)
    thread.start()
    try:
        while True:
            block, error = handed.get()
            handed.task_done()
            if error is not None:
                raise error
            if block is None:
                return
            yield block
    finally:
        stop.set()
        while thread.is_alive():  # the caller stopped early: unblock and wait for the thread
            with contextlib.suppress(queue.Empty):
                handed.get(timeout=0.05)
                handed.task_done()
        thread.join()
