"""Render on one machine by playing the Golem node: a requestor and providers over real gRPC.

Everything a node does is done here, in the same order and through the same entrypoint: the
requestor and every provider are separate ``python -m fractal_app`` processes with their own
work directories (forked, with the imports done, from a :mod:`fractal_app.forkserver`, or
each started as a fresh interpreter where there is none); the task folder is prepared as a
node prepares it; each subtask's resources are copied to a fresh provider, its result copied
back to ``subtask_outputs/{subtask_id}/``, and the requestor verifies it. A band that fails
verification goes back to the requestor's pending list and is handed out again, a bounded
number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from fractal_app import forkserver, lifeline
from fractal_app.errors import AppError
from fractal_app.launcher import ServerProcess, ServerStartError, launch
from fractal_app.outputs import output_format
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc
from fractal_app.taskdir import ProviderTaskDir, RequestorTaskDir, check_relative_path

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
POLL_S = 0.01
# A band is given up after this many failed attempts (rejected result or provider error).
MAX_ATTEMPTS_PER_BAND = 3
# Default band size: at most about this many pixels (192 MiB of 8-bit RGB). A provider
# streams its band (one block of rows in memory), so the size costs it nothing; the bound is
# for the requestor, which decodes a band whole to verify it, and for the work redone when a
# band fails. Poster bands this big also outweigh a provider's fixed ~170 MiB of Python,
# NumPy and Numba, and pay its start-up fewer times.
PIXELS_PER_BAND = 1 << 26
# One band per provider, and one provider by default (the CLI's --providers). Every provider
# process costs about a CPU-second before its kernels run (interpreter, NumPy, Numba's
# registries, the cached kernels): measured, most of the lifecycle's overhead on one machine
# (benchmarks/README.md). On one machine each provider renders with every core, and renders
# its next block while it encodes this one (provider.rendered_ahead), so a second provider
# buys little but its start-up; a second band per provider cost another start-up, on the
# critical path.
BANDS_PER_PROVIDER = 1
# A scene whose worst case (every sample running to its iteration limit) is under this many
# inner-loop steps renders in well under a second on two cores (the 1920x1080 default
# Mandelbrot view is 2.1e9 steps at most, 0.15 s): a second provider would cost more in
# start-up than it saves, so such a scene is one band on one provider.
SMALL_SCENE_STEPS = 1 << 32


class LocalRenderError(AppError):
    """The one-machine render could not finish; the message says which step failed and why."""


@dataclass(frozen=True)
class LocalRenderReport:
    output: Path
    bands: int
    seconds: float
    rejected: int
    provider_errors: int


def default_subtasks(scene, providers: int) -> int:
    """Bands for ``scene`` on ``providers`` providers: one for a small scene, else one a
    provider, or one per PIXELS_PER_BAND pixels if that is more; never more than its rows."""
    from fractal_app.bands import worst_pixel_cost

    width, height = scene.width_px, scene.height_px
    if width * height * worst_pixel_cost(scene) < SMALL_SCENE_STEPS:
        return 1
    return min(
        height, max(BANDS_PER_PROVIDER * providers, math.ceil(width * height / PIXELS_PER_BAND))
    )


@dataclass(frozen=True)
class RenderPlan:
    """What the render needs of a valid scene before it starts: the output's kind and bit
    depth, the env, and the bands (``subtasks``: CreateTask's max_subtasks_count)."""

    output: str
    bit_depth: int
    env: str
    subtasks: int
    bands: int


def plan_render(scene_json: str, providers: int, subtasks: int | None) -> RenderPlan:
    """Validate the scene (scene.SceneError names the bad field) and plan its bands."""
    from fractal_app.bands import plan_bands
    from fractal_app.scene import parse_scene

    scene = parse_scene(scene_json)
    count = subtasks or default_subtasks(scene, providers)
    bands = len(plan_bands(scene.height_px, count))
    return RenderPlan(scene.output, scene.bit_depth, scene.env, count, bands)


def output_path_for(output: Path, scene_output: str) -> Path:
    """The file a render to ``output`` writes: an output format with a fixed file type
    (``counts``: TIFF) gives OUT its first suffix if OUT has none of them."""
    suffixes = output_format(scene_output).file_suffixes
    if suffixes and output.suffix.lower() not in suffixes:
        return output.with_suffix(suffixes[0])
    return output


def _launch(
    role: str,
    work_dir: Path,
    extra_args: list[str],
    log_level: str,
    forks: forkserver.ForkServer | None,
) -> ServerProcess:
    """Start a server process for ``work_dir``, its port file and log beside it (what --keep
    keeps), forked by ``forks`` if given; it dies with this process, even by SIGKILL."""
    return launch(
        role,
        work_dir,
        log_path=work_dir.with_name(f"{work_dir.name}.log"),
        port_file=work_dir.with_name(f"{work_dir.name}.port"),
        log_level=log_level,
        extra_args=extra_args,
        env=lifeline.child_environment(),
        forks=forks,
    )


async def _serving(server: ServerProcess) -> None:
    """Until ``server`` has written its port (it serves then); LocalRenderError if it exits
    first or does not serve within START_TIMEOUT_S."""
    try:
        await server.wait_for_port_async(START_TIMEOUT_S, POLL_S)
    except ServerStartError as error:
        raise LocalRenderError(str(error)) from None


class ProviderLauncher:
    """Starts provider processes, each in a fresh work directory, and reaps them all at the end.

    A launch returns at once: the process starts (to SERVING, then loading NumPy, Numba and
    the kernels in the background) while the caller does other work, such as starting the
    requestor or waiting for a band to hand out. A node may do this: a provider process needs
    nothing of its subtask until ``Compute``.
    """

    def __init__(
        self,
        root: Path,
        backend: str | None,
        log_level: str,
        forks: forkserver.ForkServer | None = None,
    ) -> None:
        self.folder = root / "providers"
        self.extra_args = ["--backend", backend] if backend else []
        self.log_level = log_level
        self.forks = forks
        self.children: set[ServerProcess] = set()
        self.starts: dict[ServerProcess, asyncio.Task] = {}

    def launch(self) -> ServerProcess:
        name = f"provider-{uuid.uuid4().hex}"
        work = self.folder / name
        work.mkdir(parents=True)
        provider = _launch("provider", work, self.extra_args, self.log_level, self.forks)
        self.children.add(provider)
        self.starts[provider] = asyncio.create_task(_serving(provider))
        return provider

    async def started(self, provider: ServerProcess) -> None:
        """Wait until ``provider`` serves; LocalRenderError if it failed to start."""
        await self.starts.pop(provider)

    async def retire(self, provider: ServerProcess) -> None:
        """Make sure ``provider`` is gone (it answers one request and exits by itself)."""
        start = self.starts.pop(provider, None)
        if start is not None:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
        await provider.kill_and_reap()
        self.children.discard(provider)

    async def retire_all(self) -> None:
        for provider in list(self.children):
            await self.retire(provider)


class LocalNode:
    """The node's side of one task: hands bands to providers until every band is accepted."""

    def __init__(
        self,
        root: Path,
        requestor: pb_grpc.RequestorAppStub,
        task_id: str,
        total_bands: int,
        launcher: ProviderLauncher,
        first_providers: list[ServerProcess],
        progress,
        band_timeout: float | None = None,
    ) -> None:
        self.root = root
        self.requestor = requestor
        self.task_id = task_id
        self.task_dir = RequestorTaskDir.of(root / "requestor", task_id)
        self.total = total_bands
        self.launcher = launcher
        self.first_providers = first_providers
        self.progress = progress
        self.band_timeout = band_timeout
        self.accepted = 0
        self.rejected = 0
        self.provider_errors = 0
        self.attempts: Counter[int] = Counter()
        self.changed = asyncio.Condition()
        # Counts finished subtasks, so a worker that found nothing to do knows when to look again.
        self.generation = 0
        # Copy-and-verify of finished subtasks, running while the workers go on.
        self.deliveries: set[asyncio.Task] = set()
        self.failure: Exception | None = None

    async def run(self) -> None:
        workers = [asyncio.create_task(self._worker(first)) for first in self.first_providers]
        try:
            await asyncio.gather(*workers)
            await asyncio.gather(*list(self.deliveries))
            self._raise_failure()
        finally:
            for task in (*workers, *self.deliveries):
                task.cancel()
            await asyncio.gather(*workers, *self.deliveries, return_exceptions=True)
            await self.launcher.retire_all()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def _bump(self) -> None:
        """A subtask finished (accepted, rejected or failed): wake the idle workers."""
        async with self.changed:
            self.generation += 1
            self.changed.notify_all()

    async def _worker(self, provider: ServerProcess | None) -> None:
        """One provider slot. The next provider process is launched as soon as the last one
        has answered, so its start-up overlaps the wait for a band instead of following it."""
        while self.accepted < self.total:
            self._raise_failure()
            generation = self.generation
            if provider is None:
                # Only for a band that is there to take: an idle provider loading Numba at
                # the end of a render would slow down the last bands still rendering.
                if not await self._has_pending():
                    await self._wait_for_change(generation)
                    continue
                provider = self.launcher.launch()
            subtask_id = uuid.uuid4().hex
            reply = await self.requestor.NextSubtask(
                pb.NextSubtaskRequest(
                    task_id=self.task_id, subtask_id=subtask_id, opaque_node_id="local"
                )
            )
            if not reply.HasField("subtask"):
                # Nothing to hand out now: the rest is with other providers or being
                # verified. Wait until one of them finishes (a rejected band comes back as
                # pending).
                await self._wait_for_change(generation)
                continue
            band = int(json.loads(reply.subtask.subtask_params_json)["band_index"])
            try:
                result = await self._compute(provider, subtask_id, reply.subtask)
            except LocalRenderError as error:
                self.provider_errors += 1
                await self.requestor.AbortSubtask(
                    pb.AbortSubtaskRequest(task_id=self.task_id, subtask_id=subtask_id)
                )
                await self._bump()
                self._count_attempt(band, f"the provider failed: {error}")
                continue
            finally:
                provider = None  # one request a process: the next band gets a new one
            # The result goes back and is verified while this worker already starts the next
            # provider: verification (decode + recompute) is requestor work, and waiting for
            # it would leave this provider slot idle.
            delivery = asyncio.create_task(self._deliver(subtask_id, band, result))
            self.deliveries.add(delivery)
            delivery.add_done_callback(self.deliveries.discard)

    async def _has_pending(self) -> bool:
        reply = await self.requestor.HasPendingSubtasks(
            pb.HasPendingSubtasksRequest(task_id=self.task_id)
        )
        return reply.has_pending_subtasks

    async def _wait_for_change(self, generation: int) -> None:
        """Until a subtask finishes (accepted, rejected or failed) after ``generation``."""
        async with self.changed:
            await self.changed.wait_for(
                lambda: self.generation != generation
                or self.accepted >= self.total
                or self.failure is not None
            )

    async def _deliver(self, subtask_id: str, band: int, result: Path) -> None:
        """Copy a result to the requestor (as a node does) and have it verified."""
        try:
            target = self.task_dir.result_dir(subtask_id)
            target.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, result, target / result.name)
            verdict = await self.requestor.Verify(
                pb.VerifyRequest(task_id=self.task_id, subtask_id=subtask_id)
            )
            if verdict.result == pb.VerifyReply.SUCCESS:
                self.accepted += 1
                self.progress.update(1)
            else:
                self.rejected += 1
                logger.warning("band %d rejected: %s", band, verdict.reason)
                self._count_attempt(band, f"its result was rejected: {verdict.reason}")
        except Exception as error:  # reported by run(), which stops every worker
            if self.failure is None:
                self.failure = error
        finally:
            await self._bump()

    def _count_attempt(self, band: int, why: str) -> None:
        self.attempts[band] += 1
        if self.attempts[band] >= MAX_ATTEMPTS_PER_BAND:
            raise LocalRenderError(
                f"band {band} failed {self.attempts[band]} times; giving up. Last time {why}"
            )

    async def _compute(
        self, provider: ServerProcess, subtask_id: str, subtask: pb.SubtaskReply
    ) -> Path:
        """A fresh provider process renders the subtask; the path of its result file."""
        work = provider.work_dir
        provider_dir = ProviderTaskDir(work)
        provider_dir.prepare()
        for name in subtask.resources:
            shutil.copyfile(self.task_dir.subtask_inputs / name, provider_dir.resource(name))
        try:
            await self.launcher.started(provider)
            async with grpc.aio.insecure_channel(provider.address) as channel:
                try:
                    reply = await pb_grpc.ProviderAppStub(channel).Compute(
                        pb.ComputeRequest(
                            task_id=self.task_id,
                            subtask_id=subtask_id,
                            subtask_params_json=subtask.subtask_params_json,
                        ),
                        timeout=self.band_timeout,
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise LocalRenderError(
                            f"the provider took longer than the band timeout"
                            f" ({self.band_timeout:g} s) and was stopped"
                        ) from None
                    raise LocalRenderError(
                        f"Compute failed with {error.code().name}: {error.details()}"
                    ) from None
            code = await provider.wait_async(timeout=30)
            if code != 0:
                raise LocalRenderError(f"the provider exited with {code}:\n{provider.log_tail()}")
        finally:
            await self.launcher.retire(provider)
        try:
            result = check_relative_path("output_filepath", reply.output_filepath, work)
        except AppError as error:
            raise LocalRenderError(str(error)) from None
        if result.is_symlink() or not result.is_file():
            raise LocalRenderError(f"the provider's result {reply.output_filepath!r} is not a file")
        return result


class _Reporting:
    """The progress bar, also telling a caller (the explorer's page) of each accepted band."""

    def __init__(self, bar, report: Callable[[int, int], None], total: int) -> None:
        self.bar = bar
        self.report = report
        self.total = total
        # Counted here: a disabled tqdm bar (no terminal) does not count.
        self.done = 0
        report(0, total)

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        self.report(self.done, self.total)


def _deliver_output(result: Path, output: Path, may_move: bool) -> None:
    """Put the final file at ``output`` atomically: a rename, or a copy and a rename."""
    if may_move:
        try:
            os.replace(result, output)
            return
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
    tmp = output.with_name(f".{output.name}.{os.getpid()}.partial")
    shutil.copyfile(result, tmp)
    os.replace(tmp, output)


async def render_locally(
    scene_json: str,
    output: Path,
    providers: int = 1,
    subtasks: int | None = None,
    backend: str | None = None,
    band_timeout: float | None = None,
    show_progress: bool = True,
    keep: Path | None = None,
    log_level: str = "WARNING",
    on_progress: Callable[[int, int], None] | None = None,
    fork_server: forkserver.ForkServer | None = None,
    plan: RenderPlan | None = None,
) -> LocalRenderReport:
    """Run the whole Golem lifecycle on this machine and write the final image to ``output``.

    ``band_timeout``: seconds a provider may take for its band (None: no limit); past it the
    provider is killed and the band handed out again, like any other failed attempt.
    ``keep``: a directory to hold the work directories (and logs) instead of a temporary one.
    ``on_progress``: called with (bands accepted, bands in all) after each accepted band.
    ``fork_server``: the fork server to start the processes from (see
    :mod:`fractal_app.forkserver`), already loading, which this closes; by default one is
    started here where the platform allows it. ``plan``: :func:`plan_render` of the scene,
    if the caller made it already.

    SIGTERM and SIGHUP stop it as Ctrl-C does: every process it started is reaped and the
    temporary folder removed, then LocalRenderError says which signal. After a SIGKILL its
    processes die with it and a watchdog removes the folder (see :mod:`fractal_app.lifeline`).
    """
    main = asyncio.current_task()
    assert main is not None
    with _cancelled_by_signals(main) as received:
        try:
            return await _render_locally(
                scene_json,
                output,
                providers,
                subtasks,
                backend,
                band_timeout,
                show_progress,
                keep,
                log_level,
                on_progress,
                fork_server,
                plan,
            )
        except asyncio.CancelledError:
            if not received:
                raise
            main.uncancel()
            raise LocalRenderError(
                f"stopped by {received[0].name}; the processes it started are gone and its"
                " temporary folder is removed"
            ) from None


@contextlib.contextmanager
def _cancelled_by_signals(main: asyncio.Task):
    """SIGTERM and SIGHUP cancel ``main`` (once: a second signal must not cut the clean-up
    short); yields the list of signals received."""
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []
    installed: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        if not received:
            main.cancel()
        received.append(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_DFL:
            continue  # the program that called us handles it (a web server, say): its own
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller owns signals there
    try:
        yield received
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _render_locally(
    scene_json: str,
    output: Path,
    providers: int,
    subtasks: int | None,
    backend: str | None,
    band_timeout: float | None,
    show_progress: bool,
    keep: Path | None,
    log_level: str,
    on_progress: Callable[[int, int], None] | None,
    fork_server: forkserver.ForkServer | None,
    plan: RenderPlan | None,
) -> LocalRenderReport:
    from tqdm import tqdm

    if providers < 1:
        raise LocalRenderError("--providers must be at least 1")
    if subtasks is not None and subtasks < 1:
        raise LocalRenderError("--subtasks must be at least 1")
    started = time.monotonic()

    async with contextlib.AsyncExitStack() as stack:
        if keep is None:
            root = Path(tempfile.mkdtemp(prefix="fractal-app-"))
            try:
                watchdog = await lifeline.start_watchdog(root)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            # Run last to first: the folder is removed, then the watchdog let go.
            stack.push_async_callback(watchdog.release)
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        else:
            root = Path(keep)
            root.mkdir(parents=True, exist_ok=True)
            if any(root.iterdir()):
                raise LocalRenderError(f"{root} is not empty; give --keep an empty or new folder")
        (root / "requestor").mkdir()
        (root / "providers").mkdir()
        forks = fork_server
        if forks is None and forkserver.available():
            forks = forkserver.ForkServer()
        if forks is not None:
            stack.callback(forks.close)  # once every process it forked is reaped (below)
        launcher = ProviderLauncher(root, backend, log_level, forks)
        requestor = _launch("requestor", root / "requestor", [], log_level, forks)
        # The requestor starts first: it needs nothing of the scene and has the longest way
        # to its first answer (CreateTask's cost estimate loads Numba and its kernels), so
        # this process validates the scene (pydantic's import and all) meanwhile.
        requestor_start = asyncio.create_task(_serving(requestor))
        try:
            plan = plan or plan_render(scene_json, providers, subtasks)
            count, total = plan.subtasks, plan.bands
            output = output_path_for(Path(output), plan.output)
            # The first providers start with the requestor: their start-up and Numba
            # loading overlap the requestor's and the task's creation.
            first_providers = [launcher.launch() for _ in range(min(providers, total))]
            await requestor_start
            async with grpc.aio.insecure_channel(requestor.address) as channel:
                stub = pb_grpc.RequestorAppStub(channel)
                task_id = f"local-{uuid.uuid4().hex}"
                task_dir = RequestorTaskDir.of(root / "requestor", task_id)
                task_dir.prepare()
                try:
                    await stub.CreateTask(
                        pb.CreateTaskRequest(
                            task_id=task_id, max_subtasks_count=count, task_params_json=scene_json
                        )
                    )
                except grpc.aio.AioRpcError as error:
                    raise LocalRenderError(f"CreateTask: {error.details()}") from None
                bar = tqdm(
                    total=total,
                    unit="band",
                    desc="rendering",
                    disable=not (show_progress and sys.stderr.isatty()),
                )
                with bar:
                    progress = bar if on_progress is None else _Reporting(bar, on_progress, total)
                    node = LocalNode(
                        root, stub, task_id, total, launcher, first_providers, progress,
                        band_timeout,
                    )
                    try:
                        await node.run()
                    except grpc.aio.AioRpcError as error:
                        raise LocalRenderError(
                            f"the requestor answered {error.code().name}: {error.details()}\n"
                            f"{requestor.log_tail()}"
                        ) from None
                results = sorted(task_dir.task_outputs.iterdir())
                if len(results) != 1:
                    raise LocalRenderError(
                        f"task_outputs holds {[p.name for p in results]}, expected one file"
                    )
                output.parent.mkdir(parents=True, exist_ok=True)
                # The work directory is thrown away: move the result out when it can be
                # renamed (same file system), copy it otherwise.
                await asyncio.to_thread(_deliver_output, results[0], output, keep is None)
                await stub.Shutdown(pb.ShutdownRequest())
            await requestor.wait_async(timeout=30)
        finally:
            requestor_start.cancel()
            await asyncio.gather(requestor_start, return_exceptions=True)
            await launcher.retire_all()
            await requestor.kill_and_reap()
    return LocalRenderReport(
        output, total, time.monotonic() - started, node.rejected, node.provider_errors
    )
