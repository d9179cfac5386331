"""Start ``python -m fractal_app ROLE 0`` processes on 127.0.0.1 and learn their port.

The one launcher of the app's servers, shared by local mode (:mod:`fractal_app.local`), the
tests and the benchmarks: each starts the image's entrypoint as a node would, on port 0 with
``--port-file``; the server writes the port it bound once it answers SERVING. Waiting is a
bounded poll on that file (never a sleep of a guessed length), and a process that exits
meanwhile is reported with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

    from fractal_app.forkserver import ForkedProcess, ForkServer
    from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc

START_TIMEOUT_S = 60.0
POLL_S = 0.01


class ServerStartError(RuntimeError):
    """The server exited before it served, or did not serve in time; the message has its log."""


def server_command(
    role: str,
    work_dir: Path,
    port_file: Path,
    log_level: str = "INFO",
    extra_args: Sequence[str] = (),
    prelude: str = "",
) -> list[str]:
    """The command line of ``python -m fractal_app ROLE 0`` serving ``work_dir`` on 127.0.0.1.

    ``prelude``: Python run in the process before the entrypoint (tests shorten a tunable
    with it); the entrypoint itself runs unchanged.
    """
    args = [
        role,
        "0",
        "--work-dir",
        str(work_dir),
        "--port-file",
        str(port_file),
        "--host",
        "127.0.0.1",
        "--log-level",
        log_level,
        *extra_args,
    ]
    if not prelude:
        return [sys.executable, "-m", "fractal_app", *args]
    code = (
        f"{prelude}\nimport sys\nfrom fractal_app.__main__ import main, exit_without_finalizing\n"
        "exit_without_finalizing(main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *args]


@dataclass(eq=False)  # compared and hashed by identity: a process is itself
class ServerProcess:
    """A started server process: its port once it serves, its log, and (for tests and
    benchmarks) a blocking channel to it."""

    role: str
    work_dir: Path
    process: subprocess.Popen | ForkedProcess  # ForkedProcess: a fork server's child
    port_file: Path
    log_path: Path
    credentials: grpc.ChannelCredentials | None = None
    started_at: float = 0.0  # time.perf_counter() just before Popen
    port: int = 0
    port_file_s: float = 0.0  # start -> port file written (the server says it is SERVING)
    serving_s: float = 0.0  # start -> first health Check answering SERVING (wait_serving)
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---- waiting for the port --------------------------------------------------------------

    def _port_written(self, deadline: float) -> bool:
        """Whether the port file is there (the port read); ServerStartError if the process
        has exited or the deadline (a time.perf_counter()) has passed."""
        if self.port_file.exists():
            self.port = int(self.port_file.read_text())
            self.port_file_s = time.perf_counter() - self.started_at
            return True
        if self.process.poll() is not None:
            raise ServerStartError(
                f"the {self.role} exited with {self.process.returncode} at start-up:\n"
                + self.log_tail()
            )
        if time.perf_counter() > deadline:
            raise ServerStartError(
                f"the {self.role} did not start within {deadline - self.started_at:.0f} s:\n"
                + self.log_tail()
            )
        return False

    def wait_for_port(self, timeout: float = START_TIMEOUT_S, poll_s: float = POLL_S) -> int:
        """Block until the server has written its port (it serves then); the port. A server
        that does not is killed and reaped before ServerStartError says why."""
        deadline = self.started_at + timeout
        try:
            while not self._port_written(deadline):
                time.sleep(poll_s)
        except ServerStartError:
            self.kill()
            raise
        return self.port

    async def wait_for_port_async(
        self, timeout: float = START_TIMEOUT_S, poll_s: float = POLL_S
    ) -> int:
        """:meth:`wait_for_port` for an event loop."""
        deadline = self.started_at + timeout
        try:
            while not self._port_written(deadline):
                await asyncio.sleep(poll_s)
        except ServerStartError:
            await self.kill_and_reap()
            raise
        return self.port

    def wait_serving(self, timeout: float = START_TIMEOUT_S, poll_s: float = POLL_S) -> None:
        """Block until the health service answers SERVING, as a node polls it."""
        import grpc
        from grpc_health.v1 import health_pb2

        deadline = self.started_at + timeout
        stub = self.health()
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    self.serving_s = time.perf_counter() - self.started_at
                    return
            except grpc.RpcError:
                if self.process.poll() is not None or time.perf_counter() > deadline:
                    raise
            time.sleep(poll_s)

    # ---- a blocking client -----------------------------------------------------------------

    def channel(self) -> grpc.Channel:
        import grpc

        if self._channel is None:
            if self.credentials is None:
                self._channel = grpc.insecure_channel(self.address)
            else:
                self._channel = grpc.secure_channel(self.address, self.credentials)
        return self._channel

    def requestor(self) -> pb_grpc.RequestorAppStub:
        from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc

        return pb_grpc.RequestorAppStub(self.channel())

    def provider(self) -> pb_grpc.ProviderAppStub:
        from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc

        return pb_grpc.ProviderAppStub(self.channel())

    def health(self):
        from grpc_health.v1 import health_pb2_grpc

        return health_pb2_grpc.HealthStub(self.channel())

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # ---- ending it -------------------------------------------------------------------------

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit by itself; its exit code."""
        try:
            return self.process.wait(timeout)
        finally:
            self.close_channel()

    async def wait_async(self, timeout: float) -> int:
        """:meth:`wait` for an event loop (TimeoutError past ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.role} still runs after {timeout:g} s")
            await asyncio.sleep(POLL_S)
        return self.process.returncode

    async def kill_and_reap(self) -> None:
        """SIGKILL if it still runs, and wait (10 s at most) for the exit, so that no process
        outlives its caller."""
        self.close_channel()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(TimeoutError):
            await self.wait_async(10)

    def kill(self) -> None:
        """SIGKILL, if it still runs, and reap it: no clean-up at all, as in a crash."""
        self.close_channel()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        """SIGTERM (the server stops gracefully), SIGKILL if it is still there after 30 s."""
        self.close_channel()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def launch(
    role: str,
    work_dir: Path,
    *,
    log_path: Path | None = None,
    port_file: Path | None = None,
    log_level: str = "INFO",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    prelude: str = "",
    credentials: grpc.ChannelCredentials | None = None,
    forks: ForkServer | None = None,
) -> ServerProcess:
    """Start the server process and return at once (wait with ``wait_for_port``).

    The port file and the log sit beside ``work_dir`` (unique names unless given, so a
    server restarted on the same work directory never reads its predecessor's port).
    ``env``: the process's whole environment (None: this process's). ``forks``: fork the
    process from this fork server (:mod:`fractal_app.forkserver`; it has the environment it
    was started with, and no ``prelude``) instead of starting an interpreter.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{work_dir.name}.{role}.{uuid.uuid4().hex[:8]}"
    port_file = port_file or work_dir.parent / f"{stem}.port"
    log_path = log_path or work_dir.parent / f"{stem}.log"
    command = server_command(role, work_dir, port_file, log_level, extra_args, prelude)
    if forks is not None:
        if prelude:
            raise ValueError("launch: a forked server runs no prelude")
        started = time.perf_counter()
        process = forks.spawn(command[3:], log_path)  # after "python -m fractal_app"
        return ServerProcess(role, work_dir, process, port_file, log_path, credentials, started)
    with open(log_path, "ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
        )
    return ServerProcess(role, work_dir, process, port_file, log_path, credentials, started)


def start_server(
    role: str,
    work_dir: Path,
    *,
    timeout: float = START_TIMEOUT_S,
    poll_s: float = POLL_S,
    **launch_args,
) -> ServerProcess:
    """Start the server and block until it has written its port and its health service
    answers SERVING (``launch_args``: as :func:`launch`)."""
    server = launch(role, work_dir, **launch_args)
    server.wait_for_port(timeout, poll_s)
    try:
        server.wait_serving(timeout, poll_s)
    except BaseException:
        server.kill()
        raise
    return server
