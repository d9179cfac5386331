"""Faults a long-lived requestor must survive, over real gRPC against an in-process server
(so a fault can be injected exactly where it hurts): an interrupted Verify never strands a
band, a full disk answers RESOURCE_EXHAUSTED and the requestor carries on once space is
freed, read-only folders and corrupt state files get their own status, an abort or discard
racing a Verify never gets SUCCESS, and nothing is touched through a planted symlink."""

import asyncio
import contextlib
import errno
import json
import sqlite3
import threading
import uuid

import grpc
import pytest
from grpc_helpers import make_task_folder, write_result_here

from fractal_app import task_files
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc
from fractal_app.server import create_server
from fractal_app.servicers import RequestorService
from fractal_app.store import TaskStore
from fractal_app.taskdir import RequestorTaskDir

SCENE = {"fractal": "mandelbrot", "resolution": [24, 8], "max_iter": 60}


@contextlib.asynccontextmanager
async def serving(work_dir):
    """The requestor service in this process on 127.0.0.1:0, and a stub talking gRPC to it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    service = RequestorService(work_dir, asyncio.Event())
    server, port = await create_server(0, work_dir, service.register, host="127.0.0.1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield service.app, pb_grpc.RequestorAppStub(channel)
    finally:
        await server.stop(0)
        service.close()


async def create(stub, work, bands=1, scene=SCENE):
    task_id = f"t-{uuid.uuid4().hex[:10]}"
    make_task_folder(work, task_id)
    await stub.CreateTask(
        pb.CreateTaskRequest(
            task_id=task_id, max_subtasks_count=bands, task_params_json=json.dumps(scene)
        )
    )
    return task_id


async def hand_out_with_result(stub, work, task_id, scene=SCENE):
    subtask_id = uuid.uuid4().hex
    reply = await stub.NextSubtask(
        pb.NextSubtaskRequest(task_id=task_id, subtask_id=subtask_id, opaque_node_id="n")
    )
    params = json.loads(reply.subtask.subtask_params_json)
    write_result_here(work, task_id, subtask_id, params, scene)
    return subtask_id


def verify_request(task_id, subtask_id):
    return pb.VerifyRequest(task_id=task_id, subtask_id=subtask_id)


async def status_of(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def subtask_state(work, task_id, subtask_id) -> str:
    """Read straight from the task's database (a second connection; WAL allows it)."""
    store = TaskStore.open(RequestorTaskDir.of(work, task_id).database, task_id)
    try:
        return store.subtask(subtask_id).state
    finally:
        store.close()


def fail_once(monkeypatch, module, name, error):
    """Make ``module.name`` raise ``error`` on its first call, then work as before."""
    real = getattr(module, name)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)
    return calls


def run(scenario):
    asyncio.run(asyncio.wait_for(scenario, 120))


# ---- an interrupted Verify -------------------------------------------------------------------


@pytest.mark.parametrize("slow_step", ["save_band_values", "assemble_result"])
def test_verify_cut_off_by_the_deadline_still_ends_and_the_retry_gets_the_answer(
    tmp_path, monkeypatch, slow_step
):
    """The caller's deadline expires while the accepted band is saved (or the final image
    written): the work finishes anyway, and the node's retry gets SUCCESS."""
    real = getattr(task_files, slow_step)
    entered = threading.Event()

    def slow(*args):
        entered.set()
        threading.Event().wait(1.0)  # a slow disk
        return real(*args)

    monkeypatch.setattr(task_files, slow_step, slow)

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            task_id = await create(stub, work)
            subtask_id = await hand_out_with_result(stub, work, task_id)
            error = await status_of(stub.Verify(verify_request(task_id, subtask_id), timeout=0.3))
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert entered.is_set()  # it was cut off exactly there
            reply = await stub.Verify(verify_request(task_id, subtask_id))
            assert reply.result == pb.VerifyReply.SUCCESS
            assert subtask_state(work, task_id, subtask_id) == "accepted"
            assert (work / task_id / "task_outputs" / "result.png").is_file()
            # Asked once more (the reply was lost again): the same recorded verdict.
            assert await stub.Verify(verify_request(task_id, subtask_id)) == reply

    run(scenario())


@pytest.mark.parametrize(
    "step, what",
    [
        ("save_band_values", "saving the accepted band"),
        ("assemble_result", "writing the final image"),
    ],
)
def test_full_disk_while_saving_answers_resource_exhausted_and_the_retry_works(
    tmp_path, monkeypatch, step, what
):
    fail_once(monkeypatch, task_files, step, OSError(errno.ENOSPC, "No space left on device"))

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            task_id = await create(stub, work)
            subtask_id = await hand_out_with_result(stub, work, task_id)
            error = await status_of(stub.Verify(verify_request(task_id, subtask_id)))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"disk full while {what}" in error.details()
            # Not stranded in "verifying": the result waits to be checked again.
            assert subtask_state(work, task_id, subtask_id) == "running"
            assert not (work / task_id / "task_outputs" / "result.png").exists()
            assert list((work / task_id / "app_state").glob(".*partial")) == []
            # Space freed: the node's retry is checked and accepted, the task finishes.
            reply = await stub.Verify(verify_request(task_id, subtask_id))
            assert reply.result == pb.VerifyReply.SUCCESS
            assert (work / task_id / "task_outputs" / "result.png").is_file()

    run(scenario())


def test_full_disk_for_the_commit_and_its_undo_still_strands_nothing(tmp_path, monkeypatch):
    """sqlite finds the disk full when recording the acceptance, and again when putting the
    subtask back to running: the subtask is left 'verifying' on disk, and the next Verify
    (nothing of it is running any more) checks it again instead of refusing."""
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"
    fail_once(monkeypatch, TaskStore, "finish_verification", full)
    fail_once(monkeypatch, TaskStore, "undo_verification", full)

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            task_id = await create(stub, work)
            subtask_id = await hand_out_with_result(stub, work, task_id)
            error = await status_of(stub.Verify(verify_request(task_id, subtask_id)))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk full while recording the accepted band" in error.details()
            assert subtask_state(work, task_id, subtask_id) == "verifying"
            assert not (work / task_id / "task_outputs" / "result.png").exists()
            reply = await stub.Verify(verify_request(task_id, subtask_id))
            assert reply.result == pb.VerifyReply.SUCCESS
            assert subtask_state(work, task_id, subtask_id) == "accepted"

    run(scenario())


def test_full_disk_at_create_task_then_carries_on(tmp_path, monkeypatch):
    fail_once(
        monkeypatch,
        task_files,
        "durable_file",
        OSError(errno.ENOSPC, "No space left on device"),
    )

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            task_id = "t-full"
            make_task_folder(work, task_id)
            request = pb.CreateTaskRequest(
                task_id=task_id, max_subtasks_count=1, task_params_json=json.dumps(SCENE)
            )
            error = await status_of(stub.CreateTask(request))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk full while creating task 't-full'" in error.details()
            await stub.CreateTask(request)  # space freed: the same id works
            subtask_id = await hand_out_with_result(stub, work, task_id)
            reply = await stub.Verify(verify_request(task_id, subtask_id))
            assert reply.result == pb.VerifyReply.SUCCESS

    run(scenario())


def test_read_only_work_dir_is_failed_precondition_not_internal(tmp_path, monkeypatch):
    # Root ignores permission bits, so the read-only mount is simulated where it is met.
    import fractal_app.taskdir as taskdir_module

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            monkeypatch.setattr(taskdir_module.os, "mkdir", read_only)
            request = pb.CreateTaskRequest(
                task_id="t-ro", max_subtasks_count=1, task_params_json=json.dumps(SCENE)
            )
            error = await status_of(stub.CreateTask(request))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "Read-only file system" in error.details()
            assert "writable" in error.details()

    run(scenario())


@pytest.mark.parametrize("damage", [b"this is not a database" * 100, b""])
def test_corrupt_state_file_is_data_loss_naming_it(tmp_path, damage):
    async def scenario():
        work = tmp_path / "work"
        async with serving(work) as (app, stub):
            task_id = await create(stub, work)
        database = RequestorTaskDir.of(work, task_id).database
        for leftover in database.parent.glob("state.sqlite3-*"):
            leftover.unlink()
        database.write_bytes(damage)
        async with serving(work) as (app, stub):
            call = stub.HasPendingSubtasks(pb.HasPendingSubtasksRequest(task_id=task_id))
            if damage:
                error = await status_of(call)
                assert error.code() == grpc.StatusCode.DATA_LOSS
                assert "state database is corrupt" in error.details()
            else:  # an empty file is a task that never committed: unknown, not a crash
                error = await status_of(call)
                assert error.code() == grpc.StatusCode.NOT_FOUND
            # Other tasks are not affected.
            other = await create(stub, work)
            assert (
                await stub.HasPendingSubtasks(pb.HasPendingSubtasksRequest(task_id=other))
            ).has_pending_subtasks

    run(scenario())


# ---- aborts and discards racing a Verify -----------------------------------------------------


@pytest.mark.parametrize("racer", ["DiscardSubtasks", "AbortSubtask"])
def test_abort_or_discard_racing_verify_never_gets_success(tmp_path, monkeypatch, racer):
    """The check has passed, but the band is discarded (or aborted) before it is recorded:
    Verify must not answer SUCCESS, and the band is pending again with no image."""
    import fractal_app.verify as verify_module

    real = verify_module.verify_band
    checked, go_on = threading.Event(), threading.Event()

    def check_then_wait(*args):
        verdict = real(*args)
        checked.set()
        go_on.wait(30)
        return verdict

    monkeypatch.setattr(verify_module, "verify_band", check_then_wait)

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            task_id = await create(stub, work)
            subtask_id = await hand_out_with_result(stub, work, task_id)
            verifying = asyncio.ensure_future(stub.Verify(verify_request(task_id, subtask_id)))
            await asyncio.to_thread(checked.wait, 30)
            if racer == "DiscardSubtasks":
                reply = await stub.DiscardSubtasks(
                    pb.DiscardSubtasksRequest(task_id=task_id, subtask_ids=[subtask_id])
                )
                assert list(reply.discarded_subtask_ids) == [subtask_id]
            else:
                await stub.AbortSubtask(
                    pb.AbortSubtaskRequest(task_id=task_id, subtask_id=subtask_id)
                )
            go_on.set()
            error = await status_of(verifying)
            assert error.code() == grpc.StatusCode.ABORTED
            assert subtask_state(work, task_id, subtask_id) in ("discarded", "aborted")
            assert (
                await stub.HasPendingSubtasks(pb.HasPendingSubtasksRequest(task_id=task_id))
            ).has_pending_subtasks
            assert not (work / task_id / "task_outputs" / "result.png").exists()

    run(scenario())


def test_settling_a_verdict_checks_the_store_not_only_the_cancel_flag(tmp_path):
    """The narrowest window: the store released the band but nobody set the cancel flag (the
    check had just ended). The verdict is refused all the same."""
    from fractal_app.bandfile import BandMeta
    from fractal_app.errors import Aborted
    from fractal_app.verify import verify_band

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            task_id = await create(stub, work)
            subtask_id = await hand_out_with_result(stub, work, task_id)
            async with app._using(task_id) as task:
                band = task.store.start_verification(subtask_id)
                meta = BandMeta(task_id, subtask_id, band.row_start, band.row_stop, "image")
                cancel = threading.Event()
                result_dir = task.task_dir.result_dir(subtask_id)
                verdict = verify_band(task.scene, meta, result_dir, cancel)
                assert verdict.accepted
                task.store.discard([subtask_id])  # behind the requestor's back
                with pytest.raises(Aborted):
                    await app._settle(task, subtask_id, band, verdict, cancel)
            assert subtask_state(work, task_id, subtask_id) == "discarded"
            assert not (work / task_id / "task_outputs" / "result.png").exists()

    run(scenario())


# ---- symlinks --------------------------------------------------------------------------------


def test_symlinked_task_outputs_is_never_cleared_nor_written(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            task_id = await create(stub, work)
            subtask_id = await hand_out_with_result(stub, work, task_id)
            task_outputs = work / task_id / "task_outputs"
            task_outputs.rmdir()
            task_outputs.symlink_to(outside, target_is_directory=True)
            error = await status_of(stub.Verify(verify_request(task_id, subtask_id)))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "task_outputs" in error.details() and "symlink" in error.details()
            assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
            assert subtask_state(work, task_id, subtask_id) == "running"
            # The node puts a real folder back: the retry finishes the task.
            task_outputs.unlink()
            task_outputs.mkdir()
            reply = await stub.Verify(verify_request(task_id, subtask_id))
            assert reply.result == pb.VerifyReply.SUCCESS
            assert (task_outputs / "result.png").is_file()

    run(scenario())


def test_symlinked_result_folder_is_rejected_without_being_read(tmp_path):
    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            task_id = await create(stub, work)
            honest = await hand_out_with_result(stub, work, task_id)
            # A second band's worth: the first subtask's honest folder, linked as another's.
            await stub.AbortSubtask(pb.AbortSubtaskRequest(task_id=task_id, subtask_id=honest))
            subtask_id = uuid.uuid4().hex
            await stub.NextSubtask(
                pb.NextSubtaskRequest(task_id=task_id, subtask_id=subtask_id, opaque_node_id="n")
            )
            outputs = work / task_id / "subtask_outputs"
            (outputs / subtask_id).symlink_to(outputs / honest, target_is_directory=True)
            reply = await stub.Verify(verify_request(task_id, subtask_id))
            assert reply.result == pb.VerifyReply.FAILURE
            assert "not a directory" in reply.reason

    run(scenario())


@pytest.mark.parametrize("folder", ["subtask_outputs", "app_state"])
def test_symlinked_task_folders_are_refused_by_name(tmp_path, folder):
    outside = tmp_path / "outside"

    async def scenario():
        work = tmp_path / "work"
        async with serving(work) as (app, stub):
            task_id = await create(stub, work)
            subtask_id = await hand_out_with_result(stub, work, task_id)
        # Restarted (so the task is opened from its folder again), with the folder moved out
        # and a symlink to it in its place.
        (work / task_id / folder).rename(outside)
        (work / task_id / folder).symlink_to(outside, target_is_directory=True)
        before = sorted(str(p) for p in outside.rglob("*"))
        async with serving(work) as (app, stub):
            error = await status_of(stub.Verify(verify_request(task_id, subtask_id)))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"{task_id}/{folder}" in error.details()
            assert "symlink" in error.details()
        assert sorted(str(p) for p in outside.rglob("*")) == before

    run(scenario())


@pytest.mark.parametrize("folder", ["", "subtask_inputs", "task_outputs", "app_state"])
def test_create_task_refuses_a_planted_symlink(tmp_path, folder):
    """The task folder itself, or one of its folders, links elsewhere before CreateTask:
    refused by name, and nothing is written there."""
    outside = tmp_path / "outside"
    outside.mkdir()

    async def scenario():
        work = tmp_path / "work"
        async with serving(work) as (app, stub):
            task_id = "t-planted"
            if folder:
                make_task_folder(work, task_id)
                planted = work / task_id / folder
                if planted.exists():
                    planted.rmdir()
            else:
                planted = work / task_id
            planted.symlink_to(outside, target_is_directory=True)
            request = pb.CreateTaskRequest(
                task_id=task_id, max_subtasks_count=1, task_params_json=json.dumps(SCENE)
            )
            error = await status_of(stub.CreateTask(request))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "symlink" in error.details()
        assert list(outside.iterdir()) == []

    run(scenario())


def test_stores_of_finished_and_idle_tasks_are_closed(tmp_path):
    """Open stores stay bounded: aborted and finished tasks close theirs at once, idle ones
    beyond MAX_OPEN_TASKS (least recently used first), and each re-opens when named."""
    from fractal_app.requestor import MAX_OPEN_TASKS

    async def scenario():
        async with serving(tmp_path / "work") as (app, stub):
            work = app.work_dir
            idle = [await create(stub, work) for _ in range(MAX_OPEN_TASKS + 5)]
            assert app.open_tasks == MAX_OPEN_TASKS
            finished = await create(stub, work)
            subtask_id = await hand_out_with_result(stub, work, finished)
            await stub.Verify(verify_request(finished, subtask_id))
            aborted = await create(stub, work)
            await stub.AbortTask(pb.AbortTaskRequest(task_id=aborted))
            assert app.open_tasks <= MAX_OPEN_TASKS
            assert finished not in app._tasks and aborted not in app._tasks
            # The first idle task was closed first; it answers all the same.
            reply = await stub.HasPendingSubtasks(pb.HasPendingSubtasksRequest(task_id=idle[0]))
            assert reply.has_pending_subtasks
            assert await stub.Verify(verify_request(finished, subtask_id))  # recorded verdict
            for task_id in idle:
                await stub.AbortTask(pb.AbortTaskRequest(task_id=task_id))
            assert app.open_tasks == 0

    run(scenario())
