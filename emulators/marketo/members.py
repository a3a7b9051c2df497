"""Program membership writes: set a progression status, remove members (reads: ``member_reads``).

Rules (Adobe's Program Members page): setting a status creates the member when the lead is not
one yet ("created") and updates it otherwise ("updated"); a lead already in the status, or in a
status with a greater step, is skipped with 1037. A status that is not the channel's answers 1025
for the whole call (1025 "Program status not found" is documented; that it rejects the call rather
than each record is unconfirmed). Setting "Not in Program" removes a member, as removing does.

Every change writes a "Change Status in Progression" (104) activity whose attributes are the ones
Adobe's bulk activity sample shows: Program Member ID, Acquired By, Old Status, Old Status ID,
New Status, New Status ID, Success, Reason. Marketo's published activity types have no separate
"Add to Program" or "Remove from Program" type: an addition is a 104 from "Not in Program", a
removal a 104 to "Not in Program" (that a removal is logged this way is unconfirmed).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, text

from emulators.marketo import activities
from emulators.marketo.envelope import MarketoError, skipped
from emulators.marketo.fields import format_datetime
from emulators.marketo.programs import NOT_IN_PROGRAM, channel_of
from emulators.marketo.store import program_members

if TYPE_CHECKING:
    from collections.abc import Sequence

    from emulators.marketo.store import Store

API_REASON = "Web service API"  # the Reason of API-made changes (wording unconfirmed for 104)


@dataclass
class Change:
    """The outcome of one status change of one lead, for its activity."""

    lead_id: int
    member_id: int
    acquired: bool
    old: str
    new: str
    success: bool


def now_text() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))


def _lead_ids(raw: Sequence[Any], key: str) -> list[int | None]:
    out: list[int | None] = []
    for entry in raw:
        value: Any = entry.get(key) if isinstance(entry, dict) else entry
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            out.append(None)
    return out


def set_status(
    conn: Connection, store: Store, program: Any, raw: Sequence[Any], status_name: str, *,
    key: str = "leadId", members_only: bool = False, when: str | None = None, acquired: bool = False,
    reason: str = API_REASON,
) -> list[dict[str, Any]]:  # fmt: skip
    """Set ``status_name`` for the leads of ``raw`` (``{key: id}`` entries); one result per entry.

    Args:
        conn: Open connection (the caller holds the store lock).
        store: For member and activity ids.
        program: The program row.
        raw: The call's ``input``.
        status_name: A status of the program's channel.
        key: ``leadId`` (Sync Program Member Status) or ``id`` (Change Lead Program Status).
        members_only: Change Lead Program Status: leads that are not members are skipped (the
            Swagger text says only members can be changed; the skip code 1037 is unconfirmed).
        when: Activity and membership date (admin history); now when omitted.
        acquired: Admin only: mark new members as acquired by this program.
        reason: The activity's Reason attribute.

    Raises:
        MarketoError: 1025 when the channel has no such status.
    """
    channel = channel_of(program)
    target = channel.status(status_name)
    if target is None:
        raise MarketoError("1025", f"Program status '{status_name}' not found for channel '{channel.name}'")
    when = when or now_text()
    ids = _lead_ids(raw, key)
    known = _existing_leads(conn, [i for i in ids if i is not None])
    current: dict[int, Any] = {
        r["leadId"]: r
        for r in conn.execute(
            text("SELECT * FROM program_members WHERE programId = :p"), {"p": program["id"]}
        ).mappings()
        if r["leadId"] in known
    }
    results: list[dict[str, Any]] = []
    changes: list[Change] = []
    for seq, lead_id in enumerate(ids):
        # Program member results are keyed by seq (leadId on success); lead results by id.
        entry: dict[str, Any] = {"seq": seq} if key == "leadId" else {"id": lead_id}
        if lead_id is None or lead_id not in known:
            results.append(skipped("1004", "Lead not found", **entry))
            continue
        member: Any = current.get(lead_id)
        old = channel.status(member["statusName"]) if member else None
        if member is None and (members_only or target.name == NOT_IN_PROGRAM):
            message = "Lead not in program" if members_only else "Lead is already in this status"
            results.append(skipped("1037", message, **entry))
            continue
        if member is not None and (
            target.name == member["statusName"]
            or (target.name != NOT_IN_PROGRAM and old is not None and target.step < old.step)
        ):
            message = "Lead skipped because it is already in or past this status"
            results.append(skipped("1037", message, **entry))
            continue
        if member is None:
            member = _insert(conn, store, program["id"], lead_id, target.name, target.success, when, acquired)
            current[lead_id] = member
            changes.append(
                Change(lead_id, member["memberId"], acquired, NOT_IN_PROGRAM, target.name, target.success)
            )
            results.append({**entry, "status": "created", key: lead_id})
            continue
        _update(conn, program["id"], lead_id, target.name, target.success, when)
        first_success = target.success and not member["reachedSuccess"]
        if target.name == NOT_IN_PROGRAM:
            current.pop(lead_id)
        else:  # a lead named twice in one call meets its new status the second time
            reached = int(bool(member["reachedSuccess"]) or target.success)
            current[lead_id] = {**member, "statusName": target.name, "reachedSuccess": reached}
        changes.append(
            Change(lead_id, member["memberId"], bool(member["acquiredBy"]), member["statusName"],
                   target.name, first_success)
        )  # fmt: skip
        results.append({**entry, "status": "updated", key: lead_id})
    _log(conn, store, program, changes, when, reason)
    return results


def remove(conn: Connection, store: Store, program: Any, raw: Sequence[Any]) -> list[dict[str, Any]]:
    """Delete Program Members: ``deleted`` per member, 1037 "Lead not in program" otherwise."""
    ids = _lead_ids(raw, "leadId")
    results: list[dict[str, Any]] = []
    changes: list[Change] = []
    when = now_text()
    for seq, lead_id in enumerate(ids):
        row = (
            conn.execute(
                text("SELECT * FROM program_members WHERE programId = :p AND leadId = :l"),
                {"p": program["id"], "l": lead_id},
            )
            .mappings()
            .first()
        )
        if row is None:
            results.append(skipped("1037", "Lead not in program", seq=seq))
            continue
        _update(conn, program["id"], int(row["leadId"]), NOT_IN_PROGRAM, False, when)
        changes.append(Change(int(row["leadId"]), row["memberId"], bool(row["acquiredBy"]),
                              row["statusName"], NOT_IN_PROGRAM, False))  # fmt: skip
        results.append({"seq": seq, "status": "deleted", "leadId": lead_id})
    _log(conn, store, program, changes, when, API_REASON)
    return results


def _update(conn: Connection, program_id: int, lead_id: int, status: str, success: bool, when: str) -> None:
    keys = {"p": program_id, "l": lead_id}
    if status == NOT_IN_PROGRAM:
        conn.execute(text("DELETE FROM program_members WHERE programId = :p AND leadId = :l"), keys)
        return
    conn.execute(
        text(
            "UPDATE program_members SET statusName = :s, updatedAt = :t, "
            "reachedSuccess = MAX(reachedSuccess, :ok), "
            "reachedSuccessDate = COALESCE(reachedSuccessDate, :sd) WHERE programId = :p AND leadId = :l"
        ),
        {**keys, "s": status, "t": when, "ok": int(success), "sd": when if success else None},
    )


def _existing_leads(conn: Connection, ids: Sequence[int]) -> set[int]:
    if not ids:
        return set()
    marks = ",".join(str(int(i)) for i in set(ids))
    return {int(r[0]) for r in conn.exec_driver_sql(f"SELECT id FROM leads WHERE id IN ({marks})")}


def _insert(
    conn: Connection, store: Store, program_id: int, lead_id: int, status: str, success: bool, when: str,
    acquired: bool,
) -> dict[str, Any]:  # fmt: skip
    row = {
        "programId": program_id,
        "leadId": lead_id,
        "memberId": store.take_member_ids(1),
        "statusName": status,
        "acquiredBy": int(acquired),
        "reachedSuccess": int(success),
        "reachedSuccessDate": when if success else None,
        "membershipDate": when,
        "createdAt": when,
        "updatedAt": when,
    }
    conn.execute(insert(program_members), row)
    return row


def _log(
    conn: Connection, store: Store, program: Any, changes: Sequence[Change], when: str, reason: str
) -> None:
    channel = channel_of(program)
    rows = []
    for ch in changes:
        old, new = channel.status(ch.old), channel.status(ch.new)
        attrs: list[dict[str, Any]] = [
            {"name": "Program Member ID", "value": ch.member_id},
            {"name": "Acquired By", "value": ch.acquired},
            {"name": "Old Status", "value": ch.old},
            {"name": "Old Status ID", "value": old.id if old else None},
            {"name": "New Status", "value": ch.new},
            {"name": "New Status ID", "value": new.id if new else None},
            {"name": "Success", "value": ch.success},
            {"name": "Reason", "value": reason},
        ]
        rows.append(
            {
                "leadId": ch.lead_id,
                "activityDate": when,
                "activityTypeId": activities.CHANGE_STATUS_IN_PROGRESSION,
                "primaryAttributeValueId": program["id"],
                "primaryAttributeValue": program["name"],
                "fieldName": None,
                "payload": json.dumps(
                    {"attributes": [a for a in attrs if a["value"] is not None], "fields": []}
                ),
            }
        )
    activities.append(conn, store.take_activity_ids(len(rows)), rows)


def forget_leads(conn: Connection, lead_ids: Sequence[int]) -> None:
    """Drop the memberships of deleted leads."""
    if lead_ids:
        conn.exec_driver_sql(
            f"DELETE FROM program_members WHERE leadId IN ({','.join(str(int(i)) for i in lead_ids)})"
        )


def merge_memberships(conn: Connection, winner: int, losers: Sequence[int]) -> None:
    """A merge combines memberships: the winner takes each program only a loser was in."""
    marks = ",".join(str(int(i)) for i in losers)
    conn.exec_driver_sql(
        f"UPDATE OR IGNORE program_members SET leadId = {int(winner)} WHERE leadId IN ({marks})"
    )
    forget_leads(conn, losers)
