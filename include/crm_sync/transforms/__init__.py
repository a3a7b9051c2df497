"""Vectorised pandas transforms between Dataverse rows and Marketo records.

Typical D→M use for one batch::

    rows, skipped = apply_sync_filter(raw, entity)
    mapped = dynamics_to_canonical(rows, entity, id_map)       # .frame, .errors
    links = crm_sync.state.lookup_links(session, entity.name, dynamics_ids=...)
    res = resolve_changes(entity, mapped.frame, marketo_side, last_hashes(links))
    to_marketo = marketo_payload(entity, res)      # list of dicts for the Marketo hook
    to_dynamics = dynamics_payload(entity, res)    # list of dicts for the Dynamics hook
    # after the writes: upsert_links(session, entity.name, link_rows(entity, res, written_ids))
"""

from __future__ import annotations

from crm_sync.transforms.casts import EMAIL_PATTERN, CastResult, to_canonical, to_dynamics_values
from crm_sync.transforms.conflicts import (
    CONFLICT_COLUMNS,
    CONSENT_COLUMNS,
    Resolution,
    resolve_changes,
    tracked_columns,
)
from crm_sync.transforms.dedup import classify_email_matches
from crm_sync.transforms.errors import ERROR_COLUMNS, SchemaError, TransformResult
from crm_sync.transforms.filters import apply_sync_filter, filter_transitions, filter_values, sync_filter_mask
from crm_sync.transforms.hashing import field_hashes, hashes_frame, hashes_to_dicts, record_hash
from crm_sync.transforms.links import deletion_records, direction_hash, last_hashes, link_rows
from crm_sync.transforms.lookups import ID_MAP_COLUMNS, empty_id_map, opportunity_roles, resolve_lookups
from crm_sync.transforms.mapping import (
    DYNAMICS_ID,
    MARKETO_ID,
    canonical_to_dynamics,
    dynamics_to_canonical,
    marketo_to_canonical,
    to_records,
)
from crm_sync.transforms.payloads import dynamics_payload, marketo_payload
from crm_sync.transforms.persons import flagged_unlinked, persons_for_entity

__all__ = [
    "CONFLICT_COLUMNS",
    "CONSENT_COLUMNS",
    "DYNAMICS_ID",
    "EMAIL_PATTERN",
    "ERROR_COLUMNS",
    "ID_MAP_COLUMNS",
    "MARKETO_ID",
    "CastResult",
    "Resolution",
    "SchemaError",
    "TransformResult",
    "apply_sync_filter",
    "canonical_to_dynamics",
    "classify_email_matches",
    "deletion_records",
    "direction_hash",
    "dynamics_payload",
    "dynamics_to_canonical",
    "empty_id_map",
    "field_hashes",
    "filter_transitions",
    "filter_values",
    "flagged_unlinked",
    "hashes_frame",
    "hashes_to_dicts",
    "last_hashes",
    "link_rows",
    "marketo_payload",
    "marketo_to_canonical",
    "opportunity_roles",
    "persons_for_entity",
    "record_hash",
    "resolve_changes",
    "resolve_lookups",
    "sync_filter_mask",
    "to_canonical",
    "to_dynamics_values",
    "to_records",
    "tracked_columns",
]
