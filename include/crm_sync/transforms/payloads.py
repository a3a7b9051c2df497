"""Turn a merge result into the record lists the hooks' batch writers take.

Each record carries only its changed fields plus the keys, so a field changed on the other
side since the last sync is never overwritten with a stale value (scenario 10 of §7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_sync.config import Direction, EntityConfig
from crm_sync.transforms.mapping import DYNAMICS_ID, canonical_to_dynamics, to_records

if TYPE_CHECKING:
    import pandas as pd

    from crm_sync.transforms.conflicts import Resolution


def marketo_payload(
    entity: EntityConfig, resolution: Resolution, ids: pd.Index | None = None
) -> list[dict[str, Any]]:
    """Records to upsert in Marketo (keyed by ``entity.marketo.key``), changed fields only.

    The sync-owned type field (``msdType``) is sent with every person record, so a lead
    qualified into a contact is re-typed by its next write.

    Args:
        entity: The entity.
        resolution: The merge result.
        ids: Some of ``resolution.marketo_ids`` (default: all of them).
    """
    ids = resolution.marketo_ids if ids is None else ids
    always = tuple(c for c in (entity.marketo.key, entity.marketo.type_field) if c)
    values = resolution.to_marketo.loc[ids]
    return to_records(values, resolution.to_marketo_mask.loc[ids], always=always)


def dynamics_payload(
    entity: EntityConfig, resolution: Resolution, ids: pd.Index | None = None
) -> list[dict[str, Any]]:
    """Records to update in Dataverse (keyed by ``entity.dynamics.key``), changed columns only;
    ``ids``: some of ``resolution.dynamics_ids`` (default: all of them)."""
    if not entity.direction.includes(Direction.M2D):
        return []
    ids = resolution.dynamics_ids if ids is None else ids
    canonical = resolution.to_dynamics.loc[ids].rename_axis(DYNAMICS_ID).reset_index()
    canonical.index = ids
    values = canonical_to_dynamics(canonical, entity)
    names = {f.marketo: f.dynamics for f in entity.fields}
    mask = resolution.to_dynamics_mask.loc[ids].rename(columns=names)
    return to_records(values, mask, always=(entity.dynamics.key,))
