"""``fractal-app render`` killed with SIGTERM, SIGHUP or SIGKILL in the middle of a render
leaves no requestor or provider process and no temporary folder behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Still rendering when the signal comes, on any machine: every pixel is inside the set (the
# middle of the main cardioid) and costs max_iter iterations, 4 * 10^10 in all.
SCENE = {
    "fractal": "mandelbrot",
    "resolution": [2048, 2048],
    "center": [-0.2, 0.0],
    "width": 0.2,
    "max_iter": 10000,
}
GONE_WITHIN_S = 15.0


def _processes_naming(folder: Path) -> list[str]:
    """Command lines of live processes that name ``folder`` (work dirs, the watchdog)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in command:
            found.append(command)
    return found


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_render_killed_leaves_nothing_behind(tmp_path, signum):
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(SCENE))
    private_tmp = tmp_path / "tmp"  # where the render makes its temporary folder
    private_tmp.mkdir()
    render = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fractal_app.cli",
            "render",
            str(scene_file),
            "-o",
            str(tmp_path / "out.png"),
            "--providers",
            "2",
            "--quiet",
        ],
        env={**os.environ, "TMPDIR": str(private_tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal, even where the test runner was started with nohup (a render
        # started that way keeps ignoring SIGHUP, as it should).
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        # Until the requestor and a provider are at work (a provider's band file is being
        # written, or at least both serve).
        def busy() -> bool:
            commands = _processes_naming(private_tmp)
            return any(" requestor " in c for c in commands) and any(
                " provider " in c for c in commands
            )

        _wait_for(busy, 90, "the render never started its processes")
        time.sleep(1.0)
        assert render.poll() is None, render.stderr.read()
        render.send_signal(signum)
        _, stderr = render.communicate(timeout=60)
        _wait_for(
            lambda: _processes_naming(private_tmp) == [],
            GONE_WITHIN_S,
            f"processes left behind: {_processes_naming(private_tmp)}",
        )
        _wait_for(
            lambda: list(private_tmp.iterdir()) == [],
            GONE_WITHIN_S,
            f"left in the temporary folder: {list(private_tmp.iterdir())}",
        )
    finally:
        if render.poll() is None:
            render.kill()
            render.wait()
    assert not (tmp_path / "out.png").exists()
    if signum != signal.SIGKILL:
        assert render.returncode == 1
        assert f"stopped by {signum.name}" in stderr
