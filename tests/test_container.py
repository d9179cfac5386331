"""The images, run the way a Golem node runs them (PROTOCOL.md, "How a Golem node runs the app").

Each container gets ``--network host`` (so its server is reached on 127.0.0.1), the work
directory bind-mounted at /golem/work, ``--user 4321:4321`` (a uid the image has never heard
of) and ``--read-only`` with no tmpfs: the app may write only to its work directory.

scripts/container_checks.sh builds the images and runs this module with the image names in
FRACTAL_APP_CPU_TEST_IMAGE / FRACTAL_APP_GPU_TEST_IMAGE; without them every test skips.

Ports: a node passes the container a port it chose. The test picks a free one by binding port
0 on 127.0.0.1 and closing the socket before the container binds it. Another process could take
the port in between (a tiny race); the container would then exit with "address in use" and the
test fail with its log, never hang.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc

pytestmark = pytest.mark.container

_CHECKOUT = Path(__file__).resolve().parents[1]
_CANDIDATES = (_CHECKOUT / "shared", _CHECKOUT.parent / "shared")
CONTAINER_SH = os.environ.get("FRACTAL_APP_CONTAINER_SH") or next(
    (str(d / "tools/container.sh") for d in _CANDIDATES if (d / "tools/container.sh").is_file()),
    "container.sh (set FRACTAL_APP_CONTAINER_SH)",
)
NODE_UID = 4321
READY_WITHIN_S = 15.0  # the node's readiness budget
RPC_TIMEOUT_S = 120.0
TASK_FOLDERS = ("task_inputs", "subtask_inputs", "task_outputs", "subtask_outputs")

SCENE_2D = {
    "fractal": "mandelbrot",
    "resolution": [160, 90],
    "center": [-0.7435, 0.1314],
    "width": 0.05,
    "max_iter": 600,
    "palette": "twilight",
    "supersample": 2,
}
SCENE_COUNTS = {
    "fractal": "julia", "resolution": [96, 64], "max_iter": 300, "output": "counts",
    "precision": "float32",
}
SCENE_3D = {
    "fractal": "mandelbulb", "resolution": [48, 32], "max_steps": 96, "precision": "float32",
}


# The provider's own entry point under a recorder of Numba compilations (cache loads are not
# compilations); reported at exit (the app ends with os._exit after the atexit handlers).
RECORD_COMPILES = """
import atexit, runpy, sys
from numba.core import event

compiles = event.RecordingListener()
event.register("numba:compile", compiles)

def report():
    names = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in compiles.buffer})
    print("numba compiles:", sum(e.is_start for _, e in compiles.buffer), names, flush=True)

atexit.register(report)
sys.argv[0] = "fractal_app"
runpy.run_module("fractal_app", run_name="__main__", alter_sys=True)
"""


def _image(variable: str) -> str:
    image = os.environ.get(variable)
    if not image:
        pytest.skip(
            f"{variable} is not set: the container checks run from scripts/container_checks.sh, "
            "which builds the images first"
        )
    return image


# Hash of the package's Python sources, run here and inside an image.
SOURCE_HASH = """
import hashlib, pathlib, fractal_app
root = pathlib.Path(fractal_app.__file__).parent
digest = hashlib.sha256()
for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root)).encode() + b"\\0" + path.read_bytes())
print(digest.hexdigest())
"""


def _same_sources_as_this_checkout(image: str) -> str:
    """The image, after checking it holds this checkout's code: a stale image would make the
    pixel comparison fail for the wrong reason."""
    import sys

    here = subprocess.run(
        [sys.executable, "-c", SOURCE_HASH], capture_output=True, text=True, check=True
    ).stdout.strip()
    inside = _container_sh(
        "run", "--rm", "--user", f"{NODE_UID}:{NODE_UID}", "--read-only", "--entrypoint",
        "python", image, "-c", SOURCE_HASH,
    ).stdout.strip()
    assert inside == here, f"{image} was built from other sources than this checkout: rebuild it"
    return image


@pytest.fixture(scope="module")
def cpu_image() -> str:
    return _same_sources_as_this_checkout(_image("FRACTAL_APP_CPU_TEST_IMAGE"))


@pytest.fixture(scope="module")
def gpu_image() -> str:
    return _same_sources_as_this_checkout(_image("FRACTAL_APP_GPU_TEST_IMAGE"))


# ---- containers -----------------------------------------------------------------------------


def _container_sh(*args: str, timeout: float = 120, check: bool = True):
    result = subprocess.run(
        ["bash", CONTAINER_SH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"container.sh {' '.join(args[:3])}... failed:\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hand_to_node_user(path: Path) -> None:
    """What the node's file layout looks like: the work dir belongs to the container's uid."""
    for item in [path, *path.rglob("*")]:
        os.chown(item, NODE_UID, NODE_UID)


@dataclass
class Container:
    id: str
    port: int
    started_at: float

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = _container_sh("podman", "logs", self.id, check=False)
        return result.stdout + result.stderr

    def state(self) -> tuple[bool, int]:
        out = _container_sh(
            "podman", "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.id
        ).stdout.split()
        return out[0] == "true", int(out[1])

    def wait_exit(self, timeout: float) -> int:
        """The exit code once the container stops by itself (AssertionError after timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running, code = self.state()
            if not running:
                return code
            time.sleep(0.1)
        raise AssertionError(f"container still running after {timeout}s:\n{self.logs()}")

    def remove(self) -> None:
        _container_sh("podman", "rm", "-f", "-t", "0", self.id, check=False)


def start(image: str, role: str, work_dir: Path, env: dict[str, str] | None = None,
          tmp: bool = False, wrapper: str | None = None) -> Container:
    """`ROLE PORT`, exactly what a node passes the ENTRYPOINT, on a fresh free port.

    Read-only image; with ``tmp`` a scratch /tmp (the GPU image compiles its CUDA kernels,
    for the GPU it finds, into a cache there), else no writable place but /golem/work.
    ``wrapper``: Python code run as ``python -c CODE ROLE PORT`` instead of the ENTRYPOINT.
    """
    port = free_port()
    env_args = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
    entry = ["--entrypoint", "python"] if wrapper else []
    code = ["-c", wrapper] if wrapper else []
    started_at = time.monotonic()
    result = _container_sh(
        "run", "-d", "--user", f"{NODE_UID}:{NODE_UID}", "--read-only",
        f"--read-only-tmpfs={'true' if tmp else 'false'}", "-v", f"{work_dir}:/golem/work",
        *env_args, *entry, image, *code, role, str(port),
    )
    return Container(result.stdout.strip().splitlines()[-1], port, started_at)


def channel(container: Container, credentials=None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(container.address)
    return grpc.secure_channel(container.address, credentials)


def wait_serving(container: Container, credentials=None, budget: float = READY_WITHIN_S) -> float:
    """Poll the health service as the node does; seconds from `podman run` to SERVING."""
    with channel(container, credentials) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - container.started_at
            except grpc.RpcError:
                pass
            if time.monotonic() - container.started_at > budget:
                raise AssertionError(
                    f"not SERVING within {budget}s of start:\n{container.logs()}"
                )
            time.sleep(0.05)


@pytest.fixture
def containers():
    """Started containers, removed at the end of the test whatever happens."""
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


@pytest.fixture
def node_dir():
    """A folder the container's uid can use (pytest's tmp_path is private to root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="fractal-app-node-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---- the node's side of a task ----------------------------------------------------------------


@dataclass
class ProviderRun:
    serving_s: float
    compute_s: float
    log: str


def run_task(image, requestor: Container, requestor_work: Path, node_dir: Path, containers,
             task_id: str, scene: dict, max_subtasks: int,
             refilter: tuple[int, ...] = ()) -> list[ProviderRun]:
    """CreateTask, then every subtask in its own provider container, files copied by the
    'node' between the folders, until the last band is verified. With ``refilter``, each band
    file is rewritten with those PNG row filters in turn (same pixels) before Verify."""
    root = requestor_work / task_id
    for name in TASK_FOLDERS:
        (root / name).mkdir(parents=True)
    hand_to_node_user(root)
    runs = []
    with channel(requestor) as chan:
        stub = pb_grpc.RequestorAppStub(chan)
        stub.CreateTask(
            pb.CreateTaskRequest(
                task_id=task_id, max_subtasks_count=max_subtasks,
                task_params_json=json.dumps(scene),
            ),
            timeout=RPC_TIMEOUT_S,
        )
        while stub.HasPendingSubtasks(
            pb.HasPendingSubtasksRequest(task_id=task_id), timeout=RPC_TIMEOUT_S
        ).has_pending_subtasks:
            subtask_id = uuid.uuid4().hex
            reply = stub.NextSubtask(
                pb.NextSubtaskRequest(task_id=task_id, subtask_id=subtask_id, opaque_node_id="n1"),
                timeout=RPC_TIMEOUT_S,
            )
            assert reply.HasField("subtask"), "pending subtasks, but none handed out"
            run, result = compute_in_container(
                image, node_dir / f"provider-{subtask_id}", root, containers, task_id,
                subtask_id, reply.subtask,
            )
            runs.append(run)
            target = root / "subtask_outputs" / subtask_id
            target.mkdir()
            shutil.copy(result, target / result.name)
            if refilter:
                _refilter_png(target / result.name, refilter)
            hand_to_node_user(target)
            verdict = stub.Verify(
                pb.VerifyRequest(task_id=task_id, subtask_id=subtask_id), timeout=RPC_TIMEOUT_S
            )
            assert verdict.result == pb.VerifyReply.SUCCESS, verdict.reason
    return runs


def _refilter_png(path: Path, kinds: tuple[int, ...]) -> None:
    """Rewrite a band PNG with the row filters ``kinds`` (0 None .. 4 Paeth), as Pillow or
    libpng might have written it: the requestor must decode every filter."""
    import struct

    from fractal_app.warmup import refiltered_png

    png = path.read_bytes()
    width, _, bits = struct.unpack(">IIB", png[16:25])  # IHDR, the first chunk
    path.write_bytes(refiltered_png(png, bits, width, kinds))


def compute_in_container(image, provider_work: Path, task_root: Path, containers, task_id,
                         subtask_id, subtask, env=None, wrapper=None) -> tuple[ProviderRun, Path]:
    """A fresh provider container on its own work dir: ship the resources, Compute once, and
    check it then shuts itself down."""
    (provider_work / "subtask_inputs").mkdir(parents=True)
    for name in subtask.resources:
        shutil.copy(task_root / "subtask_inputs" / name, provider_work / "subtask_inputs" / name)
    hand_to_node_user(provider_work)
    provider = start(image, "provider", provider_work, env, wrapper=wrapper)
    containers.append(provider)
    serving_s = wait_serving(provider)
    with channel(provider) as chan:
        began = time.monotonic()
        reply = pb_grpc.ProviderAppStub(chan).Compute(
            pb.ComputeRequest(
                task_id=task_id, subtask_id=subtask_id,
                subtask_params_json=subtask.subtask_params_json,
            ),
            timeout=RPC_TIMEOUT_S,
        )
        compute_s = time.monotonic() - began
    assert provider.wait_exit(30) == 0, provider.logs()
    result = (provider_work / reply.output_filepath).resolve()
    assert result.is_relative_to(provider_work.resolve()) and result.is_file()
    return ProviderRun(serving_s, compute_s, provider.logs()), result


def read_final_image(path: Path, scene: dict) -> np.ndarray:
    from grpc_helpers import read_result

    return read_result(path, scene)


# ---- the checks -----------------------------------------------------------------------------


def test_requestor_answers_health_within_15_s(cpu_image, node_dir, containers):
    requestor = start(cpu_image, "requestor", node_dir)
    containers.append(requestor)
    seconds = wait_serving(requestor)
    print(f"\nrequestor container SERVING {seconds:.2f} s after `podman run`")
    assert seconds < READY_WITHIN_S


def test_whole_task_in_containers_matches_a_render_outside(cpu_image, node_dir, containers):
    """Requestor long-lived, one short-lived provider container per subtask; the final image
    equals, pixel for pixel, render_band of the whole scene in this process."""
    from fractal_app import render
    from fractal_app.scene import parse_scene

    requestor_work = node_dir / "requestor"
    requestor_work.mkdir()
    hand_to_node_user(requestor_work)
    # The requestor records its Numba compilations too (band planning, verification).
    requestor = start(cpu_image, "requestor", requestor_work, wrapper=RECORD_COMPILES)
    containers.append(requestor)
    wait_serving(requestor)

    debug = {"NUMBA_DEBUG_CACHE": "1"}
    tasks = (("task-2d", SCENE_2D, 3), ("task-counts", SCENE_COUNTS, 2), ("task-3d", SCENE_3D, 2))
    for task_id, scene, subtasks in tasks:
        # Band files with Average and Paeth rows (and the others) reach Verify: their
        # decoding kernel must come from the image's cache like every other one.
        image_runs = run_task(
            cpu_image, requestor, requestor_work, node_dir, containers, task_id, scene, subtasks,
            refilter=(3, 4, 0, 1, 2),
        )
        assert len(image_runs) >= 2
        outputs = sorted(p.name for p in (requestor_work / task_id / "task_outputs").iterdir())
        result_name = "result.tiff" if scene.get("output") == "counts" else "result.png"
        assert outputs == [result_name]
        final = read_final_image(requestor_work / task_id / "task_outputs" / result_name, scene)
        parsed = parse_scene(scene)
        expected = render.render_band(parsed, 0, parsed.height_px)
        assert final.shape == expected.shape
        differ = int((final != expected).reshape(final.shape[0], final.shape[1], -1).any(-1).sum())
        assert differ == 0, f"{task_id}: {differ} pixels differ from the render outside"
        for run in image_runs:
            print(
                f"\n{task_id}: provider SERVING {run.serving_s:.2f} s after start, "
                f"Compute {run.compute_s:.3f} s"
            )

    # One more provider on a fresh container, with Numba's cache log and a record of every
    # compilation (also of kernels without cache=True, which no cache log shows): it loads
    # from the image's cache and compiles nothing.
    probe_work = node_dir / "probe"
    root = requestor_work / "task-probe"
    for name in TASK_FOLDERS:
        (root / name).mkdir(parents=True)
    hand_to_node_user(root)
    with channel(requestor) as chan:
        stub = pb_grpc.RequestorAppStub(chan)
        stub.CreateTask(
            pb.CreateTaskRequest(
                task_id="task-probe", max_subtasks_count=1, task_params_json=json.dumps(SCENE_2D)
            ),
            timeout=RPC_TIMEOUT_S,
        )
        reply = stub.NextSubtask(
            pb.NextSubtaskRequest(task_id="task-probe", subtask_id="s1", opaque_node_id="n1"),
            timeout=RPC_TIMEOUT_S,
        )
    run, _ = compute_in_container(
        cpu_image, probe_work, root, containers, "task-probe", "s1", reply.subtask, env=debug,
        wrapper=RECORD_COMPILES,
    )
    compiled = re.search(r"numba compiles: (\d+) (.*)", run.log)
    assert compiled, f"the provider did not report its compilations:\n{run.log[-3000:]}"
    assert compiled.group(1) == "0", f"compiled at run time: {compiled.group(2)}"
    loaded = re.findall(r"\[cache\] data loaded from", run.log)
    assert loaded, f"no kernel came from the image's cache:\n{run.log[-3000:]}"
    assert not re.search(r"\[cache\] (data|index) saved", run.log), run.log[-3000:]
    print(
        f"\nfirst Compute in a fresh container: {run.compute_s:.3f} s "
        f"({len(loaded)} kernels loaded from the image cache, none compiled)"
    )

    # The requestor, asked to shut down, exits by itself and reports: it compiled nothing.
    with channel(requestor) as chan:
        pb_grpc.RequestorAppStub(chan).Shutdown(pb.ShutdownRequest(), timeout=RPC_TIMEOUT_S)
    assert requestor.wait_exit(30) == 0, requestor.logs()
    compiled = re.search(r"numba compiles: (\d+) (.*)", requestor.logs())
    assert compiled, f"the requestor did not report its compilations:\n{requestor.logs()[-3000:]}"
    assert compiled.group(1) == "0", f"the requestor compiled at run time: {compiled.group(2)}"


# Every warm-up step (each fractal, precision and output through CreateTask's estimate,
# Compute, Verify of files with every PNG row filter, and RunBenchmark) under a recorder of
# Numba compilations: the services' every kernel must load from the image's cache.
WALK_EVERY_SERVICE_PATH = r"""
import json, os
from numba.core import config, event
compiles = event.RecordingListener()
event.register("numba:compile", compiles)
from fractal_app import warmup
steps = warmup.warm_steps()
for label, step in steps:
    step()
names = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in compiles.buffer})
print(json.dumps({"level": config.CPU_NAME, "steps": len(steps), "compiled": names,
                  "baked": os.environ["FRACTAL_APP_NUMBA_CPU_TARGETS"]}))
"""


def test_every_kernel_the_services_reach_is_in_the_image_cache(cpu_image, node_dir):
    """As the node's uid, on the read-only image (temporary band files in the work dir)."""
    from fractal_app import cpu_levels

    hand_to_node_user(node_dir)
    result = _container_sh(
        "run", "--rm", "--user", f"{NODE_UID}:{NODE_UID}", "--read-only",
        "--read-only-tmpfs=false", "-v", f"{node_dir}:/golem/work", "-e", "TMPDIR=/golem/work",
        "--entrypoint", "python", cpu_image, "-c", WALK_EVERY_SERVICE_PATH,
        timeout=900, check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    walked = json.loads(result.stdout.strip().splitlines()[-1])
    assert walked["compiled"] == [], f"compiled at run time: {walked['compiled']}"
    assert walked["steps"] >= 40
    # The best baked level this host runs (x86-64-v4 on an AVX-512 machine).
    expected = cpu_levels.select_cpu_target({cpu_levels.CPU_TARGETS_ENV: walked["baked"]})
    assert walked["level"] == expected, walked
    print(f"\n{walked['steps']} warm-up steps on the read-only image as uid {NODE_UID}, "
          f"CPU level {walked['level']}: nothing compiled")


def test_provider_benchmark_in_a_fresh_container(cpu_image, node_dir, containers):
    """RunBenchmark, the provider's other one request, also runs on the baked cache."""
    provider = start(cpu_image, "provider", node_dir)
    containers.append(provider)
    wait_serving(provider)
    with channel(provider) as chan:
        began = time.monotonic()
        reply = pb_grpc.ProviderAppStub(chan).RunBenchmark(
            pb.RunBenchmarkRequest(), timeout=RPC_TIMEOUT_S
        )
        seconds = time.monotonic() - began
    assert reply.score > 0
    assert provider.wait_exit(30) == 0, provider.logs()
    print(f"\nRunBenchmark in a fresh container: score {reply.score:.1f} in {seconds:.2f} s")


def test_tls_with_the_three_pem_files(cpu_image, node_dir, containers):
    from certs import write_certs

    certs = write_certs(node_dir)
    hand_to_node_user(node_dir)
    requestor = start(cpu_image, "requestor", node_dir)
    containers.append(requestor)
    node_credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.server_cert, private_key=certs.client_key,
        certificate_chain=certs.client_cert,
    )
    wait_serving(requestor, node_credentials)

    no_client_cert = grpc.ssl_channel_credentials(root_certificates=certs.server_cert)
    for credentials in (no_client_cert, None):
        with channel(requestor, credentials) as chan:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(chan).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5
                )
        assert refused.value.code() in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
        )


CONCURRENT_KERNELS = """
import threading
import numba
from fractal_app import render
from fractal_app.scene import parse_scene

scene = parse_scene({"fractal": "julia", "resolution": [64, 32], "max_iter": 64})
expected = render.render_band(scene, 0, 32)
errors = []

def work():
    try:
        for _ in range(20):
            assert (render.render_band(scene, 0, 32) == expected).all()
    except Exception as error:
        errors.append(repr(error))

threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("layer", numba.threading_layer(), "errors", len(errors), errors[:1])
"""


def test_parallel_kernels_may_run_in_several_threads_at_once(cpu_image):
    """The requestor verifies bands in worker threads. Numba's fallback threading layer
    (workqueue) aborts the process on concurrent parallel kernels; the image must have a
    thread-safe one."""
    result = _container_sh(
        "run", "--rm", "--user", f"{NODE_UID}:{NODE_UID}", "--read-only",
        "--read-only-tmpfs=false", "--entrypoint", "python", cpu_image, "-c", CONCURRENT_KERNELS,
        timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[:4] == ["layer", "omp", "errors", "0"], result.stdout


# ---- the GPU image --------------------------------------------------------------------------

def test_gpu_image_compiles_its_cuda_kernels_to_ptx(gpu_image):
    """Every CUDA kernel (2D, 3D, deep; the list fractal_app.kernels.ptx keeps beside the
    launchers) compiles to PTX for sm_75 and sm_90 with NVVM from the image's CUDA 12
    wheels, no GPU or driver."""
    from fractal_app.kernels import ptx

    result = _container_sh(
        "run", "--rm", "--user", f"{NODE_UID}:{NODE_UID}", "--read-only", "--entrypoint",
        "python", gpu_image, "-m", "fractal_app.kernels.ptx", "75", "90", timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compiled = [line.split()[1:3] for line in result.stdout.splitlines()
                if line.startswith("PTX ")]
    names = [k.name for k in ptx.kernels()]
    assert compiled == [[n, cc] for cc in ("sm_75", "sm_90") for n in names], result.stdout


def test_gpu_image_without_a_gpu_says_so(gpu_image, cpu_image, node_dir, containers):
    """A docker_gpu subtask sent to the GPU image on a machine with no GPU: Compute fails
    with FAILED_PRECONDITION naming the problem, and the provider exits cleanly."""
    requestor_work = node_dir / "requestor"
    requestor_work.mkdir()
    hand_to_node_user(requestor_work)
    requestor = start(cpu_image, "requestor", requestor_work)
    containers.append(requestor)
    wait_serving(requestor)
    root = requestor_work / "task-gpu"
    for name in TASK_FOLDERS:
        (root / name).mkdir(parents=True)
    hand_to_node_user(root)
    scene = {**SCENE_2D, "env": "docker_gpu"}
    with channel(requestor) as chan:
        stub = pb_grpc.RequestorAppStub(chan)
        created = stub.CreateTask(
            pb.CreateTaskRequest(
                task_id="task-gpu", max_subtasks_count=1, task_params_json=json.dumps(scene)
            ),
            timeout=RPC_TIMEOUT_S,
        )
        assert created.env_id == "docker_gpu"
        subtask = stub.NextSubtask(
            pb.NextSubtaskRequest(task_id="task-gpu", subtask_id="g1", opaque_node_id="n1"),
            timeout=RPC_TIMEOUT_S,
        ).subtask

    provider_work = node_dir / "gpu-provider"
    (provider_work / "subtask_inputs").mkdir(parents=True)
    for name in subtask.resources:
        shutil.copy(root / "subtask_inputs" / name, provider_work / "subtask_inputs" / name)
    hand_to_node_user(provider_work)
    # Like a node's docker_gpu environment, minus the NVIDIA runtime this machine lacks.
    provider = start(gpu_image, "provider", provider_work, env={"GPU_ENABLED": "1"}, tmp=True)
    containers.append(provider)
    wait_serving(provider)
    with channel(provider) as chan:
        with pytest.raises(grpc.RpcError) as failed:
            pb_grpc.ProviderAppStub(chan).Compute(
                pb.ComputeRequest(
                    task_id="task-gpu", subtask_id="g1",
                    subtask_params_json=subtask.subtask_params_json,
                ),
                timeout=RPC_TIMEOUT_S,
            )
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = failed.value.details()
    assert "no CUDA GPU" in message, message
    print(f"\nGPU image without a GPU: {failed.value.code().name}: {message}")
