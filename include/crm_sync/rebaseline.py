"""Re-baselining: after an expired Dataverse delta token, and after a Dynamics sandbox refresh.

**Expired delta token** (:func:`rebaseline_expired`, called by the extract): Dataverse keeps
change-tracking history for a limited time; an older delta link is refused. The table is read
again (that read also yields the new delta link), and instead of re-sending everything:

* rows whose mapped values hash the same as the last synced values (the id map's agreed
  hashes) are not staged: nothing to sync;
* linked records missing from the read were deleted during the gap: they are staged as
  deletes, so the delete policy applies (a blind re-read would silently miss them);
* everything else is staged and goes through the normal transform.

An alert says what happened and how many records each step covered.

**Sandbox refresh** (:func:`detect_refresh`, :func:`relink`, :func:`pause_dags`): a refreshed
Dynamics org has a new organization id and new record ids, so the state store no longer
describes it. The ``rebaseline`` DAG pauses the sync DAGs, re-links every Marketo record to
its Dataverse record by key fields (the Marketo record's external id, then email for
persons), resets the identity and the watermarks, and unpauses the DAGs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from airflow.sdk.exceptions import AirflowFailException

from crm_sync.config import Direction
from crm_sync.state import lookup_links, session_scope

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from datetime import datetime

    from airflow.sdk import ObjectStoragePath
    from sqlalchemy.engine import Engine

    from crm_sync.config import EntityConfig
    from crm_sync.engine.extract import RunContext
    from crm_sync.engine.runner import RunSettings

log = logging.getLogger(__name__)


def send_alert(dag_id: str, task_id: str, run_id: str, message: str) -> None:
    """Log ``message`` as an error line and POST it to the alert webhook when one is configured.

    The same JSON shape as failure alerts (:class:`crm_sync.alerting.Alert`), so one receiver
    handles both; the text passes through Airflow's secrets masker.
    """
    from crm_sync.alerting import WEBHOOK_VARIABLE, Alert, _redact, post_webhook

    alert = Alert(
        dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=None, log_url=None, error=_redact(message)
    )
    log.error("Sync alert: dag=%s task=%s run=%s: %s", dag_id, task_id, run_id, alert.error)
    try:
        from airflow.sdk import Variable

        url = Variable.get(WEBHOOK_VARIABLE, default="")
    except Exception:  # outside a task (CLI, unit test) there may be no Variable backend
        url = ""
    if url:
        post_webhook(url, alert)


def _d2m_names(entity: EntityConfig) -> list[str]:
    from crm_sync.transforms import tracked_columns

    return [n for n, flow, _ in tracked_columns(entity) if flow.includes(Direction.D2M)]


def rebaseline_expired(
    entity: EntityConfig, ctx: RunContext, full: dict[str, Any], folder: ObjectStoragePath
) -> dict[str, Any]:
    """Turn a full re-read after an expired delta link into a targeted re-baseline.

    Args:
        entity: The entity.
        ctx: Run id, staging area and state store.
        full: The extract part of the full re-read (every row staged, the new delta link).
        folder: The run's extract folder.

    Returns:
        The extract part with only the differing rows, the gap's deletes added and
        ``rebaseline`` (``read``, ``unchanged``, ``staged``, ``deleted``).
    """
    from crm_sync.engine.extract import _Batcher
    from crm_sync.engine.transform import _infer_lookup_types
    from crm_sync.reconcile.compare import dynamics_canonical
    from crm_sync.transforms import ID_MAP_COLUMNS, field_hashes, last_hashes, sync_filter_mask

    key = entity.dynamics.key
    with session_scope(ctx.state) as session:
        links = lookup_links(session, entity.name)
        targets = sorted({t for lk in entity.lookups for t in lk.targets.values()} - {entity.name})
        others = lookup_links(session, targets) if targets else links.iloc[0:0]
    id_map = pd.concat([links[ID_MAP_COLUMNS], others[ID_MAP_COLUMNS]], ignore_index=True)
    active = links[links["state"].fillna("active").eq("active") & links["field_hashes"].notna()]
    last = last_hashes(active)
    names = _d2m_names(entity)
    first = full["batches"][0] if full["batches"] else None
    columns = list(ctx.staging.read_frame(first).columns) if first else [key]
    kept = _Batcher(ctx.staging, folder, "rebaseline", entity.batch_size, columns)
    seen: set[str] = set()
    read = unchanged = 0
    for ref in full["batches"]:
        rows = ctx.staging.read_frame(ref)
        read += len(rows)
        keys = rows[key].astype("str").str.strip().str.lower()
        seen |= set(keys.dropna())
        typed = _infer_lookup_types(entity, rows, id_map)
        canon = dynamics_canonical(typed, entity, id_map)
        current = field_hashes(canon, names).astype("Int64")
        stored = last.reindex(index=current.index, columns=current.columns).astype("Int64")
        same = (stored.notna() & stored.eq(current).fillna(False)).all(axis=1)
        same_keys = set(current.index[same.to_numpy()])
        in_scope = sync_filter_mask(rows, entity).to_numpy()
        skip = keys.isin(same_keys).to_numpy() & in_scope
        unchanged += int(skip.sum())
        kept.add(rows.loc[~skip].to_dict("records"))
        ref_path = ctx.staging.path(ref["path"])
        if ref_path.exists():
            ref_path.unlink()  # the full copy of the table is not needed any more
    linked = links[~links["state"].fillna("active").isin(["deleted"])]
    gone = sorted(set(linked["dynamics_id"].astype(str)) - seen)
    deleted = list(full["deleted"])
    if gone:
        ref = ctx.staging.write_frame(folder, "rebaseline-deleted", pd.DataFrame({"id": gone}))
        deleted.append(ref.to_dict())
    batches = [b.to_dict() for b in kept.close()]
    counts = {"read": read, "unchanged": unchanged, "staged": kept.total, "deleted": len(gone)}
    send_alert(
        entity.dag_id,
        "extract_changes",
        ctx.run_id,
        f"{entity.name}: the Dataverse delta token expired (change history older than the retention "
        f"period). Targeted re-baseline instead of a blind full copy: {read} rows re-read and compared "
        f"with the last synced hashes; {unchanged} unchanged (not re-sent), {kept.total} changed or new "
        f"(synced now), {len(gone)} deleted during the gap (delete policy '{entity.delete_policy.value}' "
        "applied). A new delta token was taken.",
    )
    return {
        **full,
        "batches": batches,
        "rows": kept.total,
        "deleted": deleted,
        "deleted_rows": int(full["deleted_rows"]) + len(gone),
        "initial": False,
        "rebaseline": counts,
    }


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

    from crm_sync.engine.extract import read_rows_by_id
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

    from crm_sync.demo.airflow_api import AirflowApi

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


def pause_dags(dag_ids: Sequence[str], paused: bool, conn_id: str = "airflow_api") -> list[str]:
    """Pause (or unpause) DAGs through Airflow's REST API v2; returns the ids changed.

    Task code cannot write Airflow's metadata DB in Airflow 3, so this goes through the public
    API with the credentials of the ``airflow_api`` connection (host = API server URL). DAGs
    the API does not know are skipped.

    Raises:
        AirflowApiMissing: The connection is not defined.
    """
    api = _airflow_api(conn_id)
    known = api.dag_ids()
    changed = []
    for dag_id in dag_ids:
        if dag_id in known:
            api.set_paused(dag_id, paused)
            changed.append(dag_id)
    log.warning("%s DAGs: %s", "paused" if paused else "unpaused", changed)
    return changed


def sync_dag_ids(entities: Iterable[EntityConfig]) -> list[str]:
    """The DAGs a sandbox refresh affects: every sync DAG, the full copy and the reconciliation."""
    return sorted({e.dag_id for e in entities} | {"full_copy", "reconcile"})


def on_identity_mismatch(entity: EntityConfig, run_id: str, error: Exception) -> None:
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
        entity.dag_id,
        "extract_changes",
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
    entity: EntityConfig, rows: pd.DataFrame, persons: pd.DataFrame, marketo: Any, taken: set[str]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Re-point this entity's Marketo persons at the refreshed org's records.

    A person whose key is a current GUID keeps it; otherwise the one Dataverse record with the
    same email (unique on both sides, not yet claimed) takes it and the person's key is updated
    in Marketo; a person left without a record is flagged deleted (the delete policy), never
    deleted. Returns the id-map rows and counts.
    """
    from crm_sync.engine.extract import email_column
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
    column = email_column(entity)
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
    orphans = [str(i) for i in rest[m.id_field].astype(str) if str(i) not in matched_ids]
    failed = 0
    for part in _chunks(updates):
        failed += sum(1 for r in marketo.sync_leads(list(part), "updateOnly", "id") if not r.ok)
    if m.deleted_field and orphans:
        flags = [{"id": int(i), m.deleted_field: True} for i in orphans]
        for part in _chunks(flags):
            failed += sum(1 for r in marketo.sync_leads(list(part), "updateOnly", "id") if not r.ok)
    for link in links:
        link["person_type"] = m.person_type
    counts = {"kept": len(kept), "by_email": len(updates), "flagged_deleted": len(orphans), "failed": failed}
    return links, counts


def _relink_objects(
    entity: EntityConfig, rows: pd.DataFrame, links: pd.DataFrame, marketo: Any
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Keep the Marketo objects whose key is still a current GUID; delete the ones keyed by
    ids the refreshed org no longer has (the sync re-creates them from Dataverse under the new
    ids, so none is left twice)."""
    from crm_sync.engine.load import marketo_object_path

    current = set(_norm(rows[entity.dynamics.key]).dropna()) if len(rows) else set()
    old = links[links["marketo_id"].notna()]
    keep = old[old["dynamics_id"].astype(str).isin(current)]
    gone = sorted(set(old["dynamics_id"].astype(str)) - current)
    failed = 0
    if gone:
        keys = [{entity.marketo.key: g} for g in gone]
        results = marketo.delete_objects(marketo_object_path(entity), keys, "dedupeFields")
        failed = sum(1 for r in results if not r.ok and "not found" not in str(r.reason or "").lower())
    out = [
        {"dynamics_id": str(d), "marketo_id": str(mid)}
        for d, mid in zip(keep["dynamics_id"], keep["marketo_id"], strict=True)
    ]
    return out, {"kept": len(out), "deleted": len(gone), "failed": failed}


def relink(
    entities: Sequence[EntityConfig],
    *,
    dynamics: Any,
    marketo: Any,
    state: Engine,
    since: datetime | None = None,
    poll_seconds: float = 10.0,
) -> dict[str, dict[str, int]]:
    """Re-link every Marketo record to the refreshed org, then reset the state store.

    Persons are re-linked by key, then by email (their marketing history stays with them);
    Lead Database objects keyed by ids that no longer exist are deleted and re-created by the
    next sync runs. The state store is then re-baselined (id map, watermarks and identities
    cleared) and the new links written without agreed hashes, so the next run of each sync
    DAG reads its table from the start and writes every record once, as an update of the
    re-linked Marketo record.

    Returns:
        Per entity, the counts of what happened.

    Raises:
        RuntimeError: Some Marketo writes failed (the state store is left untouched).
    """
    from crm_sync.engine.extract import _GUID
    from crm_sync.reconcile.core import default_since
    from crm_sync.reconcile.reads import is_person, marketo_fields, read_dynamics, read_persons
    from crm_sync.state import open_errors, resolve_errors, upsert_links
    from crm_sync.state import rebaseline as reset_state

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
    new_links: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    taken: set[str] = set()
    for entity in entities:
        rows = read_dynamics(entity, dynamics)
        with session_scope(state) as session:
            old = lookup_links(session, entity.name)
        if is_person(entity):
            assert persons is not None
            links, counts[entity.name] = _relink_persons(entity, rows, persons, marketo, taken)
            taken |= {link["dynamics_id"] for link in links}
        else:
            links, counts[entity.name] = _relink_objects(entity, rows, old, marketo)
        new_links[entity.name] = links
    failed = {n: c["failed"] for n, c in counts.items() if c.get("failed")}
    if failed:
        raise RuntimeError(f"re-link: Marketo writes failed for {failed}; the state store was not reset")
    with session_scope(state) as session:
        reset_state(session)
        for name, links in new_links.items():
            upsert_links(session, name, links)
        # Failures keyed by the old org's record ids can never be retried (Marketo-keyed stay).
        stale = open_errors(session)
        stale = stale[stale["source_id"].astype(str).str.lower().str.match(_GUID.pattern)]
        for (name, direction), part in stale.groupby(["entity", "direction"]):
            resolve_errors(session, str(name), str(direction), part["source_id"].astype(str))
    log.warning("re-baselined after a sandbox refresh: %s", counts)
    return counts


# --- task entry points of the rebaseline DAG ------------------------------------------------


def _selected(settings: RunSettings, names: Sequence[str]) -> list[EntityConfig]:
    from crm_sync.engine.runner import _entities
    from crm_sync.reconcile.__main__ import select_entities

    return select_entities(_entities(settings.entities_dir), ",".join(names))


def run_detect(settings: RunSettings, names: Sequence[str]) -> dict[str, Any]:
    """Task ``detect``: report whether the org looks refreshed (organization id, unresolved ids)."""
    from crm_sync.engine.runner import context
    from crm_sync_hooks.dynamics import DynamicsHook

    ctx = context(settings, migrate=True)
    dynamics = DynamicsHook(settings.dynamics_conn_id)
    try:
        found = detect_refresh(_selected(settings, names), dynamics, ctx.state)
    finally:
        dynamics.close()
        ctx.state.dispose()
    log.warning("sandbox refresh check: %s", found)
    return found


def run_pause(settings: RunSettings, paused: bool) -> list[str]:
    """Tasks ``pause_sync``/``unpause_sync``: (un)pause every sync DAG through the REST API.

    Without an ``airflow_api`` connection the DAGs are left as they are, with a warning (a
    paused DAG must then be unpaused by hand).
    """
    from crm_sync.engine.runner import _entities

    try:
        return pause_dags(sync_dag_ids(_entities(settings.entities_dir).values()), paused)
    except AirflowApiMissing as exc:
        log.warning("%s; (un)pause the sync DAGs by hand", exc)
        return []


def run_relink(settings: RunSettings, names: Sequence[str], poll_seconds: float = 10.0) -> dict[str, Any]:
    """Task ``relink``: re-link every record to the refreshed org and reset the state store."""
    from crm_sync.engine.runner import context
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

    ctx = context(settings, migrate=True)
    dynamics, marketo = DynamicsHook(settings.dynamics_conn_id), MarketoHook(settings.marketo_conn_id)
    try:
        counts = relink(
            _selected(settings, names),
            dynamics=dynamics,
            marketo=marketo,
            state=ctx.state,
            poll_seconds=poll_seconds,
        )
    finally:
        dynamics.close()
        marketo.close()
        ctx.state.dispose()
    send_alert(
        "rebaseline",
        "relink",
        settings.run_id,
        f"Re-baselined after a Dynamics sandbox refresh: {counts}. The state store's identity and "
        "watermarks were reset; the next run of each sync DAG re-reads its table and updates the "
        "re-linked Marketo records.",
    )
    return counts
