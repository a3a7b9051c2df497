"""Transform: turn the staged changes of one run into staged write plans (one per load batch).

Per Dataverse batch, the Marketo changes of the same records are merged in (so a field changed
on both sides is seen as a conflict); Marketo changes of records not in any Dataverse batch
follow in their own batches; Dataverse deletes last. Invalid records go to the record-error
table with field and reason, conflicts to the conflict log, and the rest of the batch goes on.
Records whose values equal what was last synced (echoes) produce no operation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.config import Direction, DuplicateEmail
from crm_sync.engine.contracts import ExtractManifest, LoadBatch
from crm_sync.engine.gone_persons import report_gone_persons
from crm_sync.engine.new_persons import plan_new_persons
from crm_sync.engine.plan import BatchPlan, plan_changes, plan_deletes
from crm_sync.state import (
    links_by_email,
    log_conflicts,
    log_consents,
    lookup_links,
    record_errors,
    resolve_errors,
    session_scope,
    set_link_state,
)
from crm_sync.state.idmap import upsert_links
from crm_sync.transforms import ID_MAP_COLUMNS, flagged_unlinked, persons_for_entity
from crm_sync.transforms.casts import as_string, lower_ids
from crm_sync.transforms.frames import empty_frame

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from sqlalchemy.orm import Session

    from crm_sync.config import EntityConfig
    from crm_sync.engine.context import RunContext

log = logging.getLogger(__name__)

TRANSFORM_MANIFEST = "transform"
# Records per work unit of Marketo changes not in a Dataverse batch: their writes go to Dataverse,
# so a unit is one $batch at its 1,000-operation maximum (issue 18: 34 $batch calls for 10,000
# Marketo changes at 300 per unit, 10 now); any Marketo writes of the unit go in calls of 300.
# Dataverse batches keep the entity's batch_size (300: one Marketo call).
DATAVERSE_UNIT = 1000
COUNT_KEYS = ("received", "valid", "filtered", "unchanged", "failed", "conflicts", "operations")


def _lookup_id_map(
    session: Session, entity: EntityConfig, rows: pd.DataFrame | None, links: pd.DataFrame
) -> pd.DataFrame:
    """Id-map frame for one batch: the entity's own links plus the lookup targets it references."""
    parts = [links[ID_MAP_COLUMNS]] if len(links) else []
    if rows is not None and len(rows) and entity.roles is not None and entity.roles.lookup in rows:
        ids = lower_ids(rows[entity.roles.lookup]).dropna().unique().tolist()
        if ids:
            parts.append(lookup_links(session, entity.roles.person_entity, dynamics_ids=ids)[ID_MAP_COLUMNS])
    if rows is not None and len(rows):
        for lk in entity.lookups:
            if lk.dynamics not in rows:
                continue
            ids = lower_ids(rows[lk.dynamics]).dropna().unique().tolist()
            if ids:
                found = lookup_links(session, sorted(set(lk.targets.values())), dynamics_ids=ids)
                parts.append(found[ID_MAP_COLUMNS])
    if not parts:
        return empty_frame(ID_MAP_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def _infer_lookup_types(entity: EntityConfig, rows: pd.DataFrame, id_map: pd.DataFrame) -> pd.DataFrame:
    """Fill a polymorphic lookup's target-table column from the id map when the read lacks it.

    Change tracking returns ``_ownerid_value`` without its ``lookuplogicalname`` annotation
    (the hook does not ask for annotations). Dataverse GUIDs are unique across tables, so the
    target entity whose id map holds the GUID names the table; a GUID no id map knows stays
    unresolved, as an unsynced target would.
    """
    for lk in entity.lookups:
        if not lk.type_column or lk.type_column in rows or lk.dynamics not in rows:
            continue
        table_of = {name: table for table, name in lk.targets.items()}
        known = id_map[id_map["entity"].isin(table_of)]
        tables = pd.Series(
            known["entity"].map(table_of).to_numpy(), index=known["dynamics_id"].str.lower().to_numpy()
        )
        tables = tables[~tables.index.duplicated()]
        rows = rows.assign(**{lk.type_column: lower_ids(rows[lk.dynamics]).map(tables).astype("str")})
    rule = entity.roles
    if rule is not None and rule.lookup in rows:
        # The role rule needs to know which customers are contacts: the person id map tells.
        people = id_map.loc[id_map["entity"].eq(rule.person_entity), "dynamics_id"].str.lower()
        is_person = lower_ids(rows[rule.lookup]).isin(set(people))
        current = rows[rule.type_column] if rule.type_column in rows else pd.Series(pd.NA, index=rows.index)
        filled = as_string(current).mask(as_string(current).isna() & is_person, rule.when_type)
        rows = rows.assign(**{rule.type_column: filled})
    return rows


def _marketo_rows(entity: EntityConfig, ctx: RunContext, manifest: ExtractManifest) -> pd.DataFrame | None:
    """This entity's share of the staged person feed: the newest snapshot of each person.

    Each row keeps when it was read (``_read_at``) so the plan can skip snapshots older than
    the sync's own last write; ``_key`` is the lower-case Dataverse GUID.
    """
    frames = []
    for chunk in manifest.marketo.chunks if manifest.marketo else ():
        for ref in chunk.batches:
            frame = persons_for_entity(ctx.staging.read_frame(ref), entity)
            frames.append(frame.assign(_read_at=chunk.read_at))
    if not frames:
        return None
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.drop_duplicates(subset=entity.marketo.id_field, keep="last")
    rows["_key"] = lower_ids(rows[entity.marketo.key])
    return rows


def _work_units(
    entity: EntityConfig, ctx: RunContext, manifest: ExtractManifest
) -> Iterator[tuple[pd.DataFrame | None, pd.DataFrame | None]]:
    """Yield (Dataverse rows, Marketo rows) pairs: each Dataverse batch with the same records'
    Marketo changes, then the merged records with their survivors (one unit, left out of the
    other batches), then the remaining Marketo changes in units of :data:`DATAVERSE_UNIT`."""
    marketo = _marketo_rows(entity, ctx, manifest)
    used: set[str] = set()
    key = entity.dynamics.key
    refs = list(manifest.dynamics.batches) if manifest.dynamics else []
    merged: set[str] = set()
    if manifest.dynamics is not None and manifest.dynamics.merges is not None:
        merged = set(lower_ids(ctx.staging.read_frame(manifest.dynamics.merges)[key]).dropna())
        refs.append(manifest.dynamics.merges)
    for ref in refs:
        rows = ctx.staging.read_frame(ref)
        if merged and manifest.dynamics is not None and ref != manifest.dynamics.merges:
            rows = rows[~lower_ids(rows[key]).isin(merged).to_numpy()]
        ids = set(lower_ids(rows[key]).dropna())
        part = None
        if marketo is not None:
            part = marketo[marketo["_key"].isin(ids)].drop(columns="_key")
            used |= ids
        yield rows, part
    if marketo is not None:
        rest = marketo[~marketo["_key"].isin(used)].drop(columns="_key")
        for start in range(0, len(rest), DATAVERSE_UNIT):
            yield None, rest.iloc[start : start + DATAVERSE_UNIT]


def _all_persons(ctx: RunContext, manifest: ExtractManifest) -> pd.DataFrame | None:
    """Every person of the staged feed (newest snapshot per Marketo id), linked or not."""
    frames = [
        ctx.staging.read_frame(ref)
        for chunk in (manifest.marketo.chunks if manifest.marketo else ())
        for ref in chunk.batches
    ]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).drop_duplicates(subset="id", keep="last")


def _new_person_plans(
    entity: EntityConfig, ctx: RunContext, manifest: ExtractManifest
) -> Iterator[BatchPlan]:
    """Plans for Marketo-only persons flagged for creation in Dataverse (entities with a flag field)."""
    if not entity.marketo.sync_flag_field or not entity.writes_dynamics:
        return
    persons = _all_persons(ctx, manifest)
    if persons is None:
        return
    flagged = flagged_unlinked(persons, entity)
    if flagged.empty:
        return
    ref = manifest.email_matches
    matches = ctx.staging.read_frame(ref) if ref else None
    with session_scope(ctx.state) as session:
        # A person already linked (its key write-back still pending) is not created twice.
        known = lookup_links(session, entity.name, marketo_ids=lower_ids(flagged["id"]).dropna().tolist())
        # Its earlier M→D error (a create or link that failed before) is over.
        resolve_errors(session, entity.name, Direction.M2D.value, known["marketo_id"].dropna().astype(str))
    flagged = flagged[~lower_ids(flagged["id"]).isin(set(known["marketo_id"].dropna()))]
    taken: set[str] = set()
    if matches is not None and len(matches):
        with session_scope(ctx.state) as session:
            linked = lookup_links(
                session, sorted(set(matches["table"])), dynamics_ids=matches["dynamics_id"].tolist()
            )
        taken = set(linked.loc[linked["marketo_id"].notna(), "dynamics_id"].astype(str))
    for start in range(0, len(flagged), DATAVERSE_UNIT):
        plan = plan_new_persons(entity, flagged.iloc[start : start + DATAVERSE_UNIT], matches, taken)
        with session_scope(ctx.state) as session:
            _record(session, entity, plan, ctx.run_id)
        yield plan


def _record(session: Session, entity: EntityConfig, plan: BatchPlan, run_id: str) -> None:
    """Store what the plan found out before any write: errors, conflicts, consents, filter switches."""
    if len(plan.errors):
        record_errors(session, plan.errors, run_id=run_id)
    if len(plan.conflicts):
        log_conflicts(session, plan.conflicts, run_id=run_id)
    if len(plan.consents):
        log_consents(session, plan.consents, run_id=run_id)
    if plan.settled_m2d:
        resolve_errors(session, entity.name, Direction.M2D.value, plan.settled_m2d)
    for (owner, state), ids in plan.handovers.groupby(["entity", "state"])["dynamics_id"]:
        # Handed over before the writes: the old record stops writing to the person at once,
        # and a failed write finds the hand-over again on its retry (transforms.lifecycle).
        set_link_state(session, str(owner), ids.tolist(), str(state))
    if plan.stale_ids:
        # Filter switched to No: stop updating the link, delete nothing (sync-semantics §4.3).
        # (upsert_links would reset a row it writes to "active", so the state goes in the row.)
        stale = [{"dynamics_id": i, "filter_value": False, "state": "stale"} for i in plan.stale_ids]
        upsert_links(session, entity.name, stale)


def _email_holders(session: Session, entity: EntityConfig, rows: pd.DataFrame | None) -> pd.DataFrame | None:
    """Synced persons holding the emails of this batch (the entity's ``duplicate_email`` rule)."""
    if rows is None or rows.empty or entity.duplicate_email is DuplicateEmail.ALLOW:
        return None
    column = entity.email_column()
    if column is None or column not in rows:
        return None
    return links_by_email(session, as_string(rows[column]).dropna())


def _origin_links(session: Session, entity: EntityConfig, rows: pd.DataFrame | None) -> pd.DataFrame | None:
    """Links of the records the batch's rows were converted from (a contact's qualified lead)."""
    rule = entity.converted_from
    if rule is None or rows is None or rows.empty or rule.column not in rows:
        return None
    ids = lower_ids(rows[rule.column]).dropna().unique().tolist()
    return lookup_links(session, rule.entity, dynamics_ids=ids) if ids else None


def _stage_plan(ctx: RunContext, entity: EntityConfig, plan: BatchPlan, name: str) -> LoadBatch:
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "plans" / name
    ops = ctx.staging.write_frame(folder, "ops", plan.ops)
    links = ctx.staging.write_frame(folder, "links", plan.links.astype(object))
    return LoadBatch(name, ops, links)


def transform_changes(
    entity: EntityConfig, ctx: RunContext, manifest: ExtractManifest | Mapping[str, Any]
) -> dict[str, Any]:
    """Plan and stage the writes of one run.

    Args:
        entity: The entity.
        ctx: Run id, staging area and state store.
        manifest: The extract manifest.

    Returns:
        The transform manifest: ``batches`` (load batch references, empty plans left out) and
        ``counts`` (:data:`COUNT_KEYS`).
    """
    counts = dict.fromkeys(COUNT_KEYS, 0)
    batches: list[dict[str, Any]] = []
    extract = ExtractManifest.from_xcom(manifest)
    for index, plan in enumerate(_plans(entity, ctx, extract)):
        for key, value in plan.counts.items():
            counts[key] += value
        counts["conflicts"] += len(plan.conflicts)
        counts["operations"] += len(plan.ops)
        if len(plan.ops):
            batches.append(_stage_plan(ctx, entity, plan, f"batch-{index:05d}").to_xcom())
    result = {"entity": entity.name, "run_id": ctx.run_id, "batches": batches, "counts": counts}
    ctx.staging.write_json(ctx.staging.run_dir(entity.name, ctx.run_id), TRANSFORM_MANIFEST, result)
    log.info("%s transform: %s, %d load batches", entity.name, counts, len(batches))
    return result


def _plans(entity: EntityConfig, ctx: RunContext, manifest: ExtractManifest) -> Iterator[BatchPlan]:
    """Plan every work unit, storing errors and conflicts as each is planned."""
    if manifest.marketo is not None and manifest.marketo.gone is not None:
        # Before the plans: a person merged away in Marketo hands its record's link over, and
        # that record then writes no more (engine.gone_persons).
        gone = ctx.staging.read_frame(manifest.marketo.gone)
        with session_scope(ctx.state) as session:
            report_gone_persons(session, entity, gone, ctx.run_id)
    for d_rows, m_rows in _work_units(entity, ctx, manifest):
        ids: list[str] = []
        if d_rows is not None:
            ids += lower_ids(d_rows[entity.dynamics.key]).dropna().tolist()
        if m_rows is not None and len(m_rows):
            ids += lower_ids(m_rows[entity.marketo.key]).dropna().tolist()
        with session_scope(ctx.state) as session:
            links = lookup_links(session, entity.name, dynamics_ids=ids)
            id_map = _lookup_id_map(session, entity, d_rows, links)
            if d_rows is not None:
                d_rows = _infer_lookup_types(entity, d_rows, id_map)
            holders = _email_holders(session, entity, d_rows)
            origins = _origin_links(session, entity, d_rows)
            plan = plan_changes(entity, d_rows, m_rows, links, id_map, holders, origins)
            _record(session, entity, plan, ctx.run_id)
        yield plan
    yield from _new_person_plans(entity, ctx, manifest)
    if not entity.direction.includes(Direction.D2M):
        return
    for ref in manifest.dynamics.deleted if manifest.dynamics else ():
        deleted = ctx.staging.read_frame(ref)["id"]
        with session_scope(ctx.state) as session:
            links = lookup_links(session, entity.name, dynamics_ids=lower_ids(deleted).dropna().tolist())
        yield plan_deletes(entity, deleted, links)
