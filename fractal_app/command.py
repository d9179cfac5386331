"""The ``fractal-app`` console command's entry: starts ``render``'s fork server before the CLI
loads, then runs the CLI (:mod:`fractal_app.cli`).

A render's fixed cost is on the critical path of every render, and its longest part is the
fork server loading NumPy, Numba and the app (benchmarks/README.md, "Fixed cost of a
render"). Started from here, before click, asyncio and gRPC are imported, the server loads
while this process does; started from inside the render command it began after them.

``render`` then ends without the interpreter's finalization (tearing down modules takes wall
time the user waits for) once the picture is written and closed, every process it started
is reaped and the atexit handlers have run.
"""

from __future__ import annotations

import sys

_HELP = {"-h", "--help"}


def main() -> None:
    argv = sys.argv[1:]
    rendering = bool(argv) and argv[0] == "render" and not _HELP.intersection(argv[1:])
    if rendering:
        from fractal_app import forkserver

        forkserver.start_early()
    from fractal_app import cli

    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_code(exit_.code)
    finally:
        if rendering:
            forkserver.discard_early()  # not taken: the command failed before it rendered
    if not rendering:
        sys.exit(code)
    from fractal_app.__main__ import exit_without_finalizing

    exit_without_finalizing(code)


def exit_code(code: object) -> int:
    """The exit status ``sys.exit(code)`` gives, printing a message as it does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
