"""Plan of a full copy: the incremental transform, regrouped into load units (bulk import files
or sync calls), with the lookup field of each person (its key, or email when no other record
holds that email).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crm_sync.config import EntityConfig, MarketoObject
from crm_sync.engine.extract import (
    EXTRACT_MANIFEST,
)
from crm_sync.engine.transform import TRANSFORM_MANIFEST, transform_changes
from crm_sync.ops import MARKETO_ROLE_UPSERT, MARKETO_UPSERT
from crm_sync.state import read_scope, session_scope
from crm_sync.transforms import DYNAMICS_ID

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from crm_sync.engine.context import RunContext

log = logging.getLogger(__name__)

SYNC_CALL_RECORDS = 300  # Marketo's largest sync batch
SYNC_UNIT_RECORDS = 20 * SYNC_CALL_RECORDS  # records per sync load unit (20 calls)
# A bulk unit's CSV (rows and header) stays just under Marketo's 10 MB file limit, read as
# 10,000,000 bytes (the hook's reading; unconfirmed whether Marketo means 10 MiB), so the hook
# sends each unit as one file.
BULK_FILE_BYTES = 9_900_000
BULK_THRESHOLD = 1_000  # person upserts in a partition from which bulk import is used
LOOKUP_HINT = "_lookup"  # payload entry naming a person's lookup field (removed before sending)
SAMPLE_SIZE = 3


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
