"""Extract: read the changes since the stored watermarks and stage them as Parquet batches.

Nothing is committed here: the new watermarks go into the run's extract manifest and are
stored by :func:`crm_sync.engine.commit.commit` once every batch is loaded.

* Dataverse: change tracking from the stored delta link. The first run (no watermark) reads the
  whole table with change tracking on, which stages the initial page set and hands back the
  first delta link. An expired delta link falls back to that full read.
* Marketo: the person change feed from the stored paging token. The feed is read once per
  cycle and shared by the person entities (lead, contact): its chunk is staged under the start
  token, and an entity whose watermark is the same token reuses the staged chunk instead of
  calling Marketo again. Chunks form a chain (each ends where the next starts) and an entity
  joining the feed starts at the chain's newest token, so lead and contact walk the same chunks.
  The current values of the changed persons are fetched by id; the chunk records when, so the
  transform can ignore a snapshot older than the sync's own last write of a record.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crm_sync.config import Direction, EntityConfig, MarketoObject
from crm_sync.engine.columns import (
    add_derived,
    dynamics_columns,
    extracted_keys,
    person_fields,
    split_derived,
    stage_rows,
)
from crm_sync.engine.contracts import ExtractManifest
from crm_sync.engine.gone_persons import stage_gone_persons
from crm_sync.engine.latency import combine, summarize
from crm_sync.engine.peek import parse_time
from crm_sync.engine.person_feed import (
    advance_feed_head,
    feed_start,
    read_person_feed,
    stage_candidates,
)
from crm_sync.engine.retries import requeued_gone, retry_persons, retry_rows
from crm_sync.engine.staging import Batcher
from crm_sync.state import (
    check_identity,
    get_watermark,
    session_scope,
    utcnow,
)
from crm_sync.transforms.casts import lower_ids
from crm_sync.transforms.lifecycle import merged_mask

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from airflow.sdk import ObjectStoragePath

    from crm_sync.engine.clients import DynamicsClient, MarketoClient
    from crm_sync.engine.context import RunContext
from crm_sync.engine.staging import StagingArea

log = logging.getLogger(__name__)

DYNAMICS_PAGE_SIZE = 5000  # rows per change-tracking page: the most Dataverse sends (fewest calls)
EXTRACT_MANIFEST = "extract"


def extract_dynamics(
    entity: EntityConfig,
    client: DynamicsClient,
    staging: StagingArea,
    folder: ObjectStoragePath,
    delta_link: str | None,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """Stage the Dataverse changes of ``entity`` since ``delta_link``.

    An expired delta link (past Dataverse's retention) triggers a targeted re-baseline when
    ``ctx`` is given (:func:`crm_sync.engine.reread.reread_expired`): the table is read again
    for a new delta link, but only the rows whose mapped values differ from what was last
    synced are staged, and linked records missing from the read are staged as deletes, so the
    gap loses no delete and re-sends nothing unchanged; an alert says what happened. Without
    ``ctx`` the whole table is staged again (upserts by key keep that safe).

    Returns:
        ``batches`` (changed rows), ``deleted`` (batches of deleted ids), ``rows``,
        ``deleted_rows``, ``token`` (the next delta link) and, after a re-baseline,
        ``rebaseline`` (its counts).

    Raises:
        RuntimeError: The read ended without a delta link.
    """
    from crm_sync_hooks.dynamics import DeltaTokenExpired

    columns = dynamics_columns(entity)
    try:
        part = _read_changes(entity, client, staging, folder, columns, delta_link)
        if delta_link is None and ctx is not None:
            # A first read sees the whole table: the visible-row baseline of later checks.
            from crm_sync.guards.visibility import guard_full_read, tolerance_setting
            from crm_sync.state import session_scope

            with session_scope(ctx.state) as session:
                guard_full_read(session, entity.name, int(part["rows"]), tolerance=tolerance_setting())
        return part
    except DeltaTokenExpired:
        if ctx is None:
            log.warning("%s: delta link expired, reading the whole table again", entity.name)
            return _read_changes(entity, client, staging, folder, columns, None)
        from crm_sync.engine.reread import reread_expired

        full = _read_changes(entity, client, staging, folder, columns, None)
        return reread_expired(entity, ctx, full, folder)


def _read_changes(
    entity: EntityConfig,
    client: DynamicsClient,
    staging: StagingArea,
    folder: ObjectStoragePath,
    columns: list[str],
    delta_link: str | None,
) -> dict[str, Any]:
    rows = Batcher(staging, folder, "dynamics", entity.batch_size, columns)
    deleted = Batcher(staging, folder, "deleted", entity.batch_size, ["id"])
    token: str | None = None
    select, derived = split_derived(columns)
    modified = entity.dynamics.modified_column
    times: list[datetime | None] = []
    for page in client.track_changes(entity.dynamics.entity_set, select, delta_link, DYNAMICS_PAGE_SIZE):
        if delta_link is not None:  # a first read's rows are history, not changes waiting
            times += [parse_time(r.get(modified)) for r in page.records]
        rows.add(add_derived(entity, client, page.records, derived))
        deleted.add({"id": i} for i in page.deleted_ids)
        token = page.delta_link or token
    if not token:
        raise RuntimeError(f"{entity.name}: change tracking ended without a delta link")
    batches, deletes = rows.close(), deleted.close()
    return {
        "batches": [b.to_dict() for b in batches],
        "deleted": [b.to_dict() for b in deletes],
        "rows": rows.total,
        "deleted_rows": deleted.total,
        "token": token,
        "initial": delta_link is None,
        "change_times": summarize(times),
    }


def _unmerged_rows(
    entity: EntityConfig,
    ctx: RunContext,
    dynamics: DynamicsClient | None,
    chunks: Sequence[dict[str, Any]],
    extracted: set[str],
) -> dict[str, Any] | None:
    """Stage the Dataverse rows of linked persons that were never merged (linked by email).

    Such a link has no agreed values yet, so both sides must be in the same batch for the
    conflict rule to decide; without the Dataverse row, Marketo's values would simply win.
    """
    from crm_sync.state import lookup_links
    from crm_sync.transforms import persons_for_entity

    keys: set[str] = set()
    for chunk in chunks:
        for ref in chunk["batches"]:
            mine = persons_for_entity(ctx.staging.read_frame(ref), entity)
            keys |= {str(k).strip().lower() for k in mine[entity.marketo.key].dropna()}
    keys -= extracted
    if not keys or dynamics is None:
        return None
    with session_scope(ctx.state) as session:
        links = lookup_links(session, entity.name, dynamics_ids=sorted(keys))
    fresh = sorted(links.loc[links["field_hashes"].isna(), "dynamics_id"].astype(str)) if len(links) else []
    if not fresh:
        return None
    return stage_rows(entity, ctx, dynamics, fresh, "unmerged")


def _merge_rows(
    entity: EntityConfig, ctx: RunContext, dynamics: DynamicsClient, part: dict[str, Any]
) -> dict[str, Any] | None:
    """Stage the records merged into another in Dynamics together with their survivors (§6.3).

    What becomes of a merged record's Marketo person depends on its survivor (linked or not,
    synced or not), and a moved person takes the survivor's whole record: both are read again
    by id into one batch.
    """
    rule = entity.merges
    if rule is None:
        return None
    ids: set[str] = set()
    for ref in part["batches"]:
        frame = ctx.staging.read_frame(ref)
        if rule.flag not in frame or rule.master not in frame:
            continue
        merged = frame[merged_mask(entity, frame).to_numpy()]
        ids |= set(lower_ids(merged[entity.dynamics.key]).dropna())
        ids |= set(lower_ids(merged[rule.master]).dropna())
    return stage_rows(entity, ctx, dynamics, sorted(ids), "merges") if ids else None


def extract_changes(
    entity: EntityConfig,
    ctx: RunContext,
    *,
    dynamics: DynamicsClient | None = None,
    marketo: MarketoClient | None = None,
    feed_fields: Sequence[str] = (),
    dedup_tables: Sequence[EntityConfig] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """Stage the changes of ``entity`` in each direction it syncs and write the extract manifest.

    Args:
        entity: The entity.
        ctx: Run id, staging area and state store.
        dynamics: Dataverse client (needed for D→M).
        marketo: Marketo client (needed for M→D).
        feed_fields: Person fields of the shared feed (:func:`person_fields` over all entities).
        dedup_tables: Person entities searched by email before a flagged Marketo-only person
            is created in Dataverse (lead and contact).
        now: Current time (tests).

    Returns:
        The manifest: ``entity``, ``run_id``, ``started_at``, ``dynamics`` and ``marketo``
        parts (batches, counts) and ``pending`` (direction → token to store at commit).
    """
    started = now or utcnow()
    folder = ctx.staging.run_dir(entity.name, ctx.run_id)
    manifest: dict[str, Any] = {
        "entity": entity.name,
        "run_id": ctx.run_id,
        "started_at": started.isoformat(),
        "pending": {},
        "dynamics": None,
        "marketo": None,
    }
    change_times: list[dict[str, Any] | None] = []
    with session_scope(ctx.state) as session:
        d_token = get_watermark(session, entity.name, Direction.D2M.value)
        m_token = get_watermark(session, entity.name, Direction.M2D.value)
    if dynamics is not None:
        # Raises IdentityMismatchError for another org (a refreshed sandbox, a re-pointed
        # connection); the task decides what follows (crm_sync.tasks.sync.run_extract).
        with session_scope(ctx.state) as session:
            check_identity(session, "dynamics", dynamics.organization_id())
    if entity.direction.includes(Direction.D2M):
        if dynamics is None:
            raise ValueError(f"{entity.name}: a Dynamics client is needed to extract D→M changes")
        part = extract_dynamics(entity, dynamics, ctx.staging, folder / "extract", d_token, ctx)
        change_times.append(part.pop("change_times", None))
        manifest["dynamics"] = part
        manifest["pending"][Direction.D2M.value] = part["token"]
        extracted = extracted_keys(entity, ctx, part)
        retry = retry_rows(entity, ctx, dynamics, extracted, started)
        if retry is not None:
            part["batches"].append(retry)
            part["retried"] = retry["rows"]
        part["merges"] = _merge_rows(entity, ctx, dynamics, part)
        gone = requeued_gone(entity, ctx, retry, extracted, started)
        if gone is not None:
            part["deleted"].append(gone)
            part["deleted_rows"] += gone["rows"]
    if entity.direction.includes(Direction.M2D) and entity.marketo.object is MarketoObject.LEAD:
        if marketo is None:
            raise ValueError(f"{entity.name}: a Marketo client is needed to extract M→D changes")
        if m_token is None:
            m_token = feed_start(ctx, marketo, started)
        fields = feed_fields or person_fields([entity])
        chunk = read_person_feed(marketo, ctx.staging, m_token, fields)
        change_times += [c.get("change_times") for c in chunk["chunks"]]
        chunk["gone"] = stage_gone_persons(entity, ctx, marketo, m_token)
        retried = retry_persons(entity, ctx, marketo, fields, started)
        if retried is not None:
            chunk["chunks"].append(retried)
            chunk["rows"] += retried["rows"]
            chunk["retried"] = retried["rows"]
        manifest["marketo"] = chunk
        manifest["pending"][Direction.M2D.value] = chunk["token"]
        manifest["email_matches"] = stage_candidates(entity, ctx, dynamics, chunk["chunks"], dedup_tables)
        extracted = extracted_keys(entity, ctx, manifest["dynamics"])
        unmerged = _unmerged_rows(entity, ctx, dynamics, chunk["chunks"], extracted)
        if unmerged is not None and manifest["dynamics"] is not None:
            manifest["dynamics"]["batches"].append(unmerged)
        if chunk["fresh"]:
            with session_scope(ctx.state) as session:
                advance_feed_head(session, chunk["token"])
    manifest["change_times"] = combine(*change_times)
    # Staged and returned in the contract's one form (a shape error surfaces here, not later).
    manifest = ExtractManifest.from_xcom(manifest).to_xcom()
    ctx.staging.write_json(folder, EXTRACT_MANIFEST, manifest)
    log.info(
        "%s extract: %d Dynamics rows, %d deleted, %d Marketo persons",
        entity.name,
        (manifest["dynamics"] or {}).get("rows", 0),
        (manifest["dynamics"] or {}).get("deleted_rows", 0),
        (manifest["marketo"] or {}).get("rows", 0),
    )
    return manifest
