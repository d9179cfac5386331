"""The gRPC adapters: decode a request, make one typed domain call, encode the reply.

:class:`RequestorServicer` drives :class:`fractal_app.requestor.Requestor`,
:class:`ProviderServicer` drives :class:`fractal_app.provider.Provider`; nothing else happens
here. :func:`fractal_app.server.rpc_errors` turns the domain errors into gRPC statuses. The
services (:class:`RequestorService`, :class:`ProviderService`) are what
``python -m fractal_app ROLE`` serves: the domain app, its adapter and its start-up preload.

Imported by the short-lived provider at start-up: the domain modules load only for the role
that is served, and NumPy, Numba and the kernels only in the background (see
:mod:`fractal_app.startup`).
"""

from __future__ import annotations

import asyncio
import functools
import gc
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from fractal_app import startup
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc
from fractal_app.server import rpc_errors

if TYPE_CHECKING:
    from fractal_app.provider import Provider
    from fractal_app.requestor import Requestor

Context = grpc.aio.ServicerContext


class _RunsBenchmark:
    """RunBenchmark, the same rpc on both services: the app's score."""

    app: Requestor | Provider

    @rpc_errors
    async def RunBenchmark(  # noqa: N802
        self, request: pb.RunBenchmarkRequest, context: Context
    ) -> pb.RunBenchmarkReply:
        return pb.RunBenchmarkReply(score=await self.app.run_benchmark())


class RequestorServicer(_RunsBenchmark, pb_grpc.RequestorAppServicer):
    """The requestor's rpcs over :class:`~fractal_app.requestor.Requestor`."""

    def __init__(self, app: Requestor, stop: asyncio.Event) -> None:
        self.app = app
        self.stop = stop

    @rpc_errors
    async def CreateTask(  # noqa: N802 - gRPC method names
        self, request: pb.CreateTaskRequest, context: Context
    ) -> pb.CreateTaskReply:
        created = await self.app.create_task(
            request.task_id, request.max_subtasks_count, request.task_params_json
        )
        return pb.CreateTaskReply(
            env_id=created.env_id,
            prerequisites_json=created.prerequisites_json,
            inf_requirements=pb.Infrastructure(min_memory_mib=created.min_memory_mib),
        )

    @rpc_errors
    async def NextSubtask(  # noqa: N802
        self, request: pb.NextSubtaskRequest, context: Context
    ) -> pb.NextSubtaskReply:
        spec = await self.app.next_subtask(
            request.task_id, request.subtask_id, request.opaque_node_id
        )
        if spec is None:
            return pb.NextSubtaskReply()
        return pb.NextSubtaskReply(
            subtask=pb.SubtaskReply(subtask_params_json=spec.params_json, resources=spec.resources)
        )

    @rpc_errors
    async def Verify(self, request: pb.VerifyRequest, context: Context) -> pb.VerifyReply:  # noqa: N802
        outcome = await self.app.verify(request.task_id, request.subtask_id)
        result = pb.VerifyReply.SUCCESS if outcome.accepted else pb.VerifyReply.FAILURE
        return pb.VerifyReply(result=result, reason=outcome.reason)

    @rpc_errors
    async def DiscardSubtasks(  # noqa: N802
        self, request: pb.DiscardSubtasksRequest, context: Context
    ) -> pb.DiscardSubtasksReply:
        ids = await self.app.discard_subtasks(request.task_id, list(request.subtask_ids))
        return pb.DiscardSubtasksReply(discarded_subtask_ids=ids)

    @rpc_errors
    async def HasPendingSubtasks(  # noqa: N802
        self, request: pb.HasPendingSubtasksRequest, context: Context
    ) -> pb.HasPendingSubtasksReply:
        pending = await self.app.has_pending_subtasks(request.task_id)
        return pb.HasPendingSubtasksReply(has_pending_subtasks=pending)

    @rpc_errors
    async def AbortTask(  # noqa: N802
        self, request: pb.AbortTaskRequest, context: Context
    ) -> pb.AbortTaskReply:
        await self.app.abort_task(request.task_id)
        return pb.AbortTaskReply()

    @rpc_errors
    async def AbortSubtask(  # noqa: N802
        self, request: pb.AbortSubtaskRequest, context: Context
    ) -> pb.AbortSubtaskReply:
        await self.app.abort_subtask(request.task_id, request.subtask_id)
        return pb.AbortSubtaskReply()

    @rpc_errors
    async def Shutdown(  # noqa: N802
        self, request: pb.ShutdownRequest, context: Context
    ) -> pb.ShutdownReply:
        self.stop.set()
        return pb.ShutdownReply()


class ProviderServicer(_RunsBenchmark, pb_grpc.ProviderAppServicer):
    """The provider's rpcs over :class:`~fractal_app.provider.Provider`."""

    def __init__(self, app: Provider) -> None:
        self.app = app

    @rpc_errors
    async def Compute(  # noqa: N802
        self, request: pb.ComputeRequest, context: Context
    ) -> pb.ComputeReply:
        path = await self.app.compute(
            request.task_id, request.subtask_id, request.subtask_params_json
        )
        return pb.ComputeReply(output_filepath=path)

    @rpc_errors
    async def Shutdown(  # noqa: N802
        self, request: pb.ShutdownRequest, context: Context
    ) -> pb.ShutdownReply:
        self.app.stop.set()
        return pb.ShutdownReply()


class RequestorService:
    """What ``python -m fractal_app requestor`` serves: the domain app behind its adapter."""

    def __init__(self, work_dir: Path, stop: asyncio.Event) -> None:
        from fractal_app.requestor import Requestor

        self.app = Requestor(work_dir)
        self.servicer = RequestorServicer(self.app, stop)
        # The heavy modules and kernels load in the background from the start, beside the
        # server's own start-up, so that a CreateTask sent the moment the server is SERVING
        # waits as little as possible for them. (Tasks need no loading: each is re-opened
        # from its folder when an rpc first names it.)
        resume_gc = not gc.isenabled()  # the entrypoint paused it for the start-up
        self.app.preload = startup.Preload(functools.partial(startup.preload_requestor, resume_gc))

    def register(self, server: grpc.aio.Server) -> None:
        from fractal_app.decoding import add_servicer

        add_servicer(self.servicer, server, pb_grpc.add_RequestorAppServicer_to_server)

    def serving(self) -> None:
        """Called once the server answers SERVING (the preload started in __init__)."""

    def close(self) -> None:
        self.app.close()


class ProviderService:
    """What ``python -m fractal_app provider`` serves."""

    def __init__(self, work_dir: Path, stop: asyncio.Event, backend: str | None = None) -> None:
        from fractal_app.provider import Provider

        self.app = Provider(work_dir, stop, backend)
        self.servicer = ProviderServicer(self.app)

    def register(self, server: grpc.aio.Server) -> None:
        from fractal_app.decoding import add_servicer

        add_servicer(self.servicer, server, pb_grpc.add_ProviderAppServicer_to_server)

    def serving(self) -> None:
        """Called once the server answers SERVING: load the heavy modules, then the band
        kernels the request most likely runs, in the background.

        Every request needs NumPy, Numba and the renderer (about half a CPU-second of imports
        and Numba set-up) and its kernels, and a node usually sends the request a little
        after the health check succeeds, or launches providers ahead of their subtasks;
        loading them now overlaps that gap instead of adding to the request's time. The
        request waits for the preload to finish rather than load beside it (see
        :class:`startup.Preload`).
        """
        # The entrypoint paused the collector for the start-up; the request resumes it.
        self.app.gc_paused = not gc.isenabled()
        app = self.app

        def load() -> None:
            startup.preload_provider(False)
            startup.warm_band_kernels(app.shipped_scene, app.backend)

        self.app.preload = startup.Preload(load)

    def close(self) -> None:
        pass
