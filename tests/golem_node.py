"""The app driven the way a Golem node drives it: grpclib over h2, not grpcio.

golemfactory/task-api's ``client.py`` is the node's client: a grpclib ``Channel`` (with the
``ssl.SSLContext`` of its ``ssl.py``, which offers no ALPN), a health poll until SERVING on
that very channel, then the rpcs through the services' stubs; a provider is waited for until
it has exited after its one request. This module plays that part for the tests, with the app
started as ``python -m fractal_app ROLE 0`` (the image's entrypoint).

The stubs are built from the services' descriptors exactly as grpclib's protoc plugin would
write them (one ``UnaryUnaryMethod`` per rpc, named ``/package.Service/Method``), so the tests
need no generated grpclib code. grpclib ships its own health messages, which clash with
grpcio's in protobuf's descriptor pool; the health stub therefore uses grpcio-health's
message classes, identical on the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from pathlib import Path
from types import ModuleType

from grpc_health.v1 import health_pb2
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.exceptions import StreamTerminatedError

from fractal_app.launcher import ServerProcess, launch
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.taskdir import RequestorTaskDir

START_TIMEOUT_S = 60.0
CONNECTION_TIMEOUT_S = 15.0  # a node polls health for about 15 s
POLL_S = 0.01
RPC_TIMEOUT_S = 120.0


class Stub:
    """A grpclib stub for one service: an attribute per unary rpc, as grpclib generates them."""

    def __init__(self, channel: Channel, module: ModuleType, service_name: str) -> None:
        service = module.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue  # the Task API has none; health's Watch is not a node's business
            handler = UnaryUnaryMethod(
                channel,
                f"/{service.full_name}/{method.name}",
                getattr(module, method.input_type.name),
                getattr(module, method.output_type.name),
            )
            setattr(self, method.name, handler)


def client_ssl_context(client_key: Path, client_cert: Path, server_cert: Path) -> ssl.SSLContext:
    """upstream ``ssl.create_ssl_context`` for a client: no ALPN offered, hostname checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_cert_chain(str(client_cert), str(client_key))
    context.load_verify_locations(str(server_cert))
    return context


async def wait_for_channel(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = CONNECTION_TIMEOUT_S,
    poll_s: float = POLL_S,
) -> Channel:
    """upstream ``_wait_for_channel``: a fresh channel per try until health says SERVING.

    Returns the channel that saw SERVING; the node sends its rpcs on it at once.
    """
    deadline = time.monotonic() + timeout
    request = health_pb2.HealthCheckRequest(service="")
    while time.monotonic() < deadline:
        channel = Channel(host, port, ssl=ssl_context)
        try:
            reply = await Stub(channel, health_pb2, "Health").Check(request, timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return channel
        except (TimeoutError, StreamTerminatedError, ConnectionError, ssl.SSLError):
            pass
        channel.close()
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"{host}:{port} did not answer SERVING within {timeout} s")


class AppProcess:
    """One ``python -m fractal_app ROLE 0`` process: upstream's TaskApiService."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.role = server.role
        self.work_dir = server.work_dir
        self.process = server.process
        self.port = server.port

    def running(self) -> bool:
        return self.process.poll() is None

    async def wait_until_shutdown_complete(self, timeout: float = 30.0) -> int:
        try:
            return await self.server.wait_async(timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self.role} still running {timeout} s after its last rpc"
            ) from None

    def stop(self) -> None:
        self.server.kill()

    def log(self) -> str:
        return self.server.log()


async def start_app(
    role: str, work_dir: Path, prelude: str = "", env: dict[str, str] | None = None
) -> AppProcess:
    """Start the entrypoint on 127.0.0.1, port 0; return once it has written its port.

    ``prelude`` is Python run in the app process before the entrypoint (tests use it to
    shorten a tunable); the entrypoint itself is ``fractal_app.__main__`` unchanged.
    """
    server = launch(role, work_dir, prelude=prelude, env={**os.environ, **(env or {})})
    await server.wait_for_port_async(START_TIMEOUT_S, POLL_S)
    return AppProcess(server)


class ProviderClient:
    """upstream ``ProviderAppClient``: one rpc, then wait for the process to exit."""

    def __init__(self, app: AppProcess, channel: Channel) -> None:
        self.app = app
        self.channel = channel
        self.stub = Stub(channel, pb, "ProviderApp")

    @classmethod
    async def create(cls, app: AppProcess, ssl_context: ssl.SSLContext | None = None):
        return cls(app, await wait_for_channel("127.0.0.1", app.port, ssl_context))

    async def _one_rpc(self, call):
        try:
            return await call
        finally:
            try:
                await self.app.wait_until_shutdown_complete()
            finally:
                self.channel.close()

    async def compute(self, task_id: str, subtask_id: str, params: dict) -> Path:
        request = pb.ComputeRequest(
            task_id=task_id, subtask_id=subtask_id, subtask_params_json=json.dumps(params)
        )
        reply = await self._one_rpc(self.stub.Compute(request, timeout=RPC_TIMEOUT_S))
        return Path(reply.output_filepath)

    async def run_benchmark(self) -> float:
        call = self.stub.RunBenchmark(pb.RunBenchmarkRequest(), timeout=RPC_TIMEOUT_S)
        return (await self._one_rpc(call)).score

    async def shutdown(self) -> None:
        await self._one_rpc(self.stub.Shutdown(pb.ShutdownRequest(), timeout=RPC_TIMEOUT_S))


class RequestorClient:
    """upstream ``RequestorAppClient``: the long-lived service's rpcs."""

    def __init__(self, app: AppProcess, channel: Channel) -> None:
        self.app = app
        self.channel = channel
        self.stub = Stub(channel, pb, "RequestorApp")

    @classmethod
    async def create(cls, app: AppProcess, ssl_context: ssl.SSLContext | None = None):
        return cls(app, await wait_for_channel("127.0.0.1", app.port, ssl_context))

    async def create_task(self, task_id: str, max_subtasks_count: int, params: dict):
        RequestorTaskDir.of(self.app.work_dir, task_id).prepare()
        request = pb.CreateTaskRequest(
            task_id=task_id,
            max_subtasks_count=max_subtasks_count,
            task_params_json=json.dumps(params),
        )
        return await self.stub.CreateTask(request, timeout=RPC_TIMEOUT_S)

    async def next_subtask(self, task_id: str, subtask_id: str, node: str):
        request = pb.NextSubtaskRequest(task_id=task_id, subtask_id=subtask_id, opaque_node_id=node)
        reply = await self.stub.NextSubtask(request, timeout=RPC_TIMEOUT_S)
        if not reply.HasField("subtask"):
            return None
        return json.loads(reply.subtask.subtask_params_json), list(reply.subtask.resources)

    async def verify(self, task_id: str, subtask_id: str) -> tuple[int, str]:
        request = pb.VerifyRequest(task_id=task_id, subtask_id=subtask_id)
        reply = await self.stub.Verify(request, timeout=RPC_TIMEOUT_S)
        return reply.result, reply.reason

    async def has_pending_subtasks(self, task_id: str) -> bool:
        request = pb.HasPendingSubtasksRequest(task_id=task_id)
        reply = await self.stub.HasPendingSubtasks(request, timeout=RPC_TIMEOUT_S)
        return reply.has_pending_subtasks

    async def shutdown(self) -> None:
        try:
            await self.stub.Shutdown(pb.ShutdownRequest(), timeout=RPC_TIMEOUT_S)
        finally:
            try:
                await self.app.wait_until_shutdown_complete()
            finally:
                self.channel.close()
