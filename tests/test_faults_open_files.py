"""A requestor lives for months: the tasks it has seen must not hold its open files. Under a
limit of 256 open files, thousands of tasks created, then finished, aborted or left alone,
all work, and the process's open files stay bounded."""

import json
import os
import resource
import time
import uuid

import pytest
from grpc_helpers import (
    RPC_TIMEOUT_S,
    make_task_folder,
    next_subtask,
    start_server,
    verify,
    write_result_here,
)

from fractal_app.protocol import golem_task_api_pb2 as pb

SCENE = {"fractal": "mandelbrot", "resolution": [4, 2], "max_iter": 10}
OPEN_FILES_LIMIT = 256
# Tasks in the default run: about 30 s on a heavily loaded two-core machine (a CreateTask is
# a few fsyncs). With stores closed after each task the count changes nothing but the time;
# the full 10,000 is one variable away, FRACTAL_APP_OPEN_FILES_TASKS=10000 (measured once on
# that loaded machine: 10,000 tasks in 1,199 s, at most 110 files open, all answered).
TASKS = int(os.environ.get("FRACTAL_APP_OPEN_FILES_TASKS", "500"))


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow  # hundreds of tasks
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_thousands_of_tasks_under_256_open_files(tmp_path):
    work = tmp_path / "requestor"
    requestor = start_server("requestor", work, log_level="WARNING")
    pid = requestor.process.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (OPEN_FILES_LIMIT, OPEN_FILES_LIMIT))
    stub = requestor.requestor()
    started = time.monotonic()
    most_open = 0
    try:
        for number in range(TASKS):
            task_id = f"t{number}-{uuid.uuid4().hex[:6]}"
            make_task_folder(work, task_id)
            stub.CreateTask(
                pb.CreateTaskRequest(
                    task_id=task_id, max_subtasks_count=1, task_params_json=json.dumps(SCENE)
                ),
                timeout=RPC_TIMEOUT_S,
            )
            kind = number % 10
            if kind == 0:  # finished: its one band verified and merged
                subtask_id, params, _ = next_subtask(stub, task_id)
                write_result_here(work, task_id, subtask_id, params, SCENE)
                assert verify(stub, task_id, subtask_id).result == pb.VerifyReply.SUCCESS
            elif kind == 1:  # left alone with a band handed out, as a node that went away
                next_subtask(stub, task_id)
            else:  # aborted
                stub.AbortTask(pb.AbortTaskRequest(task_id=task_id), timeout=RPC_TIMEOUT_S)
            if number % 100 == 0:
                most_open = max(most_open, _open_files(pid))
        # Every kind of task still answers after all that, re-opened from its folder.
        for number in (0, 1, 2, TASKS - 1):
            task_id = next(p.name for p in work.glob(f"t{number}-*"))
            stub.HasPendingSubtasks(
                pb.HasPendingSubtasksRequest(task_id=task_id), timeout=RPC_TIMEOUT_S
            )
        most_open = max(most_open, _open_files(pid))
    finally:
        took = time.monotonic() - started
        requestor.stop()
    print(f"{TASKS} tasks in {took:.1f} s; at most {most_open} files open")
    assert most_open < OPEN_FILES_LIMIT // 2
