"""Files that appear whole and survive a crash: write beside, fsync, rename, fsync the folder.

A reader (a Golem node shipping a result, a restarted requestor) never sees a half-written
file, and once the writer returns the file is on disk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def durable_file(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; it appears, complete and synced, when the block ends.

    If the block raises, the partial file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
