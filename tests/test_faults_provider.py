"""A provider under faults, over real gRPC: it stops within 2 s of SIGTERM or Shutdown in the
middle of a Compute (without waiting for the block it is rendering), and nothing outside its
work directory is written or read through a symlink, nor does a FIFO planted as a resource
block it."""

import json
import os
import signal
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_helpers import RPC_TIMEOUT_S, start_server

from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.provider import block_rows
from fractal_app.scene import parse_scene

# A band that renders for far longer than 2 s on any machine: every pixel is inside the set
# (the middle of the main cardioid), so each costs max_iter iterations; about 3 * 10^10 here.
BIG = {
    "fractal": "mandelbrot",
    "resolution": [4096, 4096],
    "center": [-0.2, 0.0],
    "width": 0.2,
    "max_iter": 2000,
}
SMALL = {"fractal": "mandelbrot", "resolution": [32, 8], "max_iter": 50}
STOP_WITHIN_S = 2.0


def _provider_with_scene(tmp_path, scene) -> tuple:
    work = tmp_path / "provider"
    (work / "subtask_inputs").mkdir(parents=True)
    (work / "subtask_inputs" / "scene.json").write_text(json.dumps(scene))
    return work, start_server("provider", work)


def _compute_request(subtask_id: str, rows: int):
    params = {"subtask_id": subtask_id, "band_index": 0, "row_start": 0, "row_stop": rows}
    return pb.ComputeRequest(
        task_id="task-1", subtask_id=subtask_id, subtask_params_json=json.dumps(params)
    )


def _wait_until_rendering(provider) -> None:
    deadline = time.monotonic() + 60
    while "rendering rows" not in provider.log():
        assert provider.process.poll() is None, provider.log()
        assert time.monotonic() < deadline, "the provider never started rendering"
        time.sleep(0.02)
    time.sleep(0.5)  # well inside the band's blocks


def test_a_block_of_the_big_band_takes_far_longer_than_a_stop_may():
    # Blocks are sized by samples, not cost: a stop that waited for the block in progress
    # would take seconds here (4096 x 256 pixels x 2,000 iterations = 2.1 * 10^9 steps a
    # block, about 1-2 s on two cores), so the test below shows that it does not wait.
    scene = parse_scene(BIG)
    first_start, first_stop = next(iter(block_rows(scene, 0, 4096)))
    assert (first_stop - first_start) * 4096 * BIG["max_iter"] >= 2 * 10**9


@pytest.mark.parametrize("how", ["SIGTERM", "Shutdown"])
def test_provider_stops_within_2_s_during_compute(tmp_path, how):
    work, provider = _provider_with_scene(tmp_path, BIG)
    subtask_id = uuid.uuid4().hex
    try:
        call = provider.provider().Compute.future(
            _compute_request(subtask_id, 4096), timeout=RPC_TIMEOUT_S
        )
        _wait_until_rendering(provider)
        stopped_at = time.monotonic()
        if how == "SIGTERM":
            provider.process.send_signal(signal.SIGTERM)
        else:
            provider.provider().Shutdown(pb.ShutdownRequest(), timeout=5)
        provider.process.wait(timeout=30)
        took = time.monotonic() - stopped_at
        with pytest.raises(grpc.RpcError) as stopped:
            call.result(timeout=30)
    finally:
        provider.stop()
    print(f"provider stopped {took:.2f} s after {how}")
    assert took < STOP_WITHIN_S, f"the provider took {took:.2f} s to stop after {how}"
    assert stopped.value.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE)
    assert provider.process.returncode == 0
    # No band, whole or partial, is left behind.
    assert list((work / subtask_id).iterdir()) == []


def test_symlinked_subtask_folder_is_refused_and_nothing_is_written_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    work, provider = _provider_with_scene(tmp_path, SMALL)
    subtask_id = uuid.uuid4().hex
    (work / subtask_id).symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            provider.provider().Compute(_compute_request(subtask_id, 8), timeout=RPC_TIMEOUT_S)
    finally:
        provider.stop()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "symlink" in refused.value.details()
    assert list(outside.iterdir()) == []


def test_symlinked_scene_resource_is_not_read(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(SMALL))
    work = tmp_path / "provider"
    (work / "subtask_inputs").mkdir(parents=True)
    (work / "subtask_inputs" / "scene.json").symlink_to(secret)
    provider = start_server("provider", work)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            provider.provider().Compute(_compute_request("s1", 8), timeout=RPC_TIMEOUT_S)
    finally:
        provider.stop()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_fifo_resource_does_not_block_the_provider(tmp_path):
    work = tmp_path / "provider"
    (work / "subtask_inputs").mkdir(parents=True)
    os.mkfifo(work / "subtask_inputs" / "scene.json")  # nobody ever writes to it
    provider = start_server("provider", work)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            provider.provider().Compute(_compute_request("s1", 8), timeout=30)
        assert time.monotonic() - started < 10
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not a regular file" in refused.value.details()
        assert provider.wait(timeout=10) == 0  # one request, then it exits as usual
    finally:
        provider.stop()


def test_fifo_resource_health_and_sigterm_still_answer(tmp_path):
    """Before any Compute, with the FIFO planted: health answers and SIGTERM stops it."""
    work = tmp_path / "provider"
    (work / "subtask_inputs").mkdir(parents=True)
    os.mkfifo(work / "subtask_inputs" / "scene.json")
    provider = start_server("provider", work)
    try:
        reply = provider.health().Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        provider.process.send_signal(signal.SIGTERM)
        assert provider.process.wait(timeout=STOP_WITHIN_S + 3) == 0
    finally:
        provider.stop()
