"""The re-read after an expired Dataverse delta link: a targeted re-baseline, not a blind copy.

Dataverse keeps change-tracking history for a limited time; an older delta link is refused. The
table is read again (that read also yields the new delta link), and instead of re-sending
everything:

* rows whose mapped values hash the same as the last synced values (the id map's agreed
  hashes) are not staged: nothing to sync;
* linked records missing from the read were deleted during the gap: they are staged as
  deletes, so the delete policy applies (a blind re-read would silently miss them), once the
  visibility guard agrees that the application user still sees about as many rows as before;
* everything else is staged and goes through the normal transform.

An alert says what happened and how many records each step covered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.alerting import send_alert
from crm_sync.config import Direction
from crm_sync.engine.staging import Batcher
from crm_sync.state import lookup_links, session_scope

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from crm_sync.config import EntityConfig
    from crm_sync.engine.context import RunContext


def _d2m_names(entity: EntityConfig) -> list[str]:
    from crm_sync.transforms import tracked_columns

    return [n for n, flow, _ in tracked_columns(entity) if flow.includes(Direction.D2M)]


def reread_expired(
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
    from crm_sync.engine.transform import _infer_lookup_types
    from crm_sync.transforms import ID_MAP_COLUMNS, field_hashes, last_hashes, sync_filter_mask
    from crm_sync.transforms.canonical import dynamics_canonical

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
    kept = Batcher(ctx.staging, folder, "rebaseline", entity.batch_size, columns)
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
    from crm_sync.guards.visibility import guard_full_read, tolerance_setting

    with session_scope(ctx.state) as session:
        # Records no longer seen are staged as deletes below: first make sure the application
        # user still sees about as many rows as last time (raises VisibilityCollapsed).
        guard_full_read(session, entity.name, read, tolerance=tolerance_setting())
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
