"""Records whose earlier failure is due for another attempt: Dataverse rows re-read by key
(D→M), Marketo persons re-read by id (M→D), and re-queued records Dataverse no longer has."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.config import Direction, EntityConfig
from crm_sync.engine.columns import extracted_keys, stage_rows
from crm_sync.engine.person_feed import MARKETO_READ_BATCH
from crm_sync.engine.staging import Batcher
from crm_sync.state import (
    session_scope,
    utcnow,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy.orm import Session

    from crm_sync.engine.clients import DynamicsClient, MarketoClient
    from crm_sync.engine.context import RunContext

log = logging.getLogger(__name__)

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def retry_rows(
    entity: EntityConfig, ctx: RunContext, dynamics: DynamicsClient, extracted: set[str], now: datetime
) -> dict[str, Any] | None:
    """Stage the records whose earlier D→M failure is due for another attempt (backoff expired).

    Records already in this run's changes are not read twice; a record that fails again counts
    one more attempt and is parked after the retry policy's maximum.
    """
    from crm_sync.state import due_errors

    with session_scope(ctx.state) as session:
        due = due_errors(session, entity=entity.name, direction=Direction.D2M.value, now=now)
        guids = sorted({str(i).lower() for i in due["source_id"] if GUID.match(str(i))} - extracted)
        retried = due[due["source_id"].astype(str).str.lower().isin(guids)]
        _count_attempt(session, retried, ctx.run_id, now)
    if not guids:
        return None
    log.info("%s: retrying %d records whose earlier failure is due", entity.name, len(guids))
    return stage_rows(entity, ctx, dynamics, guids, "retry")


def requeued_gone(
    entity: EntityConfig, ctx: RunContext, retry: dict[str, Any] | None, extracted: set[str], now: datetime
) -> dict[str, Any] | None:
    """Stage as deletes the GUIDs a reconciliation re-queued that Dataverse no longer has.

    Such a record is an orphan: its delete was never seen (a lost delta, an expired token), so
    the entity's delete policy is applied now, exactly as for a delete from change tracking.
    """
    from crm_sync.state import open_errors
    from crm_sync.state.errors import REQUEUE_CODE

    with session_scope(ctx.state) as session:
        # Retried in this run: retry_rows counted this run's attempt on them at ``now``.
        errors = open_errors(session, entity=entity.name, since=now)
    mine = errors[errors["direction"].eq(Direction.D2M.value) & errors["code"].eq(REQUEUE_CODE)]
    wanted = {str(i).lower() for i in mine["source_id"]} - extracted
    if not wanted:
        return None
    found = extracted_keys(entity, ctx, {"batches": [retry] if retry else []})
    gone = sorted(wanted - found)
    if not gone:
        return None
    log.info(
        "%s: %d re-queued records no longer exist in Dataverse; staged as deletes", entity.name, len(gone)
    )
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "extract"
    return ctx.staging.write_frame(folder, "requeued-deleted", pd.DataFrame({"id": gone})).to_dict()


def _count_attempt(session: Session, due: pd.DataFrame, run_id: str, now: datetime) -> None:
    """Count this run's attempt for the due errors being retried, before the retry is planned.

    A retried record that neither fails again nor gets written (for example a person no longer
    flagged, or values that now need no write) would otherwise stay due and be re-read on every
    run; counted here, it backs off and is parked after the policy's maximum like any failure.
    A failure of the same record later in this run is not counted twice (same run id).
    """
    from crm_sync.state import record_errors

    if len(due):
        record_errors(session, due, run_id=run_id, now=now)


def _retry_person_ids(entity: EntityConfig, session: Session, due: pd.DataFrame) -> dict[str, str]:
    """Marketo ids of the persons behind due M→D errors, by the error's source id.

    Errors found in Marketo records are keyed by the Marketo id; older write errors may be keyed
    by the Dataverse GUID, whose person the id map names (an unlinked GUID has no person to read).
    """
    from crm_sync.state import lookup_links

    ids = {str(s): str(s) for s in due["source_id"] if str(s).isdigit()}
    guids = sorted({str(s).lower() for s in due["source_id"] if GUID.match(str(s).lower())})
    if guids:
        links = lookup_links(session, entity.name, dynamics_ids=guids)
        for did, mid in zip(links["dynamics_id"], links["marketo_id"], strict=True):
            if mid is not None and str(mid).isdigit():
                ids[str(did)] = str(mid)
    return ids


def retry_persons(
    entity: EntityConfig,
    ctx: RunContext,
    marketo: MarketoClient,
    fields: Sequence[str],
    now: datetime,
) -> dict[str, Any] | None:
    """Re-read the Marketo persons whose earlier M→D failure is due and stage them as a chunk.

    The persons are read by Marketo id (they need not have changed since the failure, so the
    change feed would not bring them back). The chunk joins this run's feed chunks, last, so its
    snapshot wins over an older one of the same person; it is not part of the shared feed chain.
    Persons Marketo no longer has are parked: there is nothing left to retry.

    Returns:
        A chunk (``batches``, ``rows``, ``read_at``, ``retry``: True) or None when nothing is due.
    """
    from crm_sync.state import due_errors, park_errors

    with session_scope(ctx.state) as session:
        due = due_errors(session, entity=entity.name, direction=Direction.M2D.value, now=now)
        by_source = _retry_person_ids(entity, session, due)
        _count_attempt(session, due[due["source_id"].astype(str).isin(by_source)], ctx.run_id, now)
    if not by_source:
        return None
    wanted = sorted(set(by_source.values()), key=int)
    log.info("%s: re-reading %d Marketo persons whose earlier failure is due", entity.name, len(wanted))
    read_at = utcnow().isoformat()
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "extract"
    batcher = Batcher(ctx.staging, folder, "retry-persons", MARKETO_READ_BATCH, ["id", *fields])
    found: set[str] = set()
    for records in marketo.get_leads("id", wanted, ["id", *fields], MARKETO_READ_BATCH):
        found |= {str(r.get("id")) for r in records}
        batcher.add(records)
    gone = [source for source, mid in by_source.items() if mid not in found]
    if gone:
        with session_scope(ctx.state) as session:
            park_errors(session, entity.name, Direction.M2D.value, gone)
        log.warning(
            "%s: %d persons with due errors no longer exist in Marketo; parked", entity.name, len(gone)
        )
    batches = batcher.close()
    if not batches:
        return None
    return {
        "batches": [b.to_dict() for b in batches],
        "rows": batcher.total,
        "read_at": read_at,
        "retry": True,
    }
