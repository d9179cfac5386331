"""Test helpers: start the real servers as processes and talk to them through the stubs.

Everything here goes through ``python -m fractal_app`` and the generated gRPC stubs only, the
way a Golem node does; nothing imports the servicers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc

START_TIMEOUT_S = 90.0
POLL_S = 0.02
RPC_TIMEOUT_S = 120.0


class ServerDied(RuntimeError):
    pass


@dataclass
class ServerProcess:
    """A ``python -m fractal_app ROLE 0`` process, its port, and a channel to it."""

    role: str
    work_dir: Path
    process: subprocess.Popen
    port: int
    log_path: Path
    credentials: grpc.ChannelCredentials | None = None
    started_at: float = 0.0  # time.perf_counter() just before Popen
    port_file_s: float = 0.0  # start -> port file written (the server says it is SERVING)
    serving_s: float = 0.0  # start -> first health Check answering SERVING
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = connect(self.address, self.credentials)
        return self._channel

    def requestor(self) -> pb_grpc.RequestorAppStub:
        return pb_grpc.RequestorAppStub(self.channel())

    def provider(self) -> pb_grpc.ProviderAppStub:
        return pb_grpc.ProviderAppStub(self.channel())

    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit by itself; its exit code."""
        try:
            return self.process.wait(timeout)
        finally:
            self.close_channel()

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash."""
        self.close_channel()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        self.close_channel()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def connect(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)


def tls_credentials(certs) -> grpc.ChannelCredentials:
    """What a node presents: trust the server's certificate, show the client's."""
    return grpc.ssl_channel_credentials(
        root_certificates=certs.server_cert,
        private_key=certs.client_key,
        certificate_chain=certs.client_cert,
    )


def start_server(
    role: str,
    work_dir: Path,
    credentials: grpc.ChannelCredentials | None = None,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    log_level: str = "INFO",
    poll_s: float = POLL_S,
) -> ServerProcess:
    """Start ``python -m fractal_app ROLE 0`` on 127.0.0.1 and wait until it is SERVING.

    The wait is a bounded poll on the port file, then on the health service.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    port_file = work_dir.parent / f"{work_dir.name}.{role}.{tag}.port"
    log_path = work_dir.parent / f"{work_dir.name}.{role}.{tag}.log"
    command = [
        sys.executable,
        "-m",
        "fractal_app",
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
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    deadline = started + START_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None:
            raise ServerDied(f"{role} exited with {process.returncode}:\n{log_path.read_text()}")
        if time.perf_counter() > deadline:
            process.kill()
            raise ServerDied(f"{role} wrote no port file in {START_TIMEOUT_S}s")
        time.sleep(poll_s)
    port = int(port_file.read_text())
    server = ServerProcess(role, work_dir, process, port, log_path, credentials, started)
    server.port_file_s = time.perf_counter() - started
    wait_serving(server, deadline, poll_s)
    server.serving_s = time.perf_counter() - started
    return server


def wait_serving(server: ServerProcess, deadline: float, poll_s: float = POLL_S) -> None:
    """Until the health service answers SERVING (``deadline``: a time.perf_counter())."""
    stub = server.health()
    while True:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            if server.process.poll() is not None or time.perf_counter() > deadline:
                raise
        time.sleep(poll_s)


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    """Call and return the RpcError it must raise (AssertionError if it succeeds)."""
    try:
        reply = call(*args, timeout=RPC_TIMEOUT_S, **kwargs)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected an error, got {reply!r}")


# ---- the lifecycle, the way a node drives it ----------------------------------------------


def make_task_folder(work_dir: Path, task_id: str) -> Path:
    """What a node does before CreateTask: the task folder with its four empty folders."""
    root = work_dir / task_id
    for name in ("task_inputs", "subtask_inputs", "task_outputs", "subtask_outputs"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def create_task(stub, work_dir: Path, task_id: str, scene: dict, max_subtasks: int):
    make_task_folder(work_dir, task_id)
    return stub.CreateTask(
        pb.CreateTaskRequest(
            task_id=task_id, max_subtasks_count=max_subtasks, task_params_json=json.dumps(scene)
        ),
        timeout=RPC_TIMEOUT_S,
    )


def next_subtask(stub, task_id: str, subtask_id: str | None = None, node: str = "node-1"):
    """(subtask_id, params dict, resources) or None when the requestor gives nothing."""
    subtask_id = subtask_id or uuid.uuid4().hex
    reply = stub.NextSubtask(
        pb.NextSubtaskRequest(task_id=task_id, subtask_id=subtask_id, opaque_node_id=node),
        timeout=RPC_TIMEOUT_S,
    )
    if not reply.HasField("subtask"):
        return None
    return subtask_id, json.loads(reply.subtask.subtask_params_json), list(reply.subtask.resources)


def verify(stub, task_id: str, subtask_id: str):
    return stub.Verify(
        pb.VerifyRequest(task_id=task_id, subtask_id=subtask_id), timeout=RPC_TIMEOUT_S
    )


def has_pending(stub, task_id: str) -> bool:
    return stub.HasPendingSubtasks(
        pb.HasPendingSubtasksRequest(task_id=task_id), timeout=RPC_TIMEOUT_S
    ).has_pending_subtasks


def run_provider(
    tmp_path: Path,
    requestor_work: Path,
    task_id: str,
    subtask_id: str,
    params: dict,
    resources: list[str],
    credentials_for=None,
) -> ServerProcess:
    """Ship resources to a fresh provider process, Compute, bring the result back.

    ``credentials_for(work_dir)`` may write TLS files into the provider's work dir and return
    the client credentials. Returns the provider (already exited or exiting).
    """
    provider_work = tmp_path / f"provider-{subtask_id}"
    (provider_work / "subtask_inputs").mkdir(parents=True)
    for name in resources:
        shutil.copy(
            requestor_work / task_id / "subtask_inputs" / name,
            provider_work / "subtask_inputs" / name,
        )
    credentials = credentials_for(provider_work) if credentials_for else None
    provider = start_server("provider", provider_work, credentials)
    reply = provider.provider().Compute(
        pb.ComputeRequest(
            task_id=task_id, subtask_id=subtask_id, subtask_params_json=json.dumps(params)
        ),
        timeout=RPC_TIMEOUT_S,
    )
    result = provider_work / reply.output_filepath
    assert result.resolve().is_relative_to(provider_work.resolve())
    target = requestor_work / task_id / "subtask_outputs" / subtask_id
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(result, target / result.name)
    return provider


def write_result_here(
    requestor_work: Path,
    task_id: str,
    subtask_id: str,
    params: dict,
    scene: dict,
    values: np.ndarray | None = None,
) -> Path:
    """Render a band in the test process (or take ``values``) and put the band file where the
    node would. Stands in for a provider where the test is about the requestor."""
    from fractal_app import render
    from fractal_app.bandfile import BandMeta, write_band
    from fractal_app.scene import parse_scene

    parsed = parse_scene(scene)
    if values is None:
        values = render.render_band(parsed, params["row_start"], params["row_stop"])
    meta = BandMeta(task_id, subtask_id, params["row_start"], params["row_stop"], parsed.output)
    target = requestor_work / task_id / "subtask_outputs" / subtask_id
    target.mkdir(parents=True, exist_ok=True)
    write_band(target / "band.png", values, meta)
    return target / "band.png"


def read_result(path: Path, scene: dict) -> np.ndarray:
    """The final image's values in render_band's shape and dtype."""
    if path.suffix == ".tiff":
        with Image.open(path) as tiff:
            return np.asarray(tiff).astype(np.uint32)
    if scene.get("bit_depth", 8) == 8:
        with Image.open(path) as png:
            return np.asarray(png.convert("RGB"))
    return decode_png16(path)


def decode_png16(path: Path) -> np.ndarray:
    """Pillow reads 16-bit RGB PNGs as 8-bit; decode our own (Sub-filtered) stream exactly."""
    import struct
    import zlib

    data = path.read_bytes()
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth = header[:3]
    assert depth == 16
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 6 * width)
    assert (raw[:, 0] == 1).all()
    rows = raw[:, 1:].reshape(height, width, 6).astype(np.uint8)
    out = np.cumsum(rows, axis=1, dtype=np.uint8)  # undo Sub: running sum per byte, mod 256
    return out.reshape(height, -1).view(">u2").reshape(height, width, 3).astype(np.uint16)
