"""The app through a Golem node's own client (grpclib over h2; see golem_node.py).

A node sends its first rpc the instant health says SERVING, and a provider exits right after
its one reply: every reply must still arrive. Before the front (fractal_app/front.py), 7 of
10 Compute replies and every RunBenchmark and Shutdown reply (3 of 3 each) were lost this way
("Connection lost"), and a Compute could fail with "generator already executing" (the request
racing the background preload).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from certs import write_node_certs
from golem_node import (
    AppProcess,
    ProviderClient,
    RequestorClient,
    client_ssl_context,
    start_app,
)
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from fractal_app import startup
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol.constants import SERVER_CERT_FILE
from fractal_app.servicers import ProviderService

TINY_SCENE = {"fractal": "mandelbrot", "resolution": [16, 8], "max_iter": 50}
LIFECYCLE_SCENE = {"fractal": "julia", "resolution": [96, 64], "max_iter": 200}
# RunBenchmark's reply is what is under test, not the score: a shorter run, same code path.
SHORT_BENCHMARK = "import fractal_app.config as config; config.BENCHMARK_TARGET_SECONDS = 0.05"

# Fresh providers per kind of rpc (the figures); FRACTAL_TEST_COMPUTES raises the
# Compute count for a longer measurement.
COMPUTES = int(os.environ.get("FRACTAL_TEST_COMPUTES", "200"))
BENCHMARKS = 50
SHUTDOWNS = 50
REQUESTOR_SHUTDOWNS = 5
PARALLEL = max(2, os.cpu_count() or 2)


def band_params(subtask_id: str, rows: int) -> dict:
    return {"subtask_id": subtask_id, "band_index": 0, "row_start": 0, "row_stop": rows}


async def one_provider(root: Path, index: int, rpc: str) -> str | None:
    """A fresh provider, health-checked, sent one rpc the instant it is SERVING; None when the
    reply arrived and the process exited with 0, else what went wrong."""
    work_dir = root / f"provider-{index}"
    (work_dir / "subtask_inputs").mkdir(parents=True)
    (work_dir / "subtask_inputs" / "scene.json").write_text(json.dumps(TINY_SCENE))
    app = await start_app("provider", work_dir, SHORT_BENCHMARK)
    try:
        client = await ProviderClient.create(app)
        if rpc == "Compute":
            subtask_id = f"s{index}"
            path = await client.compute("t", subtask_id, band_params(subtask_id, rows=8))
            assert (work_dir / path).is_file()
        elif rpc == "RunBenchmark":
            assert await client.run_benchmark() > 0
        else:
            await client.shutdown()
        if app.process.returncode != 0:
            return f"exit code {app.process.returncode}: {app.log()[-2000:]}"
        return None
    except Exception as error:
        return f"{type(error).__name__}: {error}\n{app.log()[-2000:]}"
    finally:
        app.stop()


async def run_many(root: Path, rpcs: list[str]) -> dict[str, list[str]]:
    """Each rpc in its own fresh provider, PARALLEL at a time; the failures by rpc."""
    slots = asyncio.Semaphore(PARALLEL)
    failures: dict[str, list[str]] = collections.defaultdict(list)

    async def guarded(index: int, rpc: str) -> None:
        async with slots:
            failure = await one_provider(root, index, rpc)
        if failure is not None:
            failures[rpc].append(failure)

    await asyncio.gather(*(guarded(index, rpc) for index, rpc in enumerate(rpcs)))
    return failures


@pytest.mark.slow
# About 0.6 CPU-s per fresh provider: a minute or two on two idle cores, far more when shared.
@pytest.mark.timeout(max(1800, 6 * (COMPUTES + BENCHMARKS + SHUTDOWNS)))
def test_no_reply_is_lost_when_fresh_providers_exit(tmp_path: Path) -> None:
    rpcs = ["Compute"] * COMPUTES + ["RunBenchmark"] * BENCHMARKS + ["Shutdown"] * SHUTDOWNS
    started = time.monotonic()
    failures = asyncio.run(run_many(tmp_path, rpcs))
    counts = {rpc: len(found) for rpc, found in failures.items()}
    print(
        f"\n{len(rpcs)} fresh providers ({COMPUTES} Compute, {BENCHMARKS} RunBenchmark,"
        f" {SHUTDOWNS} Shutdown) in {time.monotonic() - started:.0f} s; failed: {counts}"
    )
    first = next((found[0] for found in failures.values()), "")
    assert not failures, f"replies lost or failed, by rpc: {counts}; first:\n{first}"


def test_requestor_shutdown_reply_arrives(tmp_path: Path) -> None:
    async def scenario() -> None:
        for index in range(REQUESTOR_SHUTDOWNS):
            app = await start_app("requestor", tmp_path / f"requestor-{index}")
            try:
                client = await RequestorClient.create(app)
                await expect_not_found(client)
                await client.shutdown()  # raises if the reply is lost
                assert app.process.returncode == 0, app.log()
            finally:
                app.stop()

    asyncio.run(scenario())


async def expect_not_found(client: RequestorClient) -> None:
    """An rpc before Shutdown, so that the connection has carried more than one stream."""
    with pytest.raises(GRPCError) as caught:
        await client.has_pending_subtasks("no-such-task")
    assert caught.value.status == Status.NOT_FOUND


# --- task-api's TaskLifecycleUtil.simulate_task, through grpclib ---------------------------------


class Lifecycle:
    """simulate_task's loop: create, then next / compute in a fresh provider / verify until
    nothing is pending, then shut the requestor down (providers exit by themselves)."""

    def __init__(self, root: Path, tls: bool) -> None:
        self.root = root
        self.tls = tls

    def context_for(self, work_dir: Path):
        """Write the node's pem files into ``work_dir``; the node's client context for it."""
        if not self.tls:
            return None
        certs = write_node_certs(work_dir)
        client = work_dir.parent / f"{work_dir.name}-client"
        client.mkdir()
        (client / "key.pem").write_bytes(certs.client_key)
        (client / "cert.pem").write_bytes(certs.client_cert)
        return client_ssl_context(
            client / "key.pem", client / "cert.pem", work_dir / SERVER_CERT_FILE
        )

    async def provider(self, task_dir: Path, subtask_id: str, params: dict, resources) -> Path:
        work_dir = self.root / "provider" / subtask_id
        (work_dir / "subtask_inputs").mkdir(parents=True)
        for name in resources:
            shutil.copy2(task_dir / "subtask_inputs" / name, work_dir / "subtask_inputs")
        context = self.context_for(work_dir)
        app = await start_app("provider", work_dir)
        try:
            client = await ProviderClient.create(app, context)
            output = await client.compute(task_dir.name, subtask_id, params)
            assert app.process.returncode == 0, app.log()
        finally:
            app.stop()
        outputs = task_dir / "subtask_outputs" / subtask_id
        outputs.mkdir()
        shutil.copy2(work_dir / output, outputs / output.name)
        return outputs / output.name

    async def simulate_task(self, task_id: str, max_subtasks: int, scene: dict) -> Path:
        work_dir = self.root / "requestor"
        context = self.context_for(work_dir)
        app: AppProcess = await start_app("requestor", work_dir)
        try:
            client = await RequestorClient.create(app, context)
            await client.create_task(task_id, max_subtasks, scene)
            done = []
            while await client.has_pending_subtasks(task_id):
                subtask_id = str(uuid.uuid4())
                subtask = await client.next_subtask(task_id, subtask_id, "node_id123")
                assert subtask is not None
                params, resources = subtask
                await self.provider(work_dir / task_id, subtask_id, params, resources)
                result, reason = await client.verify(task_id, subtask_id)
                assert result == pb.VerifyReply.SUCCESS, reason
                done.append(subtask_id)
            assert 0 < len(done) <= max_subtasks
            assert not await client.has_pending_subtasks(task_id)
            await client.shutdown()
            assert app.process.returncode == 0, app.log()
        finally:
            app.stop()
        return work_dir / task_id


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mutual-tls"])
def test_simulate_task_through_grpclib(tmp_path: Path, tls: bool) -> None:
    task_dir = asyncio.run(
        Lifecycle(tmp_path, tls).simulate_task("test_task_id123", 3, LIFECYCLE_SCENE)
    )
    outputs = sorted(path.name for path in (task_dir / "task_outputs").iterdir())
    assert outputs == ["result.png"]


# --- a request sent the instant health says SERVING ----------------------------------------------


def test_compute_waits_for_the_preload_it_would_race(tmp_path: Path, monkeypatch) -> None:
    """The request starts only once the background preload has finished (both refreshing
    Numba's registries at once raised "generator already executing")."""
    release = threading.Event()
    events: list[str] = []

    def held_preload(resume_gc: bool) -> None:
        release.wait(30)
        events.append("preloaded")

    monkeypatch.setattr(startup, "preload_provider", held_preload)
    (tmp_path / "subtask_inputs").mkdir()
    (tmp_path / "subtask_inputs" / "scene.json").write_text(json.dumps(TINY_SCENE))

    async def scenario() -> str:
        service = ProviderService(tmp_path, asyncio.Event(), "cpu")
        service.serving()
        compute = asyncio.create_task(
            service.app.compute("t", "s1", json.dumps(band_params("s1", 8)))
        )
        await asyncio.sleep(0.3)
        assert not compute.done() and events == [], "Compute ran before the preload finished"
        release.set()
        path = await asyncio.wait_for(compute, 60)
        events.append("computed")
        return path

    assert asyncio.run(scenario()) == "s1/band.png"
    assert events == ["preloaded", "computed"]
