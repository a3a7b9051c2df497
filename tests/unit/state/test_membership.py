"""The membership state of ``sync_program_membership`` on each backend: lists, agreed memberships,
changes waiting for their person."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from crm_sync.state import session_scope
from crm_sync.state.membership import (
    add_pending,
    drop_pending,
    memberships,
    memberships_by_listmember,
    pending,
    program_lists,
    save_memberships,
    save_program_list,
)


def _row(marketo_id: str, status: str | None, listmember_id: str | None = None) -> dict[str, object]:
    return {
        "program_id": 1001,
        "marketo_id": marketo_id,
        "campaign_id": "c1",
        "person_entity": "contact",
        "dynamics_id": f"d{marketo_id}",
        "status": status,
        "list_id": "l1",
        "listmember_id": listmember_id,
        "in_list": status is not None,
    }


def test_lists_and_memberships_are_upserted(engine: Engine) -> None:
    with session_scope(engine) as s:
        save_program_list(s, 1001, "c1", "contact", "l1")
        save_program_list(s, 1001, "c1", "contact", "l1")
        save_memberships(s, [_row("7", "Registered", "m7"), _row("8", "Registered")])
    with session_scope(engine) as s:
        save_memberships(s, [_row("7", None, "m7")])
        assert program_lists(s) == {(1001, "c1", "contact"): "l1"}
        found = memberships(s, [(1001, "7"), (1001, "8"), (1001, "9")])
        assert {k: (v["status"], v["in_list"]) for k, v in found.items()} == {
            (1001, "7"): (None, False),
            (1001, "8"): ("Registered", True),
        }
        assert list(memberships_by_listmember(s, ["M7"])) == ["m7"]
        assert len(memberships(s)) == 2


def test_a_newer_pending_change_replaces_the_older_and_is_dropped_once_applied(engine: Engine) -> None:
    base = {"direction": "m2d", "program_id": 1001, "person_id": "8", "campaign_id": "c1"}
    with session_scope(engine) as s:
        add_pending(s, [{**base, "status": "Invited", "occurred_at": "2026-03-01T10:00:00Z"}])
        add_pending(s, [{**base, "status": "Registered", "occurred_at": datetime(2026, 3, 2, tzinfo=UTC)}])
        add_pending(s, [{**base, "direction": "d2m", "status": "Attended", "occurred_at": None}])
    with session_scope(engine) as s:
        (row,) = pending(s, "m2d")
        assert (row["status"], row["occurred_at"].replace(tzinfo=None)) == (
            "Registered",
            datetime(2026, 3, 2),
        )
        assert drop_pending(s, "m2d", [(1001, "8")]) == 1
        assert pending(s, "m2d") == []
        assert [r["status"] for r in pending(s, "d2m")] == ["Attended"]
