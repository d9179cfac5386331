"""Domain errors. The gRPC adapter maps each to a status code; nothing below it knows gRPC."""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator


class AppError(Exception):
    """Base class: an error whose message a person can act on."""


class InvalidArgument(AppError):
    """The request itself is wrong (bad JSON, bad field, bad name). Maps to INVALID_ARGUMENT."""


class NotFound(AppError):
    """The request names a task or subtask the app does not know. Maps to NOT_FOUND."""


class FailedPrecondition(AppError):
    """Well formed, but not valid in the current state. Maps to FAILED_PRECONDITION."""


class Aborted(AppError):
    """The work was stopped by AbortTask/AbortSubtask while running. Maps to ABORTED."""


class ResourceExhausted(AppError):
    """The disk (or another resource) ran out; retrying once it is freed works.
    Maps to RESOURCE_EXHAUSTED."""


class DataLoss(AppError):
    """A file the app keeps its state in is unreadable or corrupt. Maps to DATA_LOSS."""


# errno values that mean "no space": the disk (blocks or inodes), or a quota.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# errno values that mean the folder may not be written: a read-only mount or permissions.
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(error: BaseException, action: str) -> AppError | None:
    """The domain error for an OSError or sqlite3 error met while doing ``action``, or None
    when it is not a storage fault (then it stays a bug, reported as INTERNAL).

    ``action`` completes "disk full while ...": "saving the accepted band", for example.
    """
    if isinstance(error, AppError):
        return None
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        if error.errno in _NO_SPACE:
            return ResourceExhausted(
                f"disk full while {action}{where}: free some space; the request can be retried then"
            )
        if error.errno in _NOT_WRITABLE:
            return FailedPrecondition(
                f"no access while {action}{where}: {error.strerror} (a read-only folder or"
                " missing permissions); make the work directory writable"
            )
        if error.errno == errno.EIO:
            return DataLoss(f"I/O error while {action}{where}: the disk may be failing")
        return None
    sqlite3 = sys.modules.get("sqlite3")  # not imported by the provider: not its error then
    if sqlite3 is not None and isinstance(error, sqlite3.Error):
        name = getattr(error, "sqlite_errorname", "") or ""
        if name.startswith("SQLITE_FULL"):
            return ResourceExhausted(
                f"disk full while {action} (the task's state database): free some space; the"
                " request can be retried then"
            )
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
            return FailedPrecondition(
                f"cannot write the task's state database while {action}: {error} (a read-only"
                " folder or missing permissions); make the work directory writable"
            )
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR")):
            return DataLoss(
                f"the task's state database is corrupt or unreadable ({error}) while {action};"
                " this task cannot go on: remove its folder and create it again"
            )
        return None
    return None


@contextlib.contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Turn disk faults met inside the block into the domain errors of :func:`storage_error`."""
    try:
        yield
    except Exception as error:
        mapped = storage_error(error, action)
        if mapped is None:
            raise
        raise mapped from error
