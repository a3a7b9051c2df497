"""Glue between transforms and the id map: stored hashes in, link rows out, deletes.

The id map (``crm_sync.state.lookup_links``) stores per record the per-field hashes both
systems agreed on at the last sync plus a record hash per direction. These helpers convert
between that storage and the frames :func:`~crm_sync.transforms.conflicts.resolve_changes`
works on, so the engine does not handle hash dicts itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from crm_sync.config import DeletePolicy, Direction, EntityConfig
from crm_sync.transforms.casts import as_string
from crm_sync.transforms.conflicts import tracked_columns
from crm_sync.transforms.hashing import hashes_frame, hashes_to_dicts, hashes_to_json, record_hash

if TYPE_CHECKING:
    from crm_sync.transforms.conflicts import Resolution


def last_hashes(links: pd.DataFrame) -> pd.DataFrame:
    """Per-field hashes of the last sync, indexed by Dataverse GUID, from id-map rows."""
    if links.empty:
        return pd.DataFrame(index=pd.Index([], dtype="str"))
    return hashes_frame(links["field_hashes"].tolist(), links["dynamics_id"].astype(str).tolist())


def direction_hash(entity: EntityConfig, hashes: pd.DataFrame, direction: Direction) -> pd.Series:
    """Record hash over the tracked columns that flow ``direction`` (``last_hash_d2m``/``_m2d``)."""
    names = sorted(n for n, flow, _ in tracked_columns(entity) if flow.includes(direction) and n in hashes)
    # One int64 block built column by column: selecting and casting a list of nullable columns
    # copied each of them (the largest part of the plan's link step in the profile).
    columns = [hashes[n].to_numpy(dtype="int64", na_value=0) for n in names]
    matrix = np.column_stack(columns) if columns else np.empty((len(hashes), 0), dtype="int64")
    return record_hash(pd.DataFrame(matrix, columns=names, index=hashes.index))


def link_rows(
    entity: EntityConfig,
    resolution: Resolution,
    dynamics_ids: pd.Index | list[str],
    marketo_ids: pd.Series | None = None,
    *,
    hashes_as_json: bool = False,
) -> pd.DataFrame:
    """Id-map rows for records whose writes succeeded: agreed hashes, record hashes, ids.

    Args:
        entity: The entity.
        resolution: The merge result the writes came from.
        dynamics_ids: GUIDs of the records written successfully (both sides, where both wrote).
        marketo_ids: Optional Marketo ids by GUID learnt from the write responses.
        hashes_as_json: ``field_hashes`` as JSON text (for staging), not dicts.

    Returns:
        A frame for ``crm_sync.state.upsert_links``.
    """
    agreed = resolution.agreed.loc[list(dynamics_ids)]
    rows = pd.DataFrame(
        {
            "dynamics_id": agreed.index.astype(str),
            "field_hashes": hashes_to_json(agreed) if hashes_as_json else hashes_to_dicts(agreed),
            "last_hash_d2m": direction_hash(entity, agreed, Direction.D2M).to_numpy(),
            "last_hash_m2d": direction_hash(entity, agreed, Direction.M2D).to_numpy(),
        }
    )
    if entity.marketo.person_type:
        rows["person_type"] = entity.marketo.person_type
    if marketo_ids is not None:
        mids = marketo_ids.reindex(agreed.index)
        if pd.api.types.is_float_dtype(mids.dtype):
            mids = mids.astype("Int64")  # ids with gaps arrive as floats; 77.0 must become "77"
        rows["marketo_id"] = as_string(mids).to_numpy()
    return rows


def deletion_records(entity: EntityConfig, deleted_ids: pd.Series) -> tuple[DeletePolicy, pd.DataFrame]:
    """What to send to Marketo for records deleted in Dataverse, per the entity's delete policy.

    Args:
        entity: The entity.
        deleted_ids: Dataverse GUIDs from the delta feed's ``$deletedEntity`` rows.

    Returns:
        The policy and the records: for ``flag``, updates keyed by the Marketo key that set the
        sync-owned deleted field true (persons are never deleted, §2.8); for ``delete``, the
        keys to delete; for ``ignore``, no rows.
    """
    ids = as_string(deleted_ids).str.strip().str.lower().dropna().drop_duplicates()
    policy = entity.delete_policy
    if policy is DeletePolicy.IGNORE:
        return policy, pd.DataFrame({entity.marketo.key: pd.Series(dtype="str")})
    frame = pd.DataFrame({entity.marketo.key: ids.to_numpy()})
    if policy is DeletePolicy.FLAG:
        if not entity.marketo.deleted_field:
            raise ValueError(f"entity {entity.name}: delete_policy flag needs marketo.deleted_field")
        frame[entity.marketo.deleted_field] = True
    return policy, frame
