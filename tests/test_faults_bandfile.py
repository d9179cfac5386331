"""Hostile band files over real gRPC: every one gets FAILURE with a reason, never INTERNAL, and
the band goes back to pending (the cheater does not keep it)."""

import uuid

import numpy as np
import pytest
from cheaters import chunk, craft_png
from grpc_helpers import create_task, has_pending, next_subtask, verify

from fractal_app.bandfile import BandMeta
from fractal_app.protocol import golem_task_api_pb2 as pb

SCENE = {"fractal": "mandelbrot", "resolution": [16, 4], "max_iter": 50}


def _honest_png(task_id, subtask_id, params) -> bytes:
    from fractal_app import render
    from fractal_app.scene import parse_scene

    scene = parse_scene(SCENE)
    values = render.render_band(scene, params["row_start"], params["row_stop"])
    meta = BandMeta(task_id, subtask_id, params["row_start"], params["row_stop"], "image")
    rows = params["row_stop"] - params["row_start"]
    return craft_png(16, rows, text=meta.to_json().encode(), pixels=np.asarray(values))


def _deep_brackets(task_id, subtask_id, params) -> bytes:
    # 4,000 '[' fit the reader's text-chunk limit and overflow json's recursion (once a
    # RecursionError: INTERNAL on every retry, the band held by the cheater for good).
    rows = params["row_stop"] - params["row_start"]
    return craft_png(16, rows, text=b"[" * 4000)


def _data_after_iend(task_id, subtask_id, params) -> bytes:
    return _honest_png(task_id, subtask_id, params) + b"trailing bytes"


def _iend_with_payload(task_id, subtask_id, params) -> bytes:
    honest = _honest_png(task_id, subtask_id, params)
    return honest[: -len(chunk(b"IEND", b""))] + chunk(b"IEND", b"hidden payload")


@pytest.mark.parametrize(
    "make, reason",
    [
        (_deep_brackets, "not valid JSON"),
        (_data_after_iend, "after IEND"),
        (_iend_with_payload, "after IEND"),
    ],
)
def test_hostile_band_file_gets_failure_with_a_reason(shared_requestor, make, reason):
    stub, work = shared_requestor.requestor(), shared_requestor.work_dir
    task_id = f"t-{uuid.uuid4().hex[:12]}"
    create_task(stub, work, task_id, SCENE, 1)
    subtask_id, params, _ = next_subtask(stub, task_id)
    target = work / task_id / "subtask_outputs" / subtask_id
    target.mkdir(parents=True)
    (target / "band.png").write_bytes(make(task_id, subtask_id, params))
    reply = verify(stub, task_id, subtask_id)
    assert reply.result == pb.VerifyReply.FAILURE
    assert reason in reply.reason
    assert has_pending(stub, task_id)  # the band is handed out again


def test_the_honest_file_these_are_made_from_is_accepted(shared_requestor):
    """The cheats above differ from an accepted file only in what they name."""
    stub, work = shared_requestor.requestor(), shared_requestor.work_dir
    task_id = f"t-{uuid.uuid4().hex[:12]}"
    create_task(stub, work, task_id, SCENE, 1)
    subtask_id, params, _ = next_subtask(stub, task_id)
    target = work / task_id / "subtask_outputs" / subtask_id
    target.mkdir(parents=True)
    (target / "band.png").write_bytes(_honest_png(task_id, subtask_id, params))
    assert verify(stub, task_id, subtask_id).result == pb.VerifyReply.SUCCESS
