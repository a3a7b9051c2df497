"""Plan of a full copy: the incremental transform, regrouped into load units (bulk import files
or sync calls), with the lookup field of each person (its key, or email when no other record
holds that email).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crm_sync.config import EntityConfig, MarketoObject
from crm_sync.engine.extract import EXTRACT_MANIFEST
from crm_sync.engine.full_copy.import_sizes import ImportCells, import_cells
from crm_sync.engine.full_copy.matching import (
    Lookups,
    PlanLookups,
    count_emails,
    person_upserts,
    plan_lookups,
)
from crm_sync.engine.json_records import parse
from crm_sync.engine.plan_frames import IMPORT_LINE, IMPORT_LINE_WIDTH, LINKS_SCHEMA, OPS_SCHEMA
from crm_sync.engine.transform import TRANSFORM_MANIFEST, transform_changes
from crm_sync.ops import MARKETO_ROLE_UPSERT, MARKETO_UPSERT
from crm_sync.state import session_scope
from crm_sync.transforms import DYNAMICS_ID
from crm_sync.transforms.frames import member

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence, Set

    from crm_sync.engine.context import RunContext
    from crm_sync.engine.staging import FrameWriter

log = logging.getLogger(__name__)

SYNC_CALL_RECORDS = 300  # Marketo's largest sync batch
SYNC_UNIT_RECORDS = 20 * SYNC_CALL_RECORDS  # records per sync load unit (20 calls)
# A bulk unit's CSV (rows and header) stays just under Marketo's 10 MB file limit, read as
# 10,000,000 bytes (the hook's reading; unconfirmed whether Marketo means 10 MiB), so the hook
# sends each unit as one file.
BULK_FILE_BYTES = 9_900_000
BULK_THRESHOLD = 1_000  # person upserts in a partition from which bulk import is used
SAMPLE_SIZE = 3


# --- plan: load units ----------------------------------------------------------------------------


def _is_person(entity: EntityConfig) -> bool:
    return entity.marketo.object is MarketoObject.LEAD


@dataclass
class _Unit:
    """A load unit being filled: its number, kind (``bulk:<lookup>``, ``sync:<lookup>`` or
    ``sync``), size, and the writers its ops and links are staged through, part by part."""

    number: int
    kind: str
    ops: FrameWriter
    links: FrameWriter
    records: int = 0
    size: int = 0


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
    lookups = count_emails(ctx, refs, person_entities or [entity.name]) if _is_person(entity) else None
    bulk = lookups is not None and lookups.upserts >= policy.bulk_threshold
    retry_roles = _open_error_ids(entity, ctx) if entity.roles is not None else set()
    units, summary = _build_units(entity, ctx, refs, lookups, bulk, policy, retry_roles)
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
    by_email: Set[str] | None,
    bulk: bool,
    retry_roles: set[str] | frozenset[str] = frozenset(),
) -> tuple[pd.DataFrame, pd.Series]:
    """A plan's ops and each row's unit kind: ``sync`` for other than persons, else
    ``bulk:<lookup>`` or ``sync:<lookup>``, the lookup field email for ``by_email``, else the key.

    The incremental plan re-sends an opportunity's roles with every change of it; a copy reads
    every opportunity, so roles are only sent with their opportunity's own write, or when the
    opportunity has an open error (a role that could not be resolved before).
    """
    ops = ops.assign(**{DYNAMICS_ID: ops[DYNAMICS_ID].astype(str)})
    ids = ops[DYNAMICS_ID].str.lower()
    roles = ops["op"].eq(MARKETO_ROLE_UPSERT)
    if roles.any():
        written = set(ids[ops["op"].eq(MARKETO_UPSERT)])
        keep = ~roles.to_numpy() | member(ids, written) | member(ids, retry_roles)
        ops, ids = ops[keep].reset_index(drop=True), ids[keep].reset_index(drop=True)
    if by_email is None:
        return ops, pd.Series("sync", index=ops.index)
    key = entity.marketo.key
    lookup = pd.Series(key, index=ops.index).where(~member(ids, by_email), entity.marketo.email_field or key)
    upsert = ops["op"].eq(MARKETO_UPSERT)
    only_upserts = upsert.groupby(ops[DYNAMICS_ID], sort=False).transform("all").astype(bool)
    mode = pd.Series("sync:", index=ops.index).where(~(only_upserts & bulk), "bulk:")
    return ops, mode + lookup


def _build_units(
    entity: EntityConfig,
    ctx: RunContext,
    refs: Sequence[Mapping[str, Any]],
    lookups: Lookups | None,
    bulk: bool,
    policy: UnitPolicy,
    retry_roles: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Regroup the staged plans into load units in one pass; the units and the plan's summary.

    Every op of one record stays in one unit. Units of one kind fill up in plan order: a bulk
    unit up to ``bulk_file_bytes`` of CSV, a sync unit up to ``sync_unit_records`` records.
    Each plan's part of a unit is appended to the unit's staged files at once, and a unit is
    closed when the next record of its kind does not fit: memory holds one staged plan, never
    a unit or the partition.
    """
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "units"
    filling: dict[str, _Unit] = {}
    staged: list[dict[str, Any]] = []
    columns: dict[str, None] = {}  # the CSV columns of the bulk units, as far as seen
    summary = _Summary()
    count = 0
    unstaged: dict[int, _Unit] = {}  # units whose files are still being written

    def new_unit(kind: str) -> _Unit:
        nonlocal count
        name = f"unit-{count:05d}"
        unit = _Unit(
            count,
            kind,
            ctx.staging.frame_writer(folder / name, "ops", OPS_SCHEMA),
            ctx.staging.frame_writer(folder / name, "links", LINKS_SCHEMA),
        )
        count += 1
        unstaged[unit.number] = unit
        return unit

    def stage(unit: _Unit) -> dict[str, Any]:
        del unstaged[unit.number]
        return _staged(unit, list(columns))

    try:
        for ref in refs:
            links = ctx.staging.read_frame(ref["links"])
            plan_ops = ctx.staging.read_frame(ref["ops"])
            upserts = person_upserts(plan_ops, links)
            found = plan_lookups(entity, ctx, upserts, lookups)
            summary.add(plan_ops, upserts, found)
            ops, kinds = _prepared_ops(
                entity, plan_ops, found.by_email if lookups else None, bulk, retry_roles
            )
            first = (~ops[DYNAMICS_ID].duplicated()).to_numpy()
            record_kinds = kinds[first].tolist()
            sizes = [1] * len(record_kinds)
            bulk_rows = [i for i, kind in enumerate(record_kinds) if kind.startswith("bulk:")]
            if bulk_rows:
                # Each record's line in the import file, built column by column and measured
                # as the load will write it (the file's columns: those seen so far), and
                # staged beside its payload.
                cells = import_cells(ops["payload"][first].to_numpy()[bulk_rows].tolist())
                columns.update(dict.fromkeys(cells.columns))
                for i, size in zip(bulk_rows, cells.line_bytes(len(columns)).tolist(), strict=True):
                    sizes[i] = size
                ops = _with_lines(
                    ops, np.flatnonzero(first)[bulk_rows], cells, list(columns), record_kinds, bulk_rows
                )
                del cells
            closed: list[_Unit] = []
            record_unit: dict[str, int] = {}
            touched: dict[int, _Unit] = {}
            for did, kind, size in zip(ops[DYNAMICS_ID][first], record_kinds, sizes, strict=True):
                limit = policy.bulk_file_bytes if kind.startswith("bulk:") else policy.sync_unit_records
                unit = filling.get(kind)
                if unit is None or unit.size + size > limit:
                    if unit is not None:
                        closed.append(unit)
                    unit = filling[kind] = new_unit(kind)
                unit.records += 1
                unit.size += size
                record_unit[did] = unit.number
                touched[unit.number] = unit
            numbers = ops[DYNAMICS_ID].map(record_unit).to_numpy()
            link_numbers = links[DYNAMICS_ID].astype(str).map(record_unit).to_numpy()
            for number, unit in touched.items():
                unit.ops.write(ops[numbers == number])
                unit.links.write(links[link_numbers == number])
            staged += [stage(unit) for unit in closed]
    except BaseException:
        for unit in unstaged.values():  # a failed plan leaves no half-written unit files
            unit.ops.abort()
            unit.links.abort()
        raise
    staged += [stage(unit) for unit in filling.values()]
    return sorted(staged, key=lambda u: u["name"]), summary.as_dict()


def _staged(unit: _Unit, columns: list[str]) -> dict[str, Any]:
    """The unit's manifest entry, its files closed; a bulk unit names its import file's
    columns (those of the partition seen so far: every line staged in it has its first
    ``line_width`` of them)."""
    mode, _, lookup = unit.kind.partition(":")
    return {
        "name": f"unit-{unit.number:05d}",
        "mode": mode,
        "lookup": lookup or None,
        "records": unit.records,
        "ops": unit.ops.close().to_dict(),
        "links": unit.links.close().to_dict(),
        **({"columns": columns} if mode == "bulk" else {}),
    }


def _with_lines(
    ops: pd.DataFrame,
    positions: np.ndarray,
    cells: ImportCells,
    header: list[str],
    record_kinds: list[str],
    bulk_rows: list[int],
) -> pd.DataFrame:
    """``ops`` with the import lines of the bulk records (at ``positions``, one per record of
    ``bulk_rows``) and each line's column count; a record whose lookup field is empty gets no
    line (the load then writes its unit from the payloads, and the hook reports it skipped)."""
    lines = cells.lines(header)
    has_lookup = np.ones(len(bulk_rows), dtype=bool)
    kinds = np.array([record_kinds[i] for i in bulk_rows], dtype=object)
    for kind in set(kinds.tolist()):
        lookup = kind.partition(":")[2]
        cell = cells.cells.get(lookup)
        filled = (
            np.zeros(len(bulk_rows), dtype=bool)
            if cell is None
            else pc.fill_null(pc.not_equal(cell, ""), False).to_numpy(zero_copy_only=False)
        )
        has_lookup &= ~(kinds == kind) | filled
    # Each ops row's line, taken in Arrow (a null index gives a null line): the lines stay
    # Arrow memory up to the staged file.
    at = np.full(len(ops), -1, dtype=np.int64)
    at[positions[has_lookup]] = np.flatnonzero(has_lookup)
    missing = at < 0
    line = lines.take(pa.array(at, mask=missing))
    width = pa.array(np.full(len(ops), len(header), dtype=np.int32), mask=missing)
    return ops.assign(
        **{
            IMPORT_LINE: pd.arrays.ArrowExtensionArray(line),
            IMPORT_LINE_WIDTH: pd.arrays.ArrowExtensionArray(width),
        }
    )


@dataclass
class _Summary:
    """What the load would do: records created/updated (and matched by email), a sample of each."""

    creates: int = 0
    updates: int = 0
    by_email: int = 0
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"create": [], "update": []})

    def add(self, ops: pd.DataFrame, upserts: pd.DataFrame, found: PlanLookups) -> None:
        if upserts.empty:
            return
        is_update = member(upserts["id"], found.linked)
        self.updates += int(is_update.sum())
        self.creates += int((~is_update).sum())
        self.by_email += int(member(upserts["id"][~is_update], found.by_email).sum())
        payloads = ops.loc[ops["op"].eq(MARKETO_UPSERT), "payload"].to_numpy()
        for kind, mask in (("update", is_update), ("create", ~is_update)):
            for payload in payloads[mask][: SAMPLE_SIZE - len(self.samples[kind])]:
                self.samples[kind].append(parse(payload))

    def as_dict(self) -> dict[str, Any]:
        return {
            "create_or_match": self.creates,
            "matched_by_email_if_found": self.by_email,
            "update": self.updates,
            "samples": self.samples,
        }
