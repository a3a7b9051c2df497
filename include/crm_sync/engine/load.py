"""Load: send one staged plan with the hooks' batch writers and record each record's outcome.

Idempotent: every operation is an upsert keyed on a stable id (the Dataverse GUID on both
sides) or a delete, so a retried load re-sends the same staged records without creating
duplicates. The id map is filled only for records whose every write succeeded; failures go to
the record-error table; a batch outcome file is staged last, as proof for the commit.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import pyarrow as pa

from crm_sync.config import DeletePolicy, Direction, EntityConfig, MarketoObject
from crm_sync.engine.contracts import LoadBatch, LoadOutcome
from crm_sync.engine.gone_persons import DELETED_IN_MARKETO, gone_reason, settle_gone
from crm_sync.engine.json_records import ImportLines, JsonRecords, take
from crm_sync.engine.loaded_links import marketo_ids_of, store_links
from crm_sync.engine.plan_frames import IMPORT_LINE, IMPORT_LINE_WIDTH
from crm_sync.ops import (
    DYNAMICS_CREATE,
    DYNAMICS_UPSERT,
    MARKETO_DELETE,
    MARKETO_FLAG_DELETED,
    MARKETO_LINK,
    MARKETO_MERGE,
    MARKETO_REPOINT,
    MARKETO_ROLE_UPSERT,
    MARKETO_UPSERT,
)
from crm_sync.state import (
    park_errors,
    record_errors,
    resolve_errors,
    session_scope,
    set_link_state,
    upsert_links,
)
from crm_sync.state.models import MERGED
from crm_sync.transforms import DYNAMICS_ID, MARKETO_ID
from crm_sync.transforms.links import deletion_records
from crm_sync_hooks.results import ROW_EXISTS, ROW_MISSING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crm_sync.engine.clients import DynamicsClient, MarketoClient
    from crm_sync.engine.context import RunContext
    from crm_sync_hooks.results import WriteResult

log = logging.getLogger(__name__)

OUTCOME = "outcome"
DYNAMICS_BATCH_OPERATIONS = 1000  # operations Dataverse accepts in one $batch request
# "Not found" answers to a delete or a deleted-flag update: the record is already gone.
_GONE_CODES = {"1004", "1013", "610", "702"}
# Dataverse first: a Marketo person is pointed at a created lead only once the lead exists.
OP_ORDER = (
    DYNAMICS_CREATE,
    DYNAMICS_UPSERT,
    MARKETO_LINK,
    MARKETO_MERGE,  # a merged record's person into its survivor's
    MARKETO_REPOINT,  # a taken-over person re-keyed before its new record's upsert finds it
    MARKETO_UPSERT,
    MARKETO_ROLE_UPSERT,  # after the opportunities they point at
    MARKETO_FLAG_DELETED,
    MARKETO_DELETE,
)
ROLE_KEY = ("externalOpportunityId", "leadId", "role")
_OBJECT_PATHS = {
    MarketoObject.COMPANY: "companies",
    MarketoObject.OPPORTUNITY: "opportunities",
    MarketoObject.OPPORTUNITY_ROLE: "opportunities/roles",
    MarketoObject.SALES_PERSON: "salespersons",
}


def marketo_object_path(entity: EntityConfig) -> str:
    """REST path segment of the entity's Marketo object (``companies``, ``customobjects/x``...)."""
    if entity.marketo.object is MarketoObject.CUSTOM_OBJECT:
        return f"customobjects/{entity.marketo.api_name}"
    if entity.marketo.object is MarketoObject.LEAD:
        return "leads"
    return _OBJECT_PATHS[entity.marketo.object]


# Not a staged operation: how the load sends the MARKETO_UPSERT payloads of persons already linked
# to a Marketo person. Their payloads hold the changed fields only, so they must never create a
# person (Marketo would make a half-empty one if the linked person was deleted there): updateOnly,
# and "Lead not found" means the person is gone from Marketo.
MARKETO_UPDATE_LINKED = "marketo_update_linked"
_PERSON_GONE = "1004"


def _write(
    entity: EntityConfig,
    op: str,
    payloads: Sequence[dict[str, Any]],
    marketo: MarketoClient | None,
    dynamics: DynamicsClient | None,
) -> list[WriteResult]:
    """Dispatch one operation kind to the right hook writer."""
    key = entity.marketo.key
    if op in (DYNAMICS_UPSERT, DYNAMICS_CREATE):
        if dynamics is None:
            raise ValueError(f"{entity.name}: a Dynamics client is needed to load {op}")
        if op == DYNAMICS_CREATE:
            return _create_rows(entity, payloads, dynamics)
        return _dynamics_write(entity, payloads, dynamics, "existing")
    if marketo is None:
        raise ValueError(f"{entity.name}: a Marketo client is needed to load {op}")
    is_person = entity.marketo.object is MarketoObject.LEAD
    if op == MARKETO_UPSERT:
        if is_person:
            return marketo.sync_leads(payloads, action="createOrUpdate", lookup_field=key)
        return marketo.sync_objects(marketo_object_path(entity), payloads, required_fields=[key])
    if op in (MARKETO_UPDATE_LINKED, MARKETO_FLAG_DELETED):
        return marketo.sync_leads(payloads, action="updateOnly", lookup_field=key)
    if op in (MARKETO_LINK, MARKETO_REPOINT):
        return marketo.sync_leads(payloads, action="updateOnly", lookup_field="id")
    if op == MARKETO_MERGE:
        results = [marketo.merge_leads(int(p["winner"]), [int(i) for i in p["losers"]]) for p in payloads]
        return [replace(r, index=i) for i, r in enumerate(results)]
    if op == MARKETO_ROLE_UPSERT:
        return marketo.sync_objects("opportunities/roles", payloads, required_fields=list(ROLE_KEY))
    if op == MARKETO_DELETE:
        if is_person:
            raise ValueError(f"{entity.name}: persons are never deleted, only flagged")
        return marketo.delete_objects(marketo_object_path(entity), payloads, delete_by="dedupeFields")
    raise ValueError(f"{entity.name}: unknown staged operation {op!r}")


def _dynamics_write(
    entity: EntityConfig,
    payloads: Sequence[dict[str, Any]],
    dynamics: DynamicsClient,
    only: Literal["existing", "new"],
) -> list[WriteResult]:
    """Update linked rows (``If-Match: *``: a row deleted in Dynamics since the extract, or
    while its change waited for a retry, is not re-created) or create new ones
    (``If-None-Match: *``: an existing row is never overwritten by a create)."""
    dkey = entity.dynamics.key
    # One $batch per load batch (at most 300 records; Dataverse takes up to 1,000 operations):
    # each operation still succeeds or fails on its own, and calls stay few.
    return dynamics.upsert_records(
        entity.dynamics.entity_set,
        payloads,
        [dkey],
        id_column=dkey,
        batch_size=max(1, min(len(payloads), DYNAMICS_BATCH_OPERATIONS)),
        only=only,
    )


def _create_rows(
    entity: EntityConfig, payloads: Sequence[dict[str, Any]], dynamics: DynamicsClient
) -> list[WriteResult]:
    """Create the rows of Marketo-only persons; a row that exists already is updated instead.

    Its GUID is derived from the Marketo id, so it can only be this same create, sent before
    and its answer lost (a retried load): writing the payload again as an update keeps the
    retry idempotent and both sides equal.
    """
    results = _dynamics_write(entity, payloads, dynamics, "new")
    again = [i for i, r in enumerate(results) if r.code == ROW_EXISTS]
    if again:
        updated = _dynamics_write(entity, take(payloads, again), dynamics, "existing")
        for i, result in zip(again, updated, strict=True):
            results[i] = replace(result, index=i)
    return results


def _write_persons(
    entity: EntityConfig,
    payloads: Sequence[dict[str, Any]],
    ids: Sequence[str],
    linked: dict[str, str],
    marketo: MarketoClient | None,
) -> tuple[list[WriteResult], set[str]]:
    """Write person upserts: linked persons by ``updateOnly``, new ones by ``createOrUpdate``.

    Returns:
        The results in the order of ``payloads``, and the GUIDs whose linked person Marketo no
        longer has.
    """
    update = [i for i, did in enumerate(ids) if did in linked]
    create = [i for i, did in enumerate(ids) if did not in linked]
    results: dict[int, WriteResult] = {}
    for positions, op in ((update, MARKETO_UPDATE_LINKED), (create, MARKETO_UPSERT)):
        if positions:
            written = _write(entity, op, take(payloads, positions), marketo, None)
            results.update(zip(positions, written, strict=True))
    gone = {ids[i] for i in update if not results[i].ok and (results[i].code or "") == _PERSON_GONE}
    return [results[i] for i in range(len(payloads))], gone


def _missing_reason(entity: EntityConfig, guid: str) -> str:
    flag = entity.marketo.deleted_field
    flagged = entity.delete_policy is DeletePolicy.FLAG and flag
    marked = f"; the Marketo person is flagged {flag}" if flagged else ""
    return (
        f"{entity.dynamics.entity_set}({guid}) was deleted in Dynamics after this change was read; "
        f"it is not re-created{marked}"
    )


DELETED_IN_DYNAMICS = "deleted_in_dynamics"


def _flag_deleted_in_dynamics(entity: EntityConfig, guids: list[str], marketo: MarketoClient | None) -> None:
    """Flag the persons of linked rows that an update found gone from Dataverse.

    The Dataverse delete feed would report such a row later, but its link is closed at once
    (see :func:`load_batch`), so the entity's delete policy is applied here, once.
    """
    log.warning("%s: %d linked rows are gone from Dataverse: %s", entity.name, len(guids), guids[:10])
    policy, records = deletion_records(entity, pd.Series(guids))
    if policy is not DeletePolicy.FLAG or records.empty:
        return
    payloads = records.astype(object).to_dict("records")
    flagged = _write(entity, MARKETO_FLAG_DELETED, payloads, marketo, None)
    missed = [g for g, r in zip(guids, flagged, strict=True) if not _ok(MARKETO_FLAG_DELETED, r)]
    if missed:
        log.warning("%s: could not flag %s deleted in Marketo: %s", entity.name, missed, flagged)


def _ok(op: str, result: WriteResult) -> bool:
    if result.ok:
        return True
    return op in (MARKETO_DELETE, MARKETO_FLAG_DELETED) and (result.code or "") in _GONE_CODES


# Operations that carry a Marketo person's change into Dataverse: their failures are M→D
# errors, keyed by the Marketo id so a later run can re-read the person (extract retries).
_M2D_OPS = (DYNAMICS_CREATE, DYNAMICS_UPSERT, MARKETO_LINK)


def _rows(frame: pd.DataFrame, mask: pd.Series) -> pd.DataFrame:
    """The rows of ``frame`` where ``mask`` holds, copied only when some but not all do: a bulk
    unit is one kind of operation, and filtering its Arrow columns (even to no row) took tens
    of megabytes of a load task."""
    if bool(mask.all()):
        return frame
    return frame.iloc[:0] if not bool(mask.any()) else frame[mask]


def _staged_lines(group: pd.DataFrame) -> ImportLines | None:
    """The import lines the plan staged for every op of ``group`` (a full copy's bulk unit);
    None when any op has none."""
    if IMPORT_LINE not in group or group[IMPORT_LINE].isna().any():
        return None
    widths = group[IMPORT_LINE_WIDTH].to_numpy(dtype="int64")
    texts = pa.array(group[IMPORT_LINE].array, pa.string())  # chunked when read from row groups
    return ImportLines(texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts, widths)


def load_batch(
    entity: EntityConfig,
    ctx: RunContext,
    batch: LoadBatch | Mapping[str, Any],
    *,
    marketo: MarketoClient | None = None,
    dynamics: DynamicsClient | None = None,
) -> LoadOutcome:
    """Write one staged plan and record the outcome of every record.

    Args:
        entity: The entity.
        ctx: Run id, staging area and state store.
        batch: A load batch of the transform manifest (or its XCom form).
        marketo: Marketo client.
        dynamics: Dataverse client.

    Returns:
        The outcome (also staged as the batch's ``outcome.json``).
    """
    batch = LoadBatch.from_xcom(batch)
    # Payload texts stay in Arrow memory until each is sent (one Python string per record
    # would double a bulk unit's payloads).
    ops = ctx.staging.read_frame(batch.ops, arrow_strings=True)
    # The link rows (with their per-field hashes) are read again a chunk at a time to be stored.
    links = ctx.staging.read_frame(batch.links, columns=[DYNAMICS_ID, MARKETO_ID])
    failed: dict[str, list[dict[str, Any]]] = {}
    done: set[str] = set()
    gone: set[str] = set()
    marketo_ids: dict[str, str] = {}
    sent: dict[str, int] = {}
    person_ids = marketo_ids_of(links)
    m2d: set[str] = set()  # records with a write into Dataverse in this batch
    deleted_in_marketo: set[str] = set()  # linked persons Marketo no longer has
    deleted_in_dynamics: set[str] = set()  # linked rows Dataverse no longer has
    merged_into: dict[str, str] = {}  # merged record -> the survivor's Marketo id
    repoint_failed: set[str] = set()
    unknown = set(ops["op"]) - set(OP_ORDER)
    if unknown:
        raise ValueError(f"{entity.name}: unknown staged operations {sorted(unknown)}")
    for name in OP_ORDER:
        group = _rows(ops, ops["op"].eq(name))
        if name == MARKETO_LINK:
            group = _rows(group, ~group[DYNAMICS_ID].isin(failed))  # never point a person at a missing row
        elif name == MARKETO_UPSERT:
            # A person not re-keyed would not be found by its new key: the record retries whole.
            group = _rows(group, ~group[DYNAMICS_ID].isin(repoint_failed))
        if group.empty:
            continue
        # Parsed a record at a time, when sent; a bulk unit's import file is written from the
        # lines the plan staged, without parsing them.
        payloads = JsonRecords(group["payload"].array, _staged_lines(group))
        ids: Sequence[str] = group[DYNAMICS_ID].astype(str).tolist()
        if name == MARKETO_UPSERT and entity.marketo.object is MarketoObject.LEAD:
            results, gone_in_marketo = _write_persons(entity, payloads, ids, person_ids, marketo)
            deleted_in_marketo |= gone_in_marketo
        else:
            results = _write(entity, name, payloads, marketo, dynamics)
        sent[name] = len(payloads)
        direction = Direction.M2D if name in _M2D_OPS else Direction.D2M
        if direction is Direction.M2D:
            m2d.update(ids)
        for position, (did, res) in enumerate(zip(ids, results, strict=True)):
            if _ok(name, res):
                done.add(did)
                if name in (MARKETO_DELETE, MARKETO_FLAG_DELETED):
                    gone.add(did)
                elif name == MARKETO_MERGE:
                    merged_into[did] = str(payloads[position]["winner"])
                elif name in (MARKETO_UPSERT, MARKETO_LINK, MARKETO_REPOINT) and res.id:
                    marketo_ids[did] = str(res.id)
            else:
                if name == MARKETO_REPOINT:
                    repoint_failed.add(did)
                code, reason = res.code or res.status.value, res.reason or res.status.value
                if name == MARKETO_UPSERT and did in deleted_in_marketo:
                    code, reason = DELETED_IN_MARKETO, gone_reason(entity, person_ids.get(did))
                elif name == DYNAMICS_UPSERT and res.code == ROW_MISSING:
                    deleted_in_dynamics.add(did)
                    code, reason = DELETED_IN_DYNAMICS, _missing_reason(entity, did)
                failed.setdefault(did, []).append(
                    {
                        "entity": entity.name,
                        "direction": direction.value,
                        "record_id": person_ids.get(did, did) if direction is Direction.M2D else did,
                        "field": "",
                        "code": code,
                        "reason": reason,
                    }
                )
    ok_ids = done - set(failed)
    if deleted_in_dynamics:
        _flag_deleted_in_dynamics(entity, sorted(deleted_in_dynamics), marketo)
    with session_scope(ctx.state) as session:
        linked = ok_ids - gone
        store_links(session, entity, ctx.staging, batch.links, linked, marketo_ids)
        if gone:
            set_link_state(session, entity.name, gone, "deleted")
        if merged_into:
            # Both Dynamics ids now resolve to the survivor's person; the merged one never writes.
            survivors = [{"dynamics_id": d, "marketo_id": m, "state": MERGED} for d, m in merged_into.items()]
            upsert_links(session, entity.name, survivors)
        resolve_errors(session, entity.name, Direction.D2M.value, ok_ids)
        # M→D errors are keyed by the Marketo id (older ones by the GUID); only a record whose
        # Dataverse write succeeded here settles them, not one that was only written to Marketo.
        settled = ok_ids & m2d
        resolve_errors(
            session,
            entity.name,
            Direction.M2D.value,
            ok_ids | {person_ids[d] for d in settled if d in person_ids},
        )
        if failed:
            errors = pd.DataFrame([e for rows in failed.values() for e in rows])
            record_errors(session, errors, run_id=ctx.run_id)
        if deleted_in_marketo:
            settle_gone(session, entity, sorted(deleted_in_marketo))
        if deleted_in_dynamics:
            # Closed and parked: the change that met the missing row waits for an admin (the
            # row may come back from the recycle bin) instead of being retried forever.
            set_link_state(session, entity.name, deleted_in_dynamics, "deleted")
            park_errors(
                session,
                entity.name,
                Direction.M2D.value,
                [person_ids.get(g, g) for g in sorted(deleted_in_dynamics)],
            )
    outcome = LoadOutcome(batch.name, len(ok_ids), len(failed), sent)
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "plans" / batch.name
    ctx.staging.write_json(folder, OUTCOME, outcome.to_xcom())
    log.info("%s load %s: %d loaded, %d failed", entity.name, batch.name, len(ok_ids), len(failed))
    return outcome
