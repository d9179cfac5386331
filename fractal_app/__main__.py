"""``python -m fractal_app requestor|provider PORT``: what the Docker image's ENTRYPOINT runs.

Kept to the standard library and gRPC at import time: a provider process starts for every
subtask, and everything it does not need for its one request is loaded later or never.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from fractal_app.protocol.constants import WORK_DIR

DEFAULT_WORK_DIR = Path("/") / WORK_DIR
ROLES = ("requestor", "provider")


def build_parser(prog: str = "python -m fractal_app") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the fractal-app requestor or provider Golem Task API.",
    )
    parser.add_argument("role", choices=ROLES, help="which Golem Task API service to run")
    parser.add_argument("port", type=int, help="TCP port to listen on (0 picks a free one)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help=f"the Golem work directory (default {DEFAULT_WORK_DIR})",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="logging threshold (default INFO)",
    )
    parser.add_argument(
        "--port-file",
        type=Path,
        default=None,
        help="write the bound port to this file once the server is SERVING",
    )
    parser.add_argument(
        "--host",
        default="[::]",
        help="interface to listen on (default all interfaces, as a Golem node expects)",
    )
    parser.add_argument(
        "--backend",
        choices=("cpu", "cuda"),
        default=None,
        help="provider: render on this backend instead of the one the scene's env implies",
    )
    return parser


def write_port_file(path: Path, port: int) -> None:
    """Write the port so that a reader never sees a partial file (write, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


async def serve(
    role: str,
    port: int,
    work_dir: Path,
    port_file: Path | None = None,
    host: str = "[::]",
    backend: str | None = None,
) -> None:
    """Serve ``role`` on ``host:port`` until Shutdown, SIGTERM, or (provider) its one request."""
    from fractal_app.server import create_server, run_until_stopped, stop_on_signals

    stop = asyncio.Event()
    handled = stop_on_signals(stop)
    if role == "requestor":
        from fractal_app.servicers import RequestorService

        service = RequestorService(work_dir, stop)
    else:
        from fractal_app.servicers import ProviderService

        service = ProviderService(work_dir, stop, backend)
    try:
        server, bound_port = await create_server(port, work_dir, service.register, host=host)
        if port_file is not None:
            write_port_file(port_file, bound_port)
        service.serving()
        await run_until_stopped(server, stop, handled=handled)
    finally:
        service.close()


def main(argv: list[str] | None = None, prog: str = "python -m fractal_app") -> int:
    """Serve as the command line says; ``prog``: the command's name in usage and errors."""
    from fractal_app.lifeline import adopt

    adopt()  # started by `fractal-app render`: die with it, even if it is SIGKILLed
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s {args.role}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    from fractal_app.startup import pause_gc_for_startup

    pause_gc_for_startup()  # each service's preload turns it back on
    work_dir: Path = args.work_dir
    if not work_dir.is_dir():
        print(f"error: work directory {work_dir} does not exist", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args.role, args.port, work_dir, args.port_file, args.host, args.backend))
    except Exception as error:  # a start-up failure: say why, exit non-zero
        logging.getLogger("fractal_app").error("%s", error)
        return 1
    return 0


def exit_without_finalizing(code: int) -> None:
    """End the process now, skipping the interpreter's finalization.

    Tearing down a process that has loaded Numba and LLVM takes about a second (measured:
    0.9-1.5 s on the shared two-core machine, against 0.01 s for ``os._exit``), and a provider
    pays it for every subtask, on the node's critical path between the result and the next
    band. By the time ``main`` returns every file has been written and fsync'd, the stores are
    closed and the thread pools joined, so nothing is lost: the atexit handlers still run
    (logging's flush among them), then the standard streams are flushed.
    """
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


if __name__ == "__main__":
    exit_without_finalizing(main())
