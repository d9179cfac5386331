"""Verification inside a real requestor process: it runs off the event loop (health answers
while a band verifies) and AbortSubtask stops it.

The band is expensive to check (max_iter 2,000,000, mostly inside the set: the 1,200
recomputed pixels are ~2 billion iterations, several seconds) and blank, so the check is
certain to reject it in the end; it is aborted long before.
"""

from __future__ import annotations

import time
import uuid

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import create_task, has_pending, next_subtask, write_result_here

from fractal_app.protocol import golem_task_api_pb2 as pb

SLOW_SCENE = {"fractal": "mandelbrot", "resolution": [256, 64], "center": [-0.2, 0.0],
              "width": 0.6, "max_iter": 2_000_000}
PROBE_SECONDS = 1.0  # keep probing this long while the check runs (well under its length)


def test_health_answers_while_a_band_verifies_and_abort_stops_it(tmp_path, requestor):
    stub, work = requestor.requestor(), requestor.work_dir
    health = health_pb2_grpc.HealthStub(requestor.channel())
    task_id = f"slow-{uuid.uuid4().hex[:8]}"
    create_task(stub, work, task_id, SLOW_SCENE, 1)
    subtask_id, params, _ = next_subtask(stub, task_id)
    blank = np.zeros((params["row_stop"] - params["row_start"], 256, 3), dtype=np.uint8)
    write_result_here(work, task_id, subtask_id, params, SLOW_SCENE, blank)

    started = time.monotonic()
    pending_verify = stub.Verify.future(
        pb.VerifyRequest(task_id=task_id, subtask_id=subtask_id), timeout=300
    )
    latencies = []
    while time.monotonic() - started < PROBE_SECONDS:
        t0 = time.monotonic()
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        latencies.append(time.monotonic() - t0)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # another rpc of the same task answers too
        assert has_pending(stub, task_id) is False
    assert not pending_verify.done(), "the check finished before it could be aborted"

    aborted_at = time.monotonic()
    stub.AbortSubtask(pb.AbortSubtaskRequest(task_id=task_id, subtask_id=subtask_id), timeout=30)
    try:
        reply = pending_verify.result()
        raise AssertionError(f"Verify answered {reply} instead of ABORTED")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.ABORTED, exc.details()
    stopped_after = time.monotonic() - aborted_at
    assert stopped_after < 5.0
    assert has_pending(stub, task_id)  # the band is handed out again
    latencies.sort()
    median = latencies[len(latencies) // 2]
    print(  # figures for the report (pytest -s)
        f"health during verification: median {median * 1e3:.1f} ms, "
        f"max {latencies[-1] * 1e3:.1f} ms over {len(latencies)} probes in "
        f"{aborted_at - started:.2f} s; abort took effect after {stopped_after * 1e3:.0f} ms"
    )
    assert median < 0.1
