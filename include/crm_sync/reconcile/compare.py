"""Compare one entity's records in both systems after mapping: key sets, then a hash per record.

Both sides go through the sync's own casts (:func:`crm_sync.transforms.to_canonical`) and
lookup resolution (:func:`crm_sync.transforms.resolve_lookups`), so "equal" means equal after
mapping, exactly as the sync would see it. Records whose record hashes (over every tracked
field) agree are equal; only the others are compared field by field.

The result is one flat frame of differences (:data:`DIFF_COLUMNS`), one row per finding:

* ``missing_in_marketo``: a Dataverse record in the sync's scope with no Marketo record (the
  Marketo id is that of a person the sync flagged deleted for it, if there is one);
* ``missing_in_dynamics``: a Marketo-only person flagged for creation that is not linked yet;
* ``orphan``: a Marketo record carrying a Dataverse key that Dataverse no longer has (persons
  flagged deleted by the sync are not orphans: that is the delete policy at work);
* ``duplicate_in_marketo``: a further Marketo record with the same Dataverse key (the id map's
  linked record, else the oldest, is the one kept);
* ``duplicate_in_dynamics``: several Dataverse records linked to one Marketo person (a lead and
  a contact both claiming it);
* ``divergent``: a field whose mapped values differ (both values given).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from crm_sync.transforms import (
    flagged_unlinked,
    persons_for_entity,
    sync_filter_mask,
)
from crm_sync.transforms.canonical import dynamics_canonical, keys, marketo_canonical
from crm_sync.transforms.casts import as_string
from crm_sync.transforms.conflicts import tracked_columns
from crm_sync.transforms.frames import empty_frame
from crm_sync.transforms.hashing import field_hashes, record_hash, value_hash

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crm_sync.config import EntityConfig

DIFF_COLUMNS = ["entity", "kind", "dynamics_id", "marketo_id", "field", "dynamics_value", "marketo_value"]
MISSING_IN_MARKETO = "missing_in_marketo"
MISSING_IN_DYNAMICS = "missing_in_dynamics"
ORPHAN = "orphan"
DUPLICATE_IN_MARKETO = "duplicate_in_marketo"
DUPLICATE_IN_DYNAMICS = "duplicate_in_dynamics"
DIVERGENT = "divergent"
KINDS = (
    MISSING_IN_MARKETO,
    MISSING_IN_DYNAMICS,
    ORPHAN,
    DUPLICATE_IN_MARKETO,
    DUPLICATE_IN_DYNAMICS,
    DIVERGENT,
)
_TRUE = {"true", "1", "yes"}


def empty_differences() -> pd.DataFrame:
    """A differences frame with no rows."""
    return empty_frame(DIFF_COLUMNS, "object")


def _text(values: pd.Series) -> list[str | None]:
    plain = values.astype(object).where(values.notna(), None)
    return [None if v is None else str(v) for v in plain]


def _rows(
    entity: str, kind: str, dids: Sequence[object], mids: Sequence[object], **extra: object
) -> pd.DataFrame:
    n = len(dids)
    frame = pd.DataFrame(
        {
            "entity": [entity] * n,
            "kind": [kind] * n,
            "dynamics_id": list(dids),
            "marketo_id": [None if m is None or pd.isna(m) else str(m) for m in mids],
        }
    )
    for col in ("field", "dynamics_value", "marketo_value"):
        frame[col] = extra.get(col, [None] * n)
    return frame[DIFF_COLUMNS]


def _primary_ids(marketo: pd.DataFrame, entity: EntityConfig, links: pd.DataFrame) -> pd.Series:
    """Per Marketo row: True for the record kept for its key (the linked one, else the oldest)."""
    id_col = entity.marketo.id_field
    mids = as_string(marketo[id_col])
    linked = set(as_string(links["marketo_id"]).dropna()) if len(links) else set()
    is_linked = mids.isin(linked)
    numeric = pd.to_numeric(mids, errors="coerce")
    order = pd.DataFrame({"key": marketo["_key"], "linked": ~is_linked, "num": numeric, "id": mids})
    first = order.sort_values(["key", "linked", "num", "id"]).drop_duplicates("key", keep="first").index
    return pd.Series(marketo.index.isin(first), index=marketo.index)


def compare_entity(
    entity: EntityConfig,
    dynamics_rows: pd.DataFrame,
    marketo_rows: pd.DataFrame,
    id_map: pd.DataFrame,
    links: pd.DataFrame,
    group_links: pd.DataFrame | None = None,
    held_back: set[str] | frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """Compare one entity across both systems.

    Args:
        entity: The entity.
        dynamics_rows: Raw Dataverse rows (:func:`crm_sync.reconcile.reads.read_dynamics`).
        marketo_rows: Raw Marketo records; for persons every person read (the entity takes its
            share by type), for other objects the records read by key.
        id_map: Id-map frame (``entity``, ``dynamics_id``, ``marketo_id``) of the lookup targets.
        links: This entity's id-map rows (``lookup_links``).
        group_links: Id-map rows of every entity sharing the Marketo object (lead and contact),
            for Dataverse-side duplicates; defaults to ``links``.
        held_back: Dataverse keys the sync reports instead of writing (a person whose email
            another record holds): not missing in Marketo.

    Returns:
        The differences (:data:`DIFF_COLUMNS`), sorted by kind, key and field.
    """
    name = entity.name
    parts: list[pd.DataFrame] = [empty_differences()]
    in_scope = sync_filter_mask(dynamics_rows, entity) if len(dynamics_rows) else pd.Series(dtype=bool)
    d_keys_all = keys(dynamics_rows[entity.dynamics.key]) if len(dynamics_rows) else pd.Series(dtype="str")
    out_of_scope = set(d_keys_all[~in_scope.to_numpy()].dropna())
    d_rows = dynamics_rows.loc[in_scope.to_numpy()] if len(dynamics_rows) else dynamics_rows
    d = (
        dynamics_canonical(d_rows, entity, id_map)
        if len(d_rows)
        else pd.DataFrame(index=pd.Index([], dtype="str"))
    )
    d = d[~d.index.duplicated(keep="first")]

    m_all = marketo_rows
    if entity.marketo.person_type:
        if entity.marketo.sync_flag_field:
            waiting = flagged_unlinked(m_all, entity)
            mids = as_string(waiting[entity.marketo.id_field])
            parts.append(_rows(name, MISSING_IN_DYNAMICS, [None] * len(waiting), mids.tolist()))
        m_all = persons_for_entity(m_all, entity)
    m_all = (
        m_all.assign(_key=keys(m_all[entity.marketo.key]))
        if len(m_all)
        else m_all.assign(_key=pd.Series(dtype="str"))
    )
    m_all = m_all[m_all["_key"].notna() & ~m_all["_key"].isin(out_of_scope)]
    deleted_field = entity.marketo.deleted_field
    # Persons the sync flagged deleted, by key: not records of the entity any more, but a
    # record Dataverse still has points at the one to revive (reported on missing_in_marketo).
    flagged_ids = pd.Series(dtype="str")
    if deleted_field and deleted_field in m_all and len(m_all):
        flagged = as_string(m_all[deleted_field]).str.strip().str.lower().isin(_TRUE)
        gone = m_all[flagged.to_numpy()]
        flagged_ids = pd.Series(
            as_string(gone[entity.marketo.id_field]).to_numpy(), index=gone["_key"].to_numpy()
        )
        flagged_ids = flagged_ids[~flagged_ids.index.duplicated(keep="last")]
        m_all = m_all[~flagged.to_numpy()]
    if len(m_all):
        primary = _primary_ids(m_all, entity, links)
        extra = m_all[~primary.to_numpy()]
        parts.append(
            _rows(
                name,
                DUPLICATE_IN_MARKETO,
                extra["_key"].tolist(),
                as_string(extra[entity.marketo.id_field]).tolist(),
            )
        )
        m_rows = m_all[primary.to_numpy()]
    else:
        m_rows = m_all
    m_ids = (
        pd.Series(as_string(m_rows[entity.marketo.id_field]).to_numpy(), index=m_rows["_key"].to_numpy())
        if len(m_rows)
        else pd.Series(dtype="str")
    )

    d_keys, m_keys = set(d.index), set(m_ids.index)
    missing = sorted(d_keys - m_keys - set(held_back))
    parts.append(_rows(name, MISSING_IN_MARKETO, missing, [flagged_ids.get(k) for k in missing]))
    orphans = sorted(m_keys - d_keys)
    parts.append(_rows(name, ORPHAN, orphans, [m_ids[k] for k in orphans]))

    group = links if group_links is None else group_links
    if len(group):
        active = group[group["state"].fillna("active").eq("active") & group["marketo_id"].notna()]
        claimed = active.groupby("marketo_id")["dynamics_id"].transform("nunique")
        mine = active[(claimed > 1).to_numpy() & active["entity"].eq(name).to_numpy()]
        parts.append(
            _rows(name, DUPLICATE_IN_DYNAMICS, mine["dynamics_id"].tolist(), mine["marketo_id"].tolist())
        )

    both = sorted(d_keys & m_keys)
    if both:
        m = marketo_canonical(m_rows, entity)
        parts.append(_divergent(entity, d.loc[both], m.loc[both], m_ids))
    result = pd.concat([p for p in parts if len(p)] or [empty_differences()], ignore_index=True)
    return result.sort_values(
        ["kind", "dynamics_id", "marketo_id", "field"], na_position="first", kind="stable"
    ).reset_index(drop=True)


def _divergent(entity: EntityConfig, d: pd.DataFrame, m: pd.DataFrame, m_ids: pd.Series) -> pd.DataFrame:
    """Field-level differences of records present on both sides (record hash first)."""
    names = [n for n, _, _ in tracked_columns(entity) if n in d.columns and n in m.columns]
    hd, hm = field_hashes(d, names), field_hashes(m, names)
    differ = record_hash(hd).ne(record_hash(hm))
    if not differ.any():
        return empty_differences()
    keys = differ.index[differ.to_numpy()]
    frames = []
    for field in names:
        dv, mv = d.loc[keys, field], m.loc[keys, field]
        bad = value_hash(dv).ne(value_hash(mv))
        if not bad.any():
            continue
        ks = keys[bad.to_numpy()]
        frames.append(
            _rows(
                entity.name,
                DIVERGENT,
                list(ks),
                [m_ids.get(k) for k in ks],
                field=[field] * len(ks),
                dynamics_value=_text(dv[bad.to_numpy()]),
                marketo_value=_text(mv[bad.to_numpy()]),
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else empty_differences()
