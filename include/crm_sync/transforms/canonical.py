"""Canonical values of both systems' records (Marketo field names), keyed by Dataverse GUID.

The sync's own casts and lookup resolution applied to whole tables, so that records read from
either side compare as the sync would see them: the reconciliation compares them, and the re-read
after an expired delta link compares them with the hashes of the last synced values.
"""

from __future__ import annotations

import pandas as pd

from crm_sync.config import EntityConfig, Side
from crm_sync.transforms.casts import as_string, to_canonical
from crm_sync.transforms.lookups import resolve_lookups
from crm_sync.transforms.mapping import FORMATTED_SUFFIX


def keys(values: pd.Series) -> pd.Series:
    """Dataverse keys as the id map holds them: text, trimmed, lower case."""
    return as_string(values).str.strip().str.lower()


def dynamics_canonical(rows: pd.DataFrame, entity: EntityConfig, id_map: pd.DataFrame) -> pd.DataFrame:
    """Canonical values (Marketo names) of Dataverse rows for every tracked column, indexed by GUID.

    Values that cannot be cast stay missing here (the sync would report them as record errors).
    """
    ids = keys(rows[entity.dynamics.key]) if len(rows) else pd.Series(dtype="str")
    out: dict[str, pd.Series] = {}
    for field in entity.fields:
        formatted = rows.get(field.dynamics + FORMATTED_SUFFIX)
        raw = (
            rows[field.dynamics]
            if field.dynamics in rows
            else pd.Series(None, index=rows.index, dtype=object)
        )
        out[field.marketo] = to_canonical(raw, field, Side.DYNAMICS, formatted).values
    lookups, _ = resolve_lookups(rows, entity, id_map, ids)
    for name, values in lookups.items():
        out.setdefault(name, values)
    frame = pd.DataFrame(out, index=rows.index)
    frame.index = pd.Index(ids.to_numpy(), dtype="str")
    return frame[~frame.index.isna()]


def marketo_canonical(records: pd.DataFrame, entity: EntityConfig) -> pd.DataFrame:
    """Canonical values of Marketo records for every tracked column, indexed by Dataverse key."""
    out: dict[str, pd.Series] = {}
    for field in entity.fields:
        raw = (
            records[field.marketo]
            if field.marketo in records
            else pd.Series(None, index=records.index, dtype=object)
        )
        out[field.marketo] = to_canonical(raw, field, Side.MARKETO).values
    for lk in entity.lookups:
        if lk.marketo in out:
            continue
        raw = (
            records[lk.marketo]
            if lk.marketo in records
            else pd.Series(None, index=records.index, dtype=object)
        )
        if lk.as_integer:
            out[lk.marketo] = pd.to_numeric(as_string(raw), errors="coerce").astype("Int64")
        else:
            out[lk.marketo] = keys(raw)
    frame = pd.DataFrame(out, index=records.index)
    frame.index = pd.Index(keys(records[entity.marketo.key]).to_numpy(), dtype="str")
    return frame
