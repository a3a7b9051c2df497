"""Resolve Dataverse lookups through the id map (owner → sales person, account → company, …).

The id-map frame has the columns ``entity``, ``dynamics_id`` and ``marketo_id`` (one row per
linked record; GUIDs lower case), as returned by ``crm_sync.state.lookup_links``. Resolution is
one hash join per lookup column, never a per-row query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from crm_sync.transforms.casts import as_string
from crm_sync.transforms.errors import UNRESOLVED_LOOKUP, concat_errors, error_rows
from crm_sync.transforms.frames import empty_frame

if TYPE_CHECKING:
    from crm_sync.config import EntityConfig, Lookup, RoleRule

ID_MAP_COLUMNS = ["entity", "dynamics_id", "marketo_id"]


def empty_id_map() -> pd.DataFrame:
    """Return an id-map frame with no rows."""
    return empty_frame(ID_MAP_COLUMNS)


def _index(id_map: pd.DataFrame, value: str) -> pd.Series:
    """Series ``"<entity>|<dynamics_id>" -> value`` for a vectorised ``Series.map``."""
    keys = id_map["entity"].astype("str") + "|" + id_map["dynamics_id"].astype("str").str.lower()
    values = as_string(id_map[value]) if value in id_map else pd.Series(pd.NA, index=id_map.index)
    resolved = pd.Series(values.to_numpy(), index=keys.to_numpy())
    return resolved[~resolved.index.duplicated(keep="last")]


def _target_entity(rows: pd.DataFrame, lookup: Lookup) -> pd.Series:
    """Entity name each row's lookup points at (NA when its target table is not synced)."""
    if lookup.type_column:
        if lookup.type_column not in rows:
            return pd.Series(pd.NA, index=rows.index, dtype="str")
        return as_string(rows[lookup.type_column]).map(lookup.targets).astype("str")
    (target,) = lookup.targets.values()
    return pd.Series(target, index=rows.index, dtype="str")


def resolve_lookup(rows: pd.DataFrame, lookup: Lookup, id_map: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Resolve one lookup column.

    Returns:
        The Marketo value per row (NA when empty or unresolved) and a mask of rows whose lookup
        had a value pointing at a synced entity but no id-map row (not yet synced, or failed).
    """
    if lookup.dynamics not in rows:
        empty = pd.Series(pd.NA, index=rows.index, dtype="str")
        return empty, pd.Series(False, index=rows.index)
    ids = as_string(rows[lookup.dynamics]).str.strip().str.lower()
    target = _target_entity(rows, lookup)
    resolved = (target + "|" + ids).map(_index(id_map, lookup.value)).astype("str")
    if lookup.as_integer:
        # Fixed dtype whatever the batch holds, so hashes of this column stay comparable.
        resolved = pd.to_numeric(resolved, errors="coerce").astype("Int64")
    unresolved = ids.notna() & target.notna() & resolved.isna()
    if lookup.required:
        # A required link pointing at an unsynced table is as unusable as a missing row.
        unresolved |= ids.notna() & target.isna()
    return resolved, unresolved


def resolve_lookups(
    rows: pd.DataFrame, entity: EntityConfig, id_map: pd.DataFrame, record_ids: pd.Series
) -> tuple[dict[str, pd.Series], pd.DataFrame]:
    """Resolve all lookups of ``entity``; several lookups may fill one Marketo field in order.

    Args:
        rows: Dataverse rows.
        entity: The entity configuration.
        id_map: Id-map frame (see module docstring).
        record_ids: Record id per row, for error rows.

    Returns:
        Marketo field → resolved values, and the errors of required lookups that did not resolve.
    """
    out: dict[str, pd.Series] = {}
    errors = []
    for lookup in entity.lookups:
        values, unresolved = resolve_lookup(rows, lookup, id_map)
        out[lookup.marketo] = out[lookup.marketo].fillna(values) if lookup.marketo in out else values
        if lookup.required:
            missing = unresolved | (values.isna() & lookup.required)
            errors.append(
                error_rows(
                    record_ids,
                    missing,
                    entity=entity.name,
                    direction="d2m",
                    field=lookup.dynamics,
                    code=UNRESOLVED_LOOKUP,
                    reason="required lookup has no synced target",
                )
            )
    return out, concat_errors(errors)


def opportunity_roles(
    rows: pd.DataFrame, entity: EntityConfig, rule: RoleRule, id_map: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Derive Marketo opportunity roles from opportunities whose customer is a contact (§2.4).

    Args:
        rows: Dataverse opportunity rows (key, customer lookup and its lookuplogicalname).
        entity: The opportunity entity.
        rule: ``entity.roles``.
        id_map: Id-map frame holding the person entity's links.

    Returns:
        Roles (``externalOpportunityId``, ``leadId``, ``role``, ``isPrimary``) and the errors of
        contacts that have no Marketo person yet (retried later, like any failed record).
    """
    key = as_string(rows[entity.dynamics.key]).str.lower()
    kind = (
        as_string(rows[rule.type_column]) if rule.type_column in rows else pd.Series(pd.NA, index=rows.index)
    )
    is_contact = (kind == rule.when_type).fillna(False).astype(bool)
    contact_ids = as_string(rows[rule.lookup]).str.lower().where(is_contact)
    lead_ids = ("|".join([rule.person_entity, ""]) + contact_ids).map(_index(id_map, "marketo_id"))
    ok = is_contact & lead_ids.notna()
    roles = pd.DataFrame(
        {
            "externalOpportunityId": key[ok],
            "leadId": pd.to_numeric(lead_ids[ok]).astype("Int64"),
            "role": rule.role,
            "isPrimary": rule.is_primary,
        }
    )
    errors = error_rows(
        key,
        is_contact & lead_ids.isna(),
        entity=rule.entity,
        direction="d2m",
        field=rule.lookup,
        code=UNRESOLVED_LOOKUP,
        reason=f"customer {rule.when_type} has no Marketo person yet",
    )
    return roles.reset_index(drop=True), errors
