"""The requestor: the task lifecycle a Golem node drives, and its gRPC adapter.

:class:`Requestor` is the typed domain layer: it validates names, keeps each task's state in
its sqlite store (:mod:`fractal_app.store`), hands out bands, has results verified off the
event loop, and merges accepted bands into the final image. :class:`RequestorServicer` only
decodes requests and encodes replies; :func:`fractal_app.server.rpc_errors` maps the domain
errors to gRPC statuses.

Restart: every change is committed before an rpc answers, and a task is re-opened from its
folder the first time an rpc names it. Subtasks that were handed out stay ``running``, so a
result that arrives after the restart still verifies; a verification cut off by the crash goes
back to ``running`` and the node's retried ``Verify`` checks the result again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from fractal_app.bands import band_memory_mib, plan_bands
from fractal_app.durable import durable_file, fsync_dir
from fractal_app.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from fractal_app.images import image_for_env
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc
from fractal_app.protocol.constants import SUBTASK_OUTPUTS_DIR
from fractal_app.server import Preload, resume_gc_after_startup, rpc_errors
from fractal_app.store import BandRow, TaskPaths, TaskStore, check_name

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

SCENE_RESOURCE = "scene.json"
MAX_NODE_ID_LENGTH = 1024
MAX_SUBTASKS_COUNT = 1_000_000


@dataclass(frozen=True)
class CreatedTask:
    env_id: str
    prerequisites_json: str
    min_memory_mib: float


@dataclass(frozen=True)
class SubtaskSpec:
    """What a provider needs: the band's parameters and the files to ship with them."""

    subtask_id: str
    params_json: str
    resources: list[str]


@dataclass(frozen=True)
class VerifyOutcome:
    accepted: bool
    reason: str


def subtask_params(subtask_id: str, band: BandRow) -> str:
    """The subtask parameters JSON a provider's ``Compute`` receives."""
    return json.dumps(
        {
            "subtask_id": subtask_id,
            "band_index": band.index,
            "row_start": band.row_start,
            "row_stop": band.row_stop,
        }
    )


def result_file_name(scene) -> str:
    """The one file ``task_outputs`` holds once every band is accepted."""
    return "result.tiff" if scene.output == "counts" else "result.png"


@dataclass
class _Task:
    """An open task: its folder, its store, the scene, and the live verifications."""

    paths: TaskPaths
    store: TaskStore
    scene: object
    # Serialises the task's state changes; verification itself runs without it.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancels: dict[str, threading.Event] = field(default_factory=dict)

    @property
    def result_path(self) -> Path:
        return self.paths.task_outputs / result_file_name(self.scene)


class Requestor:
    """The task lifecycle; every method is typed and raises :mod:`fractal_app.errors`."""

    def __init__(self, work_dir: Path, max_workers: int | None = None) -> None:
        self.work_dir = Path(work_dir)
        self._tasks: dict[str, _Task] = {}
        self._open_lock = asyncio.Lock()
        # Three pools, so that no kind of work waits behind another: spot checks (CPU bound,
        # one per core), file work (saving bands, the cost estimate, writing the final image),
        # and one thread that owns every sqlite connection, so that commits (an fsync each)
        # never block the event loop that answers health checks.
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers or os.cpu_count() or 2, thread_name_prefix="verify"
        )
        self._files = ThreadPoolExecutor(max_workers=4, thread_name_prefix="files")
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.preload: Preload | None = None  # kernel work waits for it (see server.Preload)

    def close(self) -> None:
        """Stop every running verification and close the stores."""
        for task in self._tasks.values():
            for cancel in task.cancels.values():
                cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._files.shutdown(wait=True)
        self._store_thread.shutdown(wait=True)
        for task in self._tasks.values():
            task.store.close()
        self._tasks.clear()

    async def _run(self, func, *args):
        """Run a spot check (or the benchmark) on the verification pool."""
        await self._preloaded()
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    async def _file_work(self, func, *args):
        await self._preloaded()  # the cost estimate runs kernels here
        return await asyncio.get_running_loop().run_in_executor(self._files, func, *args)

    async def _preloaded(self) -> None:
        if self.preload is not None:
            await self.preload.wait()

    async def _db(self, func, *args):
        """Run a store operation (a committed transaction) on the store thread."""
        return await asyncio.get_running_loop().run_in_executor(self._store_thread, func, *args)

    # ---- finding tasks ---------------------------------------------------------------------

    async def _task(self, task_id: str) -> _Task:
        """The open task, re-opened from its folder after a restart; NotFound if none."""
        check_name("task_id", task_id)
        task = self._tasks.get(task_id)
        if task is not None:
            return task
        async with self._open_lock:
            task = self._tasks.get(task_id)
            if task is not None:
                return task
            paths = TaskPaths.of(self.work_dir, task_id)
            store = await self._db(TaskStore.open, paths.database, task_id)
            if store is None:
                raise NotFound(
                    f"unknown task {task_id!r}: CreateTask was not called for it (work dir"
                    f" {self.work_dir})"
                )
            scene_json = await self._db(lambda: store.scene_json)
            task = _Task(paths, store, _parse_scene(scene_json))
            recovered = await self._db(store.recover)
            if recovered:
                logger.info("task %s: verifications %s cut off by a restart", task_id, recovered)
            await self._reconcile_result(task)
            self._tasks[task_id] = task
            return task

    async def _reconcile_result(self, task: _Task) -> None:
        """Make task_outputs agree with the store after a crash between a commit and a file."""
        complete = await self._db(task.store.all_accepted)
        if complete and not task.result_path.is_file():
            bands = await self._db(task.store.bands)
            await self._file_work(_assemble, task.paths, task.scene, bands)
        elif not complete:
            await self._file_work(_remove_results, task.paths.task_outputs)

    # ---- the rpcs --------------------------------------------------------------------------

    async def create_task(
        self, task_id: str, max_subtasks_count: int, task_params_json: str
    ) -> CreatedTask:
        """Validate the scene, cut it into bands, write the providers' inputs, record it."""
        check_name("task_id", task_id)
        if not 1 <= max_subtasks_count <= MAX_SUBTASKS_COUNT:
            raise InvalidArgument(
                f"max_subtasks_count must be between 1 and {MAX_SUBTASKS_COUNT:,}, got"
                f" {max_subtasks_count}"
            )
        scene = _parse_scene(task_params_json)
        async with self._open_lock:
            paths = TaskPaths.of(self.work_dir, task_id)
            if task_id in self._tasks or await self._db(_exists, paths.database, task_id):
                raise FailedPrecondition(
                    f"task {task_id!r} already exists; CreateTask is called once per task id"
                )
            await self._file_work(_prepare_folder, paths, scene.to_json().encode())
            plan = await self._file_work(_plan, scene, max_subtasks_count)
            store = await self._db(
                TaskStore.create, paths.database, task_id, task_params_json, scene.to_json(), plan
            )
            self._tasks[task_id] = _Task(paths, store, scene)
        tallest = max(stop - start for start, stop in plan)
        logger.info("task %s: %d bands of at most %d rows", task_id, len(plan), tallest)
        return CreatedTask(
            env_id=scene.env,
            prerequisites_json=json.dumps(image_for_env(scene.env)),
            min_memory_mib=band_memory_mib(
                tallest, scene.width_px, scene.output, scene.bit_depth, scene.supersample
            ),
        )

    async def next_subtask(self, task_id: str, subtask_id: str, node_id: str) -> SubtaskSpec | None:
        """Hand the next pending band to ``subtask_id``; None when there is none to give."""
        task = await self._task(task_id)
        check_name("subtask_id", subtask_id)
        if len(node_id) > MAX_NODE_ID_LENGTH:
            raise InvalidArgument(f"opaque_node_id is longer than {MAX_NODE_ID_LENGTH} characters")
        async with task.lock:
            band = await self._db(task.store.claim_pending_band, subtask_id, node_id)
        if band is None:
            return None
        return SubtaskSpec(subtask_id, subtask_params(subtask_id, band), [SCENE_RESOURCE])

    async def has_pending_subtasks(self, task_id: str) -> bool:
        task = await self._task(task_id)
        return await self._db(task.store.has_pending)

    async def verify(self, task_id: str, subtask_id: str) -> VerifyOutcome:
        """Check a subtask's result; merge it if accepted, else put its band back to pending.

        The answer is always the result of a completed check (never "awaiting data").
        """
        task = await self._task(task_id)
        check_name("subtask_id", subtask_id)
        result_dir = task.paths.result_dir(subtask_id)
        async with task.lock:
            band = await self._db(_start_verification, task.store, subtask_id, result_dir)
            cancel = threading.Event()
            task.cancels[subtask_id] = cancel

        from fractal_app.bandfile import BandMeta
        from fractal_app.verify import verify_band

        meta = BandMeta(task_id, subtask_id, band.row_start, band.row_stop, task.scene.output)
        try:
            verdict = await self._run(verify_band, task.scene, meta, result_dir, cancel)
        except Aborted:
            raise
        except BaseException:
            # The check could not run (file vanished, internal error, the rpc was cancelled):
            # the result stays unchecked, so the subtask is back to running and Verify may be
            # asked again. Unless an abort already released the band.
            stopped_by_abort = cancel.is_set()
            cancel.set()  # a cancelled rpc leaves its check running in the pool: stop it
            if not stopped_by_abort:
                async with task.lock:
                    await self._db(task.store.undo_verification, subtask_id)
            raise
        finally:
            task.cancels.pop(subtask_id, None)

        async with task.lock:
            if cancel.is_set():
                raise Aborted(f"the verification of subtask {subtask_id!r} was stopped by an abort")
            if not verdict.accepted:
                await self._db(task.store.finish_verification, subtask_id, False, verdict.reason)
                logger.info("task %s: subtask %s rejected: %s", task_id, subtask_id, verdict.reason)
                return VerifyOutcome(False, verdict.reason)
            await self._file_work(_save_values, task.paths.band_values(band.index), verdict.values)
            counts = await self._db(task.store.counts)
            if counts.get("accepted", 0) == sum(counts.values()) - 1:
                # The last band: the final file exists before the acceptance is committed, so
                # a crash in between leaves a band that verifies again, never a finished task
                # without its image.
                stored = await self._db(task.store.bands)
                bands = [b if b.index != band.index else _accepted(b) for b in stored]
                await self._file_work(_assemble, task.paths, task.scene, bands)
            await self._db(task.store.finish_verification, subtask_id, True, verdict.reason)
        logger.info("task %s: subtask %s accepted (band %d)", task_id, subtask_id, band.index)
        return VerifyOutcome(True, verdict.reason)

    async def discard_subtasks(self, task_id: str, subtask_ids: Sequence[str]) -> list[str]:
        """Accepted (or still running) subtasks give their bands back; returns the ids."""
        task = await self._task(task_id)
        for subtask_id in subtask_ids:
            check_name("subtask_id", subtask_id)
        async with task.lock:
            for subtask_id in subtask_ids:
                await self._db(task.store.subtask, subtask_id)  # NotFound before any change
            for subtask_id in subtask_ids:
                if subtask_id in task.cancels:
                    task.cancels[subtask_id].set()
            discarded = await self._db(task.store.discard, list(subtask_ids))
            # Committed first, then the file goes: a crash in between leaves a result file
            # that re-opening the task removes, never a merged image holding a discarded band.
            if discarded and not await self._db(task.store.all_accepted):
                await self._file_work(_remove_results, task.paths.task_outputs)
        return discarded

    async def abort_subtask(self, task_id: str, subtask_id: str) -> None:
        task = await self._task(task_id)
        check_name("subtask_id", subtask_id)
        cancel = task.cancels.get(subtask_id)
        if cancel is not None:
            cancel.set()
        async with task.lock:
            await self._db(task.store.abort_subtask, subtask_id)

    async def abort_task(self, task_id: str) -> None:
        task = await self._task(task_id)
        for cancel in list(task.cancels.values()):
            cancel.set()
        async with task.lock:
            await self._db(task.store.abort_task)

    async def run_benchmark(self) -> float:
        from fractal_app import render

        return await self._run(render.run_benchmark)


# ---- files (run in worker threads) ----------------------------------------------------------


def _parse_scene(params):
    # Imported on first use: pydantic and NumPy would double the time to SERVING.
    from fractal_app.scene import parse_scene

    return parse_scene(params)


def _preload(resume_gc: bool) -> None:
    """Import what CreateTask and Verify need, in the background once SERVING."""
    try:
        import numpy  # noqa: F401

        import fractal_app.bandfile  # noqa: F401
        import fractal_app.bandplan  # noqa: F401
        import fractal_app.render  # noqa: F401
        import fractal_app.scene  # noqa: F401
        import fractal_app.verify  # noqa: F401

        _warm_kernels()
    except Exception:  # the rpc that needs a module imports it again and reports the error
        logger.debug("preloading failed", exc_info=True)
    finally:
        resume_gc_after_startup(resume_gc)


def _warm_kernels() -> None:
    """Load the pixel kernels CreateTask's cost estimate and Verify's recompute run.

    Numba's first kernel call in a process sets up its compiler contexts and loads the kernel
    from the on-disk cache: about a second of CPU here, which would otherwise land on the
    first CreateTask (its cost estimate) of a requestor that has just started.
    """
    import numpy as np

    from fractal_app import render
    from fractal_app.scene import parse_scene

    probe = parse_scene({"fractal": "mandelbrot", "resolution": [2, 2], "max_iter": 8})
    render.render_pixels(probe, np.zeros(1, np.int64), np.zeros(1, np.int64))


def _exists(database: Path, task_id: str) -> bool:
    store = TaskStore.open(database, task_id)
    if store is None:
        return False
    store.close()
    return True


def _prepare_folder(paths: TaskPaths, scene_json: bytes) -> None:
    """The task folder's own parts, and the scene every provider gets as a resource."""
    if paths.root.exists() and not paths.root.is_dir():
        raise FailedPrecondition(
            f"{paths.root.name!r} in the work directory is a file, not a task folder; choose"
            " another task_id"
        )
    paths.make_folders()
    _write_atomic(paths.subtask_inputs / SCENE_RESOURCE, scene_json)


def _start_verification(store: TaskStore, subtask_id: str, result_dir: Path) -> BandRow:
    """running -> verifying, if the task is live, the subtask is running and its file is here."""
    if store.aborted:
        raise FailedPrecondition(f"task {store.task_id!r} was aborted; nothing is verified")
    sub = store.subtask(subtask_id)  # NotFound for an unknown id
    if sub.state == "running" and not _has_file(result_dir):
        raise FailedPrecondition(
            f"no result for subtask {subtask_id!r} yet: expected the provider's file in"
            f" {SUBTASK_OUTPUTS_DIR}/{subtask_id}/"
        )
    return store.start_verification(subtask_id)


def _plan(scene, max_bands: int) -> list[tuple[int, int]]:
    """Bands of about equal estimated cost (so no provider is left with the slow band),
    or equal heights if the estimate cannot run. Stored with the task, never recomputed."""
    from fractal_app.bandplan import plan_bands_by_cost

    try:
        return plan_bands_by_cost(scene, max_bands)
    except Exception:
        logger.exception("the cost estimate failed; cutting bands of equal height instead")
        return plan_bands(scene.height_px, max_bands)


def _accepted(band: BandRow) -> BandRow:
    return BandRow(
        band.index, band.row_start, band.row_stop, "accepted", band.subtask_id, band.failures
    )


def _has_file(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except OSError:
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    with durable_file(path) as out:
        out.write(data)


def _save_values(path: Path, values: np.ndarray) -> None:
    """An accepted band's values, durable before the acceptance is committed."""
    import numpy as np

    with durable_file(path) as out:
        np.save(out, np.ascontiguousarray(values), allow_pickle=False)


def _remove_results(task_outputs: Path) -> None:
    for name in ("result.png", "result.tiff"):
        with contextlib.suppress(FileNotFoundError):
            (task_outputs / name).unlink()


def _assemble(paths: TaskPaths, scene, bands: Sequence[BandRow]) -> None:
    """Stream the accepted bands, top to bottom, into ``task_outputs``' one result file."""
    import numpy as np

    from fractal_app.pngstream import CountsTiffWriter, PngStreamWriter

    width, height = scene.width_px, scene.height_px
    tmp = paths.state / ".result.partial"
    if scene.output == "counts":
        writer = CountsTiffWriter(tmp, width, height)
    else:
        writer = PngStreamWriter(
            tmp, width, height, scene.bit_depth, text={"Software": "fractal-app"}
        )
    with writer:
        for band in sorted(bands, key=lambda b: b.row_start):
            if band.state != "accepted":
                raise FailedPrecondition(f"band {band.index} is {band.state}, not accepted")
            writer.write_rows(np.load(paths.band_values(band.index), mmap_mode="r"))
    target = paths.task_outputs / result_file_name(scene)
    paths.task_outputs.mkdir(parents=True, exist_ok=True)
    # task_outputs holds the result and nothing else: clear what a previous run left there.
    for entry in paths.task_outputs.iterdir():
        if entry.name != target.name and (entry.is_file() or entry.is_symlink()):
            entry.unlink()
    os.replace(tmp, target)
    fsync_dir(paths.task_outputs)


# ---- the gRPC adapter -----------------------------------------------------------------------


class RequestorServicer(pb_grpc.RequestorAppServicer):
    """Decodes requests, calls :class:`Requestor`, encodes replies. Nothing else."""

    def __init__(self, app: Requestor, stop: asyncio.Event) -> None:
        self.app = app
        self.stop = stop

    @rpc_errors
    async def CreateTask(self, request, context):  # noqa: N802 - gRPC method names
        created = await self.app.create_task(
            request.task_id, request.max_subtasks_count, request.task_params_json
        )
        return pb.CreateTaskReply(
            env_id=created.env_id,
            prerequisites_json=created.prerequisites_json,
            inf_requirements=pb.Infrastructure(min_memory_mib=created.min_memory_mib),
        )

    @rpc_errors
    async def NextSubtask(self, request, context):  # noqa: N802
        spec = await self.app.next_subtask(
            request.task_id, request.subtask_id, request.opaque_node_id
        )
        if spec is None:
            return pb.NextSubtaskReply()
        return pb.NextSubtaskReply(
            subtask=pb.SubtaskReply(subtask_params_json=spec.params_json, resources=spec.resources)
        )

    @rpc_errors
    async def Verify(self, request, context):  # noqa: N802
        outcome = await self.app.verify(request.task_id, request.subtask_id)
        result = pb.VerifyReply.SUCCESS if outcome.accepted else pb.VerifyReply.FAILURE
        return pb.VerifyReply(result=result, reason=outcome.reason)

    @rpc_errors
    async def DiscardSubtasks(self, request, context):  # noqa: N802
        ids = await self.app.discard_subtasks(request.task_id, list(request.subtask_ids))
        return pb.DiscardSubtasksReply(discarded_subtask_ids=ids)

    @rpc_errors
    async def RunBenchmark(self, request, context):  # noqa: N802
        return pb.RunBenchmarkReply(score=await self.app.run_benchmark())

    @rpc_errors
    async def HasPendingSubtasks(self, request, context):  # noqa: N802
        pending = await self.app.has_pending_subtasks(request.task_id)
        return pb.HasPendingSubtasksReply(has_pending_subtasks=pending)

    @rpc_errors
    async def AbortTask(self, request, context):  # noqa: N802
        await self.app.abort_task(request.task_id)
        return pb.AbortTaskReply()

    @rpc_errors
    async def AbortSubtask(self, request, context):  # noqa: N802
        await self.app.abort_subtask(request.task_id, request.subtask_id)
        return pb.AbortSubtaskReply()

    @rpc_errors
    async def Shutdown(self, request, context):  # noqa: N802
        self.stop.set()
        return pb.ShutdownReply()


class RequestorService:
    """What ``python -m fractal_app requestor`` serves: the domain app behind its adapter."""

    def __init__(self, work_dir: Path, stop: asyncio.Event) -> None:
        self.app = Requestor(work_dir)
        self.servicer = RequestorServicer(self.app, stop)
        # The heavy modules and kernels load in the background from the start, beside the
        # server's own start-up, so that a CreateTask sent the moment the server is SERVING
        # waits as little as possible for them. (Tasks need no loading: each is re-opened
        # from its folder when an rpc first names it.)
        resume_gc = not gc.isenabled()  # the entrypoint paused it for the start-up
        self.app.preload = Preload(functools.partial(_preload, resume_gc))

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RequestorAppServicer_to_server(self.servicer, server)

    def serving(self) -> None:
        """Called once the server answers SERVING (the preload started in __init__)."""

    def close(self) -> None:
        self.app.close()
