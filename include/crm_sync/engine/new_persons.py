"""Plan of Marketo-only persons flagged for sync: link each to its one email match in Dataverse,
or create a lead for it (a GUID derived from the Marketo id, so a retried create is the same
row); several matches are reported, never guessed."""

from __future__ import annotations

import logging
import uuid

import pandas as pd

from crm_sync.config import Direction, EntityConfig
from crm_sync.engine.plan import BatchPlan, link_frame
from crm_sync.engine.plan_frames import LINK_FRAME_COLUMNS, empty_links, empty_ops, ops_frame
from crm_sync.ops import (
    DYNAMICS_CREATE,
    MARKETO_LINK,
)
from crm_sync.transforms import (
    DYNAMICS_ID,
    MARKETO_ID,
    dynamics_payload,
    marketo_to_canonical,
    resolve_changes,
)
from crm_sync.transforms.dedup import (
    CREATE,
    DUPLICATES,
    LINK,
    NO_EMAIL,
    classify_email_matches,
)
from crm_sync.transforms.errors import concat_errors, error_rows
from crm_sync.transforms.frames import empty_frame

log = logging.getLogger(__name__)

DUPLICATE_CANDIDATES = "DUPLICATE_CANDIDATES"
ALREADY_LINKED = "ALREADY_LINKED"
# Namespace of the GUIDs given to leads created from Marketo persons: the same person always
# gets the same GUID, so a retried create is an upsert of the same row (never a duplicate).
PERSON_NAMESPACE = uuid.UUID("0d6f4f0e-9a51-4bd6-8b7e-2f0c1f3a6b52")


def new_person_guid(marketo_id: str) -> str:
    """The GUID a lead created from Marketo person ``marketo_id`` gets (stable across retries)."""
    return str(uuid.uuid5(PERSON_NAMESPACE, f"marketo-person:{marketo_id}"))


def _match_frame(matches: pd.DataFrame | None) -> pd.DataFrame:
    cols = ["email", "dynamics_id", "table", "person_type"]
    if matches is None or matches.empty:
        return empty_frame(cols)
    return matches[cols]


def plan_new_persons(
    entity: EntityConfig,
    flagged: pd.DataFrame,
    matches: pd.DataFrame | None,
    taken: set[str] | frozenset[str] = frozenset(),
) -> BatchPlan:
    """Plan Marketo-only persons flagged for sync: link to one email match, or create a lead.

    Args:
        entity: The person entity that creates records (lead).
        flagged: Flagged, unlinked Marketo persons (``flagged_unlinked``).
        matches: Dataverse leads/contacts with the same emails (``email``, ``dynamics_id``,
            ``table``, ``person_type``), or None when dedup is off.
        taken: GUIDs of matches that already have a Marketo person: the flagged person is then
            a duplicate in Marketo, reported as ``ALREADY_LINKED`` rather than re-pointed.

    Returns:
        Ops that create the Dataverse lead (a GUID derived from the Marketo id) and write the
        key and type back to the person; links for the linked or created records; several
        matches are a ``DUPLICATE_CANDIDATES`` record error, never a guess.
    """
    counts = {"received": len(flagged), "valid": 0, "filtered": 0, "unchanged": 0, "failed": 0}
    if flagged.empty:
        return BatchPlan(counts=counts)
    mapped = marketo_to_canonical(flagged, entity)
    valid = mapped.frame
    email_field = entity.marketo.email_field or ""
    emails = valid[email_field] if email_field in valid else pd.Series(pd.NA, index=valid.index)
    persons = pd.DataFrame({"marketo_id": valid[MARKETO_ID], "email": emails}, index=valid.index)
    found = _match_frame(matches)
    decisions = classify_email_matches(persons, found, enabled=entity.dedup_by_email)
    dup = decisions["action"].eq(DUPLICATES)
    duplicates = error_rows(
        decisions["marketo_id"],
        dup,
        entity=entity.name,
        direction=Direction.M2D.value,
        field=email_field,
        code=DUPLICATE_CANDIDATES,
        reason="several Dynamics records share this email: " + decisions["candidates"].fillna(""),
    )
    single = decisions["action"].eq(LINK)
    busy = single & decisions["dynamics_id"].isin(taken).fillna(False).astype(bool)
    already = error_rows(
        decisions["marketo_id"],
        busy,
        entity=entity.name,
        direction=Direction.M2D.value,
        field=email_field,
        code=ALREADY_LINKED,
        reason="the Dynamics record with this email is already linked to another Marketo person: "
        + decisions["dynamics_id"].fillna(""),
    )
    errors = concat_errors([mapped.errors, duplicates, already])
    counts["failed"] = int(errors["record_id"].nunique()) if len(errors) else 0
    type_of = dict(zip(found["dynamics_id"], found["person_type"], strict=True))
    table_of = dict(zip(found["dynamics_id"], found["table"], strict=True))
    key, type_field = entity.marketo.key, entity.marketo.type_field
    ops, links = [empty_ops()], [empty_links()]

    linking = decisions[(single & ~busy).to_numpy()]
    if len(linking):
        payloads = [
            {"id": int(m), key: d, **({type_field: type_of.get(d)} if type_field else {})}
            for m, d in zip(linking["marketo_id"], linking["dynamics_id"], strict=True)
        ]
        ops.append(ops_frame(MARKETO_LINK, linking["dynamics_id"].tolist(), payloads))
        rows = pd.DataFrame(
            {
                DYNAMICS_ID: linking["dynamics_id"].to_numpy(),
                MARKETO_ID: linking["marketo_id"].to_numpy(),
                "person_type": linking["dynamics_id"].map(type_of).to_numpy(),
                "email": persons.loc[linking.index, "email"].str.lower().to_numpy(),
                "link_entity": linking["dynamics_id"].map(table_of).to_numpy(),
            }
        )
        links.append(rows.reindex(columns=LINK_FRAME_COLUMNS))

    creating = decisions[decisions["action"].isin([CREATE, NO_EMAIL])]
    if len(creating):
        canon = valid.loc[creating.index].copy()
        canon[DYNAMICS_ID] = canon[MARKETO_ID].map(new_person_guid)
        resolution = resolve_changes(entity, None, canon, None)
        written = resolution.dynamics_ids
        ops.append(
            ops_frame(DYNAMICS_CREATE, [str(i) for i in written], dynamics_payload(entity, resolution))
        )
        by_guid = canon.set_index(DYNAMICS_ID)[MARKETO_ID]
        payloads = [
            {
                "id": int(by_guid[g]),
                key: g,
                **({type_field: entity.marketo.person_type} if type_field else {}),
            }
            for g in written
        ]
        ops.append(ops_frame(MARKETO_LINK, [str(g) for g in written], payloads))
        links.append(link_frame(entity, resolution, written, [canon], None))
    counts["valid"] = len(linking) + len(creating)
    all_links = (
        pd.concat([f for f in links if len(f)], ignore_index=True)
        if any(len(f) for f in links)
        else empty_links()
    )
    return BatchPlan(ops=pd.concat(ops, ignore_index=True), links=all_links, errors=errors, counts=counts)
