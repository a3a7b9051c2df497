"""The id map: Dataverse GUID ↔ Marketo id per entity, with what was last synced each way.

Every function works on whole batches: one statement (or one per 500 ids) per call.
GUIDs and emails are stored lower case so lookups are case-insensitive (§3.7).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import select, update

from crm_sync.state.db import JsonText, chunks, upsert, utcnow
from crm_sync.state.models import HANDED_OVER, IdMap

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from datetime import datetime

    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

LINK_COLUMNS = (
    "entity",
    "dynamics_id",
    "marketo_id",
    "email",
    "person_type",
    "state",
    "filter_value",
    "last_hash_d2m",
    "last_hash_m2d",
    "field_hashes",
    "updated_at",
)
_WRITABLE = set(LINK_COLUMNS) - {"entity", "dynamics_id", "updated_at"}


_PLAIN = frozenset({str, int, bool, JsonText})


def _clean(value: Any) -> Any:
    """pandas missing values → None; numpy scalars → Python (drivers reject numpy types)."""
    if value.__class__ in _PLAIN:  # most values: nothing to check (a link chunk has 20,000)
        return value
    if value is None or (not isinstance(value, dict | list) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _rows(entity: str, links: pd.DataFrame | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Normalise the input into row dicts with identical keys (executemany needs that)."""
    records = links.to_dict("records") if isinstance(links, pd.DataFrame) else [dict(r) for r in links]
    if not records:
        return []
    columns = set().union(*(r.keys() for r in records))
    unknown = columns - _WRITABLE - {"dynamics_id"}
    if unknown:
        raise ValueError(f"id map ({entity}): unknown link columns {sorted(unknown)}")
    now = utcnow()
    rows = []
    for i, rec in enumerate(records):
        did = _clean(rec.get("dynamics_id"))
        if not did:
            raise ValueError(f"id map ({entity}): link #{i} has no dynamics_id")
        row = {c: _clean(rec.get(c)) for c in columns}
        row.update(entity=entity, dynamics_id=str(did).strip().lower(), updated_at=now)
        mid = row.get("marketo_id")
        if isinstance(mid, float) and mid.is_integer():
            mid = int(mid)  # an int column with gaps arrives as float: 77.0 must store as "77"
        if mid is not None:
            row["marketo_id"] = str(mid)
        if row.get("email") is not None:
            row["email"] = str(row["email"]).strip().lower()
        row.setdefault("state", "active")
        rows.append(row)
    # The last link per GUID wins, as if the rows had been applied in order.
    return list({r["dynamics_id"]: r for r in rows}.values())


def _release_marketo_ids(session: Session, entity: str, rows: list[dict[str, Any]]) -> None:
    """Detach Marketo ids now claimed by another GUID (re-created record, re-pointed person)."""
    # A link handed over (a qualified lead, a merged record) keeps naming the person it handed
    # on, as history: it claims nothing and is never released.
    claims = {
        r["marketo_id"]: r["dynamics_id"] for r in rows if r.get("marketo_id") and r["state"] == "active"
    }
    stale: list[int] = []
    for part in chunks(list(claims)):
        found = session.execute(
            select(IdMap.id, IdMap.marketo_id, IdMap.dynamics_id).where(
                IdMap.entity == entity, IdMap.marketo_id.in_(part), IdMap.state.not_in(HANDED_OVER)
            )
        )
        stale += [pk for pk, mid, did in found if claims[mid] != did]
    if stale:
        log.info("id map (%s): %d Marketo ids re-pointed to another record", entity, len(stale))
        session.execute(update(IdMap).where(IdMap.id.in_(stale)).values(marketo_id=None, state="orphaned"))


def upsert_links(session: Session, entity: str, links: pd.DataFrame | Sequence[Mapping[str, Any]]) -> int:
    """Insert or update links keyed by (entity, dynamics_id); idempotent.

    Only the columns present in ``links`` are updated on existing rows, so a batch that only
    learnt Marketo ids does not wipe stored hashes.

    Args:
        session: Open session (the caller commits).
        entity: Entity name.
        links: Rows with ``dynamics_id`` and any of ``marketo_id``, ``email``, ``person_type``,
            ``state``, ``filter_value``, ``last_hash_d2m``, ``last_hash_m2d``, ``field_hashes``.

    Returns:
        Number of links written.

    Raises:
        ValueError: A row lacks ``dynamics_id`` or has an unknown column.
    """
    rows = _rows(entity, links)
    if not rows:
        return 0
    _release_marketo_ids(session, entity, rows)
    update_cols = [c for c in rows[0] if c not in ("entity", "dynamics_id")]
    return upsert(session, IdMap, rows, keys=("entity", "dynamics_id"), update=update_cols)


def lookup_links(
    session: Session,
    entities: str | Iterable[str],
    *,
    dynamics_ids: Iterable[str] | None = None,
    marketo_ids: Iterable[str | int] | None = None,
    emails: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Fetch the links of ``entities`` matching any of the given ids or emails.

    With no ids and no emails, returns every link of the entities (small entities such as
    users and teams).

    Returns:
        A frame with :data:`LINK_COLUMNS`; one row per link.
    """
    names = [entities] if isinstance(entities, str) else list(entities)
    cols = [getattr(IdMap, c) for c in LINK_COLUMNS]
    base = select(*cols).where(IdMap.entity.in_(names))
    filters = [
        (IdMap.dynamics_id, sorted({str(v).strip().lower() for v in dynamics_ids or ()})),
        (IdMap.marketo_id, sorted({str(v) for v in marketo_ids or ()})),
        (IdMap.email, sorted({str(v).strip().lower() for v in emails or ()})),
    ]
    if dynamics_ids is None and marketo_ids is None and emails is None:
        result = [tuple(r) for r in session.execute(base)]
    else:
        result = []
        for column, values in filters:
            for part in chunks(values):
                result += [tuple(r) for r in session.execute(base.where(column.in_(part)))]
    frame = pd.DataFrame(result, columns=list(LINK_COLUMNS))
    return frame.drop_duplicates(subset=["entity", "dynamics_id"]).reset_index(drop=True)


def links_by_email(session: Session, emails: Iterable[str]) -> pd.DataFrame:
    """Active links of any entity, with a Marketo person, holding one of ``emails``.

    Returns:
        A frame with :data:`LINK_COLUMNS` (emails compared lower case).
    """
    wanted = sorted({str(v).strip().lower() for v in emails if v is not None and str(v).strip()})
    cols = [getattr(IdMap, c) for c in LINK_COLUMNS]
    base = select(*cols).where(IdMap.state == "active", IdMap.marketo_id.is_not(None))
    result: list[tuple[Any, ...]] = []
    for part in chunks(wanted):
        result += [tuple(r) for r in session.execute(base.where(IdMap.email.in_(part)))]
    return pd.DataFrame(result, columns=list(LINK_COLUMNS))


def set_link_state(
    session: Session, entity: str, dynamics_ids: Iterable[str], state: str, now: datetime | None = None
) -> int:
    """Set ``state`` (active / stale / orphaned / deleted / converted / merged) on the given links;
    returns rows changed."""
    ids = sorted({str(v).strip().lower() for v in dynamics_ids})
    changed = 0
    for part in chunks(ids):
        result = session.execute(
            update(IdMap)
            .where(IdMap.entity == entity, IdMap.dynamics_id.in_(part))
            .values(state=state, updated_at=now or utcnow())
        )
        changed += int(getattr(result, "rowcount", 0) or 0)
    return changed
