"""Helpers shared by the app-level benchmarks: start the real servers, time them, measure memory.

Everything goes through ``python -m fractal_app`` (the entrypoint a Golem node runs, started
by :mod:`fractal_app.launcher`) and the generated stubs, so the figures include what a node
pays: interpreter start, imports, TLS-less gRPC, the work directory. Timings are wall-clock
from just before ``Popen``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

from fractal_app import launcher
from fractal_app.launcher import ServerProcess
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.taskdir import SCENE_RESOURCE, ProviderTaskDir, RequestorTaskDir

# The port file appears once the server is SERVING; it is polled this often. 1 ms keeps the
# polling error far below the 0.5 s start-up target.
PORT_FILE_POLL_S = 0.001
# As long as the tests allow: a benchmark's server starts on a loaded machine too.
START_TIMEOUT_S = 90.0


def start_server(
    role: str,
    work_dir: Path,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    log_level: str = "WARNING",
) -> ServerProcess:
    """Start ``python -m fractal_app ROLE 0`` on 127.0.0.1 (``env`` added to this process's
    environment) and time it to SERVING, polling every millisecond so the polling error
    stays far below the start-up targets. The returned server has ``started_at``,
    ``port_file_s`` and ``serving_s``."""
    return launcher.start_server(
        role, work_dir, timeout=START_TIMEOUT_S, poll_s=PORT_FILE_POLL_S,
        extra_args=extra_args, env={**os.environ, **(env or {})}, log_level=log_level,
    )


def provider_work_dir(root: Path, scene: dict) -> Path:
    """A provider's work directory holding the subtask's one resource, the scene."""
    task_dir = ProviderTaskDir(root / f"provider-{uuid.uuid4().hex[:8]}")
    task_dir.prepare()
    task_dir.resource(SCENE_RESOURCE).write_text(json.dumps(scene))
    return task_dir.root


def create_task(stub, work_dir: Path, task_id: str, scene: dict, max_subtasks: int):
    """CreateTask as a node sends it: the task folder prepared first."""
    RequestorTaskDir.of(work_dir, task_id).prepare()
    request = pb.CreateTaskRequest(
        task_id=task_id, max_subtasks_count=max_subtasks, task_params_json=json.dumps(scene)
    )
    return stub.CreateTask(request, timeout=120)


def compute_request(task_id: str, row_start: int, row_stop: int) -> pb.ComputeRequest:
    subtask_id = uuid.uuid4().hex
    params = {
        "subtask_id": subtask_id, "band_index": 0, "row_start": row_start, "row_stop": row_stop,
    }
    return pb.ComputeRequest(
        task_id=task_id, subtask_id=subtask_id, subtask_params_json=json.dumps(params)
    )


def task_plan(keep: Path) -> list[tuple[int, int]]:
    """The bands the requestor planned, read back from the task database of a
    ``fractal-app render --keep KEEP`` run."""
    import sqlite3

    (task_root,) = (p for p in (keep / "requestor").iterdir() if p.is_dir())
    database = RequestorTaskDir(task_root).database
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT row_start, row_stop FROM band ORDER BY row_start").fetchall()
    return [(int(a), int(b)) for a, b in rows]


# ---- the lifecycle against the bare renderer ---------------------------------------------

# The bare renderer: one process, kernels loaded before the clock starts, renders each scene
# it is sent on stdin (a line "SCENE_PATH OUT", OUT "-" for none, else an .npy of the values)
# and answers its wall and CPU seconds (every thread of the process).
_BARE_WORKER = r"""
import json, resource, sys, time
import numpy as np
from fractal_app import render
from fractal_app.scene import parse_scene

def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

for line in sys.stdin:
    scene_path, out = line.split()
    scene = parse_scene(open(scene_path).read())
    render.render_band(scene.model_copy(update={"resolution": (8, 8)}), 0, 8)
    cpu, started = cpu_s(), time.perf_counter()
    values = render.render_band(scene, 0, scene.height_px)
    wall, cpu = time.perf_counter() - started, cpu_s() - cpu
    if out != "-":
        np.save(out, values)
    print(json.dumps({"seconds": wall, "cpu_s": cpu}), flush=True)
"""


class BareRenderer:
    """The bare band renderer in a process of its own, kept running between renders, so
    that its renders can alternate with ``fractal-app render`` runs in the same minute."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BARE_WORKER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def render(self, scene_path: Path, save_to: Path | None = None) -> tuple[float, float]:
        """(wall, CPU) seconds of rendering the whole scene; the values saved if asked."""
        self.process.stdin.write(f"{scene_path} {save_to or '-'}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the bare renderer exited ({self.process.wait()})")
        answer = json.loads(line)
        return answer["seconds"], answer["cpu_s"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()

    def __enter__(self) -> BareRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def children_cpu_s() -> float:
    """User + system CPU seconds of every finished child (and their waited-for children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fractal_app_render(
    scene_path: Path, out: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """(wall, CPU of every process) seconds of ``fractal-app render``, start to exit."""
    cli = Path(sys.executable).with_name("fractal-app")
    cpu, started = children_cpu_s(), time.perf_counter()
    subprocess.run(
        [str(cli), "render", str(scene_path), "-o", str(out), "--quiet", *extra],
        check=True, env={**os.environ, **(env or {})},
    )
    return time.perf_counter() - started, children_cpu_s() - cpu


def cpu_by_role(out_dir: Path) -> dict[str, float]:
    """CPU seconds of the processes the rss probe saw, summed by role (cli, requestor,
    provider), with the number of providers."""
    roles: dict[str, float] = {}
    for report in read_rss_reports(out_dir):
        roles[report["role"]] = roles.get(report["role"], 0.0) + report["cpu_s"]
        if report["role"] == "provider":
            roles["providers_started"] = roles.get("providers_started", 0) + 1
    return {k: round(v, 3) for k, v in roles.items()}


# ---- memory ------------------------------------------------------------------------------

# benchmarks/rss_probe/sitecustomize.py: with this folder on PYTHONPATH and RSS_DIR_ENV set,
# every Python process (the CLI, the requestor, each provider) writes its own peak RSS there
# when it exits. ru_maxrss of RUSAGE_CHILDREN cannot do this: it is the largest of all
# children, with no way to tell a requestor from a provider.
RSS_PROBE_DIR = Path(__file__).parent / "rss_probe"
RSS_DIR_ENV = "FRACTAL_BENCH_RSS_DIR"


def rss_probe_env(out_dir: Path) -> dict[str, str]:
    """Environment that makes every Python process started with it report its peak RSS."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(RSS_PROBE_DIR), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, RSS_DIR_ENV: str(out_dir)}


def read_rss_reports(out_dir: Path) -> list[dict]:
    """The reports the probe wrote: one {"pid", "role", "argv", "max_rss_bytes"} a process."""
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]


def children_max_rss_bytes() -> int:
    """The largest peak RSS of any child this process has waited for (Linux: KiB -> bytes)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


# Set to 1 to record the targets without failing the benchmark (a machine too busy to judge).
REPORT_ONLY_ENV = "FRACTAL_BENCH_REPORT_ONLY"


def check_target(benchmark, name: str, value: float, bound: float, at_least: bool = False):
    """Record one of issue 6's targets in the result's ``extra_info["targets"]`` (value, bound,
    met) and fail the benchmark when it is missed, unless FRACTAL_BENCH_REPORT_ONLY=1.

    ``bound`` is an upper bound, or a lower one with ``at_least``. Call it after every figure
    is recorded, so a failing run still saves (with --benchmark-json/--benchmark-autosave)
    and prints what it measured.
    """
    met = value >= bound if at_least else value <= bound
    targets = benchmark.extra_info.setdefault("targets", {})
    targets[name] = {"value": round(value, 4), "bound": bound, "met": met}
    print(f"target {name}: {value:.4g} {'>=' if at_least else '<='} {bound}: "
          f"{'met' if met else 'MISSED'}")
    if os.environ.get(REPORT_ONLY_ENV) != "1":
        assert met, f"{name} = {value:.4g}, target {'>=' if at_least else '<='} {bound}"


def cpu_model() -> str:
    """This machine's CPU model as Linux names it (benchmarks print it beside their figures)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
