"""Test helpers: start the real servers as processes and talk to them through the stubs.

Everything here goes through ``python -m fractal_app`` (:mod:`fractal_app.launcher`) and the
generated gRPC stubs only, the way a Golem node does; nothing imports the servicers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from fractal_app import launcher
from fractal_app.launcher import ServerProcess
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.taskdir import BAND_FILE, ProviderTaskDir, RequestorTaskDir

# Generous: a test's server starts on a loaded two-core machine beside other tests.
START_TIMEOUT_S = 90.0
RPC_TIMEOUT_S = 120.0


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
) -> ServerProcess:
    """Start ``python -m fractal_app ROLE 0`` on 127.0.0.1 (``env`` added to this process's
    environment) and wait until it is SERVING."""
    return launcher.start_server(
        role,
        work_dir,
        timeout=START_TIMEOUT_S,
        credentials=credentials,
        extra_args=extra_args,
        env={**os.environ, **(env or {})},
        log_level=log_level,
    )


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
    task_dir = RequestorTaskDir.of(work_dir, task_id)
    task_dir.prepare()
    return task_dir.root


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
    provider_dir = ProviderTaskDir(provider_work)
    provider_dir.prepare()
    task_dir = RequestorTaskDir.of(requestor_work, task_id)
    for name in resources:
        shutil.copy(task_dir.subtask_inputs / name, provider_dir.resource(name))
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
    target = RequestorTaskDir.of(requestor_work, task_id).result_dir(subtask_id)
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
    target = RequestorTaskDir.of(requestor_work, task_id).result_dir(subtask_id)
    target.mkdir(parents=True, exist_ok=True)
    write_band(target / BAND_FILE, values, meta)
    return target / BAND_FILE


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
