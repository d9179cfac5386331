"""Durable task state: transitions, invariants, and what survives a reopen."""

import sqlite3

import pytest

from fractal_app.errors import FailedPrecondition, NotFound
from fractal_app.store import TaskStore

BANDS = [(0, 4), (4, 8), (8, 10)]


@pytest.fixture
def store(tmp_path):
    s = TaskStore.create(tmp_path / "db.sqlite3", "t1", "{}", '{"scene": 1}', BANDS)
    yield s
    s.close()


def reopen(store, tmp_path):
    store.close()
    return TaskStore.open(tmp_path / "db.sqlite3", "t1")


def assert_invariants(store):
    """A band is pending exactly when no subtask holds it; a holder's state matches the band's."""
    holders = {
        s.subtask_id: s for s in store.subtasks() if s.state in ("running", "verifying", "accepted")
    }
    for band in store.bands():
        if band.state == "pending":
            assert band.subtask_id is None
        else:
            assert holders[band.subtask_id].state == band.state
            assert holders[band.subtask_id].band_index == band.index
    assert len(holders) == sum(b.state != "pending" for b in store.bands())


def test_create_twice_is_refused(store, tmp_path):
    with pytest.raises(FailedPrecondition, match="already exists"):
        TaskStore.create(tmp_path / "db.sqlite3", "t1", "{}", "{}", BANDS)


def test_open_missing_returns_none(tmp_path):
    assert TaskStore.open(tmp_path / "nothing.sqlite3", "t1") is None


def test_lifecycle_and_reopen(store, tmp_path):
    assert store.has_pending()
    first = store.claim_pending_band("s1", "node-a")
    second = store.claim_pending_band("s2", "node-b")
    third = store.claim_pending_band("s3", "node-a")
    assert [first.index, second.index, third.index] == [0, 1, 2]
    assert store.claim_pending_band("s4", "node-a") is None
    assert not store.has_pending()
    assert_invariants(store)

    store.start_verification("s1")
    with pytest.raises(FailedPrecondition, match="being verified"):
        store.start_verification("s1")
    assert store.finish_verification("s1", True, "ok")
    with pytest.raises(FailedPrecondition, match="already verified"):
        store.start_verification("s1")

    store.start_verification("s2")
    assert store.finish_verification("s2", False, "pixel (5, 3) differs")
    assert store.band(1).state == "pending" and store.band(1).failures == 1
    assert_invariants(store)

    store.start_verification("s3")
    store = reopen(store, tmp_path)  # a crash in the middle of verifying s3
    assert store.recover() == ["s3"]
    assert store.subtask("s3").state == "running"
    assert store.band(2).state == "running"
    assert store.subtask("s1").state == "accepted"
    assert store.band(1).failures == 1
    assert_invariants(store)
    store.close()


def test_subtask_ids_are_never_reused(store):
    store.claim_pending_band("s1", "n")
    with pytest.raises(FailedPrecondition, match="already used"):
        store.claim_pending_band("s1", "n")


def test_unknown_subtask_is_not_found(store):
    with pytest.raises(NotFound, match="nope"):
        store.start_verification("nope")
    with pytest.raises(NotFound):
        store.discard(["nope"])
    with pytest.raises(NotFound):
        store.abort_subtask("nope")


def test_discard_releases_accepted_and_running_bands(store):
    store.claim_pending_band("s1", "n")
    store.claim_pending_band("s2", "n")
    store.start_verification("s1")
    store.finish_verification("s1", True, "ok")
    assert store.discard(["s1", "s2", "s1"]) == ["s1", "s2"]
    assert store.discard(["s1"]) == []
    assert [b.state for b in store.bands()] == ["pending", "pending", "pending"]
    assert_invariants(store)


def test_abort_subtask_and_task(store):
    store.claim_pending_band("s1", "n")
    store.claim_pending_band("s2", "n")
    store.start_verification("s2")
    store.abort_subtask("s1")
    assert store.band(0).state == "pending"
    # The aborted check of s2 must not be recorded when it comes back.
    store.abort_subtask("s2")
    assert not store.finish_verification("s2", True, "ok")
    assert store.band(1).state == "pending"
    store.claim_pending_band("s3", "n")
    assert store.abort_task() == ["s3"]
    assert store.aborted and not store.has_pending()
    assert store.claim_pending_band("s4", "n") is None
    assert_invariants(store)


def test_abort_accepted_subtask_points_to_discard(store):
    store.claim_pending_band("s1", "n")
    store.start_verification("s1")
    store.finish_verification("s1", True, "ok")
    with pytest.raises(FailedPrecondition, match="DiscardSubtasks"):
        store.abort_subtask("s1")


def test_database_enforces_pending_means_unheld(store, tmp_path):
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute("UPDATE band SET state = 'running' WHERE band_index = 0")
