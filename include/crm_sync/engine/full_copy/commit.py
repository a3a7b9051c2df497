"""Commit of a full copy: Marketo ids of bulk-imported persons, the ledger, the hand-over
watermark, and the attempt marked finished.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from crm_sync.engine.extract import EXTRACT_MANIFEST
from crm_sync.engine.full_copy.scope import (
    STATE,
    Partition,
    close_partition,
    mapping_fingerprint,
    partition_dir,
)
from crm_sync.engine.transform import TRANSFORM_MANIFEST
from crm_sync.state import get_watermark, read_scope, session_scope, utcnow

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sqlalchemy import Table

    from crm_sync.config import EntityConfig
    from crm_sync.engine.context import RunContext
    from crm_sync.engine.staging import StagingArea

log = logging.getLogger(__name__)

LINK_UPDATE_CHUNK = 10_000  # id-map rows updated per statement when storing read-back Marketo ids


# --- commit --------------------------------------------------------------------------------------


def link_marketo_ids(
    entity: EntityConfig, ctx: RunContext, marketo: Any, since: datetime, person_entities: Sequence[str] = ()
) -> int:
    """Store the Marketo ids of the persons this copy wrote by bulk import.

    A bulk import does not answer with ids, but opportunity roles and custom objects link to
    persons by Marketo id. One bulk export of ``id`` and the key field, filtered on ``updatedAt``
    since the first import, brings them all (a few calls, not one per 300 persons), for every
    person entity at once: the other person entity's commit then finds nothing missing.

    Returns:
        The number of id-map rows that got their Marketo id.
    """
    from sqlalchemy import bindparam, func, select, update

    from crm_sync.state.models import IdMap

    names = sorted({entity.name, *person_entities})
    with session_scope(ctx.state) as session:
        missing = session.execute(
            select(func.count()).where(IdMap.entity == entity.name, IdMap.marketo_id.is_(None))
        ).scalar_one()
        missing_all = session.execute(
            select(func.count()).where(IdMap.entity.in_(names), IdMap.marketo_id.is_(None))
        ).scalar_one()
    if not missing:
        log.info("%s: every copied person already has its Marketo id", entity.name)
        return 0
    key = entity.marketo.key
    until = utcnow() + timedelta(minutes=1)
    pages = marketo.bulk_extract_leads(
        ["id", key], since, until, date_filter="updatedAt", poll_seconds=2.0, first_poll_seconds=3.0
    )
    table = cast("Table", IdMap.__table__)
    # Matched on the unique (entity, dynamics_id) index; persons the copy did not write (or
    # that have their id already) match nothing. Page by page, in chunks: nothing of the
    # export is held beyond one chunk of parameters.
    statement = (
        update(table)
        .where(table.c.entity == bindparam("e"), table.c.dynamics_id == bindparam("d"))
        .where(table.c.marketo_id.is_(None))
        .values(marketo_id=bindparam("m"))
    )
    # A short transaction per page: the export's own calls are counted in the state store
    # between pages, and must not wait on a write this function holds open.
    for rows in pages:
        updates = [
            {"e": name, "d": str(row[key]).strip().lower(), "m": str(row["id"])}
            for row in rows
            if row.get(key) and row.get("id")
            for name in names  # a GUID is a lead's or a contact's: one of these matches
        ]
        for start in range(0, len(updates), LINK_UPDATE_CHUNK):
            with session_scope(ctx.state) as session:
                session.execute(statement, updates[start : start + LINK_UPDATE_CHUNK])
    with read_scope(ctx.state) as session:
        still = session.execute(
            select(func.count()).where(IdMap.entity.in_(names), IdMap.marketo_id.is_(None))
        ).scalar_one()
    stored = missing_all - still
    log.info("Marketo ids of %d bulk-imported persons (%s) stored in the id map", stored, ", ".join(names))
    return stored


def _bulk_since(
    staging: StagingArea, entities: Sequence[EntityConfig], scope_key: str, transform: Mapping[str, Any]
) -> datetime | None:
    """When the earliest person attempt of this scope opened (None: this attempt had no bulk unit).

    Every import of the person entities' current attempts happened after their attempts opened,
    killed and resumed runs included.
    """
    if not any(unit.get("mode") == "bulk" for unit in transform.get("batches", [])):
        return None
    opened = []
    for entity in entities:
        folder = partition_dir(staging, entity.name, scope_key, mapping_fingerprint(entity))
        state = staging.read_json(folder, STATE)
        if state and state.get("opened_at"):
            opened.append(datetime.fromisoformat(state["opened_at"]))
    return min(opened) - timedelta(minutes=1) if opened else None


def commit_partition(
    entity: EntityConfig,
    ctx: RunContext,
    staging: StagingArea,
    partition: Partition,
    marketo: Any = None,
    person_entities: Sequence[EntityConfig] = (),
) -> dict[str, Any]:
    """Marketo ids of bulk-imported persons, ledger row, hand-over watermark (only where none
    exists yet), attempt marked finished."""
    from crm_sync.engine.commit import commit

    folder = ctx.staging.run_dir(entity.name, ctx.run_id)
    extract = ctx.staging.read_json(folder, EXTRACT_MANIFEST)
    transform = ctx.staging.read_json(folder, TRANSFORM_MANIFEST)
    if extract is None or transform is None:
        raise FileNotFoundError(f"{entity.name}: attempt {ctx.run_id} has no staged extract or plan")
    persons = list(person_entities) or [entity]
    since = _bulk_since(staging, persons, partition.scope_key, transform)
    if since is not None:
        if marketo is None:
            raise ValueError(f"{entity.name}: a Marketo client is needed to read back bulk-imported ids")
        link_marketo_ids(entity, ctx, marketo, since, [p.name for p in persons])
    pending = dict(extract.get("pending") or {})
    with session_scope(ctx.state) as session:
        for direction in list(pending):
            if get_watermark(session, entity.name, direction) is not None:
                # The incremental DAG ran meanwhile: its own (later) watermark stays.
                del pending[direction]
    counts = commit(entity, ctx, {**extract, "pending": pending}, transform)
    close_partition(staging, partition)
    summary = {**counts.to_xcom(), "handover": bool(pending), "units": len(transform.get("batches", []))}
    log.info("%s full copy finished: %s", entity.name, summary)
    return summary


def elapsed_since(started_at: str) -> float:
    """Seconds since an ISO timestamp (for the end-of-copy summary)."""
    return (datetime.now(UTC) - datetime.fromisoformat(started_at)).total_seconds()
