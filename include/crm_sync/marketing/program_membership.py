"""Marketo → Dynamics: program membership changes become list members and campaign responses.

Plain functions over plain data: the extract hands them the changes (from the activity feed's
"Change Status in Progression" activities, or the first run's bulk program-member export), the
load hands them the id map's persons and the agreed memberships of the state store, and they
return what to write. Nothing here calls an API or opens the state store.

Echo suppression (both directions) compares each change with the membership both systems last
agreed on (``program_membership`` in the state store), which the sync updates whenever it
writes either side:

* a status change to the status already agreed is no change: a status the sync itself set in
  Marketo from a Dynamics response comes back through the feed as exactly that, and is dropped;
  so does a re-read of the same feed stretch (a re-run);
* a removal of a membership already agreed removed is no change (the sync's own removal in
  Marketo, logged as a move to "Not in Program", comes back that way);
* campaign responses the sync writes have ids derived from (program, person, status)
  (:func:`response_id`), so when change tracking hands them back the Dynamics side recognises them
  as its own without any lookup, and a re-run upserts the same row instead of adding one.

Comparing with agreed state (rather than remembering each write) also makes the sync converge
after a crash between a write and its state update: the next run sees the change again and
finds the other side already in that state.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.marketing.program_config import NOT_IN_PROGRAM

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from crm_sync.marketing.program_config import ProgramLink

STATUS_ACTIVITY = "Change Status in Progression"
CHANGE_COLUMNS = ("program_id", "marketo_id", "status", "occurred_at", "activity_id")
ENTITY = "program_membership"
PERSON_ENTITIES = ("contact", "lead")  # a person linked both ways is listed as its contact
LIST_TYPE = {"lead": 4, "contact": 2}  # createdfromcode
CUSTOMER_PARTY = 11
NOT_SYNCED = "PERSON_NOT_SYNCED"
_NS = uuid.UUID("6f1c1a52-45b8-4a55-9d43-7a0c1f5e2b10")

ListKey = tuple[int, str, str]  # program id, campaign id, person entity


def response_id(program_id: int, marketo_id: str | int, status: str) -> str:
    """The ``activityid`` of the campaign response for a person reaching a status (stable)."""
    return str(uuid.uuid5(_NS, f"response:{int(program_id)}:{marketo_id}:{status.strip().lower()}"))


def list_id_for(program_id: int, campaign_id: str, person_entity: str) -> str:
    """The ``listid`` the sync gives the list of a program, campaign and person table (stable, so
    a retried create finds the list it made)."""
    return str(uuid.uuid5(_NS, f"list:{int(program_id)}:{campaign_id}:{person_entity}"))


def list_name(program_id: int, person_entity: str) -> str:
    """The list's name, as Marketo's native "Add to Microsoft Campaign" names its lists."""
    return f"Mkto-{person_entity}s-{int(program_id)}"


def activity_type_id(types: Iterable[Mapping[str, Any]], name: str = STATUS_ACTIVITY) -> int:
    """The id of the activity type called ``name`` in Marketo's types list.

    Raises:
        ValueError: No type has that name.
    """
    for entry in types:
        if str(entry.get("name", "")).strip().lower() == name.lower():
            return int(entry["id"])
    raise ValueError(f"Marketo has no activity type named {name!r}")


def _attribute(activity: Mapping[str, Any], name: str) -> Any:
    for attr in activity.get("attributes") or []:
        if str(attr.get("name")) == name:
            return attr.get("value")
    return None


def changes_from_activities(activities: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Status changes from "Change Status in Progression" activities (oldest first).

    Raises:
        ValueError: An activity lacks a field; names the activity id and the field.
    """
    rows = []
    for act in activities:
        values = {
            "program_id": act.get("primaryAttributeValueId"),
            "marketo_id": act.get("leadId"),
            "status": _attribute(act, "New Status"),
            "occurred_at": act.get("activityDate"),
        }
        for name, value in values.items():
            if value is None or str(value).strip() == "":
                source = {"program_id": "primaryAttributeValueId", "marketo_id": "leadId"}.get(name, name)
                label = "attributes['New Status']" if name == "status" else source
                raise ValueError(f"activity {act.get('id')}: field {label} is missing")
        rows.append({**values, "activity_id": str(act.get("id"))})
    return _typed(pd.DataFrame(rows, columns=list(CHANGE_COLUMNS)))


def changes_from_export(members: pd.DataFrame) -> pd.DataFrame:
    """Current memberships from a bulk program-member export (``programId``, ``leadId``,
    ``statusName``, ``membershipDate``) as changes to their status.

    Raises:
        ValueError: A column is missing, or a row lacks a value (names the row and column).
    """
    need = ("programId", "leadId", "statusName")
    missing = [c for c in need if c not in members]
    if missing:
        raise ValueError(f"program member export lacks columns {missing}")
    for col in need:
        blank = members[col].isna() | (members[col].astype(str).str.strip().isin(["", "null"]))
        if blank.any():
            raise ValueError(f"program member export row {int(blank.idxmax())}: field {col} is empty")
    frame = pd.DataFrame(
        {
            "program_id": members["programId"],
            "marketo_id": members["leadId"],
            "status": members["statusName"],
            "occurred_at": members.get("membershipDate"),
            "activity_id": "",
        }
    )
    return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["program_id"] = pd.to_numeric(frame["program_id"]).astype("int64")
    frame["marketo_id"] = pd.to_numeric(frame["marketo_id"]).astype("int64").astype(str)
    frame["status"] = frame["status"].astype(str)
    frame["occurred_at"] = frame["occurred_at"].astype(object).where(frame["occurred_at"].notna(), None)
    frame["occurred_at"] = frame["occurred_at"].map(lambda v: None if v in (None, "null") else str(v))
    frame["activity_id"] = frame["activity_id"].astype(str)
    return frame.reset_index(drop=True)


def latest_changes(changes: pd.DataFrame) -> pd.DataFrame:
    """The last change per program and person (the feed is in activity order)."""
    if changes.empty:
        return changes
    return changes.drop_duplicates(["program_id", "marketo_id"], keep="last").reset_index(drop=True)


def persons_by_marketo_id(links: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Active id-map links as Marketo id → (person entity, Dataverse id); contacts win."""
    active = links[(links["state"] == "active") & links["marketo_id"].notna()]
    out: dict[str, tuple[str, str]] = {}
    for rec in active.sort_values("entity", ascending=False).to_dict("records"):  # lead, then contact
        out[str(rec["marketo_id"])] = (str(rec["entity"]), str(rec["dynamics_id"]))
    return out


@dataclass
class DynamicsPlan:
    """What one run writes into Dataverse, and the state it agrees on afterwards."""

    adds: dict[ListKey, list[str]] = field(default_factory=dict)
    removes: dict[ListKey, list[str]] = field(default_factory=dict)
    responses: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    done_pending: list[tuple[int, str]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def writes(self) -> int:
        return sum(map(len, self.adds.values())) + sum(map(len, self.removes.values())) + len(self.responses)


def response_record(
    link: ProgramLink, marketo_id: str, person: tuple[str, str], status: str, code: int, when: str | None
) -> dict[str, Any]:
    """A ``campaignresponses`` row: regarding the campaign, the person as its customer party."""
    entity, dynamics_id = person
    record: dict[str, Any] = {
        "activityid": response_id(link.program_id, marketo_id, status),
        "subject": f"Marketo program {link.program_id}: {status}",
        "responsecode": int(code),
        "regardingobjectid_campaign_campaignresponse@odata.bind": f"/campaigns({link.campaign_id})",
        "campaignresponse_activity_parties": [
            {
                f"partyid_{entity}@odata.bind": f"/{entity}s({dynamics_id})",
                "participationtypemask": CUSTOMER_PARTY,
            }
        ],
    }
    if when:
        stamp = pd.Timestamp(when)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        record["receivedon"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return record


def plan_to_dynamics(
    changes: pd.DataFrame,
    links: Mapping[int, ProgramLink],
    persons: Mapping[str, tuple[str, str]],
    agreed: Mapping[tuple[int, str], Mapping[str, Any]],
) -> DynamicsPlan:
    """Plan the Dataverse writes of the latest change per program and person.

    Args:
        changes: :data:`CHANGE_COLUMNS` rows, oldest first (new changes after retried pending ones).
        links: Program ↔ campaign pairs in force; changes of other programs are ignored.
        persons: Marketo id → (person entity, Dataverse id), from the id map.
        agreed: Agreed memberships by (program id, Marketo id).
    """
    plan = DynamicsPlan()
    for rec in latest_changes(changes).to_dict("records"):
        pid, mid, status = int(rec["program_id"]), str(rec["marketo_id"]), str(rec["status"])
        link = links.get(pid)
        if link is None:
            continue
        plan.done_pending.append((pid, mid))
        old = agreed.get((pid, mid))
        if status == NOT_IN_PROGRAM:
            if old is None or old["status"] is None:
                plan.unchanged += 1
                continue
            key = (pid, str(old["campaign_id"]), str(old["person_entity"]))
            if old.get("in_list"):
                plan.removes.setdefault(key, []).append(str(old["dynamics_id"]))
            plan.memberships.append({**old, "status": None, "in_list": False})
            continue
        person = persons.get(mid)
        if person is None:
            plan.done_pending.remove((pid, mid))
            plan.pending.append(
                {
                    "direction": "m2d",
                    "program_id": pid,
                    "person_id": mid,
                    "campaign_id": link.campaign_id,
                    "status": status,
                    "occurred_at": rec.get("occurred_at"),
                }
            )
            continue
        entity, dynamics_id = person
        same_person = (
            old is not None and old["dynamics_id"] == dynamics_id and old["campaign_id"] == link.campaign_id
        )
        listed = same_person and bool(old and old.get("in_list"))
        same_status = same_person and old is not None and str(old["status"] or "").lower() == status.lower()
        if listed and same_status:
            plan.unchanged += 1
            continue
        key = (pid, link.campaign_id, entity)
        if not listed:
            plan.adds.setdefault(key, []).append(dynamics_id)
        code = link.statuses.response_code(status)
        if not same_status and code is not None:
            plan.responses.append(response_record(link, mid, person, status, code, rec.get("occurred_at")))
        plan.memberships.append(
            {
                "program_id": pid,
                "marketo_id": mid,
                "campaign_id": link.campaign_id,
                "person_entity": entity,
                "dynamics_id": dynamics_id,
                "status": status,
                "list_id": None,
                "listmember_id": old.get("listmember_id") if listed and old else None,
                "in_list": True,
            }
        )
    return plan


def pending_errors(rows: Iterable[Mapping[str, Any]], direction: str) -> pd.DataFrame:
    """Record errors of changes waiting for their person, naming program, campaign and person."""
    out = []
    for r in rows:
        side = "Marketo person" if direction == "m2d" else "Dynamics record"
        out.append(
            {
                "entity": ENTITY,
                "direction": direction,
                "record_id": f"{r['program_id']}:{r['person_id']}",
                "field": "leadId" if direction == "m2d" else "customer",
                "code": NOT_SYNCED,
                "reason": f"program {r['program_id']} / campaign {r['campaign_id']}: {side} "
                f"{r['person_id']} is not synced yet (status {r['status']!r} waits, retried every run)",
            }
        )
    return pd.DataFrame(out, columns=["entity", "direction", "record_id", "field", "code", "reason"])


def marketo_write_calls(groups: int, records: int) -> int:
    """Marketo calls of ``records`` status or removal writes in ``groups`` (program, status) groups."""
    return groups + max(0, math.ceil(records / 300) - 1) if groups else 0
