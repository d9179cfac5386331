"""Load on one requestor: many tasks, hundreds of rpcs in flight, health probed throughout.

Shared by tests/test_load.py (which asserts correctness) and benchmarks/bench_load.py (which
reports throughput and latency). The client is made only from the generated stubs, over
127.0.0.1, the way a node with many providers talks to its requestor:

1. ``hand_out``: every task's bands are asked for by more NextSubtask calls than there are
   bands, mixed with HasPendingSubtasks, all at once; each band must go to exactly one
   subtask.
2. The test process writes each subtask's result file where the node would put it; a fixed
   share of them is wrong on purpose.
3. ``verify_all``: every subtask is verified at once (mixed with NextSubtask and
   HasPendingSubtasks); honest results must be accepted, wrong ones rejected, and their bands
   go back to pending.
4. Rounds of 1-3 repeat for the rejected bands until every task is finished; then every
   task's final image must equal a direct render.

Health is probed from a separate process (its own interpreter, so the client's load cannot
delay it) every ``HEALTH_INTERVAL_S``; its latencies come back as a list.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc
from fractal_app.taskdir import BAND_FILE, SCENE_RESOURCE, RequestorTaskDir

TASKS = 50
BANDS_PER_TASK = 4
IN_FLIGHT = 200
# Extra NextSubtask calls per task beyond its bands: they must all come back empty.
SURPLUS_ASKS = 2
# HasPendingSubtasks calls mixed into each phase, per task.
PENDING_ASKS = 2
# Every WRONG_EVERY-th result is written wrong on purpose (and must be rejected).
WRONG_EVERY = 7
HEALTH_INTERVAL_S = 0.01
RPC_TIMEOUT_S = 120.0

SCENE = {
    "fractal": "mandelbrot",
    "resolution": [48, 40],
    "center": [-0.6, 0.0],
    "width": 3.0,
    "max_iter": 200,
}


@dataclass
class RpcStats:
    """Latency of every rpc, by kind, and the wall time of the load phases."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # Wall time of the rpc phases only (not the client writing result files in between).
    wall_s: float = 0.0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def rate(self) -> float:
        return self.count / self.wall_s if self.wall_s else 0.0

    def percentiles(self) -> dict[str, dict[str, float]]:
        """{kind: {p50, p90, p99, max}} in milliseconds, plus "all"."""
        kinds = dict(self.latencies)
        kinds["all"] = [x for v in self.latencies.values() for x in v]
        return {kind: latency_summary(values) for kind, values in kinds.items() if values}


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "n": int(ms.size),
    }


@dataclass
class Handout:
    task_id: str
    subtask_id: str
    row_start: int
    row_stop: int
    band_index: int
    wrong: bool = False


class Failure(AssertionError):
    """The requestor answered wrongly under load; the message says how."""


class LoadClient:
    """Runs the phases above against one requestor; raises Failure on any wrong answer."""

    def __init__(self, address: str, work_dir: Path, tasks: int = TASKS) -> None:
        self.address = address
        self.work_dir = work_dir
        self.task_ids = [f"load-{k:03d}-{uuid.uuid4().hex[:6]}" for k in range(tasks)]
        self.stats = RpcStats()
        self.accepted: dict[str, set[int]] = defaultdict(set)
        self.results_written = 0
        self._values: dict[tuple[int, int], np.ndarray] = {}
        self._scene = None

    # ---- driving ----------------------------------------------------------------------

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            self.stub = pb_grpc.RequestorAppStub(channel)
            self.limit = asyncio.Semaphore(IN_FLIGHT)
            await self._create_tasks()
            rounds = 0
            while any(len(self.accepted[t]) < BANDS_PER_TASK for t in self.task_ids):
                rounds += 1
                if rounds > 10:
                    raise Failure(f"tasks still unfinished after 10 rounds: {self._unfinished()}")
                started = time.perf_counter()
                handouts = await self.hand_out()
                self.stats.wall_s += time.perf_counter() - started
                self.write_results(handouts)
                started = time.perf_counter()
                await self.verify_all(handouts)
                self.stats.wall_s += time.perf_counter() - started
            self.rounds = rounds

    def _unfinished(self) -> dict[str, int]:
        return {
            t: len(self.accepted[t])
            for t in self.task_ids
            if len(self.accepted[t]) < BANDS_PER_TASK
        }

    async def _call(self, kind: str, method, request):
        async with self.limit:
            sent = time.perf_counter()
            try:
                return await method(request, timeout=RPC_TIMEOUT_S)
            finally:
                self.stats.latencies[kind].append(time.perf_counter() - sent)

    async def _create_tasks(self) -> None:
        for task_id in self.task_ids:
            RequestorTaskDir.of(self.work_dir, task_id).prepare()
        await asyncio.gather(
            *(
                self.stub.CreateTask(
                    pb.CreateTaskRequest(
                        task_id=task_id,
                        max_subtasks_count=BANDS_PER_TASK,
                        task_params_json=json.dumps(SCENE),
                    ),
                    timeout=RPC_TIMEOUT_S,
                )
                for task_id in self.task_ids
            )
        )

    def _pending_bands(self) -> dict[str, int]:
        return {t: BANDS_PER_TASK - len(self.accepted[t]) for t in self.task_ids}

    async def _has_pending(self, task_id: str) -> bool:
        reply = await self._call(
            "HasPendingSubtasks",
            self.stub.HasPendingSubtasks,
            pb.HasPendingSubtasksRequest(task_id=task_id),
        )
        return reply.has_pending_subtasks

    async def _next(self, task_id: str) -> Handout | None:
        subtask_id = uuid.uuid4().hex
        reply = await self._call(
            "NextSubtask",
            self.stub.NextSubtask,
            pb.NextSubtaskRequest(task_id=task_id, subtask_id=subtask_id, opaque_node_id="n"),
        )
        if not reply.HasField("subtask"):
            return None
        params = json.loads(reply.subtask.subtask_params_json)
        if params["subtask_id"] != subtask_id or list(reply.subtask.resources) != [SCENE_RESOURCE]:
            raise Failure(f"NextSubtask for {subtask_id} answered {reply}")
        return Handout(
            task_id, subtask_id, params["row_start"], params["row_stop"], params["band_index"]
        )

    async def hand_out(self) -> list[Handout]:
        """Ask for every pending band (and more) at once; each must go out exactly once."""
        pending = self._pending_bands()
        asks = [t for t, n in pending.items() if n for _ in range(n + SURPLUS_ASKS)]
        probes = [t for t, n in pending.items() if n for _ in range(PENDING_ASKS)]
        results = await asyncio.gather(
            *(self._next(t) for t in asks), *(self._has_pending(t) for t in probes)
        )
        handouts = [h for h in results[: len(asks)] if h is not None]
        by_task: dict[str, list[Handout]] = defaultdict(list)
        for handout in handouts:
            by_task[handout.task_id].append(handout)
        for task_id, n in pending.items():
            got = by_task.get(task_id, [])
            indices = [h.band_index for h in got]
            if len(got) != n or len(set(indices)) != n:
                raise Failure(
                    f"task {task_id}: {n} bands were pending, NextSubtask handed out bands"
                    f" {sorted(indices)}"
                )
            if set(indices) & self.accepted[task_id]:
                raise Failure(f"task {task_id}: an accepted band was handed out again: {indices}")
        # Everything is handed out now: nothing may be pending.
        after = await asyncio.gather(*(self._has_pending(t) for t in pending))
        if any(after):
            raise Failure("HasPendingSubtasks is true after every band was handed out")
        return handouts

    def write_results(self, handouts: list[Handout]) -> None:
        """Put each subtask's result file where the node would; every WRONG_EVERY-th is wrong."""
        from fractal_app import render
        from fractal_app.bandfile import BandMeta, write_band
        from fractal_app.scene import parse_scene

        if self._scene is None:
            self._scene = parse_scene(SCENE)
        for handout in handouts:
            key = (handout.row_start, handout.row_stop)
            if key not in self._values:
                self._values[key] = render.render_band(self._scene, *key)
            values = self._values[key]
            self.results_written += 1
            handout.wrong = self.results_written % WRONG_EVERY == 0
            if handout.wrong:
                values = 255 - values
            task_dir = RequestorTaskDir.of(self.work_dir, handout.task_id)
            target = task_dir.result_dir(handout.subtask_id)
            target.mkdir(parents=True, exist_ok=True)
            meta = BandMeta(
                handout.task_id, handout.subtask_id, handout.row_start, handout.row_stop, "image"
            )
            write_band(target / BAND_FILE, values, meta)

    async def _verify(self, handout: Handout) -> None:
        reply = await self._call(
            "Verify",
            self.stub.Verify,
            pb.VerifyRequest(task_id=handout.task_id, subtask_id=handout.subtask_id),
        )
        accepted = reply.result == pb.VerifyReply.SUCCESS
        if accepted == handout.wrong:
            raise Failure(
                f"{'wrong' if handout.wrong else 'honest'} result of {handout.subtask_id} got"
                f" {pb.VerifyReply.VerifyResult.Name(reply.result)}: {reply.reason}"
            )
        if not reply.reason:
            raise Failure(f"Verify of {handout.subtask_id} gave no reason")
        if accepted:
            if handout.band_index in self.accepted[handout.task_id]:
                raise Failure(f"band {handout.band_index} of {handout.task_id} accepted twice")
            self.accepted[handout.task_id].add(handout.band_index)

    async def verify_all(self, handouts: list[Handout]) -> None:
        """Verify everything at once, with NextSubtask/HasPendingSubtasks mixed in; those may
        see rejected bands come back, so their answers are checked for consistency only."""
        tasks = sorted({h.task_id for h in handouts})
        results = await asyncio.gather(
            *(self._verify(h) for h in handouts),
            *(self._has_pending(t) for t in tasks),
            *(self._probe_next(t) for t in tasks),
        )
        del results  # the checks are inside each call
        # A wrong result put its band back to pending; a correct one never did.
        for task_id in tasks:
            expected = len(self.accepted[task_id]) < BANDS_PER_TASK
            if await self._has_pending(task_id) != expected:
                raise Failure(
                    f"task {task_id}: HasPendingSubtasks disagrees with"
                    f" {len(self.accepted[task_id])} accepted bands"
                )

    async def _probe_next(self, task_id: str) -> None:
        """A NextSubtask during verification: a band it gets must be one that was rejected;
        give it straight back (AbortSubtask) so the accounting stays simple."""
        handout = await self._next(task_id)
        if handout is None:
            return
        if handout.band_index in self.accepted[task_id]:
            raise Failure(f"task {task_id}: accepted band {handout.band_index} handed out again")
        await self._call(
            "AbortSubtask",
            self.stub.AbortSubtask,
            pb.AbortSubtaskRequest(task_id=task_id, subtask_id=handout.subtask_id),
        )

    # ---- the end state ----------------------------------------------------------------

    def check_final_images(self) -> None:
        """Every task's task_outputs holds one PNG equal to a direct render of the scene."""
        from PIL import Image

        from fractal_app import render

        expected = render.render_band(self._scene, 0, self._scene.height_px)
        for task_id in self.task_ids:
            outputs = sorted((self.work_dir / task_id / "task_outputs").iterdir())
            if [p.name for p in outputs] != ["result.png"]:
                raise Failure(f"task {task_id}: task_outputs holds {[p.name for p in outputs]}")
            with Image.open(outputs[0]) as png:
                got = np.asarray(png.convert("RGB"))
            if not np.array_equal(got, expected):
                raise Failure(f"task {task_id}: the final image differs from a direct render")


class HealthProbe:
    """A separate process that checks health every HEALTH_INTERVAL_S until stopped."""

    SCRIPT = r"""
import json, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
address, interval = sys.argv[1], float(sys.argv[2])
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
request = health_pb2.HealthCheckRequest(service="")
stub.Check(request, timeout=10)
print("ready", flush=True)
import select
latencies, bad = [], []
while not select.select([sys.stdin], [], [], interval)[0]:
    sent = time.perf_counter()
    try:
        status = stub.Check(request, timeout=10).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            bad.append(f"status {status}")
    except grpc.RpcError as error:
        bad.append(str(error.code()))
    latencies.append(time.perf_counter() - sent)
print(json.dumps({"latencies": latencies, "bad": bad}), flush=True)
"""

    def __init__(self, address: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, address, str(HEALTH_INTERVAL_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the health probe did not start")

    def stop(self) -> tuple[list[float], list[str]]:
        """(latencies in seconds, non-SERVING answers or errors)."""
        out, _ = self.process.communicate("stop\n", timeout=60)
        report = json.loads(out.strip().splitlines()[-1])
        return report["latencies"], report["bad"]


def run_load(address: str, work: Path) -> tuple[LoadClient, list[float], list[str]]:
    """The whole load against the requestor at ``address`` (work dir ``work``), its health
    probed from another process throughout, then every final image checked.

    Returns the client (its stats), the health latencies (s) and the non-SERVING answers.
    """
    probe = HealthProbe(address)
    client = LoadClient(address, work)
    try:
        asyncio.run(client.run())
    finally:
        latencies, bad = probe.stop()
    client.check_final_images()
    return client, latencies, bad
