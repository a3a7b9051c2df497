"""Plan the writes of one batch: pure functions from extracted rows and id-map rows to operations.

Nothing here talks to an API or a database; :mod:`crm_sync.engine.transform` feeds it what the
extract staged plus the id-map rows, and stages the plan for the load. A plan holds:

* ``ops``: one row per write (``op``, ``dynamics_id``, ``payload`` as JSON text). The payload is
  exactly what the hook's batch writer receives, so a retried load re-sends the same records.
* ``links``: the id-map rows to store for each record once all its writes succeeded (the
  agreed per-field hashes that suppress echoes on the next run).
* ``errors``: invalid records (the transforms' errors frame), ``conflicts``: the conflict log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.config import DeletePolicy, Direction, DuplicateEmail, EntityConfig
from crm_sync.engine.lifecycle_ops import handed_over, merge_ops, repoint_ops, taken_over
from crm_sync.engine.plan_frames import (
    HANDOVER_COLUMNS,
    LINK_COLUMNS,
    LINK_FRAME_COLUMNS,
    READ_AT,
    empty_links,
    empty_ops,
    ops_frame,
)
from crm_sync.ops import (
    DYNAMICS_UPSERT,
    MARKETO_DELETE,
    MARKETO_FLAG_DELETED,
    MARKETO_ROLE_UPSERT,
    MARKETO_UPSERT,
)
from crm_sync.state.models import CONVERTED
from crm_sync.transforms import (
    CONFLICT_COLUMNS,
    CONSENT_COLUMNS,
    DYNAMICS_ID,
    MARKETO_ID,
    apply_sync_filter,
    deletion_records,
    dynamics_payload,
    dynamics_to_canonical,
    filter_transitions,
    last_hashes,
    link_rows,
    marketo_payload,
    marketo_to_canonical,
    opportunity_roles,
    persons_for_entity,
    resolve_changes,
)
from crm_sync.transforms.casts import as_string
from crm_sync.transforms.dedup import (
    DUPLICATE_EMAIL,
    claim_emails,
)
from crm_sync.transforms.errors import concat_errors, empty_errors, error_rows
from crm_sync.transforms.frames import empty_frame
from crm_sync.transforms.lifecycle import (
    MERGE_COLUMNS,
    conversions,
    merged_mask,
    merges,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from crm_sync.transforms import Resolution

log = logging.getLogger(__name__)


@dataclass
class BatchPlan:
    """What one batch needs written, and why.

    Attributes:
        ops: Columns :data:`OP_COLUMNS`.
        links: Columns :data:`LINK_FRAME_COLUMNS` (``field_hashes`` as JSON text).
        errors: The transforms' errors frame (invalid records).
        conflicts: The conflict log rows.
        consents: The consent log rows (opt-outs and re-subscribes seen on consent fields).
        stale_ids: Linked records whose sync filter switched to No (stop updating them).
        settled_m2d: Marketo ids of valid Marketo records that need no write into Dataverse
            (their values are there already, or Dataverse wins): an earlier M→D error of
            theirs is over.
        handovers: Links to hand over before the writes (``entity``, ``dynamics_id``,
            ``state``): a qualified lead's (``converted``), a merged record's (``merged``).
        counts: ``received``, ``valid``, ``filtered``, ``unchanged``, ``failed``.
    """

    ops: pd.DataFrame = field(default_factory=empty_ops)
    links: pd.DataFrame = field(default_factory=empty_links)
    errors: pd.DataFrame = field(default_factory=empty_errors)
    conflicts: pd.DataFrame = field(default_factory=lambda: empty_frame(CONFLICT_COLUMNS))
    consents: pd.DataFrame = field(default_factory=lambda: empty_frame(CONSENT_COLUMNS))
    stale_ids: list[str] = field(default_factory=list)
    settled_m2d: list[str] = field(default_factory=list)
    filter_values: pd.DataFrame = field(default_factory=pd.DataFrame)
    handovers: pd.DataFrame = field(default_factory=lambda: empty_frame(HANDOVER_COLUMNS))
    counts: dict[str, int] = field(default_factory=dict)


def _active_links(links: pd.DataFrame) -> pd.DataFrame:
    """Links that may be synced: not stale (filter No) and not deleted."""
    if links.empty:
        return links
    return links[links["state"].fillna("active").eq("active")]


def _hold_duplicate_emails(
    entity: EntityConfig,
    canon: pd.DataFrame,
    links: pd.DataFrame,
    holders: pd.DataFrame,
    handed: set[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave out the unlinked records whose email another synced person holds (one per email).

    Records taking over a person (``handed``: a qualified contact, a merge's survivor) count as
    linked: the person whose email they share is the one they continue.

    Returns:
        The rows that may be written, and a ``DUPLICATE_EMAIL`` error row for each one held back.
    """
    email = entity.marketo.email_field or ""
    active = _active_links(links)
    linked = (
        set(active.loc[active[MARKETO_ID].notna(), DYNAMICS_ID].astype(str).str.lower())
        if len(active)
        else set()
    )
    created = next((f.marketo for f in entity.fields if f.dynamics == "createdon"), None)
    keep, held = claim_emails(canon, entity.name, email, linked | handed, holders, created)
    if held.empty:
        return canon, empty_errors()
    holder = held.set_index("dynamics_id")["holder"]
    ids = pd.Series(held["dynamics_id"].to_numpy())
    errors = error_rows(
        ids,
        pd.Series(True, index=ids.index),
        entity=entity.name,
        direction=Direction.D2M.value,
        field=entity.email_column() or email,
        code=DUPLICATE_EMAIL,
        reason="another synced record has this email and holds its Marketo person: "
        + ids.map(holder).astype(str)
        + f" (duplicate_email: oldest_holds in {entity.name}.yaml)",
    )
    return canon[keep.to_numpy()], errors


def _marketo_side(
    entity: EntityConfig, rows: pd.DataFrame | None, links: pd.DataFrame
) -> pd.DataFrame | None:
    """Marketo records of ``entity`` that belong to an active link (others are not ours to write back)."""
    if rows is None or rows.empty or not entity.direction.includes(Direction.M2D):
        return None
    mine = persons_for_entity(rows, entity) if entity.marketo.person_type else rows
    keys = as_string(mine.get(entity.marketo.key, pd.Series(pd.NA, index=mine.index))).str.strip().str.lower()
    active = _active_links(links)
    linked = pd.Series(pd.NaT, index=active[DYNAMICS_ID].astype(str).to_numpy(), dtype="datetime64[us, UTC]")
    if len(active):
        linked[:] = pd.to_datetime(active["updated_at"], utc=True).to_numpy()
    keep = keys.isin(linked.index)
    if READ_AT in mine and len(active):
        # A snapshot read before the sync's own last write of a record would undo that write.
        read_at = pd.to_datetime(mine[READ_AT], utc=True, format="ISO8601")
        synced = keys.map(linked[~linked.index.duplicated()])
        keep &= ~(synced > read_at).fillna(False).astype(bool)
    return mine.loc[keep.to_numpy()].drop(columns=[READ_AT, "_key"], errors="ignore")


def link_frame(
    entity: EntityConfig,
    resolution: Resolution,
    ids: pd.Index,
    canonical: list[pd.DataFrame],
    filter_values: pd.Series | None,
) -> pd.DataFrame:
    """Id-map rows for ``ids``, with the Marketo ids and emails known so far."""
    if len(ids) == 0:
        return empty_links()
    known = pd.concat(
        [c[[DYNAMICS_ID, MARKETO_ID]] for c in canonical if DYNAMICS_ID in c and MARKETO_ID in c],
        ignore_index=True,
    )
    known = known.dropna(subset=[DYNAMICS_ID, MARKETO_ID]).drop_duplicates(DYNAMICS_ID, keep="last")
    mids = pd.Series(known[MARKETO_ID].to_numpy(), index=known[DYNAMICS_ID].to_numpy(), dtype="str")
    rows = link_rows(entity, resolution, ids, mids, hashes_as_json=True)
    if MARKETO_ID not in rows:
        rows[MARKETO_ID] = pd.NA
    email_field = entity.marketo.email_field
    if email_field:
        sides = [f[email_field] for f in (resolution.to_marketo, resolution.to_dynamics) if email_field in f]
        if sides:
            # The Dynamics value first: it is what both sides hold after the writes (or Marketo's).
            email = as_string(sides[0])
            for other in sides[1:]:
                email = email.fillna(as_string(other))
            rows["email"] = email.reindex(rows[DYNAMICS_ID]).str.strip().str.lower().to_numpy()
    if filter_values is not None and len(filter_values):
        rows["filter_value"] = filter_values.reindex(rows[DYNAMICS_ID]).to_numpy()
    for col in LINK_FRAME_COLUMNS:
        if col not in rows:
            rows[col] = pd.NA
    return rows[LINK_FRAME_COLUMNS].reset_index(drop=True)


PAYLOAD_CHUNK = 1000  # records turned into dicts at once, then straight into JSON text


def _payload_ops(
    op: str, ids: pd.Index, payloads: Callable[[pd.Index], list[dict[str, Any]]]
) -> list[pd.DataFrame]:
    """Operations for ``ids``, their payloads built and encoded :data:`PAYLOAD_CHUNK` records at
    a time: a page's records are never all held as dicts (a full copy's plan peaked there)."""
    parts = (ids[start : start + PAYLOAD_CHUNK] for start in range(0, len(ids), PAYLOAD_CHUNK))
    return [ops_frame(op, [str(i) for i in part.tolist()], payloads(part)) for part in parts]


def plan_changes(
    entity: EntityConfig,
    dynamics_rows: pd.DataFrame | None,
    marketo_rows: pd.DataFrame | None,
    links: pd.DataFrame,
    id_map: pd.DataFrame,
    email_holders: pd.DataFrame | None = None,
    origins: pd.DataFrame | None = None,
) -> BatchPlan:
    """Plan the writes for one batch of changed records from either or both sides.

    Args:
        entity: The entity.
        dynamics_rows: Changed Dataverse rows (raw Web API columns), or None.
        marketo_rows: Changed Marketo records (REST field names), or None; only linked
            records of this entity are used. An optional ``_read_at`` column (ISO time the
            snapshot was read) leaves out records the sync wrote after that moment.
        links: Id-map rows (``lookup_links``) of the records in this batch.
        id_map: Id-map frame for lookups (``entity``, ``dynamics_id``, ``marketo_id``), this
            entity's links included.
        email_holders: Active person links with the batch's emails (any person entity), for
            the entity's ``duplicate_email`` rule; None leaves the rule out.
        origins: Links of the records the batch's rows were converted from (the entity's
            ``converted_from``: a contact's qualified lead), any state.

    Returns:
        The plan; records in error are left out of ``ops``.
    """
    counts = {"received": 0, "valid": 0, "filtered": 0, "unchanged": 0, "failed": 0}
    error_parts: list[pd.DataFrame] = []
    canonical: list[pd.DataFrame] = []
    d_canon: pd.DataFrame | None = None
    valid_rows: pd.DataFrame | None = None
    stale: list[str] = []
    filter_values: pd.Series | None = None
    last = last_hashes(_active_links(links))
    merge_plan = empty_frame(MERGE_COLUMNS)
    takeovers = pd.Series(dtype="str")
    handovers: list[pd.DataFrame] = []
    if dynamics_rows is not None and not dynamics_rows.empty:
        counts["received"] += len(dynamics_rows)
        merge_plan = merges(entity, dynamics_rows, links)
        # Merged records and records whose person went on as another record write no more.
        gone = merged_mask(entity, dynamics_rows) | handed_over(entity, dynamics_rows, links)
        counts["filtered"] += int(gone.sum())
        dynamics_rows = dynamics_rows[~gone.to_numpy()]
        transitions = filter_transitions(dynamics_rows, entity, links)
        filter_values = pd.Series(
            transitions["filter_value"].to_numpy(), index=transitions[DYNAMICS_ID].to_numpy()
        )
        filter_values = filter_values[~filter_values.index.duplicated(keep="last")]
        stale = sorted(transitions.loc[transitions["transition"].eq("stale").fillna(False), DYNAMICS_ID])
        refresh = set(transitions.loc[transitions["transition"].eq("refresh").fillna(False), DYNAMICS_ID])
        # A record switched back on (No -> Yes) is sent in full: forget what was synced before.
        last = last.drop(index=[i for i in refresh if i in last.index])
        kept, dropped = apply_sync_filter(dynamics_rows, entity)
        counts["filtered"] += len(dropped)
        converted = conversions(
            entity, kept, links, origins if origins is not None else empty_frame(LINK_COLUMNS)
        )
        takeovers = taken_over(converted, merge_plan)
        mapped = dynamics_to_canonical(kept, entity, id_map)
        error_parts.append(mapped.errors)
        d_canon = mapped.frame
        if len(takeovers):
            # The person a record takes over is its Marketo id from now on (link, payload route).
            taken = d_canon[DYNAMICS_ID].map(takeovers)
            d_canon = d_canon.assign(**{MARKETO_ID: taken.where(taken.notna(), d_canon[MARKETO_ID])})
        if email_holders is not None and entity.duplicate_email is DuplicateEmail.OLDEST_HOLDS:
            d_canon, held = _hold_duplicate_emails(
                entity, d_canon, links, email_holders, set(takeovers.index)
            )
            error_parts.append(held)
        if entity.converted_from is not None and len(converted):
            written = converted[converted["dynamics_id"].isin(set(d_canon[DYNAMICS_ID]))]
            handovers.append(
                pd.DataFrame(
                    {
                        "entity": entity.converted_from.entity,
                        DYNAMICS_ID: written["origin_id"],
                        "state": CONVERTED,
                    }
                )
            )
        canonical.append(d_canon)
        valid_rows = kept.loc[mapped.frame.index]
    m_canon: pd.DataFrame | None = None
    mine = _marketo_side(entity, marketo_rows, links)
    if mine is not None and not mine.empty:
        counts["received"] += len(mine)
        mapped_m = marketo_to_canonical(mine, entity)
        error_parts.append(mapped_m.errors)
        m_canon = mapped_m.frame
        canonical.append(m_canon)
    errors = concat_errors(error_parts)
    counts["failed"] = int(errors["record_id"].nunique()) if len(errors) else 0
    if d_canon is None and m_canon is None:
        return BatchPlan(errors=errors, stale_ids=stale, counts=counts)
    lifecycle_ops, merge_handovers = merge_ops(entity, merge_plan)
    handovers.append(merge_handovers)
    resolution = resolve_changes(entity, d_canon, m_canon, last)
    counts["valid"] = len(resolution.to_marketo.index)
    counts["unchanged"] = len(resolution.unchanged_ids)
    ops = [empty_ops()]
    if entity.direction.includes(Direction.D2M):
        ops += [lifecycle_ops, repoint_ops(entity, takeovers, resolution.marketo_ids)]
        ops += _payload_ops(
            MARKETO_UPSERT, resolution.marketo_ids, lambda i: marketo_payload(entity, resolution, i)
        )
    if entity.direction.includes(Direction.M2D):
        ops += _payload_ops(
            DYNAMICS_UPSERT, resolution.dynamics_ids, lambda i: dynamics_payload(entity, resolution, i)
        )
    if entity.roles is not None and valid_rows is not None and len(valid_rows):
        # Roles are re-sent with every change of their opportunity (upserts by compound key).
        roles, role_errors = opportunity_roles(valid_rows, entity, entity.roles, id_map)
        errors = concat_errors([errors, role_errors])
        payloads = roles.astype(object).where(roles.notna(), None).to_dict("records")
        ops.append(
            ops_frame(MARKETO_ROLE_UPSERT, roles["externalOpportunityId"].astype(str).tolist(), payloads)
        )
    written = resolution.marketo_ids.union(resolution.dynamics_ids)
    settled: list[str] = []
    if m_canon is not None:
        quiet = ~m_canon[DYNAMICS_ID].astype(str).isin({str(i) for i in resolution.dynamics_ids})
        settled = sorted(as_string(m_canon.loc[quiet.to_numpy(), MARKETO_ID]).dropna().unique().tolist())
    plan = BatchPlan(
        ops=pd.concat(ops, ignore_index=True),
        links=link_frame(entity, resolution, written, canonical, filter_values),
        errors=errors,
        conflicts=resolution.conflicts,
        consents=resolution.consents,
        stale_ids=stale,
        settled_m2d=settled,
        handovers=pd.concat(handovers, ignore_index=True),
        counts=counts,
    )
    log.debug("%s plan: %s, %d ops", entity.name, counts, len(plan.ops))
    return plan


def plan_deletes(entity: EntityConfig, deleted_ids: pd.Series, links: pd.DataFrame) -> BatchPlan:
    """Plan what records deleted in Dataverse do on the Marketo side (the entity's delete policy).

    Only linked records are touched: a record the sync never wrote has nothing to delete or flag.
    """
    counts = {"received": len(deleted_ids), "valid": 0, "filtered": 0, "unchanged": 0, "failed": 0}
    linked = set(links.loc[links["state"].ne("deleted"), DYNAMICS_ID].astype(str)) if len(links) else set()
    ids = as_string(deleted_ids).str.strip().str.lower()
    ids = ids[ids.isin(linked)]
    policy, records = deletion_records(entity, ids)
    counts["unchanged"] = len(deleted_ids) - len(records)
    if policy is DeletePolicy.IGNORE or records.empty:
        return BatchPlan(counts=counts)
    counts["valid"] = len(records)
    op = MARKETO_FLAG_DELETED if policy is DeletePolicy.FLAG else MARKETO_DELETE
    key = entity.marketo.key
    payloads = records.astype(object).to_dict("records")
    return BatchPlan(ops=ops_frame(op, [str(r[key]) for r in payloads], payloads), counts=counts)
