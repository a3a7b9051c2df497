"""The cheapest reads of both systems for a reconciliation: keys and mapped columns only.

* Dataverse: one paged query per entity (5,000 rows a page) selecting the key, every mapped
  column, the lookup columns and the sync-filter column, with the lookup target annotations.
* Marketo persons: one bulk lead export (``createdAt`` window) with the key, type, deleted,
  email, flag and mapped fields; then the persons whose Dataverse key is known (Dataverse rows
  or id map) but the export did not bring (created before the window) are read by key.
* Other Marketo objects (companies, opportunities, sales persons, custom objects): read by key
  (300 keys a call) over the Dataverse keys and the keys the id map knows, since Marketo lists
  those objects only by filter.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from crm_sync.config import EntityConfig, MarketoObject
from crm_sync.engine.columns import DERIVED_COLUMNS
from crm_sync.state import utcnow

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from datetime import datetime

    from crm_sync.engine.clients import DynamicsClient

log = logging.getLogger(__name__)

DYNAMICS_PAGE_SIZE = 5000
MARKETO_BATCH = 300
LOOKUP_ANNOTATION = "Microsoft.Dynamics.CRM.lookuplogicalname"


class ReconcileMarketo(Protocol):
    """What a reconciliation calls on the Marketo side (``MarketoHook`` satisfies it)."""

    def get_leads(
        self,
        filter_type: str,
        filter_values: Sequence[str | int],
        fields: Sequence[str] | None = None,
        batch_size: int = ...,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of leads by filter."""
        ...

    def query_objects(
        self,
        object_name: str,
        filter_type: str,
        filter_values: Sequence[str | int],
        fields: Sequence[str] | None = None,
        batch_size: int = ...,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of Lead Database objects by filter."""
        ...

    def bulk_extract_leads(
        self,
        fields: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        date_filter: str = ...,
        batch_size: int = ...,
        poll_seconds: float | None = ...,
    ) -> Iterator[list[dict[str, str | None]]]:
        """Batches of leads created in ``[start, end)``."""
        ...


def dynamics_select(entity: EntityConfig) -> list[str]:
    """Dataverse columns a reconciliation reads: key, every mapped column, lookups, filter, and
    the merge flag (a record merged into another has no person of its own)."""
    cols = [
        entity.dynamics.key,
        *(f.dynamics for f in entity.fields),
        *(lk.dynamics for lk in entity.lookups),
    ]
    if entity.dynamics.filter_column:
        cols.append(entity.dynamics.filter_column)
    if entity.merges is not None:
        cols.append(entity.merges.flag)
    return list(dict.fromkeys(cols))


def read_dynamics(entity: EntityConfig, client: DynamicsClient) -> pd.DataFrame:
    """Every row of the entity's table with :func:`dynamics_select` columns (derived ones included)."""
    columns = dynamics_select(entity)
    plain = [c for c in columns if c not in DERIVED_COLUMNS]
    derived = [c for c in columns if c in DERIVED_COLUMNS]
    expand = ",".join(DERIVED_COLUMNS[c].expand for c in derived) or None
    annotate = LOOKUP_ANNOTATION if any(lk.type_column for lk in entity.lookups) else None
    rows: list[dict[str, Any]] = []
    for page in client.query(
        entity.dynamics.entity_set,
        select=plain,
        expand=expand,
        page_size=DYNAMICS_PAGE_SIZE,
        annotations=annotate,
    ):
        for row in page:
            row.update({c: DERIVED_COLUMNS[c].value(row) for c in derived})
            rows.append(row)
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    # Keep the selected columns and the lookup annotations; drop OData metadata and expansions.
    wanted = set(columns)
    frame = frame[[c for c in frame.columns if c in wanted or str(c).endswith("@" + LOOKUP_ANNOTATION)]]
    for col in columns:
        if col not in frame:
            frame[col] = None
    log.info("%s: %d Dataverse rows read", entity.name, len(frame))
    return frame


def marketo_fields(entities: Iterable[EntityConfig]) -> list[str]:
    """Marketo fields a reconciliation reads for ``entities`` (ids, keys, sync-owned, mapped, lookups)."""
    names: list[str] = []
    for e in entities:
        m = e.marketo
        names += [m.id_field, m.key]
        names += [f for f in (m.type_field, m.deleted_field, m.email_field, m.sync_flag_field) if f]
        names += [f.marketo for f in e.fields]
        names += [lk.marketo for lk in e.lookups]
    return list(dict.fromkeys(names))


def read_persons(
    client: ReconcileMarketo,
    fields: Sequence[str],
    key_field: str,
    known_keys: Iterable[str],
    since: datetime,
    *,
    poll_seconds: float = 10.0,
) -> pd.DataFrame:
    """All Marketo persons: a bulk export of those created since ``since``, then by key the
    persons whose Dataverse key is known but who were created earlier.

    Returns:
        One row per person (string values as exported; missing fields None).
    """
    rows: list[dict[str, Any]] = []
    end = utcnow() + timedelta(minutes=1)
    for batch in client.bulk_extract_leads(list(fields), since, end, poll_seconds=poll_seconds):
        rows += batch
    seen = {str(r.get(key_field) or "").strip().lower() for r in rows}
    rest = sorted({k for k in known_keys if k} - seen)
    for start in range(0, len(rest), MARKETO_BATCH):
        for page in client.get_leads(key_field, rest[start : start + MARKETO_BATCH], list(fields)):
            rows += page
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=list(fields))
    if "id" in frame and len(frame):
        frame = frame.drop_duplicates(subset="id", keep="first")
    for col in fields:
        if col not in frame:
            frame[col] = None
    log.info("Marketo persons read: %d (%d by key after the export)", len(frame), len(rest))
    return frame.reset_index(drop=True)


def read_objects(
    entity: EntityConfig, client: ReconcileMarketo, object_path: str, keys: Iterable[str]
) -> pd.DataFrame:
    """Marketo records of a non-person entity whose key is one of ``keys`` (300 keys a call)."""
    fields = marketo_fields([entity])
    wanted = sorted({k for k in keys if k})
    rows: list[dict[str, Any]] = []
    for start in range(0, len(wanted), MARKETO_BATCH):
        part = wanted[start : start + MARKETO_BATCH]
        for page in client.query_objects(object_path, entity.marketo.key, part, fields):
            rows += page
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=fields)
    for col in fields:
        if col not in frame:
            frame[col] = None
    log.info("%s: %d Marketo %s read by key", entity.name, len(frame), object_path)
    return frame


def is_person(entity: EntityConfig) -> bool:
    """True for entities stored as Marketo persons (lead, contact)."""
    return entity.marketo.object is MarketoObject.LEAD
