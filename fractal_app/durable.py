"""Files that appear whole and survive a crash: write beside, fsync, rename, fsync the folder.

A reader (a Golem node shipping a result, a restarted requestor) never sees a half-written
file, and once the writer returns the file is on disk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_path(path: Path) -> Path:
    """Where :func:`durable_file` writes ``path`` until it is complete."""
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def durable_file(
    path: Path, guard: Callable[[], contextlib.AbstractContextManager] | None = None
) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; it appears, complete and synced, when the block ends.

    If the block raises, the partial file is removed and ``path`` is left as it was.
    ``guard``: a context manager factory entered around creating the partial file and around
    renaming it into place; raising there leaves nothing (a provider's stop uses it so that
    no band file appears once it has answered that the band was abandoned).
    """
    path = Path(path)
    tmp = partial_path(path)
    guarded = guard or contextlib.nullcontext
    try:
        # A fresh file, never one planted there: a symlink left under the partial name is
        # removed (the link, not its target) and O_EXCL | O_NOFOLLOW refuse one made meanwhile.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with guarded():
            fd = os.open(tmp, flags, 0o644)
        with open(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        with guarded():
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
