"""Full copy: every Dynamics record of an entity (or those created in one stretch) into Marketo.

The same engine as the incremental sync with its own extract and load shape:

* **Scope.** A run copies one *partition*: the records created in ``[start, end)`` (the run's data
  interval for scheduled and backfill runs, the ``from_date``/``to_date`` Params of a manual run)
  or every record. Each partition of each entity is staged under its own folder, keyed by the
  scope and the entity's mapping, in numbered *attempts*: a run that finds an unfinished attempt
  continues it (whatever its Airflow run id), a run that finds a finished one starts a new one.
* **Extract** reads Dataverse pages of 5,000 rows with only the mapped columns (derived columns
  through ``$expand``) and stages every page as it arrives, with the page's next link as the
  checkpoint: a killed extract continues at the first page it had not staged.
* **Hand-over.** Copying everything of an entity that has no incremental watermark yet first
  takes a change-tracking token (a key-only read); the commit stores it as the incremental
  watermark, so the changes made while the copy runs reach the next incremental run.
* **Plan** reuses the incremental transform (mapping, sync filter, lookups, echo check against
  the id map, record errors), then regroups the operations into *load units*: Marketo persons
  above the bulk threshold go to bulk import files sized just under 10 MB, everything else to
  sync calls of 300 records, all the operations of one record in the same unit.
* **Matching.** A person already linked in the id map is written by its Dataverse key; an
  unlinked one with an email no other record of the copy or of the id map holds is written with
  email as the lookup field, so an existing Marketo person with that email is updated (and gets
  the key), not duplicated.
* **Load** writes one unit per task; a unit with a staged outcome is never written again.
* **Commit** writes the ledger and the hand-over watermark and marks the attempt finished.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import pandas as pd

from crm_sync.config import Direction, EntityConfig, MarketoObject
from crm_sync.engine.extract import (
    DERIVED_COLUMNS,
    EXTRACT_MANIFEST,
    _split_derived,
    dynamics_columns,
)
from crm_sync.engine.load import OUTCOME, load_batch
from crm_sync.engine.staging import rows_frame
from crm_sync.engine.transform import TRANSFORM_MANIFEST, transform_changes
from crm_sync.ops import MARKETO_ROLE_UPSERT, MARKETO_UPSERT
from crm_sync.state import get_watermark, read_scope, session_scope, set_watermark, utcnow
from crm_sync.transforms import DYNAMICS_ID

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from airflow.sdk import ObjectStoragePath
    from sqlalchemy import Table

    from crm_sync.engine.clients import MarketoClient
    from crm_sync.engine.context import RunContext
    from crm_sync.engine.staging import StagingArea
    from crm_sync_hooks.dynamics import QueryPage
    from crm_sync_hooks.results import WriteResult

log = logging.getLogger(__name__)

PAGE_SIZE = 5000  # Dataverse's largest page
SYNC_CALL_RECORDS = 300  # Marketo's largest sync batch
SYNC_UNIT_RECORDS = 20 * SYNC_CALL_RECORDS  # records per sync load unit (20 calls)
# A bulk unit's CSV (rows and header) stays just under Marketo's 10 MB file limit, read as
# 10,000,000 bytes (the hook's reading; unconfirmed whether Marketo means 10 MiB), so the hook
# sends each unit as one file.
BULK_FILE_BYTES = 9_900_000
BULK_THRESHOLD = 1_000  # person upserts in a partition from which bulk import is used
LINK_UPDATE_CHUNK = 10_000  # id-map rows updated per statement when storing read-back Marketo ids
LOOKUP_HINT = "_lookup"  # payload entry naming a person's lookup field (removed before sending)
SAMPLE_SIZE = 3
STATE = "state"
PROGRESS = "extract-progress"
IMPORT_PACE = "import-pace"


class CopySource(Protocol):
    """What the full copy calls on the Dataverse side (``DynamicsHook`` has both)."""

    def query_pages(
        self,
        entity_set: str,
        *,
        select: Sequence[str],
        filter: str | None = None,
        expand: str | None = None,
        page_size: int = ...,
        start_link: str | None = None,
    ) -> Iterator[QueryPage]:
        """Pages of a query with their next links, resumable at a stored link."""
        ...

    def track_changes(
        self, entity_set: str, select: Sequence[str], delta_link: str | None = None, page_size: int = ...
    ) -> Iterator[Any]:
        """Change-tracking pages; the last carries ``delta_link``."""
        ...


# --- scope -----------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_bound(value: Any, *, end: bool) -> datetime | None:
    """A Param bound: ISO date (``to_date`` is inclusive: its whole day counts) or datetime."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, date):
        day = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return day + timedelta(days=1) if end else day
    text = str(value).strip()
    try:
        if len(text) == 10:
            return _parse_bound(date.fromisoformat(text), end=end)
        return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        which = "to_date" if end else "from_date"
        raise ValueError(f"full_copy: Param {which}={text!r} is not an ISO date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class CopyScope:
    """What one full-copy run copies.

    Attributes:
        start: Records created at or after this instant (None: from the beginning).
        end: Records created before this instant (None: up to now).
        entities: Names of the entities to copy (empty: all).
        dry_run: Plan and report, write nothing to Marketo.
    """

    start: datetime | None = None
    end: datetime | None = None
    entities: tuple[str, ...] = ()
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"full_copy: empty range {self.start.isoformat()} .. {self.end.isoformat()}")

    @property
    def everything(self) -> bool:
        """True when no date bound limits the copy (the initial copy hands over to incrementals)."""
        return self.start is None and self.end is None

    def includes(self, entity: str) -> bool:
        """Whether ``entity`` is part of this run."""
        return not self.entities or entity in self.entities

    def key(self) -> str:
        """Folder-safe name of the date range (``all`` for everything)."""

        def stamp(value: datetime | None) -> str:
            return value.strftime("%Y%m%dT%H%M%SZ") if value else "open"

        base = "all" if self.everything else f"{stamp(self.start)}-{stamp(self.end)}"
        return f"{base}-dry" if self.dry_run else base

    def createdon_filter(self) -> str | None:
        """OData ``$filter`` on ``createdon`` for the range (None for everything)."""
        parts = []
        if self.start:
            parts.append(f"createdon ge {self.start.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        if self.end:
            parts.append(f"createdon lt {self.end.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        return " and ".join(parts) or None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (XCom, manifests)."""
        return {
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "entities": list(self.entities),
            "dry_run": self.dry_run,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CopyScope:
        """Rebuild a scope from :meth:`to_dict` output."""
        return cls(
            start=_parse_bound(data.get("start"), end=False),
            end=_parse_bound(data.get("end"), end=False),
            entities=tuple(data.get("entities") or ()),
            dry_run=bool(data.get("dry_run")),
        )


def scope_for_run(
    params: Mapping[str, Any],
    *,
    run_type: str | None,
    interval_start: datetime | None,
    interval_end: datetime | None,
    known_entities: Sequence[str],
) -> CopyScope:
    """The scope of one run: the data interval for scheduled and backfill runs, else the Params.

    A manual run copies everything unless the ``from_date``/``to_date`` Params narrow it.

    Raises:
        ValueError: An unknown entity name, a bad date or an empty range.
    """
    entities = tuple(str(e) for e in (params.get("entities") or ()))
    unknown = sorted(set(entities) - set(known_entities))
    if unknown:
        raise ValueError(
            f"full_copy: Param entities names unknown entities {unknown}; known: {sorted(known_entities)}"
        )
    dry_run = bool(params.get("dry_run"))
    if (
        run_type in ("scheduled", "backfill")
        and interval_start
        and interval_end
        and interval_start < interval_end
    ):
        return CopyScope(_utc(interval_start), _utc(interval_end), entities, dry_run)
    return CopyScope(
        _parse_bound(params.get("from_date"), end=False),
        _parse_bound(params.get("to_date"), end=True),
        entities,
        dry_run,
    )


def copy_order(entities: Mapping[str, EntityConfig]) -> list[list[str]]:
    """Entities in tiers: each tier only depends on earlier ones (``depends_on``), names sorted.

    Users and teams come first, then accounts, persons, opportunities and custom entities, as
    their ``depends_on`` lists say, so the lookups of a tier resolve through the id map.

    Raises:
        ValueError: A dependency cycle.
    """
    remaining = {name: {d for d in e.depends_on if d in entities} for name, e in entities.items()}
    tiers: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        ready = sorted(n for n, deps in remaining.items() if deps <= done)
        if not ready:
            raise ValueError(f"full_copy: dependency cycle among {sorted(remaining)}")
        tiers.append(ready)
        done |= set(ready)
        for name in ready:
            del remaining[name]
    return tiers


# --- partitions and attempts -------------------------------------------------------------------


def mapping_fingerprint(entity: EntityConfig) -> str:
    """Short digest of the entity's configuration: staged plans of another mapping are not reused."""
    text = json.dumps(entity.model_dump(mode="json", exclude={"source_path"}), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Partition:
    """One entity's share of one scope, and the attempt that copies it."""

    entity: str
    scope_key: str
    fingerprint: str
    attempt: int

    @property
    def run_id(self) -> str:
        """The engine's run id of this attempt (names its staging folder and ledger row)."""
        return f"full_copy__{self.scope_key}__{self.fingerprint}__a{self.attempt}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "entity": self.entity,
            "scope_key": self.scope_key,
            "fingerprint": self.fingerprint,
            "attempt": self.attempt,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Partition:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            str(data["entity"]), str(data["scope_key"]), str(data["fingerprint"]), int(data["attempt"])
        )


def _partition_dir(staging: StagingArea, entity: str, scope_key: str, fingerprint: str) -> ObjectStoragePath:
    return staging.root / "full_copy" / entity / f"{scope_key}-{fingerprint}"


def open_partition(staging: StagingArea, entity: EntityConfig, scope: CopyScope) -> Partition:
    """The attempt this run works on: the unfinished one if there is one, else a new one."""
    fingerprint = mapping_fingerprint(entity)
    folder = _partition_dir(staging, entity.name, scope.key(), fingerprint)
    state = staging.read_json(folder, STATE) or {"attempt": 0, "done": True}
    attempt = int(state["attempt"])
    if state.get("done", True):
        attempt += 1
        staging.write_json(
            folder, STATE, {"attempt": attempt, "done": False, "opened_at": utcnow().isoformat()}
        )
        log.info("%s: full copy of %s, attempt %d starts", entity.name, scope.key(), attempt)
    else:
        log.info("%s: full copy of %s continues unfinished attempt %d", entity.name, scope.key(), attempt)
    return Partition(entity.name, scope.key(), fingerprint, attempt)


def current_partition(staging: StagingArea, entity: EntityConfig, scope: CopyScope) -> Partition:
    """The attempt opened by this run's extract (later tasks of the run use it).

    Raises:
        RuntimeError: No attempt was opened (the extract did not run).
    """
    fingerprint = mapping_fingerprint(entity)
    state = staging.read_json(_partition_dir(staging, entity.name, scope.key(), fingerprint), STATE)
    if state is None:
        raise RuntimeError(f"{entity.name}: no full-copy attempt of {scope.key()} was opened")
    return Partition(entity.name, scope.key(), fingerprint, int(state["attempt"]))


def close_partition(staging: StagingArea, partition: Partition) -> None:
    """Mark the attempt finished: the next run of this scope starts a new attempt."""
    folder = _partition_dir(staging, partition.entity, partition.scope_key, partition.fingerprint)
    staging.write_json(
        folder, STATE, {"attempt": partition.attempt, "done": True, "closed_at": utcnow().isoformat()}
    )


# --- extract -----------------------------------------------------------------------------------


@dataclass
class _Rate:
    """Records/s and time left, for progress lines in the task log."""

    started: float = field(default_factory=time.monotonic)

    def line(self, done: int, total: int | None = None) -> str:
        seconds = max(time.monotonic() - self.started, 1e-6)
        rate = done / seconds
        text = f"{done:,} records, {rate:,.0f} records/s"
        if total:
            left = max(total - done, 0) / rate if rate > 0 else float("inf")
            text += f", {done / total:.0%} of {total:,}, about {_duration(left)} left"
        return text


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown time"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def start_person_feed(
    ctx: RunContext, marketo: Any, now: datetime | None = None, person_entities: Sequence[str] = ()
) -> bool:
    """Start the Marketo person change feed now, unless an incremental run already did.

    The token becomes the feed's head and the feed watermark of every person entity that has
    none, so ``sync_lead`` and ``sync_contact`` both start reading here (whichever runs first
    stages the chunk, the other reuses it). Without this, each would start at its own first run,
    and Marketo persons created between the copy and that run would never reach Dynamics.
    Called when a copy of everything starts (one Marketo call).

    Returns:
        Whether the feed was started now.
    """
    from crm_sync.engine.extract import FEED_HEAD_ENTITY

    m2d = Direction.M2D.value
    with session_scope(ctx.state) as session:
        if get_watermark(session, FEED_HEAD_ENTITY, m2d) is not None:
            return False
    token = marketo.get_paging_token(now or utcnow())
    with session_scope(ctx.state) as session:
        if get_watermark(session, FEED_HEAD_ENTITY, m2d) is not None:
            return False
        set_watermark(session, FEED_HEAD_ENTITY, m2d, token)
        for name in person_entities:
            if get_watermark(session, name, m2d) is None:
                set_watermark(session, name, m2d, token)
    log.info(
        "Marketo person feed starts now for %s: persons changed from here on reach Dynamics",
        list(person_entities),
    )
    return True


def take_handover_token(entity: EntityConfig, source: CopySource) -> str:
    """A change-tracking token taken now: changes after this moment are the incremental DAG's.

    The read selects the columns the incremental extract selects, because a delta link keeps
    the ``$select`` of the read that produced it (a key-only token would make every later
    incremental read return keys only).

    Raises:
        RuntimeError: The read ended without a delta link.
    """
    select, _ = _split_derived(dynamics_columns(entity))
    token: str | None = None
    for page in source.track_changes(entity.dynamics.entity_set, select, None, PAGE_SIZE):
        token = page.delta_link or token
    if not token:
        raise RuntimeError(f"{entity.name}: change tracking gave no delta link")
    return token


def extract_partition(
    entity: EntityConfig,
    ctx: RunContext,
    source: CopySource,
    scope: CopyScope,
    *,
    page_size: int = PAGE_SIZE,
) -> dict[str, Any]:
    """Stage the Dataverse rows of the partition page by page, resuming after the last staged page.

    Returns:
        An extract manifest in the incremental engine's shape (``dynamics.batches`` etc.), with
        ``pending`` holding the hand-over token when this copy takes one.
    """
    folder = ctx.staging.run_dir(entity.name, ctx.run_id)
    done = ctx.staging.read_json(folder, EXTRACT_MANIFEST)
    if done is not None:
        log.info(
            "%s: extract of this attempt already finished (%d rows); not read again",
            entity.name,
            done["dynamics"]["rows"],
        )
        return done
    progress = ctx.staging.read_json(folder, PROGRESS) or {
        "started_at": utcnow().isoformat(),
        "batches": [],
        "rows": 0,
        "next_link": None,
        "pages": 0,
        "token": None,
    }
    if scope.everything and progress["pages"] == 0 and progress["token"] is None:
        with session_scope(ctx.state) as session:
            has_watermark = get_watermark(session, entity.name, Direction.D2M.value) is not None
        if not has_watermark:
            progress["token"] = take_handover_token(entity, source)
            log.info(
                "%s: change-tracking token taken before the copy (hand-over to sync_%s)",
                entity.name,
                entity.name,
            )
            ctx.staging.write_json(folder, PROGRESS, progress)
    elif progress["pages"]:
        log.info(
            "%s: resuming the extract after %d staged pages (%d rows)",
            entity.name,
            progress["pages"],
            progress["rows"],
        )
    columns = dynamics_columns(entity)
    select, derived = _split_derived(columns)
    expand = ",".join(DERIVED_COLUMNS[c].expand for c in derived) or None
    rate = _Rate()
    read_now = 0
    if progress["pages"] == 0 or progress["next_link"]:
        pages = source.query_pages(
            entity.dynamics.entity_set,
            select=select,
            filter=scope.createdon_filter(),
            expand=expand,
            page_size=page_size,
            start_link=progress["next_link"],
        )
        for page in pages:
            rows = page.rows
            for row in rows:
                row.update({c: DERIVED_COLUMNS[c].value(row) for c in derived})
                for c in derived:
                    row.pop(DERIVED_COLUMNS[c].expand.split("(")[0], None)
            if rows:
                name = f"dynamics-{progress['pages']:05d}"
                ref = ctx.staging.write_frame(folder / "extract", name, rows_frame(rows, columns))
                progress["batches"].append(ref.to_dict())
                progress["rows"] += len(rows)
                read_now += len(rows)
            progress["pages"] += 1
            progress["next_link"] = page.next_link
            ctx.staging.write_json(folder, PROGRESS, progress)
            log.info("%s extract: page %d staged; %s", entity.name, progress["pages"], rate.line(read_now))
    pending = {Direction.D2M.value: progress["token"]} if progress["token"] else {}
    manifest = {
        "entity": entity.name,
        "run_id": ctx.run_id,
        "started_at": progress["started_at"],
        "pending": pending,
        "scope": scope.to_dict(),
        "dynamics": {
            "batches": progress["batches"],
            "deleted": [],
            "rows": progress["rows"],
            "deleted_rows": 0,
            "token": progress["token"],
            "initial": True,
        },
        "marketo": None,
    }
    ctx.staging.write_json(folder, EXTRACT_MANIFEST, manifest)
    log.info("%s extract done: %d rows in %d pages", entity.name, progress["rows"], progress["pages"])
    return manifest


# --- plan: load units ----------------------------------------------------------------------------


def _is_person(entity: EntityConfig) -> bool:
    return entity.marketo.object is MarketoObject.LEAD


def _payload_email(entity: EntityConfig, payload: Mapping[str, Any]) -> str | None:
    field_name = entity.marketo.email_field
    value = payload.get(field_name) if field_name else None
    text = str(value).strip().lower() if value not in (None, "") else ""
    return text or None


def _known_emails(
    ctx: RunContext, person_entities: Sequence[str], emails: Sequence[str]
) -> dict[str, set[str]]:
    """Dataverse ids already linked in the id map, by lower-case email (any person entity).

    Lower-case email has no index, so each ``IN`` query scans the person rows of the id map:
    a few hundred emails are looked up in chunks, more in one pass over those rows.
    """
    from sqlalchemy import func, select

    from crm_sync.state.models import IdMap

    found: dict[str, set[str]] = {}
    chunk = 500
    with read_scope(ctx.state) as session:
        if len(emails) <= 4 * chunk:
            for start in range(0, len(emails), chunk):
                part = list(emails[start : start + chunk])
                stmt = select(func.lower(IdMap.email), IdMap.dynamics_id).where(
                    IdMap.entity.in_(person_entities), func.lower(IdMap.email).in_(part)
                )
                for email, did in session.execute(stmt):
                    found.setdefault(str(email), set()).add(str(did).lower())
            return found
        wanted = set(emails)
        stmt = select(func.lower(IdMap.email), IdMap.dynamics_id).where(
            IdMap.entity.in_(person_entities), IdMap.email.is_not(None)
        )
        for email, did in session.execute(stmt.execution_options(yield_per=20_000)):
            if email in wanted:
                found.setdefault(str(email), set()).add(str(did).lower())
    return found


def _csv_bytes(payload: Mapping[str, Any], columns: Sequence[str]) -> int:
    """Bytes of the payload's line in an import file with ``columns`` (the hook's CSV dialect)."""
    from crm_sync_hooks.marketo_bulk import csv_cell

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([csv_cell(payload.get(c), 0, c) for c in columns])
    return len(out.getvalue().encode())


@dataclass
class _Unit:
    """A load unit: its kind (``bulk:<lookup field>`` or ``sync``), size and last plan."""

    kind: str
    records: int = 0
    size: int = 0
    last_plan: int = 0


def _plan_refs(transform: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(transform.get("plans") or transform.get("batches") or [])


def _upsert_payloads(
    ctx: RunContext, refs: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    for ref in refs:
        ops = ctx.staging.read_frame(ref["ops"])
        for did, op, payload in zip(ops[DYNAMICS_ID], ops["op"], ops["payload"], strict=True):
            if op == MARKETO_UPSERT:
                yield str(did), json.loads(payload)


@dataclass(frozen=True)
class UnitPolicy:
    """How operations are grouped for the load.

    Attributes:
        bulk_threshold: Person upserts in the partition from which bulk import is used.
        bulk_file_bytes: Target CSV size of one bulk unit.
        sync_unit_records: Records per sync unit.
    """

    bulk_threshold: int = BULK_THRESHOLD
    bulk_file_bytes: int = BULK_FILE_BYTES
    sync_unit_records: int = SYNC_UNIT_RECORDS


def _lookups(
    entity: EntityConfig,
    ctx: RunContext,
    refs: Sequence[Mapping[str, Any]],
    person_entities: Sequence[str],
) -> tuple[dict[str, str], list[str], int]:
    """Lookup field per person upsert (key or email), the CSV columns and the upsert count."""
    from crm_sync.state import lookup_links

    emails: dict[str, str] = {}
    counts: dict[str, int] = {}
    columns: dict[str, None] = {}
    ids: list[str] = []
    for did, payload in _upsert_payloads(ctx, refs):
        ids.append(did)
        columns.update(dict.fromkeys(payload))
        email = _payload_email(entity, payload)
        if email:
            emails[did] = email
            counts[email] = counts.get(email, 0) + 1
    linked: set[str] = set()
    with read_scope(ctx.state) as session:
        for start in range(0, len(ids), 5000):
            links = lookup_links(session, entity.name, dynamics_ids=ids[start : start + 5000])
            linked |= set(links["dynamics_id"].astype(str).str.lower())
    unique = sorted({e for did, e in emails.items() if counts[e] == 1 and did not in linked})
    known = _known_emails(ctx, person_entities, unique)
    lookup: dict[str, str] = {}
    key = entity.marketo.key
    email_field = entity.marketo.email_field or key
    for did in ids:
        email = emails.get(did)
        others = known.get(email or "", set()) - {did}
        free = email is not None and counts[email] == 1 and did not in linked and not others
        lookup[did] = email_field if free else key
    return lookup, list(columns), len(ids)


def plan_partition(
    entity: EntityConfig,
    ctx: RunContext,
    *,
    person_entities: Sequence[str] = (),
    policy: UnitPolicy | None = None,
) -> dict[str, Any]:
    """Plan the partition's writes and stage them as load units; idempotent per attempt.

    Returns:
        The transform manifest: ``batches`` (load units, each with ``mode`` bulk/sync),
        ``plans`` (the staged plans), ``counts`` and ``summary`` (creates/updates and a sample).
    """
    policy = policy or UnitPolicy()
    folder = ctx.staging.run_dir(entity.name, ctx.run_id)
    existing = ctx.staging.read_json(folder, TRANSFORM_MANIFEST)
    if existing is not None and "plans" in existing:
        log.info(
            "%s: plan of this attempt already staged (%d load units)", entity.name, len(existing["batches"])
        )
        return existing
    extract = ctx.staging.read_json(folder, EXTRACT_MANIFEST)
    if extract is None:
        raise FileNotFoundError(f"{entity.name}: attempt {ctx.run_id} has no staged extract")
    result = transform_changes(entity, ctx, extract)
    refs = list(result["batches"])
    lookup: dict[str, str] = {}
    columns: list[str] = []
    upserts = 0
    if _is_person(entity):
        lookup, columns, upserts = _lookups(entity, ctx, refs, person_entities or [entity.name])
    bulk = _is_person(entity) and upserts >= policy.bulk_threshold
    retry_roles = _open_error_ids(entity, ctx) if entity.roles is not None else set()
    units = _build_units(entity, ctx, refs, lookup, columns, bulk, policy, retry_roles)
    summary = _summary(entity, ctx, refs, lookup)
    manifest = {
        "entity": entity.name,
        "run_id": ctx.run_id,
        "plans": refs,
        "batches": units,
        "counts": result["counts"],
        "summary": summary,
    }
    ctx.staging.write_json(folder, TRANSFORM_MANIFEST, manifest)
    log.info(
        "%s plan: %s; %d load units (%s)",
        entity.name,
        result["counts"],
        len(units),
        ", ".join(sorted({u["mode"] for u in units})) or "nothing to write",
    )
    return manifest


def _open_error_ids(entity: EntityConfig, ctx: RunContext) -> set[str]:
    """Records of the entity with an unresolved error (their roles are sent again)."""
    from crm_sync.state.errors import open_errors

    with session_scope(ctx.state) as session:
        errors = open_errors(session, entity=entity.name)
    return set(errors["source_id"].astype(str).str.lower()) if len(errors) else set()


def _prepared_ops(
    entity: EntityConfig,
    ops: pd.DataFrame,
    lookup: Mapping[str, str],
    bulk: bool,
    retry_roles: set[str] | frozenset[str] = frozenset(),
) -> tuple[pd.DataFrame, pd.Series]:
    """A plan's ops with lookup hints in the payloads, and each row's unit kind.

    The incremental plan re-sends an opportunity's roles with every change of it; a copy reads
    every opportunity, so roles are only sent with their opportunity's own write, or when the
    opportunity has an open error (a role that could not be resolved before).
    """
    ops = ops.assign(**{DYNAMICS_ID: ops[DYNAMICS_ID].astype(str)})
    roles = ops["op"].eq(MARKETO_ROLE_UPSERT)
    if roles.any():
        written = set(ops.loc[ops["op"].eq(MARKETO_UPSERT), DYNAMICS_ID].str.lower())
        ids = ops[DYNAMICS_ID].str.lower()
        ops = ops[~roles | ids.isin(written) | ids.isin(retry_roles)].reset_index(drop=True)
    lookups = ops[DYNAMICS_ID].map(lambda d: lookup.get(d, entity.marketo.key))
    email_field = entity.marketo.email_field
    if email_field:
        hinted = (ops["op"].eq(MARKETO_UPSERT) & lookups.eq(email_field)).to_numpy()
        if hinted.any():
            ops.loc[hinted, "payload"] = [_hinted(p, email_field) for p in ops.loc[hinted, "payload"]]
    upsert = ops["op"].eq(MARKETO_UPSERT)
    only_upserts = upsert.groupby(ops[DYNAMICS_ID], sort=False).transform("all").astype(bool)
    kinds = ("bulk:" + lookups).where(only_upserts & bulk, "sync")
    return ops, kinds


def _build_units(
    entity: EntityConfig,
    ctx: RunContext,
    refs: Sequence[Mapping[str, Any]],
    lookup: Mapping[str, str],
    columns: Sequence[str],
    bulk: bool,
    policy: UnitPolicy,
    retry_roles: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Regroup the staged plans into load units; every op of one record stays in one unit.

    Units of one kind (bulk import per lookup field, or sync calls) fill up in plan order: a bulk
    unit up to ``bulk_file_bytes`` of CSV, a sync unit up to ``sync_unit_records`` records. The
    first pass sizes the units, the second stages each as soon as its last plan has been read, so
    only the units being filled are held in memory.
    """
    units: list[_Unit] = []
    filling: dict[str, int] = {}
    row_units: list[np.ndarray] = []
    for index, ref in enumerate(refs):
        ops, kinds = _prepared_ops(entity, ctx.staging.read_frame(ref["ops"]), lookup, bulk, retry_roles)
        first = ~ops[DYNAMICS_ID].duplicated()
        record_unit: dict[str, int] = {}
        for did, kind, payload in zip(
            ops.loc[first, DYNAMICS_ID], kinds[first], ops.loc[first, "payload"], strict=True
        ):
            size = 1 if kind == "sync" else _csv_bytes(_unhinted(payload), columns)
            limit = policy.sync_unit_records if kind == "sync" else policy.bulk_file_bytes
            number = filling.get(kind)
            if number is None or units[number].size + size > limit:
                number = filling[kind] = len(units)
                units.append(_Unit(kind))
            unit = units[number]
            unit.records += 1
            unit.size += size
            unit.last_plan = index
            record_unit[did] = number
        row_units.append(ops[DYNAMICS_ID].map(record_unit).to_numpy(dtype=np.int64))

    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "units"
    parts: dict[int, tuple[list[pd.DataFrame], list[pd.DataFrame]]] = {}
    staged: list[dict[str, Any]] = []
    for index, ref in enumerate(refs):
        ops, _ = _prepared_ops(entity, ctx.staging.read_frame(ref["ops"]), lookup, bulk, retry_roles)
        links = ctx.staging.read_frame(ref["links"])
        by_record = dict(zip(ops[DYNAMICS_ID], row_units[index], strict=True))
        link_units = links[DYNAMICS_ID].astype(str).map(by_record).to_numpy() if len(links) else np.array([])
        for number in np.unique(row_units[index]):
            ops_part = ops[row_units[index] == number]
            links_part = links[link_units == number] if len(links) else links
            bucket = parts.setdefault(int(number), ([], []))
            bucket[0].append(ops_part)
            bucket[1].append(links_part)
        for number in sorted(n for n in parts if units[n].last_plan == index):
            ops_frames, link_frames = parts.pop(number)
            unit = units[number]
            name = f"unit-{number:05d}"
            staged.append(
                {
                    "name": name,
                    "mode": unit.kind.split(":")[0],
                    "lookup": unit.kind.split(":", 1)[1] if ":" in unit.kind else None,
                    "records": unit.records,
                    "ops": ctx.staging.write_frame(
                        folder / name, "ops", pd.concat(ops_frames, ignore_index=True)
                    ).to_dict(),
                    "links": ctx.staging.write_frame(
                        folder / name, "links", pd.concat(link_frames, ignore_index=True).astype(object)
                    ).to_dict(),
                }
            )
    return sorted(staged, key=lambda u: u["name"])


def _unhinted(payload: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(payload)
    data.pop(LOOKUP_HINT, None)
    return data


def _hinted(payload: str, lookup_field: str) -> str:
    data = json.loads(payload)
    data[LOOKUP_HINT] = lookup_field
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _summary(
    entity: EntityConfig, ctx: RunContext, refs: Sequence[Mapping[str, Any]], lookup: Mapping[str, str]
) -> dict[str, Any]:
    """What the load would do: records created/updated (and matched by email), a sample of each."""
    from crm_sync.state import lookup_links

    creates = updates = by_email = 0
    samples: dict[str, list[dict[str, Any]]] = {"create": [], "update": []}
    for ref in refs:
        ops = ctx.staging.read_frame(ref["ops"])
        upserts = ops[ops["op"].eq(MARKETO_UPSERT)]
        if upserts.empty:
            continue
        ids = upserts[DYNAMICS_ID].astype(str).str.lower().tolist()
        with session_scope(ctx.state) as session:
            linked = set(
                lookup_links(session, entity.name, dynamics_ids=ids)["dynamics_id"].astype(str).str.lower()
            )
        for did, payload in zip(ids, upserts["payload"], strict=True):
            kind = "update" if did in linked else "create"
            if kind == "update":
                updates += 1
            else:
                creates += 1
                by_email += lookup.get(did) == entity.marketo.email_field
            if len(samples[kind]) < SAMPLE_SIZE:
                samples[kind].append(json.loads(payload))
    return {
        "create_or_match": creates,
        "matched_by_email_if_found": by_email,
        "update": updates,
        "samples": samples,
    }


# --- load ----------------------------------------------------------------------------------------


class BulkAwareMarketo:
    """The Marketo client the load of one unit writes through.

    Person upserts of a bulk unit go to one bulk import (lookup field from the unit); person
    upserts carrying a lookup hint are sent with that lookup field; everything else is passed
    to the hook unchanged.
    """

    def __init__(self, hook: Any, *, mode: str, lookup: str | None, first_poll_seconds: float = 0.0) -> None:
        self._hook = hook
        self.mode = mode
        self.lookup = lookup
        self.first_poll_seconds = first_poll_seconds
        self.imports: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)

    def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        action: str = "createOrUpdate",
        lookup_field: str = "email",
        partition_name: str | None = None,
    ) -> list[WriteResult]:
        """Write persons: bulk import for a bulk unit, else sync calls grouped by lookup field."""
        groups: dict[str, list[int]] = {}
        cleaned: list[dict[str, Any]] = []
        for index, record in enumerate(records):
            # The load parsed these payloads for this call: a hint is taken out in place, since
            # a copy of a bulk unit's tens of thousands of records costs a hundred MB or more.
            data = record if isinstance(record, dict) else dict(record)
            hint = data.pop(LOOKUP_HINT, None)
            cleaned.append(data)
            groups.setdefault(str(hint or lookup_field), []).append(index)
        results: dict[int, WriteResult] = {}
        for field_name, indexes in groups.items():
            part = [cleaned[i] for i in indexes]
            if self.mode == "bulk" and action == "createOrUpdate":
                written = self._bulk(part, field_name)
            else:
                written = self._hook.sync_leads(
                    part, action=action, lookup_field=field_name, partition_name=partition_name
                )
            for res in written:
                results[indexes[res.index]] = _reindexed(res, indexes[res.index])
        return [results[i] for i in range(len(records))]

    def _bulk(self, records: list[dict[str, Any]], lookup_field: str) -> list[WriteResult]:
        from crm_sync_hooks.results import WriteResult, WriteStatus

        fields = list(dict.fromkeys(k for r in records for k in r))
        from crm_sync_hooks.marketo_bulk import MAX_IMPORT_FILE_BYTES

        jobs = self._hook.bulk_import_leads(
            records,
            fields,
            lookup_field=lookup_field,
            first_poll_seconds=self.first_poll_seconds,
            max_file_bytes=MAX_IMPORT_FILE_BYTES - 10_000,
        )
        self.imports.extend(jobs)
        failed: dict[int, WriteResult] = {}
        for job in jobs:
            for res in job.failures:
                failed[res.index] = WriteResult(
                    res.index, WriteStatus.FAILED, reason=res.reason, code=res.code or "bulk-import"
                )
        return [failed.get(i, WriteResult(i, WriteStatus.UPSERTED)) for i in range(len(records))]


def _reindexed(result: WriteResult, index: int) -> WriteResult:
    from dataclasses import replace

    return replace(result, index=index)


# Seconds per imported row assumed before the first job of a load has been measured; later
# jobs wait what the previous one took per row. Waiting before the first status call saves
# the calls that would only see a job still queued.
_FIRST_POLL_PER_ROW = 0.00015
_FIRST_POLL_BASE = 1.0


def first_poll_estimate(rows: int, seconds_per_row: float | None = None) -> float:
    """Seconds to wait before the first status call of an import of ``rows`` rows."""
    per_row = seconds_per_row if seconds_per_row is not None else _FIRST_POLL_PER_ROW
    return _FIRST_POLL_BASE + rows * per_row


def load_unit(
    entity: EntityConfig,
    ctx: RunContext,
    unit: Mapping[str, Any],
    marketo: MarketoClient,
    *,
    total_records: int | None = None,
) -> dict[str, Any]:
    """Write one load unit, unless an earlier attempt already did (its outcome is staged)."""
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "plans" / unit["name"]
    done = ctx.staging.read_json(folder, OUTCOME)
    if done is not None:
        log.info(
            "%s %s: loaded by an earlier try (%d records); not written again",
            entity.name,
            unit["name"],
            done["loaded"],
        )
        return {**done, "reused": True}
    started = time.monotonic()
    started_at = utcnow().isoformat()
    pace_dir = ctx.staging.root / "full_copy"
    pace = ctx.staging.read_json(pace_dir, IMPORT_PACE) or {}
    client = BulkAwareMarketo(
        marketo,
        mode=str(unit.get("mode") or "sync"),
        lookup=unit.get("lookup"),
        first_poll_seconds=first_poll_estimate(int(unit.get("records") or 0), pace.get("seconds_per_row")),
    )
    loaded = load_batch(entity, ctx, dict(unit), marketo=client)
    seconds = max(time.monotonic() - started, 1e-6)
    outcome = {
        **loaded.to_xcom(),
        "seconds": round(seconds, 3),
        "imports": len(client.imports),
        "mode": unit.get("mode"),
        "started_at": started_at,
    }
    ctx.staging.write_json(folder, OUTCOME, outcome)
    for job in client.imports:
        if job.seconds and job.rows_submitted:
            # The next import's first status call waits as long as this one took per row
            # (shared by every entity and run: it measures this Marketo instance).
            pace = {"seconds_per_row": job.seconds / job.rows_submitted}
            ctx.staging.write_json(pace_dir, IMPORT_PACE, pace)
    log.info(
        "%s %s (%s): %d loaded, %d failed, %.0f records/s%s",
        entity.name,
        unit["name"],
        unit.get("mode"),
        loaded.loaded,
        loaded.failed,
        loaded.loaded / seconds,
        f"; {total_records:,} records in this copy" if total_records else "",
    )
    return outcome


def unit_progress(entity: EntityConfig, ctx: RunContext, transform: Mapping[str, Any]) -> str:
    """Progress of the load: records written so far, of the total, from the staged outcomes."""
    total = sum(int(u.get("records") or 0) for u in transform.get("batches", []))
    done = 0
    for unit in transform.get("batches", []):
        folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "plans" / unit["name"]
        outcome = ctx.staging.read_json(folder, OUTCOME)
        if outcome is not None:
            done += int(outcome.get("loaded", 0)) + int(outcome.get("failed", 0))
    return f"{entity.name}: {done:,} of {total:,} records written"


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
    if not missing:
        log.info("%s: every copied person already has its Marketo id", entity.name)
        return 0
    key = entity.marketo.key
    found: dict[str, str] = {}
    until = utcnow() + timedelta(minutes=1)
    pages = marketo.bulk_extract_leads(
        ["id", key], since, until, date_filter="updatedAt", poll_seconds=2.0, first_poll_seconds=3.0
    )
    for rows in pages:
        for row in rows:
            if row.get(key) and row.get("id"):
                found[str(row[key]).strip().lower()] = str(row["id"])
    table = cast("Table", IdMap.__table__)
    statement = (
        update(table)
        .where(table.c.entity == bindparam("e"), table.c.dynamics_id == bindparam("d"))
        .values(marketo_id=bindparam("m"))
    )
    stored = 0
    with session_scope(ctx.state) as session:
        rows = session.execute(
            select(IdMap.entity, IdMap.dynamics_id).where(IdMap.entity.in_(names), IdMap.marketo_id.is_(None))
        ).all()
        # In chunks: a copy of a million persons would otherwise hold a million parameter dicts.
        for start in range(0, len(rows), LINK_UPDATE_CHUNK):
            updates = [
                {"e": e, "d": d, "m": found[d.lower()]}
                for e, d in rows[start : start + LINK_UPDATE_CHUNK]
                if d.lower() in found
            ]
            if updates:
                session.execute(statement, updates)
                stored += len(updates)
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
        folder = _partition_dir(staging, entity.name, scope_key, mapping_fingerprint(entity))
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
