"""Nothing outlives ``fractal-app render``, however it ends: processes die with it, and its
temporary folder is removed even after a SIGKILL, which no process can catch.

- Children (the requestor and providers) ask the kernel to SIGKILL them when their parent
  dies (Linux ``PR_SET_PDEATHSIG``), set in the child itself at start-up (:func:`adopt`),
  from the parent pid it was given, so that a parent that died before the child got that far
  is noticed too (the child's parent pid is then no longer the one it was given).
- The temporary folder is watched by a tiny separate process (:func:`start_watchdog`) that
  blocks reading a pipe whose only writer is the render. The kernel closes the pipe when
  the render ends, however it ends; the watchdog then removes the folder and exits. It runs
  in its own session, so a signal to the render's process group (Ctrl-C, a closed terminal)
  does not stop it before it has cleaned up.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # asyncio is imported where it is used: the console command's first step
    # (fractal_app.command) starts the fork server through this module, before asyncio
    # has loaded (about 0.04 CPU-s) in that process
    import asyncio
    from pathlib import Path

# Set by the parent in each child's environment: the pid the child must die with.
PARENT_ENV_VAR = "FRACTAL_APP_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1

# The watchdog's program: block until the pipe reports end of file (the render is gone),
# then remove the folder, retrying while dying children may still be closing files in it.
_WATCHDOG = """
import os, shutil, sys, time
fd, root = int(sys.argv[1]), sys.argv[2]
try:
    while os.read(fd, 4096):
        pass
except OSError:
    pass
for _ in range(100):
    shutil.rmtree(root, ignore_errors=True)
    if not os.path.lexists(root):
        break
    time.sleep(0.05)
"""


def child_environment() -> dict[str, str]:
    """The environment for a child that must not outlive this process."""
    return {**os.environ, PARENT_ENV_VAR: str(os.getpid())}


def adopt() -> None:
    """In a child started with :func:`child_environment`: die when that parent dies.

    A no-op where the variable is not set (a Golem node starts the services) or the platform
    has no ``prctl``.
    """
    parent = os.environ.pop(PARENT_ENV_VAR, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before the line above: go now
        os._exit(1)


class Watchdog:
    """A process that removes ``root`` once this process is gone (see the module docstring)."""

    def __init__(self, process: asyncio.subprocess.Process, write_fd: int) -> None:
        self.process = process
        self._write_fd: int | None = write_fd

    async def release(self) -> None:
        """This process is done with the folder (and removed it): let the watchdog exit."""
        import asyncio

        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
            await asyncio.wait_for(self.process.wait(), 10)


async def start_watchdog(root: Path) -> Watchdog:
    import asyncio

    read_fd, write_fd = os.pipe()  # both close-on-exec: no other child holds the writer
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            _WATCHDOG,
            str(read_fd),
            str(root),
            pass_fds=(read_fd,),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return Watchdog(process, write_fd)
