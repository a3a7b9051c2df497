"""Persons gone from Marketo: deleted there, or merged away into another person (§2.8, §6.3).

Nothing is ever deleted in Dynamics because of it. Each run of a person entity reads Marketo's
deleted-leads feed from its watermark; for deletions found, the "Merge Leads" activities of the
same stretch tell which persons were merged away and into whom. Every active link of the entity
whose person is among them is reported at once: a parked record error ``deleted_in_marketo``
naming the Marketo person (and the survivor, for a merge), listed by the status page and the
record-error CLI. A deleted person's link keeps its id, so a later Dynamics edit is refused by
``updateOnly`` and reported again (the same row), never re-creating a half person. A merged-away
person's link is handed over to the survivor (as a Dynamics merge's is): the record writes no
more, and the survivor keeps its own link.

Re-creation happens only with ``recreate_deleted: true`` in the entity YAML, and only for a
deleted person: the link forgets it and the error is due now, so the next run re-reads the
Dataverse record and creates the person whole. A merged-away person is never re-created (that
would re-make the duplicate the marketer removed); its Dynamics record waits for a CRM admin.

That a merge's losers show in the deleted-leads feed is the emulator's reading of an unconfirmed
fact; a merge Marketo would not list there is still reported by the next Dynamics edit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.config import Direction
from crm_sync.state import lookup_links, park_errors, record_errors, retry_now, upsert_links
from crm_sync.state.models import ACTIVE, MERGED

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.orm import Session

    from crm_sync.config import EntityConfig
    from crm_sync.engine.clients import MarketoClient
    from crm_sync.engine.context import RunContext

log = logging.getLogger(__name__)

DELETED_IN_MARKETO = "deleted_in_marketo"
MERGE_LEADS = 32  # Marketo activity type "Merge Leads" (on the survivor; names the merged ids)
GONE_COLUMNS = ["marketo_id", "survivor_id"]


def _merged_ids(activity: dict[str, Any]) -> list[str]:
    """The ids a "Merge Leads" activity merged away (its ``Merge IDs`` attribute)."""
    for attribute in activity.get("attributes") or []:
        if attribute.get("name") == "Merge IDs":
            value = attribute.get("value")
            parts = value if isinstance(value, list) else str(value or "").split(",")
            return [str(p).strip() for p in parts if str(p).strip()]
    return []


def read_gone_persons(client: MarketoClient, start_token: str) -> pd.DataFrame:
    """Persons deleted in Marketo since ``start_token``, with the survivor of each merge.

    One call when nothing was deleted (the deleted-leads feed); the merge activities are read
    only when it found something.
    """
    deleted = [
        str(a["leadId"])
        for page in client.get_deleted_leads(start_token)
        for a in page.records
        if a.get("leadId") is not None
    ]
    survivors: dict[str, str] = {}
    if deleted:
        for page in client.get_activities(start_token, [MERGE_LEADS]):
            for activity in page.records:
                survivors.update(dict.fromkeys(_merged_ids(activity), str(activity.get("leadId"))))
    ids = list(dict.fromkeys([*deleted, *survivors]))
    return pd.DataFrame(
        {"marketo_id": ids, "survivor_id": [survivors.get(i) for i in ids]}, columns=GONE_COLUMNS
    )


def stage_gone_persons(
    entity: EntityConfig, ctx: RunContext, client: MarketoClient, start_token: str
) -> dict[str, Any] | None:
    """Read the persons gone from Marketo since ``start_token`` and stage them for the transform."""
    frame = read_gone_persons(client, start_token)
    if frame.empty:
        return None
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "extract"
    return ctx.staging.write_frame(folder, "gone-persons", frame.astype(object)).to_dict()


def gone_reason(entity: EntityConfig, marketo_id: str | None, survivor_id: str | None = None) -> str:
    """Why a linked record's person is reported (and what, if anything, will re-create it)."""
    person = f"Marketo person {marketo_id}" if marketo_id else "the linked Marketo person"
    if survivor_id:
        return (
            f"{person} was merged into Marketo person {survivor_id} in Marketo; this Dynamics record "
            "is left as it is for a CRM admin (merge or deactivate it there); not re-created"
        )
    if entity.recreate_deleted:
        return f"{person} is gone from Marketo; the next retry re-creates it from the whole record"
    return (
        f"{person} is gone from Marketo (deleted or merged away there); not re-created "
        f"(recreate_deleted: true in {entity.name}.yaml re-creates such persons)"
    )


def settle_gone(
    session: Session, entity: EntityConfig, guids: list[str], *, merged: Iterable[str] = ()
) -> None:
    """After the errors are recorded: park them, or (``recreate_deleted``, deleted persons only)
    forget the person and make the error due now, so the next run sends the whole record."""
    log.warning("%s: %d linked persons are gone from Marketo: %s", entity.name, len(guids), guids[:10])
    merged = set(merged)
    again = [g for g in guids if g not in merged] if entity.recreate_deleted else []
    if again:
        forgotten = [{"dynamics_id": g, "marketo_id": None, "field_hashes": None} for g in again]
        upsert_links(session, entity.name, forgotten)
        retry_now(session, entity.name, Direction.D2M.value, again)
    parked = [g for g in guids if g not in set(again)]
    if parked:
        park_errors(session, entity.name, Direction.D2M.value, parked)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def report_gone_persons(session: Session, entity: EntityConfig, gone: pd.DataFrame, run_id: str) -> int:
    """Report this entity's active links to persons in ``gone``; returns how many.

    A merged-away person's link is handed over to the survivor (state ``merged``, the survivor's
    id): the Dynamics record writes no more and both ids resolve to the survivor; the survivor's
    own link, if any, is untouched. A deleted person's link keeps its id (see the module doc).
    """
    if gone.empty:
        return 0
    links = lookup_links(session, entity.name, marketo_ids=gone["marketo_id"].astype(str).tolist())
    mine = links[links["state"].fillna(ACTIVE).eq(ACTIVE) & links["marketo_id"].notna()]
    if mine.empty:
        return 0
    survivors = gone.set_index(gone["marketo_id"].astype(str))["survivor_id"]
    guids = mine["dynamics_id"].astype(str).tolist()
    persons = [str(m) for m in mine["marketo_id"]]
    survivor_of = {g: _text(survivors.get(m)) for g, m in zip(guids, persons, strict=True)}
    errors = pd.DataFrame(
        {
            "entity": entity.name,
            "direction": Direction.D2M.value,
            "record_id": guids,
            "field": "",
            "code": DELETED_IN_MARKETO,
            "reason": [
                gone_reason(entity, str(m), survivor_of[g])
                for g, m in zip(guids, mine["marketo_id"], strict=True)
            ],
        }
    )
    record_errors(session, errors, run_id=run_id)
    merged = {g: s for g, s in survivor_of.items() if s}
    if merged:
        handed = [{"dynamics_id": g, "marketo_id": s, "state": MERGED} for g, s in merged.items()]
        upsert_links(session, entity.name, handed)
    settle_gone(session, entity, guids, merged=merged)
    return len(mine)
