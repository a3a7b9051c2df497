"""What a full copy run copies: its scope (a createdon stretch or everything), the order of
the entities, and the staged partitions with their numbered attempts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from crm_sync.state import utcnow

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from airflow.sdk import ObjectStoragePath

    from crm_sync.config import EntityConfig
    from crm_sync.engine.staging import StagingArea
    from crm_sync_hooks.dynamics import QueryPage

log = logging.getLogger(__name__)

PAGE_SIZE = 5000  # Dataverse's largest page
STATE = "state"


class CopySource(Protocol):
    """What the full copy calls on the Dataverse side (``DynamicsHook`` has both)."""

    def query_pages(
        self,
        entity_set: str,
        *,
        select: Sequence[str],
        filter: str | None = None,
        expand: str | None = None,
        page_size: int = ...,
        start_link: str | None = None,
    ) -> Iterator[QueryPage]:
        """Pages of a query with their next links, resumable at a stored link."""
        ...

    def track_changes(
        self, entity_set: str, select: Sequence[str], delta_link: str | None = None, page_size: int = ...
    ) -> Iterator[Any]:
        """Change-tracking pages; the last carries ``delta_link``."""
        ...


# --- scope -----------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_bound(value: Any, *, end: bool) -> datetime | None:
    """A Param bound: ISO date (``to_date`` is inclusive: its whole day counts) or datetime."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, date):
        day = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return day + timedelta(days=1) if end else day
    text = str(value).strip()
    try:
        if len(text) == 10:
            return _parse_bound(date.fromisoformat(text), end=end)
        return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        which = "to_date" if end else "from_date"
        raise ValueError(f"full_copy: Param {which}={text!r} is not an ISO date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class CopyScope:
    """What one full-copy run copies.

    Attributes:
        start: Records created at or after this instant (None: from the beginning).
        end: Records created before this instant (None: up to now).
        entities: Names of the entities to copy (empty: all).
        dry_run: Plan and report, write nothing to Marketo.
    """

    start: datetime | None = None
    end: datetime | None = None
    entities: tuple[str, ...] = ()
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"full_copy: empty range {self.start.isoformat()} .. {self.end.isoformat()}")

    @property
    def everything(self) -> bool:
        """True when no date bound limits the copy (the initial copy hands over to incrementals)."""
        return self.start is None and self.end is None

    def includes(self, entity: str) -> bool:
        """Whether ``entity`` is part of this run."""
        return not self.entities or entity in self.entities

    def key(self) -> str:
        """Folder-safe name of the date range (``all`` for everything)."""

        def stamp(value: datetime | None) -> str:
            return value.strftime("%Y%m%dT%H%M%SZ") if value else "open"

        base = "all" if self.everything else f"{stamp(self.start)}-{stamp(self.end)}"
        return f"{base}-dry" if self.dry_run else base

    def createdon_filter(self) -> str | None:
        """OData ``$filter`` on ``createdon`` for the range (None for everything)."""
        parts = []
        if self.start:
            parts.append(f"createdon ge {self.start.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        if self.end:
            parts.append(f"createdon lt {self.end.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        return " and ".join(parts) or None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (XCom, manifests)."""
        return {
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "entities": list(self.entities),
            "dry_run": self.dry_run,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CopyScope:
        """Rebuild a scope from :meth:`to_dict` output."""
        return cls(
            start=_parse_bound(data.get("start"), end=False),
            end=_parse_bound(data.get("end"), end=False),
            entities=tuple(data.get("entities") or ()),
            dry_run=bool(data.get("dry_run")),
        )


def scope_for_run(
    params: Mapping[str, Any],
    *,
    run_type: str | None,
    interval_start: datetime | None,
    interval_end: datetime | None,
    known_entities: Sequence[str],
) -> CopyScope:
    """The scope of one run: the data interval for scheduled and backfill runs, else the Params.

    A manual run copies everything unless the ``from_date``/``to_date`` Params narrow it.

    Raises:
        ValueError: An unknown entity name, a bad date or an empty range.
    """
    entities = tuple(str(e) for e in (params.get("entities") or ()))
    unknown = sorted(set(entities) - set(known_entities))
    if unknown:
        raise ValueError(
            f"full_copy: Param entities names unknown entities {unknown}; known: {sorted(known_entities)}"
        )
    dry_run = bool(params.get("dry_run"))
    if (
        run_type in ("scheduled", "backfill")
        and interval_start
        and interval_end
        and interval_start < interval_end
    ):
        return CopyScope(_utc(interval_start), _utc(interval_end), entities, dry_run)
    return CopyScope(
        _parse_bound(params.get("from_date"), end=False),
        _parse_bound(params.get("to_date"), end=True),
        entities,
        dry_run,
    )


def copy_order(entities: Mapping[str, EntityConfig]) -> list[list[str]]:
    """Entities in tiers: each tier only depends on earlier ones (``depends_on``), names sorted.

    Users and teams come first, then accounts, persons, opportunities and custom entities, as
    their ``depends_on`` lists say, so the lookups of a tier resolve through the id map.

    Raises:
        ValueError: A dependency cycle.
    """
    remaining = {name: {d for d in e.depends_on if d in entities} for name, e in entities.items()}
    tiers: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        ready = sorted(n for n, deps in remaining.items() if deps <= done)
        if not ready:
            raise ValueError(f"full_copy: dependency cycle among {sorted(remaining)}")
        tiers.append(ready)
        done |= set(ready)
        for name in ready:
            del remaining[name]
    return tiers


# --- partitions and attempts -------------------------------------------------------------------


def mapping_fingerprint(entity: EntityConfig) -> str:
    """Short digest of the entity's configuration: staged plans of another mapping are not reused."""
    text = json.dumps(entity.model_dump(mode="json", exclude={"source_path"}), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Partition:
    """One entity's share of one scope, and the attempt that copies it."""

    entity: str
    scope_key: str
    fingerprint: str
    attempt: int

    @property
    def run_id(self) -> str:
        """The engine's run id of this attempt (names its staging folder and ledger row)."""
        return f"full_copy__{self.scope_key}__{self.fingerprint}__a{self.attempt}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "entity": self.entity,
            "scope_key": self.scope_key,
            "fingerprint": self.fingerprint,
            "attempt": self.attempt,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Partition:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            str(data["entity"]), str(data["scope_key"]), str(data["fingerprint"]), int(data["attempt"])
        )


def partition_dir(staging: StagingArea, entity: str, scope_key: str, fingerprint: str) -> ObjectStoragePath:
    return staging.root / "full_copy" / entity / f"{scope_key}-{fingerprint}"


def open_partition(staging: StagingArea, entity: EntityConfig, scope: CopyScope) -> Partition:
    """The attempt this run works on: the unfinished one if there is one, else a new one."""
    fingerprint = mapping_fingerprint(entity)
    folder = partition_dir(staging, entity.name, scope.key(), fingerprint)
    state = staging.read_json(folder, STATE) or {"attempt": 0, "done": True}
    attempt = int(state["attempt"])
    if state.get("done", True):
        attempt += 1
        staging.write_json(
            folder, STATE, {"attempt": attempt, "done": False, "opened_at": utcnow().isoformat()}
        )
        log.info("%s: full copy of %s, attempt %d starts", entity.name, scope.key(), attempt)
    else:
        log.info("%s: full copy of %s continues unfinished attempt %d", entity.name, scope.key(), attempt)
    return Partition(entity.name, scope.key(), fingerprint, attempt)


def current_partition(staging: StagingArea, entity: EntityConfig, scope: CopyScope) -> Partition:
    """The attempt opened by this run's extract (later tasks of the run use it).

    Raises:
        RuntimeError: No attempt was opened (the extract did not run).
    """
    fingerprint = mapping_fingerprint(entity)
    state = staging.read_json(partition_dir(staging, entity.name, scope.key(), fingerprint), STATE)
    if state is None:
        raise RuntimeError(f"{entity.name}: no full-copy attempt of {scope.key()} was opened")
    return Partition(entity.name, scope.key(), fingerprint, int(state["attempt"]))


def close_partition(staging: StagingArea, partition: Partition) -> None:
    """Mark the attempt finished: the next run of this scope starts a new attempt."""
    folder = partition_dir(staging, partition.entity, partition.scope_key, partition.fingerprint)
    staging.write_json(
        folder, STATE, {"attempt": partition.attempt, "done": True, "closed_at": utcnow().isoformat()}
    )
