"""A fork server for the one-machine render: one process loads NumPy, Numba and the app once,
then forks the requestor and every provider from that state.

Every service process of ``fractal-app render`` needs about a CPU-second of start-up before
its first kernel runs (the interpreter, gRPC, NumPy, Numba's import and its typing and
lowering registries, pydantic): measured on the two-core machine, the 1920x1080 default view
paid 2.4 CPU-s of it for 0.3 CPU-s of rendering (benchmarks/README.md, "Fixed cost of a
render"). Here that start-up is paid once a render: each requestor and provider is still a
process of its own, started fresh for its one band as Golem starts them, running the same
entrypoint (:func:`fractal_app.__main__.main`) with the same arguments and serving real gRPC;
it just begins with the imports done.

The server forks before anything starts a thread that would not survive a fork: it never
runs a kernel (Numba's OpenMP pool starts at the first parallel kernel, in the child), never
creates a gRPC object or an event loop (gRPC's core starts with the child's server), and
configures no logging. Children run with the start-up objects frozen (``gc.freeze``), so
neither the collector nor reference counting copies many of their pages.

Protocol, one JSON object a line. The client writes ``{"id": N, "argv": [...], "log":
PATH}`` (start ``python -m fractal_app ARGV`` with stdout and stderr appended to PATH) and
``{"signal": N, "signum": S}`` (send signal S to start N, if it still runs); the server
answers ``{"id": N, "pid": PID}`` and ``{"exited": N, "code": CODE}`` (negative: killed by
that signal) when the child ends; a start that fails writes why into its log and exits with
1. The client needs no event loop: it reads the answers when asked (``poll``, ``wait``).
``{"id": N, "compile_estimate": SCENE_JSON, "backend": B}`` asks, before any start,
how long a cold render of the scene would compile first (:func:`warmup.
compile_estimate_seconds`, which loads what the server has loaded anyway), answered
``{"id": N, "seconds": S}``; ``{"id": N, "plan": SCENE_JSON, "providers": P, "subtasks": S}``
validates the scene and plans its bands (:func:`local.plan_render`, so that the CLI need not
import pydantic and NumPy), answered ``{"id": N, "plan": {...}}`` or ``{"id": N, "invalid":
WHY}``. End of file on its stdin: it kills the children still running,
reaps them and exits. The server and its children die with the render even after a SIGKILL
(:mod:`lifeline`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fractal_app.errors import AppError

if TYPE_CHECKING:
    from fractal_app.local import RenderPlan

# The environment variable that turns the fork server off: every service process then starts
# its own interpreter (the slower way, for comparing the two).
DISABLE_ENV_VAR = "FRACTAL_APP_NO_FORK_SERVER"


def available() -> bool:
    """Whether ``fractal-app render`` forks its processes from a fork server here."""
    return (
        hasattr(os, "fork")
        and hasattr(os, "pidfd_open")
        and os.environ.get(DISABLE_ENV_VAR, "") in ("", "0")
    )


class ForkServerError(AppError):
    """The fork server could not start a process, or is gone; the message says why."""


# ---- the server (``python -m fractal_app.forkserver``) ---------------------------------------


def _preload() -> None:
    """What every requestor and provider imports and sets up before its first request."""
    import grpc  # noqa: F401
    import grpc.aio  # noqa: F401
    import numba  # noqa: F401
    import numpy  # noqa: F401
    import setproctitle  # noqa: F401
    from numba.core.registry import cpu_target

    import fractal_app.__main__  # noqa: F401
    import fractal_app.bandfile  # noqa: F401
    import fractal_app.bandplan  # noqa: F401
    import fractal_app.decoding  # noqa: F401
    import fractal_app.pngstream  # noqa: F401
    import fractal_app.provider  # noqa: F401
    import fractal_app.render  # noqa: F401
    import fractal_app.requestor  # noqa: F401
    import fractal_app.scene  # noqa: F401
    import fractal_app.server  # noqa: F401
    import fractal_app.servicers  # noqa: F401 - the gRPC adapters and the protocol's modules
    import fractal_app.store  # noqa: F401
    import fractal_app.verify  # noqa: F401

    # Filled on the first kernel load otherwise, in every child (about 0.25 CPU-s).
    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()


def serve() -> int:
    """The server's loop: fork on request, report exits, until stdin closes."""
    import gc
    import selectors
    import signal

    from fractal_app.lifeline import adopt

    adopt()  # die with the render, even if it is SIGKILLed
    # Ctrl-C reaches the whole process group: the render stops the children and then this
    # server (closing its stdin), in that order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol runs on private copies of the standard streams; the standard ones point
    # at /dev/null (in) and stderr (out), where the children replace them with their log.
    commands = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)

    gc.disable()
    _preload()
    gc.freeze()  # start-up's objects: never scanned again, and their pages stay shared
    gc.enable()

    selector = selectors.DefaultSelector()
    selector.register(commands, selectors.EVENT_READ)
    children: dict[int, tuple[int, int]] = {}  # pid -> (pidfd, the start's id)
    pid_of: dict[int, int] = {}  # the start's id -> pid, while it runs
    pending = b""

    def reply(message: dict) -> None:
        replies.write(json.dumps(message).encode() + b"\n")

    def reap(pid: int) -> None:
        pidfd, start = children.pop(pid)
        del pid_of[start]
        selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        reply({"exited": start, "code": os.waitstatus_to_exitcode(status)})

    def handle(line: bytes) -> None:
        request = json.loads(line)
        if "signal" in request:
            pid = pid_of.get(request["signal"])
            if pid is not None:  # not reaped yet: the pid is still this child's
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, int(request["signum"]))
            return
        if "compile_estimate" in request:
            reply({"id": request["id"], "seconds": _compile_estimate(request)})
            return
        if "plan" in request:
            reply({"id": request["id"], **_plan(request)})
            return
        try:
            inherited = (commands, replies, selector, *(fd for fd, _ in children.values()))
            pid = _fork_child(request["argv"], request["log"], inherited)
            pidfd = os.pidfd_open(pid)
        except OSError as error:
            with contextlib.suppress(OSError), open(request["log"], "a") as log:
                print(f"fork server: cannot start the process: {error}", file=log)
            reply({"exited": request["id"], "code": 1})
            return
        children[pid] = (pidfd, request["id"])
        pid_of[request["id"]] = pid
        selector.register(pidfd, selectors.EVENT_READ, pid)
        reply({"id": request["id"], "pid": pid})

    try:
        while True:
            for key, _ in selector.select():
                if key.data is not None:
                    reap(key.data)
                    continue
                chunk = commands.read(65536)
                if not chunk:
                    return 0
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    handle(line)
    finally:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                reap(pid)


def _compile_estimate(request: dict) -> float:
    from fractal_app.warmup import compile_estimate_seconds

    try:
        return compile_estimate_seconds(request["compile_estimate"], request.get("backend"))
    except Exception:  # only a message to the user depends on it: say nothing
        return 0.0


def _plan(request: dict) -> dict:
    import dataclasses

    from fractal_app.errors import AppError
    from fractal_app.local import plan_render

    try:
        plan = plan_render(request["plan"], request["providers"], request["subtasks"])
    except AppError as error:
        return {"invalid": str(error)}
    return {"plan": dataclasses.asdict(plan)}


def _fork_child(argv: list[str], log: str, inherited) -> int:
    """Fork a child that runs the service entrypoint with ``argv``; its pid. ``inherited``:
    the server's files (and pidfds) the child closes."""
    from numba.np.ufunc import parallel

    if parallel._is_initialized:  # a bug here: the child would abort in its first kernel
        raise OSError("the fork server has loaded a parallel kernel; it cannot fork safely")
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.fork()
    except BaseException:
        os.close(log_fd)
        raise
    if pid:
        os.close(log_fd)
        return pid
    code = 1
    try:
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        for resource in inherited:
            if isinstance(resource, int):
                os.close(resource)
            else:
                resource.close()
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        import setproctitle

        from fractal_app import __main__ as entrypoint
        from fractal_app.lifeline import PARENT_ENV_VAR

        # As `python -m fractal_app ARGV` sees it (ps shows that command line too), and
        # dying with this server.
        sys.argv = [entrypoint.__file__, *argv]
        setproctitle.setproctitle(" ".join([sys.executable, "-m", "fractal_app", *argv]))
        os.environ[PARENT_ENV_VAR] = str(os.getppid())
        code = entrypoint.main(argv)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        from fractal_app.__main__ import exit_without_finalizing

        exit_without_finalizing(code)
    raise AssertionError("unreachable")


# ---- the client ----------------------------------------------------------------------------

# Started by the console entry (:mod:`fractal_app.command`) before it imports the CLI, and
# taken by the render command: see :func:`start_early`.
_early: ForkServer | None = None


def start_early() -> None:
    """Start the render's fork server now, before the CLI's own imports (click, asyncio,
    gRPC: about 0.2 CPU-s), so that the server's loading overlaps them; the render command
    takes it (:func:`take_early`). Does nothing where there is no fork server."""
    global _early
    if _early is None and available():
        _early = ForkServer()


def take_early() -> ForkServer | None:
    """The fork server :func:`start_early` started, now the caller's to close; or None."""
    global _early
    forks, _early = _early, None
    return forks


def discard_early() -> None:
    """Stop a fork server started early that no render took (a usage error, ``--help``):
    killed, not asked to finish loading first."""
    forks = take_early()
    if forks is not None:
        with contextlib.suppress(OSError):
            forks.process.kill()
        forks.close()


class ForkServer:
    """The render's side of a fork server: starts it, asks it for processes, stops it.

    Needs no event loop: the server's answers are read when a caller asks (a child's
    ``poll`` or ``wait``, a question), so an event loop polls its children as it polls
    ``subprocess.Popen`` ones. Started first thing by the CLI, so that the server's loading
    overlaps the CLI's own.
    """

    def __init__(self) -> None:
        from fractal_app.lifeline import child_environment

        self.process = subprocess.Popen(
            [sys.executable, "-m", "fractal_app.forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: closing the pipe to a dead server has nothing to flush
            env=child_environment(),
        )
        self._pending = b""
        self._next_id = 0
        self._children: dict[int, ForkedProcess] = {}  # by start id, until they exit
        self._answers: dict[int, dict] = {}
        self._gone: str | None = None

    def spawn(self, argv: list[str], log: Path) -> ForkedProcess:
        """Start ``python -m fractal_app ARGV`` as a child of the server, output appended to
        ``log``; returns at once (the server forks once it has loaded)."""
        start = self._send({"argv": argv, "log": str(log)})
        child = ForkedProcess(self, start)
        if self._gone is not None:
            child.returncode = -9
        else:
            self._children[start] = child
        return child

    def compile_estimate(self, scene_json: str, backend: str | None) -> float:
        """Seconds a render of ``scene_json`` would compile before it starts (0: every kernel
        is cached), from the server once it has loaded; blocking."""
        answer = self._ask({"compile_estimate": scene_json, "backend": backend})
        return float(answer["seconds"])

    def plan(self, scene_json: str, providers: int, subtasks: int | None) -> RenderPlan:
        """:func:`local.plan_render`, made by the server once it has loaded; blocking. An
        invalid scene raises InvalidArgument with the validator's message."""
        from fractal_app.errors import InvalidArgument
        from fractal_app.local import RenderPlan

        answer = self._ask({"plan": scene_json, "providers": providers, "subtasks": subtasks})
        if "invalid" in answer:
            raise InvalidArgument(answer["invalid"])
        return RenderPlan(**answer["plan"])

    def close(self) -> None:
        """Stop the server (it kills and reaps any child left) and wait for it. Idempotent."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        if self.process.returncode is None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._lost("the fork server was closed")
        self.process.stdout.close()

    # ---- the pipe ----------------------------------------------------------------------------

    def _send(self, message: dict) -> int:
        """Write a request with a new id; the id. A server that is gone is found out by the
        caller's next ``poll``."""
        self._next_id += 1
        if self._gone is None:
            data = json.dumps({"id": self._next_id, **message}).encode() + b"\n"
            try:
                while data:  # a scene may be longer than one write to a pipe takes
                    data = data[os.write(self.process.stdin.fileno(), data):]
            except OSError as error:
                self._lost(f"the fork server is gone ({error})")
        return self._next_id

    def _ask(self, request: dict) -> dict:
        """Send ``request`` and wait for its answer."""
        asked = self._send(request)
        while asked not in self._answers:
            if self._gone is not None:
                raise ForkServerError(self._gone)
            self._read(None)
        return self._answers.pop(asked)

    def _read(self, timeout: float | None) -> None:
        """Take in what the server has written, waiting at most ``timeout`` seconds for it
        (None: until it writes)."""
        if self._gone is not None:
            return
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        while ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                self._lost(f"the fork server is gone (exit {self.process.wait()})")
                return
            self._pending += chunk
            ready, _, _ = select.select([fd], [], [], 0)
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "exited" in message:
                child = self._children.pop(message["exited"], None)
                if child is not None:
                    child.returncode = message["code"]
            elif "pid" in message:
                if message["id"] in self._children:
                    self._children[message["id"]].pid = message["pid"]
            else:
                self._answers[message["id"]] = message

    def _lost(self, why: str) -> None:
        """The server is gone: so are its children (they die with it, lifeline)."""
        if self._gone is None:
            self._gone = why
        for child in self._children.values():
            child.returncode = -9
        self._children.clear()


class ForkedProcess:
    """A child of the fork server, with the parts of ``subprocess.Popen`` the launcher uses:
    ``pid`` (once the server has forked it), ``returncode``, ``poll``, ``wait``, ``kill``,
    ``terminate`` and ``send_signal``."""

    def __init__(self, server: ForkServer, start: int) -> None:
        self.server = server
        self.start = start
        self.pid: int | None = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"fork server child {self.start}", timeout)
            self.server._read(left)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self.server._send({"signal": self.start, "signum": int(signum)})

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)


if __name__ == "__main__":
    from fractal_app.__main__ import exit_without_finalizing

    exit_without_finalizing(serve())
