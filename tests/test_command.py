"""The console command's entry (fractal_app.command): the CLI's exit statuses and messages are
kept, and a render that fails before it starts stops the fork server started for it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fractal_app import command, forkserver


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fractal_app.command", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), ("a message", 1)])
def test_exit_code_is_what_sys_exit_gives(code, status, capsys):
    assert command.exit_code(code) == status
    assert capsys.readouterr().err == ("a message\n" if isinstance(code, str) else "")


def test_version_and_usage_errors_keep_their_status():
    assert run("--version").returncode == 0
    assert run("no-such-command").returncode == 2


def test_a_render_refused_by_its_arguments_stops_the_early_fork_server(tmp_path):
    """The server was started before click parsed anything; the usage error keeps click's
    status and message (test_discard_early_kills_the_server_no_render_took: how it stops)."""
    done = run("render", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_discard_early_kills_the_server_no_render_took():
    if not forkserver.available():
        pytest.skip("no fork server on this platform")
    forkserver.start_early()
    process = forkserver._early.process
    forkserver.discard_early()
    assert process.returncode is not None and forkserver.take_early() is None
