"""Durable task state: one sqlite database per task, in the task's own folder.

Every change is one transaction committed (WAL, ``synchronous=FULL``) before the method
returns, so the requestor can answer an rpc only after its effect is on disk, and a requestor
killed at any moment and started again on the same work directory resumes from here.

A band is in exactly one state at a time: ``pending`` (waiting to be handed out),
``running`` (a provider has it), ``verifying`` (its result is being checked) or ``accepted``.
The band row names the subtask that holds it, so a band can never be both pending and running.
Subtasks are the history: each ``NextSubtask`` adds one, and it ends ``accepted``, ``failed``,
``aborted`` or ``discarded``.

This module also owns the layout of a task folder and the check that keeps names from the
outside world (task ids, subtask ids, file names) from reaching outside it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fractal_app.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_NAME_LENGTH = 128
# Letters, digits, '.', '_', '-', not starting with '.': no separators, no '..', no NUL,
# nothing absolute, nothing hidden. Golem's ids are UUIDs, well inside this.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is safe as one path component, else raise InvalidArgument.

    ``kind`` names the field in the message ("task_id", "subtask_id", "resource name").
    """
    if not isinstance(value, str) or value == "":
        raise InvalidArgument(f"{kind} is empty; give a non-empty name")
    shown = repr(value[:40]) + ("..." if len(value) > 40 else "")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{kind} {shown} is {len(value)} characters; at most {MAX_NAME_LENGTH}"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{kind} {shown} contains a NUL character")
    if "/" in value or "\\" in value or value.startswith("/"):
        raise InvalidArgument(f"{kind} {shown} contains a path separator ('/' or '\\')")
    if ".." in value:
        raise InvalidArgument(f"{kind} {shown} contains '..'")
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            f"{kind} {shown} may use only letters, digits, '.', '_' and '-', and must not"
            " start with '.'"
        )
    return value


def check_relative_path(kind: str, value: str, root: Path) -> Path:
    """Resolve a relative path from the outside world (e.g. a provider's output path) under root.

    Every component must pass :func:`check_name`; the result is inside ``root``.
    """
    if not isinstance(value, str) or value == "":
        raise InvalidArgument(f"{kind} is empty")
    if value.startswith(("/", "\\")):
        raise InvalidArgument(f"{kind} {value[:80]!r} is absolute; it must be relative")
    parts = value.split("/")
    for part in parts:
        check_name(kind, part)
    return root.joinpath(*parts)


def real_folder(base: Path, relative: str | Path, create: bool = False) -> Path:
    """``base / relative``, after checking that every folder on the way below ``base`` is a
    real folder and not a symlink (FailedPrecondition otherwise); missing ones are made when
    ``create``.

    Whoever planted a symlink in the work directory (a node, another process), nothing is
    read, written or deleted through it: a ``task_outputs`` that points elsewhere would have
    the requestor clear the folder it points to. ``base`` itself is trusted (the work
    directory may well be a mount or a link the operator chose).
    """
    folder = Path(base)
    for part in Path(relative).parts:
        folder = folder / part
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            if not create:
                return Path(base) / relative
            try:
                os.mkdir(folder)
            except FileExistsError:  # made meanwhile: check what it is
                info = os.lstat(folder)
            else:
                continue
        shown = folder.relative_to(base)
        if stat.S_ISLNK(info.st_mode):
            raise FailedPrecondition(
                f"{shown} in the work directory is a symlink; fractal-app never reads, writes"
                " or deletes through one: replace it with a real folder"
            )
        if not stat.S_ISDIR(info.st_mode):
            raise FailedPrecondition(
                f"{shown} in the work directory is not a folder; remove it or choose another id"
            )
    return folder


# Names of the folders a Golem node makes in each task folder (PROTOCOL.md).
TASK_INPUTS = "task_inputs"
SUBTASK_INPUTS = "subtask_inputs"
TASK_OUTPUTS = "task_outputs"
SUBTASK_OUTPUTS = "subtask_outputs"
# The requestor's own files: outside the four protocol folders, so task_outputs holds the
# result and nothing else.
APP_STATE = "app_state"


@dataclass(frozen=True)
class TaskPaths:
    """Where everything of one task lives, under ``{work_dir}/{task_id}/``."""

    root: Path

    @classmethod
    def of(cls, work_dir: Path, task_id: str) -> TaskPaths:
        return cls(Path(work_dir) / check_name("task_id", task_id))

    @property
    def task_id(self) -> str:
        return self.root.name

    def checked(self, folder: Path, create: bool = False) -> Path:
        """``folder`` (one of this task's), each step from the work directory down a real
        folder, not a symlink; see :func:`real_folder`."""
        work_dir = self.root.parent
        return real_folder(work_dir, folder.relative_to(work_dir), create)

    @property
    def task_inputs(self) -> Path:
        return self.root / TASK_INPUTS

    @property
    def subtask_inputs(self) -> Path:
        return self.root / SUBTASK_INPUTS

    @property
    def task_outputs(self) -> Path:
        return self.root / TASK_OUTPUTS

    @property
    def subtask_outputs(self) -> Path:
        return self.root / SUBTASK_OUTPUTS

    @property
    def state(self) -> Path:
        return self.root / APP_STATE

    @property
    def database(self) -> Path:
        return self.state / "state.sqlite3"

    @property
    def bands(self) -> Path:
        """Accepted band values, one ``.npy`` per band index."""
        return self.state / "bands"

    def band_values(self, band_index: int) -> Path:
        return self.bands / f"{band_index}.npy"

    def result_dir(self, subtask_id: str) -> Path:
        return self.subtask_outputs / check_name("subtask_id", subtask_id)

    def make_folders(self) -> None:
        """Create the protocol folders (a node makes them; local mode and tests may not)."""
        for folder in (
            self.task_inputs,
            self.subtask_inputs,
            self.task_outputs,
            self.subtask_outputs,
            self.bands,
        ):
            self.checked(folder, create=True)


@dataclass(frozen=True)
class BandRow:
    index: int
    row_start: int
    row_stop: int
    state: str
    subtask_id: str | None
    failures: int


@dataclass(frozen=True)
class SubtaskRow:
    subtask_id: str
    band_index: int
    node_id: str
    state: str
    reason: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS task (
    task_id TEXT PRIMARY KEY,
    params_json TEXT NOT NULL,
    scene_json TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'aborted'))
);
CREATE TABLE IF NOT EXISTS band (
    band_index INTEGER PRIMARY KEY,
    row_start INTEGER NOT NULL,
    row_stop INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'verifying', 'accepted')),
    subtask_id TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    CHECK ((state = 'pending') = (subtask_id IS NULL))
);
CREATE TABLE IF NOT EXISTS subtask (
    subtask_id TEXT PRIMARY KEY,
    band_index INTEGER NOT NULL REFERENCES band (band_index),
    node_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('running', 'verifying', 'accepted', 'failed', 'aborted', 'discarded')),
    reason TEXT NOT NULL DEFAULT ''
);
"""

# The subtask states in which it still holds its band.
_HOLDING = ("running", "verifying", "accepted")


class TaskStore:
    """The state of one task. Not thread-safe: the requestor uses it from its event loop only."""

    def __init__(self, connection: sqlite3.Connection, task_id: str) -> None:
        self._db = connection
        self.task_id = task_id

    # ---- opening ---------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @classmethod
    def create(
        cls,
        path: Path,
        task_id: str,
        params_json: str,
        scene_json: str,
        bands: Sequence[tuple[int, int]],
    ) -> TaskStore:
        """Create the task in one transaction. FailedPrecondition if it already exists."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = cls._connect(path)
        try:
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM task").fetchone() is not None:
                    raise FailedPrecondition(
                        f"task {task_id!r} already exists; CreateTask is called once per task id"
                    )
                # Leftovers of a CreateTask that crashed before committing are rolled back by
                # sqlite; a half-written plan cannot exist.
                db.execute(
                    "INSERT INTO task VALUES (?, ?, ?, 'active')",
                    (task_id, params_json, scene_json),
                )
                db.executemany(
                    "INSERT INTO band (band_index, row_start, row_stop, state)"
                    " VALUES (?, ?, ?, 'pending')",
                    [(i, start, stop) for i, (start, stop) in enumerate(bands)],
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except BaseException:
            db.close()
            raise
        return cls(db, task_id)

    @classmethod
    def open(cls, path: Path, task_id: str) -> TaskStore | None:
        """Open an existing task, or None if there is no (committed) task at ``path``."""
        if not path.is_file():
            return None
        db = cls._connect(path)
        db.executescript(_SCHEMA)
        row = db.execute("SELECT task_id FROM task").fetchone()
        if row is None:
            db.close()
            return None
        if row[0] != task_id:
            db.close()
            raise FailedPrecondition(
                f"the database in {path.parent} belongs to task {row[0]!r}, not {task_id!r}"
            )
        return cls(db, task_id)

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        return _Transaction(self._db)

    # ---- reading ---------------------------------------------------------------------------

    @property
    def scene_json(self) -> str:
        return self._db.execute("SELECT scene_json FROM task").fetchone()[0]

    @property
    def params_json(self) -> str:
        return self._db.execute("SELECT params_json FROM task").fetchone()[0]

    @property
    def aborted(self) -> bool:
        return self._db.execute("SELECT state FROM task").fetchone()[0] == "aborted"

    def bands(self) -> list[BandRow]:
        rows = self._db.execute(
            "SELECT band_index, row_start, row_stop, state, subtask_id, failures"
            " FROM band ORDER BY band_index"
        ).fetchall()
        return [BandRow(*row) for row in rows]

    def band(self, index: int) -> BandRow:
        row = self._db.execute(
            "SELECT band_index, row_start, row_stop, state, subtask_id, failures"
            " FROM band WHERE band_index = ?",
            (index,),
        ).fetchone()
        return BandRow(*row)

    def subtask(self, subtask_id: str) -> SubtaskRow:
        """The subtask, or NotFound naming it."""
        row = self._db.execute(
            "SELECT subtask_id, band_index, node_id, state, reason FROM subtask"
            " WHERE subtask_id = ?",
            (subtask_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"task {self.task_id!r} has no subtask {subtask_id!r}")
        return SubtaskRow(*row)

    def subtasks(self) -> list[SubtaskRow]:
        rows = self._db.execute(
            "SELECT subtask_id, band_index, node_id, state, reason FROM subtask ORDER BY rowid"
        ).fetchall()
        return [SubtaskRow(*row) for row in rows]

    def has_pending(self) -> bool:
        if self.aborted:
            return False
        return (
            self._db.execute("SELECT 1 FROM band WHERE state = 'pending' LIMIT 1").fetchone()
            is not None
        )

    def all_accepted(self) -> bool:
        return (
            self._db.execute("SELECT 1 FROM band WHERE state != 'accepted' LIMIT 1").fetchone()
            is None
        )

    def counts(self) -> dict[str, int]:
        """How many bands are in each state."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM band GROUP BY state").fetchall()
        return dict(rows)

    # ---- changing --------------------------------------------------------------------------

    def claim_pending_band(self, subtask_id: str, node_id: str) -> BandRow | None:
        """Hand the first pending band to a new subtask (pending -> running), or None if none.

        FailedPrecondition if the subtask id was used before or the task is aborted.
        """
        with self._transaction() as db:
            if db.execute("SELECT state FROM task").fetchone()[0] == "aborted":
                return None
            if db.execute("SELECT 1 FROM subtask WHERE subtask_id = ?", (subtask_id,)).fetchone():
                raise FailedPrecondition(
                    f"subtask id {subtask_id!r} was already used in task {self.task_id!r};"
                    " each NextSubtask needs a new subtask id"
                )
            row = db.execute(
                "SELECT band_index FROM band WHERE state = 'pending' ORDER BY band_index LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE band SET state = 'running', subtask_id = ? WHERE band_index = ?",
                (subtask_id, row[0]),
            )
            db.execute(
                "INSERT INTO subtask (subtask_id, band_index, node_id, state)"
                " VALUES (?, ?, ?, 'running')",
                (subtask_id, row[0], node_id),
            )
        return self.band(row[0])

    def start_verification(self, subtask_id: str, resume: bool = False) -> BandRow:
        """running -> verifying for the subtask and its band; FailedPrecondition otherwise.

        ``resume``: the caller knows no check of this subtask is running (the requestor keeps
        its live checks in memory), so a subtask left ``verifying`` by a check that was cut
        off (a full disk even for the undo) is checked again instead of refused.
        """
        with self._transaction() as db:
            sub = self.subtask(subtask_id)
            if sub.state != "running" and not (resume and sub.state == "verifying"):
                raise FailedPrecondition(_not_running(self.task_id, sub, "verify"))
            db.execute("UPDATE subtask SET state = 'verifying' WHERE subtask_id = ?", (subtask_id,))
            db.execute(
                "UPDATE band SET state = 'verifying' WHERE band_index = ?", (sub.band_index,)
            )
        return self.band(sub.band_index)

    def undo_verification(self, subtask_id: str) -> None:
        """verifying -> running (the check could not run: file missing, internal error)."""
        with self._transaction() as db:
            sub = self.subtask(subtask_id)
            if sub.state != "verifying":
                return
            db.execute("UPDATE subtask SET state = 'running' WHERE subtask_id = ?", (subtask_id,))
            db.execute("UPDATE band SET state = 'running' WHERE band_index = ?", (sub.band_index,))

    def finish_verification(self, subtask_id: str, accepted: bool, reason: str) -> bool:
        """verifying -> accepted, or -> failed with the band back to pending.

        Returns False (and changes nothing) if the subtask stopped verifying meanwhile
        (aborted or discarded while its check ran).
        """
        with self._transaction() as db:
            sub = self.subtask(subtask_id)
            if sub.state != "verifying":
                return False
            if accepted:
                db.execute(
                    "UPDATE subtask SET state = 'accepted', reason = ? WHERE subtask_id = ?",
                    (reason, subtask_id),
                )
                db.execute(
                    "UPDATE band SET state = 'accepted' WHERE band_index = ?", (sub.band_index,)
                )
            else:
                db.execute(
                    "UPDATE subtask SET state = 'failed', reason = ? WHERE subtask_id = ?",
                    (reason, subtask_id),
                )
                db.execute(
                    "UPDATE band SET state = 'pending', subtask_id = NULL, failures = failures + 1"
                    " WHERE band_index = ?",
                    (sub.band_index,),
                )
        return True

    def abort_subtask(self, subtask_id: str) -> SubtaskRow:
        """A running or verifying subtask ends aborted; its band goes back to pending.

        Aborting an ended subtask changes nothing; an accepted one needs DiscardSubtasks.
        """
        with self._transaction() as db:
            sub = self.subtask(subtask_id)
            if sub.state == "accepted":
                raise FailedPrecondition(
                    f"subtask {subtask_id!r} of task {self.task_id!r} is already accepted;"
                    " use DiscardSubtasks to redo its band"
                )
            if sub.state in ("running", "verifying"):
                self._release(db, sub, "aborted", "aborted by AbortSubtask")
        return sub

    def discard(self, subtask_ids: Iterable[str]) -> list[str]:
        """Subtasks that hold their band (running, verifying, accepted) end discarded, their
        bands back to pending. Returns the ids discarded; NotFound for an unknown id."""
        discarded: list[str] = []
        with self._transaction() as db:
            subs = [self.subtask(subtask_id) for subtask_id in subtask_ids]
            for sub in subs:
                if sub.state in _HOLDING and sub.subtask_id not in discarded:
                    self._release(db, sub, "discarded", "discarded by DiscardSubtasks")
                    discarded.append(sub.subtask_id)
        return discarded

    def abort_task(self) -> list[str]:
        """The task hands out nothing more; running and verifying subtasks end aborted.

        Accepted bands stay accepted. Returns the ids of the subtasks aborted.
        """
        aborted: list[str] = []
        with self._transaction() as db:
            db.execute("UPDATE task SET state = 'aborted'")
            for sub in self.subtasks():
                if sub.state in ("running", "verifying"):
                    self._release(db, sub, "aborted", "aborted by AbortTask")
                    aborted.append(sub.subtask_id)
        return aborted

    def recover(self) -> list[str]:
        """After a restart: verifications that were cut off go back to running, so the node's
        retried Verify checks the result again. Returns their subtask ids."""
        with self._transaction() as db:
            ids = [s.subtask_id for s in self.subtasks() if s.state == "verifying"]
            db.execute("UPDATE subtask SET state = 'running' WHERE state = 'verifying'")
            db.execute("UPDATE band SET state = 'running' WHERE state = 'verifying'")
        return ids

    def _release(self, db: sqlite3.Connection, sub: SubtaskRow, state: str, reason: str) -> None:
        db.execute(
            "UPDATE subtask SET state = ?, reason = ? WHERE subtask_id = ?",
            (state, reason, sub.subtask_id),
        )
        db.execute(
            "UPDATE band SET state = 'pending', subtask_id = NULL"
            " WHERE band_index = ? AND subtask_id = ?",
            (sub.band_index, sub.subtask_id),
        )


def _not_running(task_id: str, sub: SubtaskRow, action: str) -> str:
    why = {
        "verifying": "its result is being verified right now",
        "accepted": "its result was already verified and accepted",
        "failed": f"its result was already verified and rejected ({sub.reason})",
        "aborted": f"it was aborted ({sub.reason})",
        "discarded": "it was discarded",
    }.get(sub.state, f"it is {sub.state}")
    return f"cannot {action} subtask {sub.subtask_id!r} of task {task_id!r}: {why}"


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (durable on return), ``ROLLBACK`` on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        # sqlite may have rolled back by itself (a full disk, an I/O error): then there is
        # nothing to roll back, and the error that got us here is the one to report.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
