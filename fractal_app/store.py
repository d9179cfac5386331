"""Durable task state: one sqlite database per task, in the task's own folder.

Every change is one transaction committed (WAL, ``synchronous=FULL``) before the method
returns, so the requestor can answer an rpc only after its effect is on disk, and a requestor
killed at any moment and started again on the same work directory resumes from here.

A band is in exactly one state at a time: ``pending`` (waiting to be handed out),
``running`` (a provider has it), ``verifying`` (its result is being checked) or ``accepted``.
The band row names the subtask that holds it, so a band can never be both pending and running.
Subtasks are the history: each ``NextSubtask`` adds one, and it ends ``accepted``, ``failed``,
``aborted`` or ``discarded``.

Where the database lives in a task folder is :mod:`fractal_app.taskdir`'s business.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fractal_app.errors import FailedPrecondition, NotFound


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
