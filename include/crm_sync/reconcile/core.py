"""Run a reconciliation over several entities: read both systems once, compare each entity.

The Marketo persons are read once for all person entities (lead and contact share them).
Nothing is written anywhere here; :mod:`crm_sync.reconcile.store` keeps reports and
:mod:`crm_sync.reconcile.repair` re-queues differences.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import select

from crm_sync.reconcile.compare import DIFF_COLUMNS, KINDS, compare_entity, empty_differences
from crm_sync.reconcile.reads import (
    ReconcileMarketo,
    is_person,
    marketo_fields,
    read_dynamics,
    read_objects,
    read_persons,
)
from crm_sync.state import lookup_links, session_scope, utcnow
from crm_sync.state.db import as_utc
from crm_sync.state.models import SyncIdentity
from crm_sync.transforms import sync_filter_mask

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Engine

    from crm_sync.config import EntityConfig
    from crm_sync.engine.clients import DynamicsClient

log = logging.getLogger(__name__)

DEFAULT_LOOKBACK = timedelta(days=31)


@dataclass
class Report:
    """The outcome of one reconciliation.

    Attributes:
        differences: One row per finding (:data:`~crm_sync.reconcile.compare.DIFF_COLUMNS`).
        records: Per entity, rows read on each side (``dynamics``, ``marketo``).
        started_at: When the reads began.
        seconds: Wall time of reads and comparison.
    """

    differences: pd.DataFrame = field(default_factory=empty_differences)
    records: dict[str, dict[str, int]] = field(default_factory=dict)
    started_at: datetime = field(default_factory=utcnow)
    seconds: float = 0.0

    def counts(self) -> dict[str, dict[str, int]]:
        """Per entity, the number of findings of each kind (zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for entity in self.records:
            mine = self.differences[self.differences["entity"] == entity]
            out[entity] = {k: int((mine["kind"] == k).sum()) for k in KINDS}
        return out

    @property
    def total(self) -> int:
        """Number of findings over all entities."""
        return len(self.differences)

    def records_with_differences(self, entity: str) -> int:
        """Distinct records of ``entity`` with at least one finding."""
        mine = self.differences[self.differences["entity"] == entity]
        keys = mine["dynamics_id"].fillna("m:" + mine["marketo_id"].fillna(""))
        return int(keys.nunique())

    def summary(self) -> str:
        """One line per entity with rows read and findings by kind."""
        lines = []
        for entity, counts in self.counts().items():
            read = self.records[entity]
            found = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "no differences"
            lines.append(
                f"{entity}: {read['dynamics']} Dynamics / {read['marketo']} Marketo records; {found}"
            )
        return "\n".join(lines)


def default_since(state: Engine) -> datetime:
    """Start of the Marketo export window: a day before the state store first met Dataverse.

    Persons the sync linked that were created earlier are read by key afterwards; without a
    recorded identity the window is the last 31 days.
    """
    with session_scope(state) as session:
        first = session.execute(select(SyncIdentity.recorded_at).order_by(SyncIdentity.recorded_at)).scalar()
    if first is None:
        return utcnow() - DEFAULT_LOOKBACK
    return (as_utc(first) or utcnow()) - timedelta(days=1)


def _held_back(state: Engine, entity: EntityConfig, rows: pd.DataFrame, links: pd.DataFrame) -> set[str]:
    """Records with no Marketo person of their own, by a rule: not missing in Marketo.

    Those the sync reports instead of writing (open DUPLICATE_EMAIL errors; deleted_in_marketo:
    a person deleted in Marketo, not re-created, waiting for an admin), those whose person
    went on as another record (a qualified lead, a merged record: their links are handed over),
    and records merged into another in Dynamics that never had a person.
    """
    from crm_sync.engine.gone_persons import DELETED_IN_MARKETO
    from crm_sync.state import open_errors
    from crm_sync.state.models import HANDED_OVER
    from crm_sync.transforms.casts import lower_ids
    from crm_sync.transforms.dedup import DUPLICATE_EMAIL
    from crm_sync.transforms.lifecycle import merged_mask

    with session_scope(state) as session:
        errors = open_errors(session, entity=entity.name)
    reported = (
        errors["code"].eq(DUPLICATE_EMAIL) | errors["code"].eq(DELETED_IN_MARKETO) if len(errors) else None
    )
    mine = errors[reported] if reported is not None else errors
    held = set(mine["source_id"].astype(str).str.lower()) if len(mine) else set()
    if len(links):
        held |= set(lower_ids(links.loc[links["state"].isin(HANDED_OVER), "dynamics_id"]))
    if len(rows) and entity.dynamics.key in rows:
        held |= set(lower_ids(rows.loc[merged_mask(entity, rows).to_numpy(), entity.dynamics.key]).dropna())
    return held


def _links(state: Engine, names: Sequence[str]) -> pd.DataFrame:
    with session_scope(state) as session:
        return lookup_links(session, list(names))


def _lookup_targets(entity: EntityConfig) -> set[str]:
    return {t for lk in entity.lookups for t in lk.targets.values()}


def reconcile(
    entities: Sequence[EntityConfig],
    *,
    dynamics: DynamicsClient,
    marketo: ReconcileMarketo,
    state: Engine,
    since: datetime | None = None,
    poll_seconds: float = 10.0,
) -> Report:
    """Compare ``entities`` across both systems with the cheapest reads.

    Args:
        entities: Entities to compare (any order).
        dynamics: Dataverse client.
        marketo: Marketo client (``MarketoHook``).
        state: State store (id map for lookups, links, duplicates, orphans).
        since: Start of the Marketo persons export window (default :func:`default_since`).
        poll_seconds: Bulk export status poll interval.

    Returns:
        The report; nothing is written.
    """
    started, clock = utcnow(), time.monotonic()
    report = Report(started_at=started)
    parts = [empty_differences()]
    dyn_rows = {e.name: read_dynamics(e, dynamics) for e in entities}
    persons: pd.DataFrame | None = None
    person_entities = [e for e in entities if is_person(e)]
    group = [e.name for e in person_entities]
    if person_entities:
        keys: set[str] = set()
        for e in person_entities:
            rows = dyn_rows[e.name]
            # Rows the sync filter keeps out need no Marketo read (the id map covers old links).
            in_scope = rows[sync_filter_mask(rows, e).to_numpy()] if len(rows) else rows
            keys |= set(in_scope[e.dynamics.key].dropna().astype(str).str.lower())
        links_all = _links(state, group)
        keys |= set(links_all["dynamics_id"].dropna().astype(str))
        key_field = person_entities[0].marketo.key
        persons = read_persons(
            marketo,
            marketo_fields(person_entities),
            key_field,
            keys,
            since or default_since(state),
            poll_seconds=poll_seconds,
        )
    for entity in entities:
        from crm_sync.engine.load import marketo_object_path

        links = _links(state, [entity.name])
        targets = _lookup_targets(entity)
        id_map = (
            _links(state, sorted(targets))[["entity", "dynamics_id", "marketo_id"]]
            if targets
            else links[["entity", "dynamics_id", "marketo_id"]].iloc[0:0]
        )
        rows = dyn_rows[entity.name]
        if is_person(entity):
            assert persons is not None
            m_rows = persons
            group_links = _links(state, group)
        else:
            keys = set(rows[entity.dynamics.key].dropna().astype(str).str.lower())
            keys |= set(links["dynamics_id"].dropna().astype(str))
            m_rows = read_objects(entity, marketo, marketo_object_path(entity), keys)
            group_links = links
        held = _held_back(state, entity, rows, links)
        found = compare_entity(entity, rows, m_rows, id_map, links, group_links, held)
        parts.append(found)
        mine = m_rows
        if is_person(entity) and entity.marketo.type_field and entity.marketo.type_field in m_rows:
            mine = m_rows[
                m_rows[entity.marketo.type_field].astype(str).str.lower()
                == str(entity.marketo.person_type).lower()
            ]
        report.records[entity.name] = {"dynamics": len(rows), "marketo": len(mine)}
        log.info("%s: %d differences", entity.name, len(found))
    report.differences = pd.concat([p for p in parts if len(p)] or parts, ignore_index=True)[DIFF_COLUMNS]
    report.seconds = time.monotonic() - clock
    return report


def differences_text(report: Report, limit: int | None = 200) -> str:
    """Human-readable differences (``no differences`` when none), for the CLI and task logs."""
    if report.total == 0:
        return "no differences\n" + report.summary()
    shown = report.differences if limit is None else report.differences.head(limit)
    lines = [report.summary(), ""]
    for row in shown.to_dict("records"):
        lines.append(_line(row))
    if limit is not None and report.total > limit:
        lines.append(f"... {report.total - limit} more")
    return "\n".join(lines)


def _line(row: dict[str, Any]) -> str:
    ids = f"dynamics={row['dynamics_id'] or '-'} marketo={row['marketo_id'] or '-'}"
    text = f"{row['entity']:<12} {row['kind']:<22} {ids}"
    if row.get("field"):
        values = f"dynamics_value={row['dynamics_value']!r} marketo_value={row['marketo_value']!r}"
        text += f" field={row['field']} {values}"
    return text
