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
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.config import Direction, EntityConfig, MarketoObject
from crm_sync.engine.staging import Batcher, rows_frame, token_key
from crm_sync.state import (
    check_identity,
    get_watermark,
    session_scope,
    set_watermark,
    utcnow,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from datetime import datetime

    from airflow.sdk import ObjectStoragePath
    from sqlalchemy.orm import Session

    from crm_sync.engine.clients import DynamicsClient, MarketoClient
    from crm_sync.engine.context import RunContext
    from crm_sync.engine.staging import StagingArea

log = logging.getLogger(__name__)

PERSON_FEED = "person"
# Watermark row holding the newest token of the shared person feed chain.
FEED_HEAD_ENTITY = "_person_feed"
DYNAMICS_PAGE_SIZE = 5000  # rows per change-tracking page: the most Dataverse sends (fewest calls)
MARKETO_READ_BATCH = 300
EXTRACT_MANIFEST = "extract"
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
EMAIL_QUERY_CHUNK = 25  # emails per $filter, well under URL length limits


def dynamics_columns(entity: EntityConfig) -> list[str]:
    """The Dataverse columns an extract selects: key, mapped D→M columns, lookups, sync filter."""
    cols = [entity.dynamics.key]
    cols += [f.dynamics for f in entity.fields_for(Direction.D2M)]
    cols += [lk.dynamics for lk in entity.lookups]
    if entity.dynamics.filter_column:
        cols.append(entity.dynamics.filter_column)
    return list(dict.fromkeys(cols))


@dataclass(frozen=True)
class DerivedColumn:
    """A column the entity files map that Dataverse does not have, read through ``$expand``.

    Attributes:
        expand: The ``$expand`` option that brings the data.
        value: Turns the expanded row into the column's value.
    """

    expand: str
    value: Callable[[Mapping[str, Any]], Any]


def _member_ids(row: Mapping[str, Any]) -> list[str]:
    members = row.get("teammembership_association") or []
    return sorted(str(m["systemuserid"]).lower() for m in members if m.get("systemuserid"))


def _customer_parent_account(row: Mapping[str, Any]) -> Any:
    contact = row.get("customerid_contact")
    return contact.get("_parentcustomerid_value") if isinstance(contact, Mapping) else None


# Derived columns by name (team.yaml, opportunity.yaml); change tracking cannot $expand, so
# they are read for the changed rows by id afterwards.
DERIVED_COLUMNS: dict[str, DerivedColumn] = {
    "member_ids": DerivedColumn("teammembership_association($select=systemuserid)", _member_ids),
    "customer_parent_account": DerivedColumn(
        "customerid_contact($select=_parentcustomerid_value)", _customer_parent_account
    ),
}


def _split_derived(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(columns Dataverse can select, derived columns)."""
    return [c for c in columns if c not in DERIVED_COLUMNS], [c for c in columns if c in DERIVED_COLUMNS]


def _by_id_filter(key: str, guids: Sequence[str]) -> str:
    return " or ".join(f"{key} eq {g}" for g in guids)


def read_rows_by_id(
    entity: EntityConfig, client: DynamicsClient, guids: Sequence[str], select: Sequence[str]
) -> list[dict[str, Any]]:
    """Current rows of ``guids`` with the ``select`` columns, derived columns included."""
    plain, derived = _split_derived(select)
    expand = ",".join(DERIVED_COLUMNS[c].expand for c in derived) or None
    rows: list[dict[str, Any]] = []
    for start in range(0, len(guids), EMAIL_QUERY_CHUNK):
        where = _by_id_filter(entity.dynamics.key, guids[start : start + EMAIL_QUERY_CHUNK])
        for page in client.query(entity.dynamics.entity_set, select=plain, filter=where, expand=expand):
            for row in page:
                row.update({c: DERIVED_COLUMNS[c].value(row) for c in derived})
                rows.append(row)
    return rows


def _add_derived(
    entity: EntityConfig, client: DynamicsClient, records: list[dict[str, Any]], derived: Sequence[str]
) -> list[dict[str, Any]]:
    """Fill the derived columns of changed rows (one extra read per 25 rows)."""
    if not derived or not records:
        return records
    key = entity.dynamics.key
    found = {
        str(r[key]).lower(): r
        for r in read_rows_by_id(entity, client, [str(r[key]) for r in records], [key, *derived])
    }
    for record in records:
        extra = found.get(str(record[key]).lower(), {})
        record.update({c: extra.get(c) for c in derived})
    return records


def person_fields(entities: Iterable[EntityConfig]) -> list[str]:
    """Marketo person fields the shared feed reads: ids, keys, sync-owned fields, M→D fields."""
    names: list[str] = []
    for e in entities:
        if e.marketo.object is not MarketoObject.LEAD or not e.direction.includes(Direction.M2D):
            continue
        m = e.marketo
        names += [m.key, *(f for f in (m.type_field, m.deleted_field, m.email_field, m.sync_flag_field) if f)]
        names += [f.marketo for f in e.fields_for(Direction.M2D)]
    return list(dict.fromkeys(n for n in names if n != "id"))


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
    select, derived = _split_derived(columns)
    for page in client.track_changes(entity.dynamics.entity_set, select, delta_link, DYNAMICS_PAGE_SIZE):
        rows.add(_add_derived(entity, client, page.records, derived))
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
    }


def _staged_chunk(staging: StagingArea, token: str) -> dict[str, Any] | None:
    """The staged feed chunk starting at ``token``, if one exists and moved the feed on."""
    staged = staging.read_json(staging.feed_dir(PERSON_FEED, token), "manifest")
    # A chunk that ended where it started saw no activity; reusing it would never move on.
    if staged is None or staged.get("start") != token or staged.get("token") == token:
        return None
    missing = [ref["path"] for ref in staged.get("batches", []) if not staging.exists(ref)]
    if missing:
        # Staging cleaned up, or lost: read this part of the feed again rather than fail every run.
        log.warning("person feed chunk at %s lists %d missing files (%s); reading it again",
                    token_key(token), len(missing), missing[0])  # fmt: skip
        return None
    return staged


def _read_chunk(
    client: MarketoClient, staging: StagingArea, start_token: str, fields: Sequence[str]
) -> dict[str, Any]:
    """Read the feed from ``start_token`` to its end now, fetch the changed persons, stage them."""
    ids: dict[int, None] = {}
    token = start_token
    for page in client.get_lead_changes(start_token, fields, MARKETO_READ_BATCH):
        ids.update((int(a["leadId"]), None) for a in page.records if a.get("leadId") is not None)
        token = page.next_page_token or token
    chunk: dict[str, Any] = {"start": start_token, "token": token, "batches": [], "rows": 0}
    if token == start_token:
        return chunk
    # The snapshot is no older than this moment (taken before the current values are fetched).
    chunk["read_at"] = utcnow().isoformat()
    folder = staging.feed_dir(PERSON_FEED, start_token)
    # File names carry the end token and this reader's own mark: two readers of the same tail
    # (lead and contact runs at once) each stage whole files of their own, and the manifest
    # renamed last names only its writer's files.
    prefix = f"persons-{token_key(token)[:12]}-{uuid.uuid4().hex[:8]}"
    batcher = Batcher(staging, folder, prefix, MARKETO_READ_BATCH, ["id", *fields])
    for records in client.get_leads("id", list(ids), ["id", *fields], MARKETO_READ_BATCH) if ids else ():
        batcher.add(records)
    chunk.update(batches=[b.to_dict() for b in batcher.close()], rows=batcher.total)
    staging.write_json(folder, "manifest", chunk)
    return chunk


def read_person_feed(
    client: MarketoClient,
    staging: StagingArea,
    start_token: str,
    fields: Sequence[str],
) -> dict[str, Any]:
    """Walk the person change feed from ``start_token`` to now, reading each part only once.

    Chunks another entity already read (staged under their start token) are reused; only the
    tail nobody has read yet is asked from Marketo, so every change is fetched once and each
    run still sees the feed up to now before it writes (conflicts stay visible).

    Returns:
        ``start``, ``token`` (where the next run starts), ``chunks`` (each with ``batches``,
        ``rows`` and ``read_at``), ``rows`` (persons over all chunks) and ``reused`` (chunks
        taken from staging).
    """
    chunks: list[dict[str, Any]] = []
    token = start_token
    reused = 0
    seen = {token}
    while (staged := _staged_chunk(staging, token)) is not None and staged["token"] not in seen:
        chunks.append(staged)
        token = staged["token"]
        seen.add(token)
        reused += 1
    tail = _read_chunk(client, staging, token, fields)
    if tail["rows"]:
        chunks.append(tail)
    log.info("person feed: %d staged chunks reused, %d persons read now", reused, tail["rows"])
    return {
        "start": start_token,
        "token": tail["token"],
        "chunks": chunks,
        "rows": sum(int(c["rows"]) for c in chunks),
        "reused": reused,
        "fresh": tail["token"] != token,
    }


def _flagged_emails(
    entity: EntityConfig, staging: StagingArea, chunks: Sequence[dict[str, Any]]
) -> list[str]:
    """Emails of the Marketo-only persons flagged for creation in the staged feed chunks."""
    from crm_sync.transforms import flagged_unlinked

    email_field = entity.marketo.email_field
    emails: set[str] = set()
    for chunk in chunks:
        for ref in chunk["batches"]:
            flagged = flagged_unlinked(staging.read_frame(ref), entity)
            if email_field and email_field in flagged:
                emails |= {str(e).strip().lower() for e in flagged[email_field].dropna() if str(e).strip()}
    return sorted(emails)


def find_email_matches(
    client: DynamicsClient, tables: Sequence[EntityConfig], emails: Sequence[str]
) -> list[dict[str, Any]]:
    """Dataverse leads/contacts whose email is one of ``emails`` (dedup before creating a lead).

    Returns:
        Rows with ``email`` (lower case), ``dynamics_id``, ``table`` (the entity name) and
        ``person_type`` (the value of the Marketo type field for that entity).
    """
    found: list[dict[str, Any]] = []
    for table in tables:
        column = table.email_column()
        if not column:
            continue
        key = table.dynamics.key
        for start in range(0, len(emails), EMAIL_QUERY_CHUNK):
            part = emails[start : start + EMAIL_QUERY_CHUNK]
            quoted = " or ".join(f"{column} eq '{e.replace(chr(39), chr(39) * 2)}'" for e in part)
            for page in client.query(table.dynamics.entity_set, select=[key, column], filter=quoted):
                found += [
                    {
                        "email": str(r[column]).lower(),
                        "dynamics_id": str(r[key]).lower(),
                        "table": table.name,
                        "person_type": table.marketo.person_type,
                    }
                    for r in page
                    if r.get(column)
                ]
    return found


def _stage_candidates(
    entity: EntityConfig,
    ctx: RunContext,
    dynamics: DynamicsClient | None,
    chunks: Sequence[dict[str, Any]],
    dedup_tables: Sequence[EntityConfig],
) -> dict[str, Any] | None:
    """Look up email matches of flagged persons in Dataverse and stage them for the transform."""
    if not entity.marketo.sync_flag_field or not entity.dedup_by_email:
        return None
    emails = _flagged_emails(entity, ctx.staging, chunks)
    if not emails:
        return None
    if dynamics is None:
        raise ValueError(f"{entity.name}: a Dynamics client is needed to look up email matches")
    rows = find_email_matches(dynamics, dedup_tables or [entity], emails)
    frame = pd.DataFrame(rows, columns=["email", "dynamics_id", "table", "person_type"])
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "extract"
    return ctx.staging.write_frame(folder, "email-matches", frame).to_dict()


def _extracted_keys(entity: EntityConfig, ctx: RunContext, part: dict[str, Any] | None) -> set[str]:
    """Keys of the Dataverse rows this run already staged."""
    keys: set[str] = set()
    for ref in (part or {}).get("batches", []):
        column = ctx.staging.read_frame(ref)[entity.dynamics.key]
        keys |= {str(k).strip().lower() for k in column.dropna()}
    return keys


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
    return _stage_rows(entity, ctx, dynamics, fresh, "unmerged")


def _stage_rows(
    entity: EntityConfig, ctx: RunContext, dynamics: DynamicsClient, guids: Sequence[str], name: str
) -> dict[str, Any] | None:
    """Read the current Dataverse rows of ``guids`` (by primary key) and stage them as one batch."""
    columns = dynamics_columns(entity)
    rows = read_rows_by_id(entity, dynamics, guids, columns)
    if not rows:
        return None
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "extract"
    return ctx.staging.write_frame(folder, name, rows_frame(rows, columns)).to_dict()


def _retry_rows(
    entity: EntityConfig, ctx: RunContext, dynamics: DynamicsClient, extracted: set[str], now: datetime
) -> dict[str, Any] | None:
    """Stage the records whose earlier D→M failure is due for another attempt (backoff expired).

    Records already in this run's changes are not read twice; a record that fails again counts
    one more attempt and is parked after the retry policy's maximum.
    """
    from crm_sync.state import due_errors

    with session_scope(ctx.state) as session:
        due = due_errors(session, entity=entity.name, direction=Direction.D2M.value, now=now)
        guids = sorted({str(i).lower() for i in due["source_id"] if _GUID.match(str(i))} - extracted)
        retried = due[due["source_id"].astype(str).str.lower().isin(guids)]
        _count_attempt(session, retried, ctx.run_id, now)
    if not guids:
        return None
    log.info("%s: retrying %d records whose earlier failure is due", entity.name, len(guids))
    return _stage_rows(entity, ctx, dynamics, guids, "retry")


def _requeued_gone(
    entity: EntityConfig, ctx: RunContext, retry: dict[str, Any] | None, extracted: set[str], now: datetime
) -> dict[str, Any] | None:
    """Stage as deletes the GUIDs a reconciliation re-queued that Dataverse no longer has.

    Such a record is an orphan: its delete was never seen (a lost delta, an expired token), so
    the entity's delete policy is applied now, exactly as for a delete from change tracking.
    """
    from crm_sync.state import open_errors
    from crm_sync.state.errors import REQUEUE_CODE

    with session_scope(ctx.state) as session:
        # Retried in this run: _retry_rows counted this run's attempt on them at ``now``.
        errors = open_errors(session, entity=entity.name, since=now)
    mine = errors[errors["direction"].eq(Direction.D2M.value) & errors["code"].eq(REQUEUE_CODE)]
    wanted = {str(i).lower() for i in mine["source_id"]} - extracted
    if not wanted:
        return None
    found = _extracted_keys(entity, ctx, {"batches": [retry] if retry else []})
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
    guids = sorted({str(s).lower() for s in due["source_id"] if _GUID.match(str(s).lower())})
    if guids:
        links = lookup_links(session, entity.name, dynamics_ids=guids)
        for did, mid in zip(links["dynamics_id"], links["marketo_id"], strict=True):
            if mid is not None and str(mid).isdigit():
                ids[str(did)] = str(mid)
    return ids


def _retry_persons(
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


def _feed_start(ctx: RunContext, marketo: MarketoClient, now: datetime) -> str:
    """Where an entity without its own feed watermark starts: the shared feed's newest token.

    Joining the chain of staged chunks (instead of taking a fresh token) is what lets the lead
    and the contact DAG share each chunk. Before any entity has read the feed, the chain starts
    now; earlier Marketo history belongs to the full copy.
    """
    with session_scope(ctx.state) as session:
        head = get_watermark(session, FEED_HEAD_ENTITY, Direction.M2D.value)
        if head is None:
            head = marketo.get_paging_token(now)
            _advance_feed_head(session, head)
    return head


def _advance_feed_head(session: Session, token: str) -> None:
    """Remember the newest chunk boundary of the shared person feed (not a data watermark)."""
    set_watermark(session, FEED_HEAD_ENTITY, Direction.M2D.value, token)


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
        manifest["dynamics"] = part
        manifest["pending"][Direction.D2M.value] = part["token"]
        extracted = _extracted_keys(entity, ctx, part)
        retry = _retry_rows(entity, ctx, dynamics, extracted, started)
        if retry is not None:
            part["batches"].append(retry)
            part["retried"] = retry["rows"]
        gone = _requeued_gone(entity, ctx, retry, extracted, started)
        if gone is not None:
            part["deleted"].append(gone)
            part["deleted_rows"] += gone["rows"]
    if entity.direction.includes(Direction.M2D) and entity.marketo.object is MarketoObject.LEAD:
        if marketo is None:
            raise ValueError(f"{entity.name}: a Marketo client is needed to extract M→D changes")
        if m_token is None:
            m_token = _feed_start(ctx, marketo, started)
        fields = feed_fields or person_fields([entity])
        chunk = read_person_feed(marketo, ctx.staging, m_token, fields)
        retried = _retry_persons(entity, ctx, marketo, fields, started)
        if retried is not None:
            chunk["chunks"].append(retried)
            chunk["rows"] += retried["rows"]
            chunk["retried"] = retried["rows"]
        manifest["marketo"] = chunk
        manifest["pending"][Direction.M2D.value] = chunk["token"]
        manifest["email_matches"] = _stage_candidates(entity, ctx, dynamics, chunk["chunks"], dedup_tables)
        extracted = _extracted_keys(entity, ctx, manifest["dynamics"])
        unmerged = _unmerged_rows(entity, ctx, dynamics, chunk["chunks"], extracted)
        if unmerged is not None and manifest["dynamics"] is not None:
            manifest["dynamics"]["batches"].append(unmerged)
        if chunk["fresh"]:
            with session_scope(ctx.state) as session:
                _advance_feed_head(session, chunk["token"])
    ctx.staging.write_json(folder, EXTRACT_MANIFEST, manifest)
    log.info(
        "%s extract: %d Dynamics rows, %d deleted, %d Marketo persons",
        entity.name,
        (manifest["dynamics"] or {}).get("rows", 0),
        (manifest["dynamics"] or {}).get("deleted_rows", 0),
        (manifest["marketo"] or {}).get("rows", 0),
    )
    return manifest
