"""Re-baselining after a Dynamics sandbox refresh.

(The re-read after an expired delta token is the engine's own: :mod:`crm_sync.engine.reread`.)

:func:`detect_refresh`, :func:`plan_relink`, :func:`apply_relink`, :func:`pause_dags`: a
refreshed Dynamics org has a new organization id and new record ids, so the state store no
longer describes it. The ``rebaseline`` DAG pauses the sync DAGs, re-links every Marketo record
to its Dataverse record by key fields (the Marketo record's external id, then email for
persons), resets the identity and the watermarks, fails the sync runs the pause held
mid-way, and unpauses the DAGs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pandas as pd
from airflow.sdk.exceptions import AirflowFailException

from crm_sync.alerting import send_alert
from crm_sync.state import lookup_links, session_scope

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence
    from datetime import datetime

    from sqlalchemy.engine import Engine

    from crm_sync.config import EntityConfig

log = logging.getLogger(__name__)


# --- sandbox refresh -------------------------------------------------------------------------

SAMPLE_SIZE = 25  # linked ids checked per entity when looking for ids that no longer resolve


def detect_refresh(
    entities: Sequence[EntityConfig], dynamics: Any, state: Engine, sample: int = SAMPLE_SIZE
) -> dict[str, Any]:
    """Tell whether the connected Dataverse org is no longer the one the state store describes.

    Two markers: the organization id (WhoAmI) differs from the recorded identity, or linked
    record ids no longer resolve (a sample of each entity's links is looked up by id).

    Returns:
        ``refreshed`` (bool), ``stored`` and ``current`` organization ids, ``unresolved`` and
        ``sampled`` (linked ids looked up / not found).
    """
    from sqlalchemy import select

    from crm_sync.engine.columns import read_rows_by_id
    from crm_sync.state.models import SyncIdentity

    current = str(dynamics.organization_id())
    with session_scope(state) as session:
        stored = session.execute(
            select(SyncIdentity.identity).where(SyncIdentity.system == "dynamics")
        ).scalar()
        links = {e.name: lookup_links(session, e.name) for e in entities}
    sampled = unresolved = 0
    for entity in entities:
        ids = sorted(links[entity.name]["dynamics_id"].dropna().astype(str))[:sample]
        if not ids:
            continue
        found = read_rows_by_id(entity, dynamics, ids, [entity.dynamics.key])
        sampled += len(ids)
        unresolved += len(ids) - len(found)
    refreshed = (stored is not None and stored != current) or (sampled > 0 and unresolved == sampled)
    return {
        "refreshed": refreshed,
        "stored": stored,
        "current": current,
        "sampled": sampled,
        "unresolved": unresolved,
    }


class AirflowApiMissing(RuntimeError):
    """No ``airflow_api`` connection: the DAGs cannot be paused or unpaused from a task."""


def _airflow_api(conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    from crm_sync.airflow_api import AirflowApi

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # the SDK raises its own not-found error type
        raise AirflowApiMissing(f"no Airflow connection {conn_id!r} for the REST API") from exc
    from crm_sync_hooks.base import ConnectionSettings

    host = str(conn.host or "")
    raw = (
        host
        if "://" in host
        else f"{conn.schema or 'https'}://{host}" + (f":{conn.port}" if conn.port else "")
    )
    # The admin password goes with every call: https, unless the connection allows http (the
    # local demo's API server on 127.0.0.1 speaks plain http).
    base = ConnectionSettings(conn).https_url("host", raw)
    return AirflowApi(base, str(conn.login or ""), str(conn.password or ""))


def pause_dags(
    dag_ids: Sequence[str], paused: bool, conn_id: str = "airflow_api", *, fail_held_runs: bool = False
) -> list[str]:
    """Pause (or unpause) DAGs through Airflow's REST API v2; returns the ids changed.

    Task code cannot write Airflow's metadata DB in Airflow 3, so this goes through the public
    API with the credentials of the ``airflow_api`` connection (host = API server URL). DAGs
    the API does not know are skipped.

    ``fail_held_runs`` (with an unpause after a re-baseline) first marks failed every run of
    ``dag_ids`` the pause left ``running``. Airflow's scheduler examines only the running runs of
    unpaused DAGs, so a run caught mid-way by the pause would, once unpaused, go on with what it
    extracted before the re-baseline: its loads would write the old organization's ids back and
    its commit would store a watermark over the one the re-baseline reset. Failed, it writes
    nothing more; the next run starts from the reset state.

    Raises:
        AirflowApiMissing: The connection is not defined.
    """
    api = _airflow_api(conn_id)
    try:
        listed = api.dag_ids()
        known = [dag_id for dag_id in dag_ids if dag_id in listed]
        if fail_held_runs:
            held = {dag_id: list(api.runs(dag_id, state="running")) for dag_id in known}
            for dag_id, run_ids in held.items():
                for run_id in run_ids:
                    api.fail_run(dag_id, run_id)
            if any(held.values()):
                log.warning("failed the runs the pause held from before the re-baseline: %s", held)
        for dag_id in known:
            api.set_paused(dag_id, paused)
    finally:
        api.close()
    log.warning("%s DAGs: %s", "paused" if paused else "unpaused", known)
    return known


def sync_dag_ids(entities: Iterable[EntityConfig]) -> list[str]:
    """The DAGs a sandbox refresh affects: every sync DAG, the full copy and the reconciliation."""
    return sorted({e.dag_id for e in entities} | {"full_copy", "reconcile"})


def on_identity_mismatch(
    entity: EntityConfig,
    run_id: str,
    error: Exception,
    *,
    dag_id: str | None = None,
    task_id: str = "extract_changes",
) -> NoReturn:
    """A sync run met another Dataverse org: alert, pause the sync DAGs, stop without retries.

    Raises:
        SandboxRefreshDetected: Always (fails the task without retrying it).
    """
    from crm_sync.config import load_entities

    paused: list[str] = []
    try:
        from crm_sync.config import ENTITIES_DIR

        everything = load_entities(Path(os.environ.get("MDS_ENTITIES_DIR") or str(ENTITIES_DIR))).values()
        paused = pause_dags(sync_dag_ids(everything), True)
        how = f"Paused: {', '.join(paused)}."
    except Exception as exc:  # pausing is best effort; the alert must go out regardless
        how = f"The sync DAGs could not be paused ({type(exc).__name__}: {exc}); pause them by hand."
    send_alert(
        dag_id or entity.dag_id,
        task_id,
        run_id,
        f"Dynamics sandbox refresh suspected: {error} Every sync run would fail the same way, and "
        f"record ids may no longer resolve. {how} Trigger the 'rebaseline' DAG (Param confirm=true) "
        "to re-link the records by key and email, reset the state store's identity and watermarks, "
        "and unpause the DAGs.",
    )
    raise SandboxRefreshDetected(f"{entity.name}: {error}") from error


class SandboxRefreshDetected(AirflowFailException):
    """The Dataverse org is not the one the state store belongs to (fails without retries)."""


def _chunks(items: Sequence[Any], size: int = 300) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _norm(values: pd.Series) -> pd.Series:
    from crm_sync.transforms.casts import as_string

    return as_string(values).str.strip().str.lower()


def _relink_persons(
    entity: EntityConfig, rows: pd.DataFrame, persons: pd.DataFrame, taken: set[str]
) -> dict[str, Any]:
    """Plan how this entity's Marketo persons are re-pointed at the refreshed org's records.

    A person whose key is a current GUID keeps it; otherwise the one Dataverse record with the
    same email (unique on both sides, not yet claimed) takes it and the person's key is to be
    updated in Marketo; a person left without a record is to be flagged deleted (the delete
    policy), never deleted. Nothing is written here.
    """
    from crm_sync.transforms import persons_for_entity

    m = entity.marketo
    key = entity.dynamics.key
    mine = persons_for_entity(persons, entity)
    if m.deleted_field and m.deleted_field in mine:
        mine = mine[~_norm(mine[m.deleted_field]).isin({"true", "1"}).to_numpy()]
    guids = _norm(rows[key]) if len(rows) else pd.Series(dtype="str")
    current = set(guids.dropna())
    person_keys = _norm(mine[m.key])
    kept = mine[person_keys.isin(current).to_numpy()]
    links: list[dict[str, Any]] = [
        {"dynamics_id": str(k).lower(), "marketo_id": str(i)}
        for k, i in zip(kept[m.key], kept[m.id_field], strict=True)
    ]
    claimed = set(_norm(kept[m.key])) | taken
    rest = mine[~person_keys.isin(current).to_numpy()]
    updates: list[dict[str, Any]] = []
    column = entity.email_column()
    if column and m.email_field and len(rest):
        d_email = pd.DataFrame({"guid": guids.to_numpy(), "email": _norm(rows[column]).to_numpy()}).dropna()
        d_email = d_email[~d_email["guid"].isin(claimed)]
        d_unique = d_email.drop_duplicates("email", keep=False).set_index("email")["guid"]
        p_email = pd.DataFrame(
            {"id": rest[m.id_field].astype(str).to_numpy(), "email": _norm(rest[m.email_field]).to_numpy()}
        ).dropna()
        p_unique = p_email.drop_duplicates("email", keep=False)
        matched = p_unique[p_unique["email"].isin(d_unique.index)]
        for pid, email in zip(matched["id"], matched["email"], strict=True):
            guid = str(d_unique[email])
            updates.append({"id": int(pid), m.key: guid})
            links.append({"dynamics_id": guid, "marketo_id": str(pid)})
    matched_ids = {str(u["id"]) for u in updates}
    orphans = rest[~rest[m.id_field].astype(str).isin(matched_ids).to_numpy()]
    flags = (
        [
            {"id": int(i), "old_key": None if pd.isna(k) else str(k)}
            for i, k in zip(orphans[m.id_field], orphans[m.key], strict=True)
        ]
        if m.deleted_field
        else []
    )
    for link in links:
        link["person_type"] = m.person_type
    counts = {"kept": len(kept), "by_email": len(updates), "flagged_deleted": len(flags)}
    return {"links": links, "key_updates": updates, "flags": flags, "deletes": [], "counts": counts}


def _relink_objects(entity: EntityConfig, rows: pd.DataFrame, links: pd.DataFrame) -> dict[str, Any]:
    """Plan to keep the Marketo objects whose key is still a current GUID and to delete the ones
    keyed by ids the refreshed org no longer has (the sync re-creates them from Dataverse under
    the new ids, so none is left twice). Nothing is written here."""
    current = set(_norm(rows[entity.dynamics.key]).dropna()) if len(rows) else set()
    old = links[links["marketo_id"].notna()]
    keep = old[old["dynamics_id"].astype(str).isin(current)]
    gone = old[~old["dynamics_id"].astype(str).isin(current)].sort_values("dynamics_id")
    out = [
        {"dynamics_id": str(d), "marketo_id": str(mid)}
        for d, mid in zip(keep["dynamics_id"], keep["marketo_id"], strict=True)
    ]
    deletes = [
        {"key": str(d), "marketo_id": str(mid)}
        for d, mid in zip(gone["dynamics_id"], gone["marketo_id"], strict=True)
    ]
    counts = {"kept": len(out), "deleted": len(deletes)}
    return {"links": out, "key_updates": [], "flags": [], "deletes": deletes, "counts": counts}


class RefreshNotDetected(AirflowFailException):
    """A re-link was asked for, but detection found no sandbox refresh (fails without retries)."""


class RelinkGuardFailed(AirflowFailException):
    """A guard stopped the re-link before any write (visibility or mass deletes)."""


REPORT_COLUMNS = ["entity", "action", "marketo_id", "old_key", "new_key"]


def plan_relink(
    entities: Sequence[EntityConfig],
    *,
    dynamics: Any,
    marketo: Any,
    state: Engine,
    since: datetime | None = None,
    poll_seconds: float = 10.0,
    tolerance: float = 0.5,
    accept_row_counts: bool = False,
) -> dict[str, Any]:
    """Read both systems and plan the re-link of every Marketo record; write nothing.

    Each entity's Dataverse table is read in full; before anything else, the rows the
    application user sees are compared with what it saw last time (the visibility guard), since
    every linked record it does not see would be deleted or flagged.

    Returns:
        Per entity (``entities``): ``links``, ``key_updates``, ``flags``, ``deletes``,
        ``counts``, ``seen`` (rows read) and ``linked`` (records linked before).

    Raises:
        RelinkGuardFailed: The visibility of an entity's table collapsed.
    """
    from crm_sync.guards.visibility import VisibilityCollapsed, check_visibility, expected_rows
    from crm_sync.reconcile.core import default_since
    from crm_sync.reconcile.reads import is_person, marketo_fields, read_dynamics, read_persons

    start = since or default_since(state)
    person_entities = [e for e in entities if is_person(e)]
    persons = None
    if person_entities:
        with session_scope(state) as session:
            # Persons linked before the export window (created in Marketo long ago) by key.
            linked = lookup_links(session, [e.name for e in person_entities])
        persons = read_persons(
            marketo,
            marketo_fields(person_entities),
            person_entities[0].marketo.key,
            set(linked["dynamics_id"].dropna().astype(str)),
            start,
            poll_seconds=poll_seconds,
        )
    plan: dict[str, Any] = {}
    taken: set[str] = set()
    for entity in entities:
        rows = read_dynamics(entity, dynamics)
        with session_scope(state) as session:
            old = lookup_links(session, entity.name)
            expected = expected_rows(session, entity.name)
        try:
            check_visibility(
                entity.name, len(rows), expected, tolerance=tolerance, accepted=accept_row_counts
            )
        except VisibilityCollapsed as exc:
            raise RelinkGuardFailed(str(exc)) from None
        if is_person(entity):
            assert persons is not None
            part = _relink_persons(entity, rows, persons, taken)
            taken |= {link["dynamics_id"] for link in part["links"]}
        else:
            part = _relink_objects(entity, rows, old)
        active = old[old["state"].fillna("active").eq("active")] if len(old) else old
        plan[entity.name] = {**part, "seen": len(rows), "linked": len(active)}
    return {"entities": plan}


def relink_report(plan: Mapping[str, Any]) -> pd.DataFrame:
    """Every write the plan would make in Marketo: deletes, deleted flags, keys re-pointed."""
    rows: list[dict[str, Any]] = []
    for name, part in plan["entities"].items():
        rows += [
            {"entity": name, "action": "delete", "marketo_id": d["marketo_id"], "old_key": d["key"]}
            for d in part["deletes"]
        ]
        rows += [
            {"entity": name, "action": "flag_deleted", "marketo_id": str(f["id"]), "old_key": f["old_key"]}
            for f in part["flags"]
        ]
        key_updates = part["key_updates"]
        rows += [
            {"entity": name, "action": "relink_by_email", "marketo_id": str(u["id"]), "new_key": new}
            for u in key_updates
            for k, new in u.items()
            if k != "id"
        ]
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def check_relink_deletes(
    entities: Sequence[EntityConfig],
    plan: Mapping[str, Any],
    *,
    max_share: float | None = None,
    min_records: int = 10,
    confirmed: bool = False,
) -> dict[str, Any]:
    """The sync DAGs' mass-delete guard over the plan's deletes and deleted flags, per entity.

    Raises:
        RelinkGuardFailed: An entity would lose more than its share; names each one.
    """
    from crm_sync.guards.deletes import MassDeleteBlocked, check_mass_delete

    figures: dict[str, Any] = {}
    blocked: list[str] = []
    for entity in entities:
        part = plan["entities"].get(entity.name)
        if part is None:
            continue
        try:
            figures[entity.name] = check_mass_delete(
                entity,
                deletes=len(part["deletes"]) + len(part["flags"]),
                linked=int(part["linked"]),
                max_share=max_share,
                min_records=min_records,
                confirmed=confirmed,
                dag_id="rebaseline",
            )
        except MassDeleteBlocked as exc:
            blocked.append(str(exc))
    if blocked:
        raise RelinkGuardFailed(" | ".join(blocked) + " (the dry-run report lists every record)")
    return figures


def apply_relink(
    entities: Sequence[EntityConfig], plan: Mapping[str, Any], *, marketo: Any, state: Engine
) -> dict[str, dict[str, int]]:
    """Make the plan's Marketo writes, then re-baseline the state store with the new links.

    Persons are re-pointed by key or email (their marketing history stays with them) or flagged
    deleted; Lead Database objects keyed by vanished ids are deleted and re-created by the next
    sync runs. The state store is then re-baselined (id map, watermarks and identities cleared),
    the new links written without agreed hashes and each table's visible rows recorded, so the
    next run of each sync DAG reads its table from the start and writes every record once, as
    an update of the re-linked Marketo record.

    Raises:
        RuntimeError: Some Marketo writes failed (the state store is left untouched).
    """
    from crm_sync.engine.load import marketo_object_path
    from crm_sync.engine.retries import GUID
    from crm_sync.state import open_errors, resolve_errors, upsert_links
    from crm_sync.state import rebaseline as reset_state
    from crm_sync.state.guards import record_visible_rows

    counts: dict[str, dict[str, int]] = {}
    for entity in entities:
        part = plan["entities"].get(entity.name)
        if part is None:
            continue
        failed = 0
        for chunk in _chunks(part["key_updates"]):
            failed += sum(1 for r in marketo.sync_leads(list(chunk), "updateOnly", "id") if not r.ok)
        flag = entity.marketo.deleted_field
        flags = [{"id": int(f["id"]), flag: True} for f in part["flags"]] if flag else []
        for chunk in _chunks(flags):
            failed += sum(1 for r in marketo.sync_leads(list(chunk), "updateOnly", "id") if not r.ok)
        if part["deletes"]:
            keys = [{entity.marketo.key: d["key"]} for d in part["deletes"]]
            results = marketo.delete_objects(marketo_object_path(entity), keys, "dedupeFields")
            failed += sum(1 for r in results if not r.ok and "not found" not in str(r.reason or "").lower())
        counts[entity.name] = {**part["counts"], "failed": failed}
    failed_by = {n: c["failed"] for n, c in counts.items() if c["failed"]}
    if failed_by:
        raise RuntimeError(f"re-link: Marketo writes failed for {failed_by}; the state store was not reset")
    with session_scope(state) as session:
        reset_state(session)
        for name, part in plan["entities"].items():
            upsert_links(session, name, part["links"])
            record_visible_rows(session, name, int(part["seen"]))
        # Failures keyed by the old org's record ids can never be retried (Marketo-keyed stay).
        stale = open_errors(session)
        stale = stale[stale["source_id"].astype(str).str.lower().str.match(GUID.pattern)]
        for (name, direction), group in stale.groupby(["entity", "direction"]):
            resolve_errors(session, str(name), str(direction), group["source_id"].astype(str))
    log.warning("re-baselined after a sandbox refresh: %s", counts)
    return counts
