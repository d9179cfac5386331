"""The shared gRPC plumbing, driven over real sockets on 127.0.0.1.

A tiny ProviderApp servicer, registered through the generated stubs, raises each kind of
error on request, so these tests see exactly what a Golem node would: health answers, status
codes, TLS handshakes, and a server that keeps serving after a failed rpc.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from certs import make_certs, self_signed, write_certs
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fractal_app import errors
from fractal_app.protocol import golem_task_api_pb2 as pb2
from fractal_app.protocol import golem_task_api_pb2_grpc as pb2_grpc
from fractal_app.protocol.constants import CLIENT_CERT_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE
from fractal_app.scene import parse_scene
from fractal_app.server import (
    ServerStartError,
    create_server,
    open_channel,
    rpc_errors,
    run_until_stopped,
)

CALL_TIMEOUT = 5.0

# ComputeRequest.task_id -> the domain error the test servicer raises, and the status it maps to.
DOMAIN_ERRORS = {
    "invalid": (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    "not-found": (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    "precondition": (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    "aborted": (errors.Aborted, grpc.StatusCode.ABORTED),
}


class ScriptedProvider(pb2_grpc.ProviderAppServicer):
    """Compute answers, raises a domain error, or fails unexpectedly, as the task id says."""

    def __init__(self, stop: asyncio.Event | None = None) -> None:
        self.stop = stop

    @rpc_errors
    async def Compute(self, request: pb2.ComputeRequest, context) -> pb2.ComputeReply:
        if request.task_id in DOMAIN_ERRORS:
            error_type, _ = DOMAIN_ERRORS[request.task_id]
            raise error_type(f"subtask {request.subtask_id!r}: scripted {error_type.__name__}")
        if request.task_id == "scene":
            parse_scene(request.subtask_params_json)  # raises scene.SceneError for bad params
        if request.task_id == "bug":
            return pb2.ComputeReply(output_filepath=str({}["missing-key"]))
        if request.task_id == "explicit-abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "scripted permission denied")
        return pb2.ComputeReply(output_filepath=f"{request.subtask_id}/band.png")

    @rpc_errors
    async def RunBenchmark(self, request, context) -> pb2.RunBenchmarkReply:
        return pb2.RunBenchmarkReply(score=42.5)

    @rpc_errors
    async def Shutdown(self, request, context) -> pb2.ShutdownReply:
        if self.stop is not None:
            self.stop.set()
        return pb2.ShutdownReply()


@asynccontextmanager
async def serving(
    work_dir: Path, servicer: ScriptedProvider | None = None
) -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    """A started server on 127.0.0.1 with the scripted provider; stopped on exit."""
    servicer = servicer or ScriptedProvider()
    server, port = await create_server(
        0,
        work_dir,
        lambda s: pb2_grpc.add_ProviderAppServicer_to_server(servicer, s),
        host="127.0.0.1",
    )
    try:
        yield server, port
    finally:
        await server.stop(None)


async def health_status(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT
    )
    return reply.status


async def compute(channel: grpc.aio.Channel, task_id: str = "ok", params: str = "") -> str:
    reply = await pb2_grpc.ProviderAppStub(channel).Compute(
        pb2.ComputeRequest(task_id=task_id, subtask_id="s1", subtask_params_json=params),
        timeout=CALL_TIMEOUT,
    )
    return reply.output_filepath


async def rpc_error_of(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# --- plaintext, health, error mapping ---------------------------------------------------------


def test_plaintext_server_answers_health_serving_and_rpcs(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, port), open_channel(f"127.0.0.1:{port}") as channel:
            assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            assert await compute(channel) == "s1/band.png"
            benchmark = await pb2_grpc.ProviderAppStub(channel).RunBenchmark(
                pb2.RunBenchmarkRequest(), timeout=CALL_TIMEOUT
            )
            assert benchmark.score == 42.5

    asyncio.run(scenario())


def test_default_host_listens_on_all_interfaces(tmp_path: Path) -> None:
    """The node dials the container's bridge IP, so the default must not be loopback-only."""

    async def scenario() -> None:
        server, port = await create_server(0, tmp_path, lambda s: None)
        try:
            async with open_channel(f"127.0.0.1:{port}") as channel:
                assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(None)

    asyncio.run(scenario())


@pytest.mark.parametrize("task_id", sorted(DOMAIN_ERRORS))
def test_domain_error_maps_to_its_status_and_server_keeps_serving(
    tmp_path: Path, task_id: str
) -> None:
    error_type, expected_code = DOMAIN_ERRORS[task_id]

    async def scenario() -> None:
        async with serving(tmp_path) as (_, port), open_channel(f"127.0.0.1:{port}") as channel:
            error = await rpc_error_of(compute(channel, task_id))
            assert error.code() == expected_code
            assert error.details() == f"subtask 's1': scripted {error_type.__name__}"
            assert await compute(channel) == "s1/band.png"

    asyncio.run(scenario())


def test_scene_error_is_invalid_argument_naming_the_field(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, port), open_channel(f"127.0.0.1:{port}") as channel:
            bad_params = '{"fractal": "mandelbrot", "max_iter": -3}'
            error = await rpc_error_of(compute(channel, "scene", bad_params))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_iter" in error.details()
            assert await compute(channel) == "s1/band.png"

    asyncio.run(scenario())


def test_unexpected_error_is_internal_logged_and_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, port), open_channel(f"127.0.0.1:{port}") as channel:
            error = await rpc_error_of(compute(channel, "bug"))
            assert error.code() == grpc.StatusCode.INTERNAL
            assert "KeyError" in error.details() and "Compute" in error.details()
            assert "Traceback" not in error.details()
            assert await compute(channel) == "s1/band.png"
            assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING

    with caplog.at_level(logging.ERROR, logger="fractal_app.server"):
        asyncio.run(scenario())
    logged = [r for r in caplog.records if r.name == "fractal_app.server" and r.exc_info]
    assert len(logged) == 1
    assert logged[0].exc_info[0] is KeyError


def test_status_chosen_by_the_method_passes_through_unlogged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, port), open_channel(f"127.0.0.1:{port}") as channel:
            error = await rpc_error_of(compute(channel, "explicit-abort"))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details() == "scripted permission denied"

    with caplog.at_level(logging.DEBUG, logger="fractal_app.server"):
        asyncio.run(scenario())
    # A deliberate abort is not a bug: no traceback in the log.
    assert not [r for r in caplog.records if r.name == "fractal_app.server" and r.exc_info]


def test_rpc_errors_refuses_a_sync_method() -> None:
    with pytest.raises(TypeError, match="async"):

        @rpc_errors
        def Compute(self, request, context):  # noqa: N802 - the rpc's name on the wire
            return None


# --- mutual TLS -------------------------------------------------------------------------------


def test_mtls_client_with_the_trusted_certificate_is_served(tmp_path: Path) -> None:
    certs = write_certs(tmp_path)

    async def scenario() -> None:
        async with serving(tmp_path) as (_, port):
            channel = open_channel(
                f"127.0.0.1:{port}", tmp_path, certs.client_key, certs.client_cert
            )
            async with channel:
                assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
                assert await compute(channel) == "s1/band.png"
            async with open_channel(
                f"localhost:{port}", tmp_path, certs.client_key, certs.client_cert
            ) as by_name:
                assert await compute(by_name) == "s1/band.png"

    asyncio.run(scenario())


def test_mtls_refuses_client_without_certificate(tmp_path: Path) -> None:
    write_certs(tmp_path)

    async def scenario() -> None:
        async with serving(tmp_path) as (_, port):
            async with open_channel(f"127.0.0.1:{port}", tmp_path) as channel:
                error = await rpc_error_of(health_status(channel))
                assert error.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_mtls_refuses_plaintext_client(tmp_path: Path) -> None:
    write_certs(tmp_path)

    async def scenario() -> None:
        async with serving(tmp_path) as (_, port):
            async with open_channel(f"127.0.0.1:{port}") as channel:
                error = await rpc_error_of(health_status(channel))
                assert error.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_mtls_refuses_client_certificate_it_was_not_given(tmp_path: Path) -> None:
    write_certs(tmp_path)
    stranger_key, stranger_cert = self_signed("someone-else", server=False)

    async def scenario() -> None:
        async with serving(tmp_path) as (_, port):
            channel = open_channel(f"127.0.0.1:{port}", tmp_path, stranger_key, stranger_cert)
            async with channel:
                error = await rpc_error_of(health_status(channel))
                assert error.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


@pytest.mark.parametrize("missing", [SERVER_KEY_FILE, SERVER_CERT_FILE, CLIENT_CERT_FILE])
def test_any_missing_pem_file_means_plaintext(tmp_path: Path, missing: str) -> None:
    certs = make_certs()
    contents = {
        SERVER_KEY_FILE: certs.server_key,
        SERVER_CERT_FILE: certs.server_cert,
        CLIENT_CERT_FILE: certs.client_cert,
    }
    for name, data in contents.items():
        if name != missing:
            (tmp_path / name).write_bytes(data)

    async def scenario() -> None:
        async with serving(tmp_path) as (_, port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await compute(channel) == "s1/band.png"

    asyncio.run(scenario())


def test_pem_file_that_is_not_pem_stops_start_with_its_name(tmp_path: Path) -> None:
    write_certs(tmp_path)
    (tmp_path / SERVER_KEY_FILE).write_text("not a key\n")

    async def scenario() -> None:
        with pytest.raises(ServerStartError, match=SERVER_KEY_FILE):
            await create_server(0, tmp_path, lambda s: None, host="127.0.0.1")

    asyncio.run(scenario())


def test_port_already_in_use_is_a_clear_start_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, port):
            with pytest.raises(ServerStartError, match=str(port)):
                await create_server(port, tmp_path, lambda s: None, host="127.0.0.1")

    asyncio.run(scenario())


def test_open_channel_rejects_half_a_client_identity(tmp_path: Path) -> None:
    certs = write_certs(tmp_path)
    with pytest.raises(ValueError, match="both"):
        open_channel("127.0.0.1:1", tmp_path, client_key=certs.client_key)
    with pytest.raises(ValueError, match=SERVER_CERT_FILE):
        open_channel("127.0.0.1:1", None, certs.client_key, certs.client_cert)


# --- stopping ---------------------------------------------------------------------------------


def test_run_until_stopped_returns_when_event_is_set_and_server_is_gone(tmp_path: Path) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        async with serving(tmp_path) as (server, port):
            runner = asyncio.create_task(run_until_stopped(server, stop, grace=1.0))
            async with open_channel(f"127.0.0.1:{port}") as channel:
                assert await compute(channel) == "s1/band.png"
                assert not runner.done()
                stop.set()
                await asyncio.wait_for(runner, timeout=CALL_TIMEOUT)
                error = await rpc_error_of(compute(channel))
                assert error.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_shutdown_rpc_is_answered_then_server_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        async with serving(tmp_path, ScriptedProvider(stop)) as (server, port):
            runner = asyncio.create_task(run_until_stopped(server, stop))
            async with open_channel(f"127.0.0.1:{port}") as channel:
                reply = await pb2_grpc.ProviderAppStub(channel).Shutdown(
                    pb2.ShutdownRequest(), timeout=CALL_TIMEOUT
                )
                assert reply == pb2.ShutdownReply()
            await asyncio.wait_for(runner, timeout=CALL_TIMEOUT)

    asyncio.run(scenario())


def test_health_watchers_see_not_serving_when_stopping(tmp_path: Path) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        async with serving(tmp_path) as (server, port):
            runner = asyncio.create_task(run_until_stopped(server, stop, grace=1.0))
            async with open_channel(f"127.0.0.1:{port}") as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT
                )
                first = await watch.read()
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                stop.set()
                second = await watch.read()
                assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
                watch.cancel()
            await asyncio.wait_for(runner, timeout=CALL_TIMEOUT)

    asyncio.run(scenario())


# A minimal app: the real entry point is APP's, this only exercises the server's signal path.
SERVE_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from fractal_app.server import create_server, run_until_stopped

    async def main(work_dir, port_file):
        server, port = await create_server(0, work_dir, lambda s: None, host="127.0.0.1")
        partial = port_file.with_suffix(".partial")
        partial.write_text(str(port))
        os.replace(partial, port_file)  # the reader never sees half a number
        await run_until_stopped(server, asyncio.Event())

    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
    """
)


def wait_for_port_file(port_file: Path, process: subprocess.Popen, deadline_s: float) -> int:
    """Poll for the port file the child writes once serving; fail if it dies or takes too long."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"server exited with {process.returncode} before serving:\n{stderr}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"server did not write {port_file} within {deadline_s} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_server_process_with_exit_0(tmp_path: Path, signum: signal.Signals) -> None:
    script = tmp_path / "serve.py"
    script.write_text(SERVE_SCRIPT)
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(port_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        port = wait_for_port_file(port_file, process, deadline_s=15.0)

        async def check_serving() -> int:
            async with open_channel(f"127.0.0.1:{port}") as channel:
                return await health_status(channel)

        assert asyncio.run(check_serving()) == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize(
    "module",
    ["fractal_app.server", "fractal_app.servicers", "fractal_app.provider", "fractal_app.taskdir"],
)
def test_what_the_provider_imports_at_start_stays_light(module) -> None:
    """The provider imports these at start-up; numpy/numba would cost it a second."""
    code = (
        f"import sys, {module};"
        "heavy = sorted({'numpy', 'numba', 'PIL', 'pydantic'} & set(sys.modules));"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, f"{module} imports {completed.stdout.strip()}"


_TERM_AS_SOON_AS_SERVING = """
import asyncio, os, signal, sys
from pathlib import Path
import fractal_app.__main__ as entrypoint
announce = entrypoint.write_port_file
def announce_then_terminate(path, port):
    announce(path, port)
    os.kill(os.getpid(), signal.SIGTERM)  # a node's SIGTERM the moment the port is known
entrypoint.write_port_file = announce_then_terminate
asyncio.run(entrypoint.serve("requestor", 0, Path(sys.argv[1]), Path(sys.argv[2]),
                             host="127.0.0.1"))
"""


def test_a_sigterm_as_soon_as_the_port_is_written_stops_the_service_gracefully(tmp_path):
    """The handlers are in place before the service says it serves: stopped (exit 0, its
    log says so), not killed by the signal."""
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _TERM_AS_SOON_AS_SERVING, str(work), str(tmp_path / "port")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert (tmp_path / "port").read_text().strip().isdigit()
