"""The one-machine render's fork server: its children are the service entrypoint's processes,
each with its own command line, log and exit status, and none outlives the server."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_helpers import read_result

from fractal_app import forkserver
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="no fork server here")


def _requestor_argv(work: Path) -> list[str]:
    return ["requestor", "0", "--work-dir", str(work), "--port-file", str(work.parent / "port"),
            "--host", "127.0.0.1", "--log-level", "INFO"]


def _wait_for_file(path: Path, child: forkserver.ForkedProcess) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert child.poll() is None, f"exited with {child.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_child_serves_as_the_entrypoint_would_and_reports_its_exit(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "requestor.log"
    server = forkserver.ForkServer()
    try:
        child = server.spawn(_requestor_argv(work), log)
        _wait_for_file(tmp_path / "port", child)
        command = Path(f"/proc/{child.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        assert b" -m fractal_app requestor 0 --work-dir " + str(work).encode() in command

        async def shutdown(port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await pb_grpc.RequestorAppStub(channel).Shutdown(pb.ShutdownRequest())

        asyncio.run(shutdown(int((tmp_path / "port").read_text())))
        assert child.wait(60) == 0
    finally:
        server.close()
    assert "serving plaintext on 127.0.0.1" in log.read_text()
    assert "server stopped" in log.read_text()


def test_a_bad_command_line_fails_with_its_reason_in_the_log(tmp_path):
    log = tmp_path / "requestor.log"
    server = forkserver.ForkServer()
    try:
        assert server.spawn(_requestor_argv(tmp_path / "missing"), log).wait(60) == 2
        # A start the server cannot make at all (no folder for its log) fails the same way.
        assert server.spawn(_requestor_argv(tmp_path), tmp_path / "no" / "log").wait(60) == 1
    finally:
        server.close()
    assert f"work directory {tmp_path / 'missing'} does not exist" in log.read_text()


def test_kill_terminate_and_close_leave_no_child(tmp_path):
    server = forkserver.ForkServer()
    children = []
    try:
        for name in ("a", "b", "c"):
            (tmp_path / name / "work").mkdir(parents=True)
            children.append(
                server.spawn(_requestor_argv(tmp_path / name / "work"), tmp_path / f"{name}.log")
            )
        killed, stopped, left = children
        _wait_for_file(tmp_path / "a" / "port", killed)
        killed.kill()
        assert killed.wait(30) == -signal.SIGKILL
        _wait_for_file(tmp_path / "b" / "port", stopped)
        stopped.terminate()  # the server stops gracefully, as on a node's SIGTERM
        assert stopped.wait(30) == 0
        _wait_for_file(tmp_path / "c" / "port", left)
        assert _alive(left.pid)
        with pytest.raises(subprocess.TimeoutExpired):
            left.wait(0.1)
    finally:
        server.close()  # kills and reaps the one still serving
    assert not any(_alive(child.pid) for child in children)
    assert left.returncode == -signal.SIGKILL
    assert server.process.returncode == 0


def test_children_die_with_the_server_even_by_sigkill(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    server = forkserver.ForkServer()
    try:
        child = server.spawn(_requestor_argv(work), tmp_path / "requestor.log")
        _wait_for_file(tmp_path / "port", child)
        server.process.kill()
        deadline = time.monotonic() + 15
        while _alive(child.pid):
            assert time.monotonic() < deadline, "the child outlived its fork server"
            time.sleep(0.05)
        assert child.wait(10) == -signal.SIGKILL  # what the render is told
    finally:
        server.close()


def test_compile_estimate_is_the_one_a_fresh_process_makes():
    scene = json.dumps({"fractal": "burning_ship", "resolution": [40, 30], "max_iter": 120})
    # In a process of its own, as the server: this one may have read Numba's cache folder
    # before conftest set it.
    fresh = subprocess.run(
        [sys.executable, "-c", "import sys; from fractal_app.warmup import "
         "compile_estimate_seconds as e; print(e(sys.argv[1], None))", scene],
        capture_output=True, text=True, check=True, timeout=120,
    )
    server = forkserver.ForkServer()
    try:
        assert server.compile_estimate(scene, None) == float(fresh.stdout)
        assert server.compile_estimate("{not json", None) == 0.0
    finally:
        server.close()


@pytest.mark.parametrize("fork_server", ["1", "0"], ids=["forked", "fresh-interpreters"])
def test_render_is_the_same_with_and_without_the_fork_server(tmp_path, fork_server):
    scene = {"fractal": "burning_ship", "resolution": [40, 30], "max_iter": 120}
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(scene))
    out = tmp_path / "x.png"
    keep = tmp_path / "keep"
    env = {**os.environ, forkserver.DISABLE_ENV_VAR: "0" if fork_server == "1" else "1"}
    done = subprocess.run(
        [sys.executable, "-m", "fractal_app.cli", "render", str(scene_file), "-o", str(out),
         "--subtasks", "2", "--keep", str(keep)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr
    from fractal_app import render
    from fractal_app.scene import parse_scene

    expected = render.render_band(parse_scene(scene), 0, 30)
    np.testing.assert_array_equal(read_result(out, scene), expected)
    # Each band had a provider process (and work directory) of its own.
    assert len({band.parent.parent for band in keep.glob("providers/*/*/band.png")}) == 2


def test_the_plan_and_a_bad_scene_s_message_are_the_ones_this_process_makes():
    from fractal_app.errors import InvalidArgument
    from fractal_app.local import plan_render

    good = json.dumps({"fractal": "mandelbrot", "resolution": [7680, 4320], "max_iter": 5000})
    bad = json.dumps({"fractal": "mandelbrot", "resolution": [640, 480], "max_itre": 10})
    server = forkserver.ForkServer()
    try:
        for providers, subtasks in ((1, None), (3, None), (2, 7)):
            assert server.plan(good, providers, subtasks) == plan_render(good, providers, subtasks)
        with pytest.raises(InvalidArgument) as raised:
            server.plan(bad, 1, None)
    finally:
        server.close()
    with pytest.raises(InvalidArgument) as expected:
        plan_render(bad, 1, None)
    assert str(raised.value) == str(expected.value)
    assert "max_itre" in str(raised.value)


@pytest.mark.slow  # a fresh process loads (or, cold, compiles) a kernel
def test_the_server_refuses_to_fork_once_a_parallel_kernel_is_loaded(tmp_path):
    """GNU OpenMP aborts a child forked after its first parallel region: a clear refusal
    instead (the server never runs a kernel; this guards against one slipping in)."""
    program = (
        "import sys\n"
        "from fractal_app import render\n"
        "from fractal_app.forkserver import _fork_child\n"
        "from fractal_app.scene import parse_scene\n"
        "render.render_band(parse_scene({'fractal': 'mandelbrot', 'resolution': [8, 8]}), 0, 8)\n"
        "try:\n"
        "    _fork_child(['requestor', '0'], sys.argv[1], ())\n"
        "except OSError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", program, str(tmp_path / "log")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "has loaded a parallel kernel; it cannot fork safely" in done.stdout
    assert not (tmp_path / "log").exists()  # refused before anything was started
