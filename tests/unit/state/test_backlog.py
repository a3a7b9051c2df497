"""The change backlog: a peek stores what it saw, a commit empties it, an empty peek ends an alert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_sync.state import session_scope
from crm_sync.state.backlog import backlog_rows, mark_alerted, mark_committed, record_peek

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _row(engine, entity: str = "lead", direction: str = "d2m") -> dict:
    with session_scope(engine) as s:
        rows = {(r["entity"], r["direction"]): r for r in backlog_rows(s, now=T0 + timedelta(minutes=10))}
    return rows[(entity, direction)]


def _peek_then_commit(
    engine, *, pending: int, newest: datetime, peeked: datetime, through: datetime, committed: datetime
) -> None:
    """A lead/d2m peek that saw ``pending`` changes up to ``newest``, then a run's commit."""
    with session_scope(engine) as s:
        record_peek(
            s, entity="lead", direction="d2m", pending=pending, oldest_change_at=T0,
            newest_change_at=newest, now=peeked,
        )  # fmt: skip
        mark_committed(s, entity="lead", direction="d2m", now=committed, through=through)


def test_peek_then_commit_then_peek(engine):
    with session_scope(engine) as s:
        record_peek(
            s, entity="lead", direction="d2m", pending=3, oldest_change_at=T0,
            newest_change_at=T0 + timedelta(minutes=1), now=T0 + timedelta(minutes=2),
        )  # fmt: skip
    row = _row(engine)
    assert (row["pending"], row["oldest_change_at"], row["oldest_age_seconds"]) == (3, T0, 600.0)
    assert row["peeked_at"] == T0 + timedelta(minutes=2)

    with session_scope(engine) as s:
        mark_alerted(s, entity="lead", direction="d2m", at=T0 + timedelta(minutes=3))
    assert _row(engine)["alerted_at"] == T0 + timedelta(minutes=3)

    with session_scope(engine) as s:
        mark_committed(s, entity="lead", direction="d2m", now=T0 + timedelta(minutes=4))
    row = _row(engine)
    assert (row["pending"], row["oldest_change_at"], row["oldest_age_seconds"], row["alerted_at"]) == (
        0, None, None, None,
    )  # fmt: skip
    assert row["committed_at"] == T0 + timedelta(minutes=4)
    assert row["peeked_at"] == T0 + timedelta(minutes=2)  # a commit keeps the last peek's time


def test_an_empty_peek_ends_the_alert_episode_and_a_busy_one_keeps_it(engine):
    with session_scope(engine) as s:
        record_peek(s, entity="contact", direction="m2d", pending=1, oldest_change_at=T0,
                    newest_change_at=T0, now=T0)  # fmt: skip
        mark_alerted(s, entity="contact", direction="m2d", at=T0)
    with session_scope(engine) as s:
        record_peek(s, entity="contact", direction="m2d", pending=2, oldest_change_at=T0,
                    newest_change_at=T0, now=T0 + timedelta(minutes=1))  # fmt: skip
    assert _row(engine, "contact", "m2d")["alerted_at"] == T0
    with session_scope(engine) as s:
        record_peek(s, entity="contact", direction="m2d", pending=0, oldest_change_at=T0,
                    newest_change_at=T0, now=T0 + timedelta(minutes=2))  # fmt: skip
    row = _row(engine, "contact", "m2d")
    assert (row["pending"], row["oldest_change_at"], row["alerted_at"]) == (0, None, None)


def test_bad_input_is_refused(engine):
    with session_scope(engine) as s, pytest.raises(ValueError, match="both"):
        record_peek(s, entity="lead", direction="both", pending=1, oldest_change_at=T0, newest_change_at=T0)
    with session_scope(engine) as s, pytest.raises(ValueError, match="lead/d2m: pending"):
        record_peek(
            s, entity="lead", direction="d2m", pending=-1, oldest_change_at=None, newest_change_at=None
        )


def test_a_commit_keeps_a_backlog_the_last_peek_saw_grow_after_the_run_began(engine):
    run_began = T0 + timedelta(minutes=1)
    _peek_then_commit(
        engine, pending=6, newest=run_began + timedelta(seconds=30), peeked=T0 + timedelta(minutes=2),
        through=run_began, committed=T0 + timedelta(minutes=3),
    )  # fmt: skip
    row = _row(engine)
    assert (row["pending"], row["committed_at"]) == (6, T0 + timedelta(minutes=3))
    with session_scope(engine) as s:  # the next run began after the newest change: empty now
        later = T0 + timedelta(minutes=3)
        mark_committed(s, entity="lead", direction="d2m", now=later + timedelta(minutes=1), through=later)
    assert _row(engine)["pending"] == 0


def test_a_change_stamped_in_the_second_the_run_began_keeps_the_backlog(engine):
    # Change times come to the whole second: 12:01:00 may be after an extract begun at 12:01:00.4.
    run_began = T0 + timedelta(minutes=1, milliseconds=400)
    _peek_then_commit(
        engine, pending=6, newest=T0 + timedelta(minutes=1), peeked=T0 + timedelta(minutes=2),
        through=run_began, committed=T0 + timedelta(minutes=3),
    )  # fmt: skip
    assert _row(engine)["pending"] == 6
    # A change from the second before the run began was carried.
    _peek_then_commit(
        engine, pending=3, newest=T0 + timedelta(seconds=59), peeked=T0 + timedelta(minutes=4),
        through=run_began, committed=T0 + timedelta(minutes=5),
    )  # fmt: skip
    assert _row(engine)["pending"] == 0
