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
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fractal_app.durable import partial_path
from fractal_app.errors import Aborted, FailedPrecondition, InvalidArgument
from fractal_app.protocol.constants import DOCKER_CPU_ENV_ID
from fractal_app.startup import Preload, resume_gc_after_startup
from fractal_app.taskdir import SCENE_RESOURCE, ProviderTaskDir, check_name

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# Overrides the backend the scene's env implies (e.g. "cpu" on a GPU machine, for tests).
BACKEND_ENV_VAR = "FRACTAL_APP_BACKEND"
# Samples rendered per render_band call (see band_blocks): 1 Mi samples is a few MiB of
# scratch, and a 4K band's eight blocks let the PNG encoder work on one block while the next
# renders. Blocks are sized by samples, not by their cost: a stop (SIGTERM, Shutdown) does
# not wait for the block being rendered (see Provider._compute), so a block may take as long
# as its pixels need. (When it did wait, blocks were cut to about 2^30 worst-case steps so
# that a stop took under 2 s, and a band became tens to hundreds of rounds of parallel kernel
# calls, each waiting for its slowest thread: with another process taking a core, the 4K
# view's render was 1.299x the bare renderer's time in 64 blocks and 1.246x in 8, for the
# same CPU; benchmarks/README.md, "Blocks sized by samples".)
RENDER_BLOCK_SAMPLES = 1 << 20
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
        halt = Halt()

        def render_and_write() -> None:
            blocks = band_blocks(scene, params.row_start, params.row_stop, backend, halt)
            write_band_blocks(
                out_path,
                _after_first(rendered_ahead(blocks), self._startup_done),
                meta,
                guard=halt.unless_halted,
            )

        logger.info(
            "rendering rows %d..%d of task %s on %s",
            params.row_start,
            params.row_stop,
            task_id,
            backend,
        )
        rendering = in_daemon_thread(render_and_write)
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({rendering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not rendering.done():
                halt.set()
                if self.stop.is_set():
                    # SIGTERM or Shutdown: the process ends once this answer is sent, and the
                    # render thread (a daemon, in the middle of a kernel call) with it. No
                    # band file can appear any more (halt guards its creation and its
                    # rename); what was written of it goes now, whole or partial.
                    for written in (partial_path(out_path), out_path):
                        with contextlib.suppress(FileNotFoundError):
                            written.unlink()
                else:
                    # This rpc alone was cancelled: the render stops at its next block, and
                    # the unfinished band file is removed (durable_file).
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


class Halt:
    """A Compute's stop: read by the render between blocks, and guarding the band file's
    creation and its rename, so that once :meth:`set` returns no band file can appear."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._halted = False

    def set(self) -> None:
        with self._lock:  # waits for a rename in progress: after it, the file is there
            self._halted = True

    def is_set(self) -> bool:
        return self._halted

    @contextlib.contextmanager
    def unless_halted(self) -> Iterator[None]:
        with self._lock:
            if self._halted:
                raise Aborted("rendering stopped")
            yield


def in_daemon_thread(work: Callable[[], None]) -> asyncio.Future:
    """Run ``work`` in a daemon thread of its own; a future of its outcome.

    Not asyncio.to_thread: the event loop's executor is joined when ``asyncio.run`` ends, so a
    stopped provider would wait for the kernel call in progress before it could exit.
    """
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        done.set_running_or_notify_cancel()  # as an executor does: no cancel from here on
        try:
            work()
        except BaseException as error:  # handed to the awaiting coroutine
            done.set_exception(error)
        else:
            done.set_result(None)

    threading.Thread(target=run, name="render-band", daemon=True).start()
    return asyncio.wrap_future(done)


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
    halt: Halt | None = None,
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
    """The blocks band_blocks renders: at most RENDER_BLOCK_SAMPLES samples, at least one
    row."""
    from fractal_app.bands import row_pieces

    block = max(1, RENDER_BLOCK_SAMPLES // (scene.width_px * scene.supersample**2))
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
