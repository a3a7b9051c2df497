"""Load: send one staged plan with the hooks' batch writers and record each record's outcome.

Idempotent: every operation is an upsert keyed on a stable id (the Dataverse GUID on both
sides) or a delete, so a retried load re-sends the same staged records without creating
duplicates. The id map is filled only for records whose every write succeeded; failures go to
the record-error table; a batch outcome file is staged last, as proof for the commit.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.config import Direction, EntityConfig, MarketoObject
from crm_sync.engine.plan import (
    DYNAMICS_UPSERT,
    LINK_FRAME_COLUMNS,
    MARKETO_DELETE,
    MARKETO_FLAG_DELETED,
    MARKETO_LINK,
    MARKETO_ROLE_UPSERT,
    MARKETO_UPSERT,
)
from crm_sync.state import record_errors, resolve_errors, session_scope, set_link_state, upsert_links
from crm_sync.transforms import DYNAMICS_ID, MARKETO_ID

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crm_sync.engine.clients import DynamicsClient, MarketoClient
    from crm_sync.engine.extract import RunContext
    from crm_sync_hooks.results import WriteResult

log = logging.getLogger(__name__)

OUTCOME = "outcome"
DYNAMICS_BATCH_OPERATIONS = 1000  # operations Dataverse accepts in one $batch request
# "Not found" answers to a delete or a deleted-flag update: the record is already gone.
_GONE_CODES = {"1004", "1013", "610", "702"}
# Dataverse first: a Marketo person is pointed at a created lead only once the lead exists.
OP_ORDER = (
    DYNAMICS_UPSERT,
    MARKETO_LINK,
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


def _write(
    entity: EntityConfig,
    op: str,
    payloads: list[dict[str, Any]],
    marketo: MarketoClient | None,
    dynamics: DynamicsClient | None,
) -> list[WriteResult]:
    """Dispatch one operation kind to the right hook writer."""
    key = entity.marketo.key
    if op == DYNAMICS_UPSERT:
        if dynamics is None:
            raise ValueError(f"{entity.name}: a Dynamics client is needed to load {op}")
        dkey = entity.dynamics.key
        # One $batch per load batch (at most 300 records; Dataverse takes up to 1,000 operations):
        # each operation still succeeds or fails on its own, and calls stay few.
        return dynamics.upsert_records(
            entity.dynamics.entity_set,
            payloads,
            [dkey],
            id_column=dkey,
            batch_size=max(1, min(len(payloads), DYNAMICS_BATCH_OPERATIONS)),
        )
    if marketo is None:
        raise ValueError(f"{entity.name}: a Marketo client is needed to load {op}")
    is_person = entity.marketo.object is MarketoObject.LEAD
    if op == MARKETO_UPSERT:
        if is_person:
            return marketo.sync_leads(payloads, action="createOrUpdate", lookup_field=key)
        return marketo.sync_objects(marketo_object_path(entity), payloads, required_fields=[key])
    if op == MARKETO_FLAG_DELETED:
        return marketo.sync_leads(payloads, action="updateOnly", lookup_field=key)
    if op == MARKETO_LINK:
        return marketo.sync_leads(payloads, action="updateOnly", lookup_field="id")
    if op == MARKETO_ROLE_UPSERT:
        return marketo.sync_objects("opportunities/roles", payloads, required_fields=list(ROLE_KEY))
    if op == MARKETO_DELETE:
        if is_person:
            raise ValueError(f"{entity.name}: persons are never deleted, only flagged")
        return marketo.delete_objects(marketo_object_path(entity), payloads, delete_by="dedupeFields")
    raise ValueError(f"{entity.name}: unknown staged operation {op!r}")


def _ok(op: str, result: WriteResult) -> bool:
    if result.ok:
        return True
    return op in (MARKETO_DELETE, MARKETO_FLAG_DELETED) and (result.code or "") in _GONE_CODES


def _links(
    entity: EntityConfig, frame: pd.DataFrame, ok_ids: set[str], marketo_ids: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Id-map rows of the records written successfully, by the entity whose map they go to."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for rec in frame[frame[DYNAMICS_ID].isin(ok_ids)].to_dict("records"):
        row = {c: rec.get(c) for c in LINK_FRAME_COLUMNS if c != "link_entity"}
        hashes = row["field_hashes"]
        # A person linked by email has no agreed values yet; the next merge compares in full.
        row["field_hashes"] = json.loads(hashes) if isinstance(hashes, str) and hashes else None
        row[MARKETO_ID] = marketo_ids.get(str(rec[DYNAMICS_ID]), row[MARKETO_ID])
        row["state"] = "active"
        target = rec.get("link_entity")
        rows.setdefault(target if isinstance(target, str) and target else entity.name, []).append(row)
    return rows


# Operations that carry a Marketo person's change into Dataverse: their failures are M→D
# errors, keyed by the Marketo id so a later run can re-read the person (extract retries).
_M2D_OPS = (DYNAMICS_UPSERT, MARKETO_LINK)


def _marketo_ids_of(links: pd.DataFrame) -> dict[str, str]:
    """Marketo id of each record of the plan whose Marketo id is known (Dataverse GUID → id)."""
    if links.empty or MARKETO_ID not in links:
        return {}
    known = links.dropna(subset=[DYNAMICS_ID, MARKETO_ID])
    return {
        str(d): str(m)
        for d, m in zip(known[DYNAMICS_ID], known[MARKETO_ID], strict=True)
        if str(m) not in ("", "nan", "<NA>", "None")
    }


def load_batch(
    entity: EntityConfig,
    ctx: RunContext,
    batch: dict[str, Any],
    *,
    marketo: MarketoClient | None = None,
    dynamics: DynamicsClient | None = None,
) -> dict[str, Any]:
    """Write one staged plan and record the outcome of every record.

    Args:
        entity: The entity.
        ctx: Run id, staging area and state store.
        batch: A load batch reference from the transform manifest (``name``, ``ops``, ``links``).
        marketo: Marketo client.
        dynamics: Dataverse client.

    Returns:
        The outcome: ``name``, ``loaded`` (records all of whose writes succeeded), ``failed``,
        ``calls`` (operations sent per kind).
    """
    ops = ctx.staging.read_frame(batch["ops"])
    links = ctx.staging.read_frame(batch["links"])
    failed: dict[str, list[dict[str, Any]]] = {}
    done: set[str] = set()
    gone: set[str] = set()
    marketo_ids: dict[str, str] = {}
    sent: dict[str, int] = {}
    person_ids = _marketo_ids_of(links)
    m2d: set[str] = set()  # records with a write into Dataverse in this batch
    unknown = set(ops["op"]) - set(OP_ORDER)
    if unknown:
        raise ValueError(f"{entity.name}: unknown staged operations {sorted(unknown)}")
    for name in OP_ORDER:
        group = ops[ops["op"].eq(name)]
        if name == MARKETO_LINK:
            group = group[~group[DYNAMICS_ID].isin(failed)]  # never point a person at a missing row
        if group.empty:
            continue
        payloads = [json.loads(p) for p in group["payload"]]
        ids: Sequence[str] = group[DYNAMICS_ID].astype(str).tolist()
        results = _write(entity, name, payloads, marketo, dynamics)
        sent[name] = len(payloads)
        direction = Direction.M2D if name in _M2D_OPS else Direction.D2M
        if direction is Direction.M2D:
            m2d.update(ids)
        for did, res in zip(ids, results, strict=True):
            if _ok(name, res):
                done.add(did)
                if name in (MARKETO_DELETE, MARKETO_FLAG_DELETED):
                    gone.add(did)
                elif name in (MARKETO_UPSERT, MARKETO_LINK) and res.id:
                    marketo_ids[did] = str(res.id)
            else:
                failed.setdefault(did, []).append(
                    {
                        "entity": entity.name,
                        "direction": direction.value,
                        "record_id": person_ids.get(did, did) if direction is Direction.M2D else did,
                        "field": "",
                        "code": res.code or res.status.value,
                        "reason": res.reason or res.status.value,
                    }
                )
    ok_ids = done - set(failed)
    with session_scope(ctx.state) as session:
        for target, link_rows in _links(entity, links, ok_ids - gone, marketo_ids).items():
            upsert_links(session, target, link_rows)
        if gone:
            set_link_state(session, entity.name, gone, "deleted")
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
    outcome = {"name": batch["name"], "loaded": len(ok_ids), "failed": len(failed), "calls": sent}
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "plans" / batch["name"]
    ctx.staging.write_json(folder, OUTCOME, outcome)
    log.info("%s load %s: %d loaded, %d failed", entity.name, batch["name"], len(ok_ids), len(failed))
    return outcome
