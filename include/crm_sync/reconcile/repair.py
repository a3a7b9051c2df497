"""Repair: hand the differing records back to the incremental sync, which writes them.

Nothing is written to Marketo or Dataverse here, except for duplicates (below). Each finding
becomes a record error due now, the same way a failed record is retried, so the next
``sync_<entity>`` run re-reads it by id (``_retry_rows`` for Dataverse GUIDs,
``_retry_persons`` for Marketo ids) and the normal three-way merge decides what to write:

* ``divergent``: both sides are re-queued; the stored hashes tell which side changed. For a
  field that flows one way only, its stored hash is dropped, so the source side's value is
  written again even when only the target side was changed.
* ``missing_in_marketo``: the Dataverse record is re-queued; a link whose Marketo record is
  gone loses its stored hashes (and a person link its Marketo id), so every field is written
  (the upsert by key creates it); a person the sync had flagged deleted for it gets the flag
  cleared.
* ``orphan``: the Dataverse GUID is re-queued; the extract finds it gone and stages it as a
  delete, so the entity's delete policy applies (persons flagged deleted, never deleted).
* ``missing_in_dynamics``: the flagged Marketo person is re-queued (created or linked by email).
* ``duplicate_in_marketo``: the extra person is unlinked at once (key and type cleared: it
  becomes a Marketo-only person again, nothing deleted); a retry could not choose for it.
* ``duplicate_in_dynamics``: left to a person (which record owns the Marketo person is a
  business decision); counted as not repaired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from crm_sync.config import Direction, EntityConfig, MarketoObject
from crm_sync.reconcile.compare import (
    DIVERGENT,
    DUPLICATE_IN_DYNAMICS,
    DUPLICATE_IN_MARKETO,
    MISSING_IN_DYNAMICS,
    MISSING_IN_MARKETO,
    ORPHAN,
)
from crm_sync.state import RetryPolicy, lookup_links, record_errors, resolve_errors, upsert_links
from crm_sync.state.errors import REQUEUE_CODE

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sqlalchemy.orm import Session

    from crm_sync_hooks.results import WriteResult

log = logging.getLogger(__name__)

# Due at once: the next incremental run retries it (later attempts back off as usual).
IMMEDIATE = RetryPolicy(base=timedelta(0))


class PersonWriter(Protocol):
    """What the duplicate repair calls on Marketo (``MarketoHook`` satisfies it)."""

    def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        action: str = ...,
        lookup_field: str = ...,
        partition_name: str | None = None,
    ) -> list[WriteResult]:
        """Update leads, one result per record."""
        ...


@dataclass
class RepairOutcome:
    """What a repair did.

    Attributes:
        requeued: Per entity and direction, records re-queued for the next run.
        unlinked: Marketo ids of duplicate persons unlinked.
        revived: Marketo ids of persons flagged deleted whose record Dataverse still has.
        skipped: Findings left alone, with the reason.
    """

    requeued: dict[str, dict[str, int]] = field(default_factory=dict)
    unlinked: list[str] = field(default_factory=list)
    revived: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _errors(entity: str, direction: Direction, ids: Sequence[str], reason: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity": entity,
            "direction": direction.value,
            "record_id": pd.Series(list(ids), dtype="str"),
            "field": "",
            "code": REQUEUE_CODE,
            "reason": reason,
        }
    )


def _one_way_fields(entity: EntityConfig) -> set[str]:
    fields = {f.name for f in entity.fields if entity.field_direction(f) is not Direction.BOTH}
    return fields | {lk.marketo for lk in entity.lookups}


def _forget_hashes(session: Session, entity: EntityConfig, drop: Mapping[str, set[str] | None]) -> None:
    """Drop stored field hashes (all of a record's with None) so the next merge writes them.

    A person to be written in full also loses its Marketo id: a linked person's changes are sent
    by ``updateOnly`` (never creating one), so only an unlinked record is created by its key.
    """
    links = lookup_links(session, entity.name, dynamics_ids=list(drop))
    whole: list[dict[str, Any]] = []
    some: list[dict[str, Any]] = []
    person = entity.marketo.object is MarketoObject.LEAD
    for did, stored in zip(links["dynamics_id"], links["field_hashes"], strict=True):
        fields = drop[str(did)]
        if fields is None:
            forget: dict[str, Any] = {"marketo_id": None} if person else {}
            whole.append({"dynamics_id": did, "field_hashes": None, **forget})
        elif not isinstance(stored, dict):
            some.append({"dynamics_id": did, "field_hashes": None})
        else:
            kept = {k: v for k, v in stored.items() if k not in fields}
            some.append({"dynamics_id": did, "field_hashes": kept})
    for rows in (whole, some):  # separate writes: a row without marketo_id must not clear it
        upsert_links(session, entity.name, rows)


def repair(
    session: Session,
    entities: Mapping[str, EntityConfig],
    differences: pd.DataFrame,
    *,
    run_id: str,
    marketo: PersonWriter | None = None,
) -> RepairOutcome:
    """Re-queue the records behind ``differences`` into the next incremental runs.

    Args:
        session: Open state-store session (the caller commits).
        entities: Entity configurations by name.
        differences: Findings of one reconciliation.
        run_id: The reconciliation's run id (recorded on the re-queued errors).
        marketo: Marketo client for unlinking duplicate persons (None: duplicates are skipped).

    Returns:
        What was re-queued, unlinked and skipped.
    """
    outcome = RepairOutcome()
    for name, found in differences.groupby("entity", sort=True):
        entity = entities[str(name)]
        d2m: set[str] = set()
        m2d: set[str] = set()
        drop: dict[str, set[str] | None] = {}
        one_way = _one_way_fields(entity)
        revive: list[dict[str, Any]] = []
        plain = found.astype(object).where(found.notna(), None)
        for row in plain.to_dict("records"):
            kind, did, mid = row["kind"], row["dynamics_id"], row["marketo_id"]
            if kind == DIVERGENT:
                d2m.add(did)
                if mid and entity.direction.includes(Direction.M2D):
                    m2d.add(str(mid))
                current = drop.get(did, set())
                if row["field"] in one_way and current is not None:
                    current.add(str(row["field"]))
                    drop[did] = current
            elif kind == MISSING_IN_MARKETO:
                d2m.add(did)
                drop[did] = None
                if mid and entity.marketo.deleted_field:
                    # The person was flagged deleted, yet Dataverse has the record: revive it.
                    revive.append({"id": int(mid), entity.marketo.deleted_field: False})
            elif kind == ORPHAN:
                d2m.add(did)
            elif kind == MISSING_IN_DYNAMICS:
                m2d.add(str(mid))
            elif kind == DUPLICATE_IN_MARKETO:
                if marketo is None or not entity.marketo.type_field:
                    outcome.skipped.append({**row, "reason": "no Marketo client to unlink the duplicate"})
                    continue
                cleared = {entity.marketo.key: None, entity.marketo.type_field: None}
                results = marketo.sync_leads([{"id": int(mid), **cleared}], "updateOnly", "id")
                if all(r.ok for r in results):
                    outcome.unlinked.append(str(mid))
                else:
                    outcome.skipped.append({**row, "reason": "unlinking failed"})
            elif kind == DUPLICATE_IN_DYNAMICS:
                outcome.skipped.append({**row, "reason": "several Dataverse records claim one person"})
        if revive:
            if marketo is None:
                outcome.skipped += [
                    {
                        "kind": MISSING_IN_MARKETO,
                        "marketo_id": str(r["id"]),
                        "reason": "no Marketo client to clear the deleted flag",
                    }
                    for r in revive
                ]
            else:
                results = marketo.sync_leads(revive, "updateOnly", "id")
                outcome.revived += [str(r["id"]) for r, res in zip(revive, results, strict=True) if res.ok]
        if drop:
            _forget_hashes(session, entity, drop)
        if d2m and entity.direction.includes(Direction.D2M):
            record_errors(
                session,
                _errors(entity.name, Direction.D2M, sorted(d2m), "re-queued by reconciliation"),
                run_id=run_id,
                policy=IMMEDIATE,
            )
        if m2d:
            record_errors(
                session,
                _errors(entity.name, Direction.M2D, sorted(m2d), "re-queued by reconciliation"),
                run_id=run_id,
                policy=IMMEDIATE,
            )
        outcome.requeued[entity.name] = {Direction.D2M.value: len(d2m), Direction.M2D.value: len(m2d)}
        log.info("%s: re-queued %d Dynamics and %d Marketo records", entity.name, len(d2m), len(m2d))
    if outcome.unlinked:
        log.warning("unlinked %d duplicate Marketo persons: %s", len(outcome.unlinked), outcome.unlinked)
    return outcome


def settle_requeued(session: Session, entity: str, differing: pd.DataFrame) -> None:
    """Resolve the re-queue errors of ``entity`` whose records no longer differ."""
    from sqlalchemy import select

    from crm_sync.state.models import RecordError

    open_rows = session.execute(
        select(RecordError.direction, RecordError.source_id).where(
            RecordError.entity == entity, RecordError.code == REQUEUE_CODE, RecordError.resolved_at.is_(None)
        )
    ).all()
    still = set(differing["dynamics_id"].dropna().astype(str)) | set(
        differing["marketo_id"].dropna().astype(str)
    )
    for direction in (Direction.D2M.value, Direction.M2D.value):
        done = [s for d, s in open_rows if d == direction and s not in still]
        if done:
            resolve_errors(session, entity, direction, done)
