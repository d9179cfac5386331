"""A requestor killed with SIGKILL between any two rpcs carries on after a restart.

The run below kills and restarts the requestor after every single rpc of a task, on the same
work directory, and the final image must equal an uninterrupted run's.
"""

import uuid

import numpy as np
import pytest
from grpc_helpers import (
    create_task,
    has_pending,
    next_subtask,
    read_result,
    start_server,
    verify,
    write_result_here,
)

from fractal_app.protocol import golem_task_api_pb2 as pb

SCENE = {"fractal": "julia", "resolution": [48, 24], "max_iter": 150}


class Restarting:
    """A requestor that is SIGKILLed and started again after every rpc."""

    def __init__(self, work):
        self.work = work
        self.server = start_server("requestor", work)
        self.restarts = 0

    def call(self, func, *args):
        result = func(self.server.requestor(), *args)
        self.server.kill()
        self.server = start_server("requestor", self.work)
        self.restarts += 1
        return result

    def stop(self):
        self.server.stop()


@pytest.mark.slow  # a requestor start after every rpc
def test_sigkill_between_every_rpc(tmp_path, requestor):
    # The uninterrupted run.
    stub, work = requestor.requestor(), requestor.work_dir
    create_task(stub, work, "calm", SCENE, 3)
    while (sub := next_subtask(stub, "calm")) is not None:
        write_result_here(work, "calm", sub[0], sub[1], SCENE)
        assert verify(stub, "calm", sub[0]).result == pb.VerifyReply.SUCCESS
    expected = read_result(work / "calm" / "task_outputs" / "result.png", SCENE)

    # The same task, with a crash after every rpc.
    node = Restarting(tmp_path / "crashy")
    try:
        node.call(create_task, node.work, "crashy", SCENE, 3)
        first = node.call(next_subtask, "crashy", "s1")
        second = node.call(next_subtask, "crashy", "s2")
        assert (first[1]["band_index"], second[1]["band_index"]) == (0, 1)
        assert node.call(has_pending, "crashy")
        # A rejected result survives the restart as a failure; the band comes back.
        write_result_here(node.work, "crashy", "s1", first[1], SCENE, values=_wrong(first[1]))
        assert node.call(verify, "crashy", "s1").result == pb.VerifyReply.FAILURE
        write_result_here(node.work, "crashy", "s2", second[1], SCENE)
        assert node.call(verify, "crashy", "s2").result == pb.VerifyReply.SUCCESS
        handed = []
        while (sub := node.call(next_subtask, "crashy", f"r{len(handed)}")) is not None:
            handed.append(sub)
        assert sorted(s[1]["band_index"] for s in handed) == [0, 2]
        for subtask_id, params, _ in handed:
            write_result_here(node.work, "crashy", subtask_id, params, SCENE)
            assert node.call(verify, "crashy", subtask_id).result == pb.VerifyReply.SUCCESS
        assert not node.call(has_pending, "crashy")
        outputs = list((node.work / "crashy" / "task_outputs").iterdir())
        assert [p.name for p in outputs] == ["result.png"]
        np.testing.assert_array_equal(read_result(outputs[0], SCENE), expected)
        assert node.restarts >= 10
    finally:
        node.stop()


def test_result_arriving_after_a_restart_still_verifies(tmp_path):
    work = tmp_path / "req"
    server = start_server("requestor", work)
    task_id = f"t-{uuid.uuid4().hex[:6]}"
    create_task(server.requestor(), work, task_id, SCENE, 1)
    subtask_id, params, _ = next_subtask(server.requestor(), task_id)
    server.kill()  # the provider is still working when the requestor dies
    write_result_here(work, task_id, subtask_id, params, SCENE)
    server = start_server("requestor", work)
    try:
        stub = server.requestor()
        assert not has_pending(stub, task_id)  # the band is still with its provider
        assert verify(stub, task_id, subtask_id).result == pb.VerifyReply.SUCCESS
        assert (work / task_id / "task_outputs" / "result.png").is_file()
    finally:
        server.stop()


def _wrong(params):
    from fractal_app import render
    from fractal_app.scene import parse_scene

    values = render.render_band(parse_scene(SCENE), params["row_start"], params["row_stop"])
    return 255 - values


def test_reopened_task_makes_task_outputs_agree_with_the_store(tmp_path):
    """Crash windows between a commit and a file operation, simulated on the stopped requestor's
    folder: the result file missing though every band is accepted (it is written again), and a
    result file left behind though a band is no longer accepted (it is removed)."""
    import sqlite3

    work = tmp_path / "req"
    server = start_server("requestor", work)
    create_task(server.requestor(), work, "t", SCENE, 2)
    while (sub := next_subtask(server.requestor(), "t")) is not None:
        write_result_here(work, "t", sub[0], sub[1], SCENE)
        assert verify(server.requestor(), "t", sub[0]).result == pb.VerifyReply.SUCCESS
    result = work / "t" / "task_outputs" / "result.png"
    expected = read_result(result, SCENE)
    server.kill()

    result.unlink()
    server = start_server("requestor", work)
    try:
        assert not has_pending(server.requestor(), "t")  # opens the task
        np.testing.assert_array_equal(read_result(result, SCENE), expected)
    finally:
        server.kill()

    database = sqlite3.connect(work / "t" / "app_state" / "state.sqlite3")
    with database:
        database.execute("UPDATE subtask SET state = 'discarded' WHERE band_index = 1")
        database.execute(
            "UPDATE band SET state = 'pending', subtask_id = NULL WHERE band_index = 1"
        )
    database.close()
    server = start_server("requestor", work)
    try:
        assert has_pending(server.requestor(), "t")
        assert not result.exists()
    finally:
        server.stop()
