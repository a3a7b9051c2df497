"""The Dataverse sync filter (sync-semantics §4): only an explicit No keeps a row out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from crm_sync.config import EntityConfig

_NO = {"false", "0", "no"}


def sync_filter_mask(rows: pd.DataFrame, entity: EntityConfig) -> pd.Series:
    """Return True for the rows that pass the entity's sync filter.

    A table without a configured filter column, or whose extract lacks the column, syncs all
    rows (§4.2). Empty (null) and Yes sync; only an explicit No (``False``, ``0``, ``"false"``)
    is excluded.

    Args:
        rows: Dataverse rows.
        entity: The entity configuration.

    Returns:
        Boolean mask aligned with ``rows``.
    """
    column = entity.dynamics.filter_column
    if not column or column not in rows:
        return pd.Series(True, index=rows.index)
    values = rows[column]
    if pd.api.types.is_bool_dtype(values.dtype):
        explicit_no = values.eq(False).fillna(False)
    else:
        explicit_no = values.notna() & values.astype("str").str.strip().str.lower().isin(_NO)
    return ~explicit_no.astype(bool)


def filter_values(rows: pd.DataFrame, entity: EntityConfig) -> pd.Series:
    """The sync-filter value per row as nullable boolean (for the id map's ``filter_value``).

    Comparing it with the stored value finds the transitions: Yes/empty → No makes the link
    stale (no updates, nothing deleted); No → Yes asks for a full-record upsert (§4.3).
    """
    column = entity.dynamics.filter_column
    if not column or column not in rows:
        return pd.Series(pd.NA, index=rows.index, dtype="boolean")
    words = rows[column].astype("str").str.strip().str.lower()
    values = words.map({"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False})
    return values.astype("boolean").where(rows[column].notna())


def filter_transitions(rows: pd.DataFrame, entity: EntityConfig, links: pd.DataFrame) -> pd.DataFrame:
    """Classify sync-filter transitions of extracted rows against the id map (§4.3, §4.5).

    Args:
        rows: All extracted Dataverse rows, before :func:`apply_sync_filter`.
        entity: The entity.
        links: Id-map rows of these records (``dynamics_id``, ``state``, ``filter_value``).

    Returns:
        One row per input row: ``dynamics_id``, ``filter_value`` (store it in the id map) and
        ``transition``: ``stale`` (linked record switched to No: stop updating, delete
        nothing), ``refresh`` (a stale or No record switched back: send every field, i.e.
        ignore its last hashes), or missing when nothing changed.
    """
    ids = rows[entity.dynamics.key].astype("str").str.strip().str.lower()
    now = filter_values(rows, entity)
    known = links.drop_duplicates("dynamics_id").set_index("dynamics_id") if len(links) else None
    if known is None:
        state = pd.Series(pd.NA, index=rows.index, dtype="str")
        before = pd.Series(pd.NA, index=rows.index, dtype="boolean")
    else:
        state = ids.map(known["state"]).astype("str")
        before = ids.map(known["filter_value"]).astype("boolean")
    excluded = now.eq(False).fillna(False).astype(bool)
    was_off = (before.eq(False).fillna(False) | state.eq("stale").fillna(False)).astype(bool)
    linked_active = state.eq("active").fillna(False).astype(bool)
    transition = pd.Series(pd.NA, index=rows.index, dtype="str")
    transition = transition.mask(excluded & linked_active, "stale").mask(~excluded & was_off, "refresh")
    return pd.DataFrame({"dynamics_id": ids, "filter_value": now, "transition": transition})


def apply_sync_filter(rows: pd.DataFrame, entity: EntityConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``rows`` into (synced, filtered out); the second set is counted as skipped."""
    keep = sync_filter_mask(rows, entity).to_numpy()
    return rows.loc[keep], rows.loc[~keep]
