"""Bad input and faults: a clear non-OK status naming the problem, and the server carries on.

One requestor process serves the whole module; each test uses its own task ids, so a test
also checks that the errors of the others did not disturb it.
"""

import json
import time
import uuid

import grpc
import numpy as np
import pytest
from grpc_helpers import (
    create_task,
    has_pending,
    make_task_folder,
    next_subtask,
    read_result,
    rpc_error,
    verify,
    write_result_here,
)

from fractal_app.protocol import golem_task_api_pb2 as pb

SCENE = {"fractal": "mandelbrot", "resolution": [32, 12], "max_iter": 100}
# Keep probing health this long while a verification runs (well under the check's length).
HEALTH_PROBE_SECONDS = 1.5
BAD_NAMES = ["a/b", "a\\b", "..", "x/../y", "nul\x00byte", "/abs", "", "n" * 300]


def new_id(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stub(shared_requestor):
    return shared_requestor.requestor()


@pytest.fixture
def work(shared_requestor):
    return shared_requestor.work_dir


def snapshot(folder):
    """Every path under ``folder`` (to prove nothing was written outside the work dir)."""
    return sorted(str(p) for p in folder.rglob("*"))


def test_malformed_json_is_invalid_argument(stub, work):
    task_id = new_id()
    make_task_folder(work, task_id)
    error = rpc_error(
        stub.CreateTask,
        pb.CreateTaskRequest(task_id=task_id, max_subtasks_count=2, task_params_json="{oops"),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not valid JSON" in error.details()
    # Nothing was recorded: the same id can be created properly afterwards.
    create_task(stub, work, task_id, SCENE, 2)


def test_out_of_range_parameter_names_the_field(stub, work):
    task_id = new_id()
    make_task_folder(work, task_id)
    params = json.dumps({**SCENE, "max_iter": 0})
    error = rpc_error(
        stub.CreateTask,
        pb.CreateTaskRequest(task_id=task_id, max_subtasks_count=2, task_params_json=params),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_iter" in error.details() and ">= 1" in error.details()


def test_max_subtasks_count_must_be_positive(stub, work):
    task_id = new_id()
    make_task_folder(work, task_id)
    error = rpc_error(
        stub.CreateTask,
        pb.CreateTaskRequest(
            task_id=task_id, max_subtasks_count=0, task_params_json=json.dumps(SCENE)
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_subtasks_count" in error.details()


def test_unknown_task_is_not_found_in_every_rpc(stub):
    task_id = new_id("ghost")
    calls = [
        (stub.NextSubtask, pb.NextSubtaskRequest(task_id=task_id, subtask_id="s1")),
        (stub.Verify, pb.VerifyRequest(task_id=task_id, subtask_id="s1")),
        (stub.HasPendingSubtasks, pb.HasPendingSubtasksRequest(task_id=task_id)),
        (stub.DiscardSubtasks, pb.DiscardSubtasksRequest(task_id=task_id, subtask_ids=["s1"])),
        (stub.AbortTask, pb.AbortTaskRequest(task_id=task_id)),
        (stub.AbortSubtask, pb.AbortSubtaskRequest(task_id=task_id, subtask_id="s1")),
    ]
    for call, request in calls:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, call
        assert task_id in error.details()


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_unsafe_task_id_is_invalid_argument_and_touches_nothing(stub, work, bad):
    outside = work.parent
    before = snapshot(outside)
    requests = [
        (
            stub.CreateTask,
            pb.CreateTaskRequest(
                task_id=bad, max_subtasks_count=1, task_params_json=json.dumps(SCENE)
            ),
        ),
        (stub.NextSubtask, pb.NextSubtaskRequest(task_id=bad, subtask_id="s1")),
        (stub.Verify, pb.VerifyRequest(task_id=bad, subtask_id="s1")),
        (stub.HasPendingSubtasks, pb.HasPendingSubtasksRequest(task_id=bad)),
        (stub.DiscardSubtasks, pb.DiscardSubtasksRequest(task_id=bad, subtask_ids=["s1"])),
        (stub.AbortTask, pb.AbortTaskRequest(task_id=bad)),
    ]
    for call, request in requests:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, bad)
        assert "task_id" in error.details()
    assert snapshot(outside) == before


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_unsafe_subtask_id_is_invalid_argument(stub, work, bad):
    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 2)
    before = snapshot(work.parent)
    for call, request in [
        (stub.NextSubtask, pb.NextSubtaskRequest(task_id=task_id, subtask_id=bad)),
        (stub.Verify, pb.VerifyRequest(task_id=task_id, subtask_id=bad)),
        (stub.DiscardSubtasks, pb.DiscardSubtasksRequest(task_id=task_id, subtask_ids=[bad])),
        (stub.AbortSubtask, pb.AbortSubtaskRequest(task_id=task_id, subtask_id=bad)),
    ]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, bad)
        assert "subtask_id" in error.details()
    assert snapshot(work.parent) == before
    assert has_pending(stub, task_id)  # no band was handed out to a bad id


def test_create_task_twice_is_refused(stub, work):
    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 2)
    error = rpc_error(
        stub.CreateTask,
        pb.CreateTaskRequest(
            task_id=task_id, max_subtasks_count=2, task_params_json=json.dumps(SCENE)
        ),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already exists" in error.details()


def test_unknown_or_reused_subtask_ids(stub, work):
    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 2)
    first = next_subtask(stub, task_id, "s1")
    assert first is not None
    error = rpc_error(stub.NextSubtask, pb.NextSubtaskRequest(task_id=task_id, subtask_id="s1"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already used" in error.details()
    for call, request in [
        (stub.Verify, pb.VerifyRequest(task_id=task_id, subtask_id="nope")),
        (stub.DiscardSubtasks, pb.DiscardSubtasksRequest(task_id=task_id, subtask_ids=["nope"])),
        (stub.AbortSubtask, pb.AbortSubtaskRequest(task_id=task_id, subtask_id="nope")),
    ]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "'nope'" in error.details()


def test_verify_before_the_result_and_verify_twice(stub, work):
    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 1)
    subtask_id, params, _ = next_subtask(stub, task_id)
    error = rpc_error(stub.Verify, pb.VerifyRequest(task_id=task_id, subtask_id=subtask_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no result" in error.details()
    write_result_here(work, task_id, subtask_id, params, SCENE)
    first = verify(stub, task_id, subtask_id)
    assert first.result == pb.VerifyReply.SUCCESS
    # A node that lost the reply asks again: the recorded verdict, nothing checked twice.
    assert verify(stub, task_id, subtask_id) == first
    assert sorted(p.name for p in (work / task_id / "task_outputs").iterdir()) == ["result.png"]


def test_a_wrong_band_fails_with_a_reason_and_goes_back_to_pending(stub, work):
    from fractal_app import render
    from fractal_app.scene import parse_scene

    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 2)
    subtask_id, params, _ = next_subtask(stub, task_id)
    values = render.render_band(parse_scene(SCENE), params["row_start"], params["row_stop"])
    write_result_here(work, task_id, subtask_id, params, SCENE, values=255 - values)
    reply = verify(stub, task_id, subtask_id)
    assert reply.result == pb.VerifyReply.FAILURE
    assert reply.reason  # a person can read why
    assert has_pending(stub, task_id)
    again = next_subtask(stub, task_id)
    assert again[1]["band_index"] == params["band_index"]


def test_garbage_result_file_fails_verification(stub, work):
    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 1)
    subtask_id, _, _ = next_subtask(stub, task_id)
    target = work / task_id / "subtask_outputs" / subtask_id
    target.mkdir(parents=True)
    (target / "band.png").write_bytes(b"this is not a png")
    reply = verify(stub, task_id, subtask_id)
    assert reply.result == pb.VerifyReply.FAILURE
    assert reply.reason
    assert has_pending(stub, task_id)


def test_abort_subtask_and_task(stub, work):
    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 2)
    s1, params, _ = next_subtask(stub, task_id)
    next_subtask(stub, task_id)
    assert not has_pending(stub, task_id)
    stub.AbortSubtask(pb.AbortSubtaskRequest(task_id=task_id, subtask_id=s1))
    assert has_pending(stub, task_id)
    write_result_here(work, task_id, s1, params, SCENE)
    error = rpc_error(stub.Verify, pb.VerifyRequest(task_id=task_id, subtask_id=s1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "aborted" in error.details()
    stub.AbortTask(pb.AbortTaskRequest(task_id=task_id))
    assert not has_pending(stub, task_id)
    assert next_subtask(stub, task_id) is None


def test_discard_puts_accepted_bands_back_and_the_image_comes_back_identical(stub, work):
    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 3)
    done = []
    while (sub := next_subtask(stub, task_id)) is not None:
        subtask_id, params, _ = sub
        write_result_here(work, task_id, subtask_id, params, SCENE)
        assert verify(stub, task_id, subtask_id).result == pb.VerifyReply.SUCCESS
        done.append(subtask_id)
    result = work / task_id / "task_outputs" / "result.png"
    first = read_result(result, SCENE)

    reply = stub.DiscardSubtasks(
        pb.DiscardSubtasksRequest(task_id=task_id, subtask_ids=[done[1], done[1]])
    )
    assert list(reply.discarded_subtask_ids) == [done[1]]
    assert not result.exists()  # the discarded band is out of the merged image
    assert has_pending(stub, task_id)
    subtask_id, params, _ = next_subtask(stub, task_id)
    write_result_here(work, task_id, subtask_id, params, SCENE)
    assert verify(stub, task_id, subtask_id).result == pb.VerifyReply.SUCCESS
    np.testing.assert_array_equal(read_result(result, SCENE), first)


def test_health_and_other_tasks_unaffected(shared_requestor):
    # After every error above, the same process still serves: a new task works end to end.
    stub, work = shared_requestor.requestor(), shared_requestor.work_dir
    task_id = new_id()
    create_task(stub, work, task_id, SCENE, 2)
    while (sub := next_subtask(stub, task_id)) is not None:
        write_result_here(work, task_id, sub[0], sub[1], SCENE)
        assert verify(stub, task_id, sub[0]).result == pb.VerifyReply.SUCCESS
    assert (work / task_id / "task_outputs" / "result.png").is_file()
    assert shared_requestor.process.poll() is None


def test_abort_stops_a_running_verification_and_health_answers_meanwhile(shared_requestor):
    """Verification runs off the event loop: health and other rpcs answer while it works, and
    AbortSubtask stops it (the Verify in flight ends ABORTED soon, the band is pending again)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub, work = shared_requestor.requestor(), shared_requestor.work_dir
    # Every pixel is inside the set at the largest max_iter: each recomputed sample costs 10^7
    # iterations, so the check takes long; the honest band is all interior colour.
    scene = {
        "fractal": "mandelbrot",
        "resolution": [64, 16],
        "center": [-0.1, 0.0],
        "width": 1e-6,
        "max_iter": 10_000_000,
        "smooth": False,
    }
    task_id = new_id()
    create_task(stub, work, task_id, scene, 1)
    subtask_id, params, _ = next_subtask(stub, task_id)
    write_result_here(
        work, task_id, subtask_id, params, scene, values=np.zeros((16, 64, 3), np.uint8)
    )
    started = time.monotonic()
    in_flight = stub.Verify.future(pb.VerifyRequest(task_id=task_id, subtask_id=subtask_id))
    # A second Verify joins the running check: with a short deadline it runs out, and the
    # check goes on (the deadline of a joining caller does not stop it).
    with pytest.raises(grpc.RpcError) as joined:
        stub.Verify(pb.VerifyRequest(task_id=task_id, subtask_id=subtask_id), timeout=0.5)
    assert joined.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Health and the task's other rpcs keep answering, quickly, while the check runs.
    health = health_pb2_grpc.HealthStub(shared_requestor.channel())
    latencies = []
    while time.monotonic() - started < HEALTH_PROBE_SECONDS:
        t0 = time.monotonic()
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        latencies.append(time.monotonic() - t0)
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert not has_pending(stub, task_id)
    assert not in_flight.done(), "the check finished before it could be aborted"
    aborted_at = time.monotonic()
    stub.AbortSubtask(pb.AbortSubtaskRequest(task_id=task_id, subtask_id=subtask_id))
    with pytest.raises(grpc.RpcError) as caught:
        in_flight.result(timeout=120)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert time.monotonic() - aborted_at < 5.0, "the abort took effect late"
    assert has_pending(stub, task_id)
    assert not (work / task_id / "task_outputs" / "result.png").exists()
    assert sorted(latencies)[len(latencies) // 2] < 0.1, f"health latencies {latencies}"


def test_task_id_naming_a_file_in_the_work_dir(stub, work):
    (work / "not-a-folder").write_text("x")
    error = rpc_error(
        stub.CreateTask,
        pb.CreateTaskRequest(
            task_id="not-a-folder", max_subtasks_count=1, task_params_json=json.dumps(SCENE)
        ),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a task folder" in error.details()
    assert (work / "not-a-folder").read_text() == "x"
