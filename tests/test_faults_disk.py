"""A really full disk, not a simulated one: the requestor's work directory on a small tmpfs,
filled to the last byte. Every rpc that needs space answers RESOURCE_EXHAUSTED "disk full
while ...", nothing is stranded, and once space is freed the same requestor carries on and
finishes the task. Needs root and permission to mount (skipped otherwise); the in-process
tests in test_faults_requestor.py inject the same faults everywhere."""

import errno
import json
import os
import shutil
import subprocess
import uuid

import grpc
import pytest
from grpc_helpers import (
    RPC_TIMEOUT_S,
    create_task,
    has_pending,
    next_subtask,
    start_server,
    verify,
    write_result_here,
)

from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.store import TaskStore
from fractal_app.taskdir import RequestorTaskDir

SCENE = {"fractal": "mandelbrot", "resolution": [64, 32], "max_iter": 60}
DISK_BYTES = 4 << 20


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs at tmp_path/work, unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    disk = tmp_path / "work"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk) -> os.PathLike:
    """Write a file until the disk is full; its path (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (64 << 10, 1):  # big writes, then the last bytes one at a time
            try:
                while True:
                    os.write(fd, bytes(size))
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_really_full_disk_answers_resource_exhausted_and_carries_on(small_disk):
    work = small_disk
    requestor = start_server("requestor", work)
    try:
        stub = requestor.requestor()
        task_id = f"t-{uuid.uuid4().hex[:10]}"
        create_task(stub, work, task_id, SCENE, 2)
        first = next_subtask(stub, task_id)
        write_result_here(work, task_id, first[0], first[1], SCENE)

        filler = fill(work)
        error = None
        try:
            verify(stub, task_id, first[0])
        except grpc.RpcError as raised:
            error = raised
        assert error is not None, "Verify succeeded on a full disk"
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "disk full while" in error.details()
        other = f"t-{uuid.uuid4().hex[:10]}"
        with pytest.raises(grpc.RpcError) as creating:
            stub.CreateTask(
                pb.CreateTaskRequest(
                    task_id=other, max_subtasks_count=1, task_params_json=json.dumps(SCENE)
                ),
                timeout=RPC_TIMEOUT_S,
            )
        assert creating.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        filler.unlink()  # space freed: the same process carries on
        store = TaskStore.open(RequestorTaskDir.of(work, task_id).database, task_id)
        try:
            assert store.subtask(first[0]).state in ("running", "verifying")
        finally:
            store.close()
        assert verify(stub, task_id, first[0]).result == pb.VerifyReply.SUCCESS
        second = next_subtask(stub, task_id)
        write_result_here(work, task_id, second[0], second[1], SCENE)
        assert verify(stub, task_id, second[0]).result == pb.VerifyReply.SUCCESS
        assert not has_pending(stub, task_id)
        assert (work / task_id / "task_outputs" / "result.png").is_file()
        assert requestor.process.poll() is None
    finally:
        requestor.stop()
