"""The one launcher of ``python -m fractal_app ROLE 0``: a server that fails to start is
reported with its log and never left running."""

import asyncio

import pytest

from fractal_app import launcher


def test_a_server_that_exits_at_start_up_is_reported_with_its_log(tmp_path):
    with pytest.raises(launcher.ServerStartError) as error:
        launcher.start_server("provider", tmp_path / "work", extra_args=("--backend", "abacus"))
    message = str(error.value)
    assert "the provider exited with 2 at start-up" in message
    assert "invalid choice: 'abacus'" in message  # the server's own words, from its log


def test_a_server_that_never_serves_is_killed_at_the_deadline(tmp_path):
    server = launcher.launch("requestor", tmp_path / "work", prelude="import time; time.sleep(600)")
    with pytest.raises(launcher.ServerStartError, match="did not start within 2 s"):
        asyncio.run(server.wait_for_port_async(timeout=2.0))
    assert server.process.poll() is not None  # killed and reaped, not left behind


def test_a_restarted_server_never_reads_its_predecessors_port(tmp_path):
    work = tmp_path / "work"
    first = launcher.start_server("requestor", work, log_level="WARNING")
    first.stop()
    second = launcher.start_server("requestor", work, log_level="WARNING")
    try:
        assert second.port_file != first.port_file and second.log_path != first.log_path
        assert first.port_file.exists()  # what a stale read would have found
        second.wait_serving()  # the port it read is its own: health answers there
    finally:
        second.stop()
