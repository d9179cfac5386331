"""The requestor: the task lifecycle a Golem node drives, as typed domain calls.

:class:`Requestor` validates names, keeps each task's state in its sqlite store
(:mod:`fractal_app.store`), hands out bands, has results verified off the event loop, and
merges accepted bands into the final image (:mod:`fractal_app.task_files`). The gRPC adapter
over it is :class:`fractal_app.servicers.RequestorServicer`; :func:`fractal_app.server.rpc_errors`
maps the domain errors to gRPC statuses.

Restart: every change is committed before an rpc answers, and a task is re-opened from its
folder the first time an rpc names it. Subtasks that were handed out stay ``running``, so a
result that arrives after the restart still verifies; a verification cut off by the crash goes
back to ``running`` and the node's retried ``Verify`` checks the result again.

Faults: a verification runs to its end whatever happens to the rpc that asked for it (a
deadline, a node that hangs up), and a retried ``Verify`` joins it or reads its recorded
verdict; one that fails (a full disk) leaves the subtask to be checked again. Disk faults
answer their own status (:func:`fractal_app.errors.storage_error`). A task's sqlite
connection is open only while the task is in use or among the few most recently used, so a
requestor that lives for months and many tasks keeps a bounded number of files open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fractal_app import task_files
from fractal_app.bands import band_memory_mib, plan_bands
from fractal_app.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    storage_errors,
)
from fractal_app.images import image_for_env
from fractal_app.protocol.constants import SUBTASK_OUTPUTS_DIR
from fractal_app.startup import Preload
from fractal_app.store import BandRow, TaskStore
from fractal_app.taskdir import SCENE_RESOURCE, RequestorTaskDir, check_name

logger = logging.getLogger(__name__)

MAX_NODE_ID_LENGTH = 1024
MAX_SUBTASKS_COUNT = 1_000_000
# Idle tasks whose sqlite connection stays open (three files each: the database, its WAL
# and its shared-memory index); the least recently used beyond this are closed, and every
# finished or aborted one as soon as no rpc uses it; an rpc that names it again re-opens it.
MAX_OPEN_TASKS = 32


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


@dataclass
class _Task:
    """An open task: its folder, its store, the scene, and the live verifications."""

    task_dir: RequestorTaskDir
    store: TaskStore
    scene: object
    # Aborted, or every band accepted: its store is closed as soon as nothing uses it.
    finished: bool = False
    # Serialises the task's state changes; verification itself runs without it.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancels: dict[str, threading.Event] = field(default_factory=dict)
    # The verifications running in this process, by subtask id: a retried Verify joins one.
    verifications: dict[str, asyncio.Future[VerifyOutcome]] = field(default_factory=dict)
    # rpcs and verifications using the task now; its store is closed only at zero.
    users: int = 0

    @property
    def result_path(self) -> Path:
        return self.task_dir.result_file(self.scene.output)


class Requestor:
    """The task lifecycle; every method is typed and raises :mod:`fractal_app.errors`."""

    def __init__(self, work_dir: Path, max_workers: int | None = None) -> None:
        self.work_dir = Path(work_dir)
        # Least recently used first.
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._closing: set[asyncio.Future] = set()
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

    @property
    def open_tasks(self) -> int:
        """How many tasks have their store open now (for tests and logs)."""
        return len(self._tasks)

    async def _run(self, func, *args):
        """Run a spot check (or the benchmark) on the verification pool."""
        await self._preloaded()
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    async def _file_work(self, func, *args):
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
            task_dir = RequestorTaskDir.of(self.work_dir, task_id)
            with storage_errors(f"opening task {task_id!r}"):
                store = await self._db(_open_store, task_dir, task_id)
                if store is None:
                    raise NotFound(
                        f"unknown task {task_id!r}: CreateTask was not called for it (work dir"
                        f" {self.work_dir})"
                    )
                try:
                    scene_json = await self._db(lambda: store.scene_json)
                    task = _Task(task_dir, store, _parse_scene(scene_json))
                    # Nothing of this task is running here (it was not open), so a subtask
                    # left verifying was cut off by a restart or a failed undo.
                    recovered = await self._db(store.recover)
                    if recovered:
                        logger.info("task %s: verifications %s cut off", task_id, recovered)
                    task.finished = await self._db(_is_finished, store)
                    await self._reconcile_result(task)
                except BaseException:
                    await self._db(store.close)
                    raise
            self._tasks[task_id] = task
            return task

    @contextlib.asynccontextmanager
    async def _using(self, task_id: str) -> AsyncIterator[_Task]:
        """The task, kept open (its store not closed) until the block ends."""
        task = await self._task(task_id)
        self._hold(task)
        try:
            yield task
        finally:
            self._let_go(task)

    def _hold(self, task: _Task) -> None:
        task.users += 1
        if task.task_dir.task_id in self._tasks:
            self._tasks.move_to_end(task.task_dir.task_id)

    def _let_go(self, task: _Task) -> None:
        task.users -= 1
        if task.users == 0:
            self._close_idle()

    def _close_idle(self) -> None:
        """Close the stores of finished tasks nobody uses, and of the least recently used
        idle tasks beyond MAX_OPEN_TASKS. A closed task is re-opened when an rpc names it."""
        excess = len(self._tasks) - MAX_OPEN_TASKS
        for task_id, task in list(self._tasks.items()):
            if task.users or not (task.finished or excess > 0):
                continue
            excess -= 1
            del self._tasks[task_id]
            closing = asyncio.ensure_future(self._db(task.store.close))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _reconcile_result(self, task: _Task) -> None:
        """Make task_outputs agree with the store after a crash between a commit and a file."""
        complete = await self._db(task.store.all_accepted)
        if complete and not task.result_path.is_file():
            bands = await self._db(task.store.bands)
            with storage_errors(f"writing the final image of task {task.task_dir.task_id!r}"):
                await self._file_work(task_files.assemble_result, task.task_dir, task.scene, bands)
        elif not complete:
            await self._file_work(task_files.remove_results, task.task_dir)

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
            task_dir = RequestorTaskDir.of(self.work_dir, task_id)
            with storage_errors(f"creating task {task_id!r}"):
                if task_id in self._tasks or await self._db(_exists, task_dir, task_id):
                    raise FailedPrecondition(
                        f"task {task_id!r} already exists; CreateTask is called once per task id"
                    )
                if _needs_colour_scale(scene):
                    # The auto colour scale's knots come from a preview (kernels): resolved
                    # once here and sent inside the scene, so every provider and every spot
                    # check colours with the same ones.
                    await self._preloaded()
                    scene = await self._file_work(_resolve_colour_scale, scene)
                await self._file_work(
                    task_files.prepare_task_folder, task_dir, scene.to_json().encode()
                )
                if max_subtasks_count > 1:
                    # The cost estimate runs kernels; one band has nothing to balance, so its
                    # task is created (and its provider starts) while the kernels still load.
                    await self._preloaded()
                plan = await self._file_work(_plan, scene, max_subtasks_count)
                store = await self._db(
                    TaskStore.create,
                    task_dir.database,
                    task_id,
                    task_params_json,
                    scene.to_json(),
                    plan,
                )
            self._tasks[task_id] = _Task(task_dir, store, scene)
            self._close_idle()
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
        check_name("subtask_id", subtask_id)
        if len(node_id) > MAX_NODE_ID_LENGTH:
            raise InvalidArgument(f"opaque_node_id is longer than {MAX_NODE_ID_LENGTH} characters")
        async with self._using(task_id) as task, task.lock:
            with storage_errors("handing out a band"):
                band = await self._db(task.store.claim_pending_band, subtask_id, node_id)
        if band is None:
            return None
        return SubtaskSpec(subtask_id, subtask_params(subtask_id, band), [SCENE_RESOURCE])

    async def has_pending_subtasks(self, task_id: str) -> bool:
        async with self._using(task_id) as task:
            with storage_errors("reading the task's state"):
                return await self._db(task.store.has_pending)

    async def verify(self, task_id: str, subtask_id: str) -> VerifyOutcome:
        """Check a subtask's result; merge it if accepted, else put its band back to pending.

        The answer is always the result of a completed check (never "awaiting data"). The
        check runs to its end even if the caller goes away meanwhile; asking again while it
        runs joins it, and asking again afterwards answers the recorded verdict.
        """
        check_name("subtask_id", subtask_id)
        async with self._using(task_id) as task:
            running = task.verifications.get(subtask_id)
            if running is None:
                running = self._start_verifying(task, subtask_id)
            # Shielded: a cancelled rpc (deadline, closed connection) must not cut the
            # verification off between the band's files and the commit that records them.
            return await asyncio.shield(running)

    def _start_verifying(self, task: _Task, subtask_id: str) -> asyncio.Future[VerifyOutcome]:
        running = asyncio.ensure_future(self._verify(task, subtask_id))
        task.verifications[subtask_id] = running
        self._hold(task)

        def done(future: asyncio.Future) -> None:
            if task.verifications.get(subtask_id) is future:
                del task.verifications[subtask_id]
            if not future.cancelled():
                future.exception()  # its callers got it, or went away; either way, seen
            self._let_go(task)

        running.add_done_callback(done)
        return running

    async def _verify(self, task: _Task, subtask_id: str) -> VerifyOutcome:
        result_dir = task.task_dir.result_dir(subtask_id)
        async with task.lock:
            with storage_errors("starting the verification"):
                started = await self._db(_start_verification, task.task_dir, task.store, subtask_id)
            if isinstance(started, VerifyOutcome):
                return started  # verified before: the recorded verdict
            band = started
            cancel = threading.Event()
            task.cancels[subtask_id] = cancel

        from fractal_app.bandfile import BandMeta
        from fractal_app.verify import verify_band

        meta = BandMeta(
            task.task_dir.task_id, subtask_id, band.row_start, band.row_stop, task.scene.output
        )
        try:
            verdict = await self._run(verify_band, task.scene, meta, result_dir, cancel)
            return await self._settle(task, subtask_id, band, verdict, cancel)
        except Aborted:
            raise  # the abort (or discard) released the band already
        except BaseException:
            # The check or the saving could not finish (file vanished, disk full, a bug):
            # the result stays unchecked, so the subtask is back to running and Verify may
            # be asked again. Should even this fail, the next Verify resumes it (see
            # _start_verification), and so does re-opening the task.
            cancel.set()
            with contextlib.suppress(Exception):
                async with task.lock:
                    await self._db(task.store.undo_verification, subtask_id)
            raise
        finally:
            task.cancels.pop(subtask_id, None)

    async def _settle(self, task: _Task, subtask_id: str, band: BandRow, verdict, cancel):
        """Record the verdict: a rejected band back to pending, an accepted one saved and
        merged. Under the task's lock, so no abort or discard slips in between."""
        async with task.lock:
            # An abort or a discard that came after the check: the store no longer gives this
            # subtask its band, and the answer must not say otherwise.
            sub = await self._db(task.store.subtask, subtask_id)
            if cancel.is_set() or sub.state != "verifying":
                raise Aborted(
                    f"the verification of subtask {subtask_id!r} was stopped by an abort or a"
                    f" discard ({sub.reason or sub.state})"
                )
            if not verdict.accepted:
                with storage_errors("recording a rejected band"):
                    await self._db(
                        task.store.finish_verification, subtask_id, False, verdict.reason
                    )
                logger.info(
                    "task %s: subtask %s rejected: %s",
                    task.task_dir.task_id,
                    subtask_id,
                    verdict.reason,
                )
                return VerifyOutcome(False, verdict.reason)
            with storage_errors("saving the accepted band"):
                await self._file_work(
                    task_files.save_band_values, task.task_dir, band.index, verdict.values
                )
            counts = await self._db(task.store.counts)
            last = counts.get("accepted", 0) == sum(counts.values()) - 1
            if last:
                # The last band: the final file exists before the acceptance is committed, so
                # a crash in between leaves a band that verifies again, never a finished task
                # without its image.
                stored = await self._db(task.store.bands)
                bands = [b if b.index != band.index else _accepted(b) for b in stored]
                with storage_errors("writing the final image"):
                    await self._file_work(
                        task_files.assemble_result, task.task_dir, task.scene, bands
                    )
            try:
                with storage_errors("recording the accepted band"):
                    await self._db(task.store.finish_verification, subtask_id, True, verdict.reason)
            except BaseException:
                if last:  # no finished image for a task whose last band is not accepted
                    with contextlib.suppress(Exception):
                        await self._file_work(task_files.remove_results, task.task_dir)
                raise
            task.finished = task.finished or last
        logger.info(
            "task %s: subtask %s accepted (band %d)", task.task_dir.task_id, subtask_id, band.index
        )
        return VerifyOutcome(True, verdict.reason)

    async def discard_subtasks(self, task_id: str, subtask_ids: Sequence[str]) -> list[str]:
        """Accepted (or still running) subtasks give their bands back; returns the ids."""
        for subtask_id in subtask_ids:
            check_name("subtask_id", subtask_id)
        async with self._using(task_id) as task, task.lock:
            for subtask_id in subtask_ids:
                await self._db(task.store.subtask, subtask_id)  # NotFound before any change
            for subtask_id in subtask_ids:
                if subtask_id in task.cancels:
                    task.cancels[subtask_id].set()
            with storage_errors("discarding subtasks"):
                discarded = await self._db(task.store.discard, list(subtask_ids))
            # Committed first, then the file goes: a crash in between leaves a result file
            # that re-opening the task removes, never a merged image holding a discarded band.
            if discarded and not await self._db(task.store.all_accepted):
                await self._file_work(task_files.remove_results, task.task_dir)
            task.finished = await self._db(_is_finished, task.store)
        return discarded

    async def abort_subtask(self, task_id: str, subtask_id: str) -> None:
        check_name("subtask_id", subtask_id)
        async with self._using(task_id) as task:
            cancel = task.cancels.get(subtask_id)
            if cancel is not None:
                cancel.set()
            async with task.lock:
                with storage_errors("aborting the subtask"):
                    await self._db(task.store.abort_subtask, subtask_id)

    async def abort_task(self, task_id: str) -> None:
        async with self._using(task_id) as task:
            for cancel in list(task.cancels.values()):
                cancel.set()
            async with task.lock:
                with storage_errors("aborting the task"):
                    await self._db(task.store.abort_task)
                task.finished = True

    async def run_benchmark(self) -> float:
        from fractal_app import render

        return await self._run(render.run_benchmark)


# ---- helpers ------------------------------------------------------------------------------


def _parse_scene(params):
    # Imported on first use: pydantic and NumPy would double the time to SERVING.
    from fractal_app.scene import parse_scene

    return parse_scene(params)


def _open_store(task_dir: RequestorTaskDir, task_id: str) -> TaskStore | None:
    """The task's store, or None if it has none; never through a symlinked folder."""
    if not os.path.lexists(task_dir.state):
        return None
    task_dir.checked(task_dir.state)
    return TaskStore.open(task_dir.database, task_id)


def _exists(task_dir: RequestorTaskDir, task_id: str) -> bool:
    store = _open_store(task_dir, task_id)
    if store is None:
        return False
    store.close()
    return True


def _is_finished(store: TaskStore) -> bool:
    return store.aborted or store.all_accepted()


def _start_verification(
    task_dir: RequestorTaskDir, store: TaskStore, subtask_id: str
) -> BandRow | VerifyOutcome:
    """running -> verifying, if the task is live, the subtask is running and its file is
    here; for a subtask verified before, its recorded verdict."""
    if store.aborted:
        raise FailedPrecondition(f"task {store.task_id!r} was aborted; nothing is verified")
    sub = store.subtask(subtask_id)  # NotFound for an unknown id
    if sub.state == "accepted":
        return VerifyOutcome(True, sub.reason)
    if sub.state == "failed":
        return VerifyOutcome(False, sub.reason)
    result_dir = task_dir.result_dir(subtask_id)
    task_dir.checked(task_dir.subtask_outputs)
    if sub.state == "running" and not task_files.has_result_file(result_dir):
        raise FailedPrecondition(
            f"no result for subtask {subtask_id!r} yet: expected the provider's file in"
            f" {SUBTASK_OUTPUTS_DIR}/{subtask_id}/"
        )
    # Called only when no check of this subtask runs here: a "verifying" one was cut off.
    return store.start_verification(subtask_id, resume=True)


def _needs_colour_scale(scene) -> bool:
    from fractal_app.color_scale import needs_knots

    return needs_knots(scene)


def _resolve_colour_scale(scene):
    from fractal_app.color_scale import resolve

    return resolve(scene)


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
