"""Engine unit tests: a real SQLite state store and ``file://`` staging, in-memory API fakes.

The fakes implement the small client protocols of :mod:`crm_sync.engine.clients` with the
behaviour the engine relies on (change tracking with delta links and deletes, the person change
feed with paging tokens, upserts keyed by external ids, per-record results). The real hooks
against the real emulators are exercised by ``tests/e2e``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from crm_sync.config import EntityConfig, load_entities
from crm_sync.engine.context import RunContext
from crm_sync.engine.staging import StagingArea
from crm_sync.state import make_engine, upgrade
from crm_sync_hooks.dynamics import ChangePage, DeltaTokenExpired
from crm_sync_hooks.marketo import FeedPage
from crm_sync_hooks.results import ROW_EXISTS, ROW_MISSING, WriteResult, WriteStatus


@dataclass
class FakeDynamics:
    """One Dataverse organization: tables of rows, a change log, delta links ``v<version>``."""

    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    log: list[tuple[int, str, str, bool]] = field(default_factory=list)  # version, set, id, deleted
    expired: set[str] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=dict)
    fail: dict[str, str] = field(default_factory=dict)  # row key -> error code of a refused write

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def put(self, entity_set: str, row: dict[str, Any], key: str) -> None:
        table = self.tables.setdefault(entity_set, {})
        table[row[key]] = {**table.get(row[key], {}), **row}
        self.log.append((len(self.log) + 1, entity_set, row[key], False))

    def delete(self, entity_set: str, guid: str) -> None:
        self.tables[entity_set].pop(guid)
        self.log.append((len(self.log) + 1, entity_set, guid, True))

    def organization_id(self) -> str:
        self._count("organization_id")
        return "org-1"

    def track_changes(
        self, entity_set: str, select: Sequence[str], delta_link: str | None = None, page_size: int = 5000
    ) -> Iterator[ChangePage]:
        self._count("track_changes")
        if delta_link in self.expired:
            raise DeltaTokenExpired("expired", endpoint="GET delta")
        since = int(delta_link[1:]) if delta_link else 0
        latest: dict[str, bool] = {}
        for version, name, guid, deleted in self.log:
            if name == entity_set and version > since:
                latest[guid] = deleted
        table = self.tables.get(entity_set, {})
        # A row taken out of ``tables`` without a delete is hidden from the application user.
        rows = [{c: table[g].get(c) for c in select} for g, gone in latest.items() if not gone and g in table]
        gone_ids = [g for g, gone in latest.items() if gone and since]
        yield ChangePage(rows, gone_ids, f"v{len(self.log)}")

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        expand: str | None = None,
        page_size: int = 5000,
        annotations: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Rows matching ``col eq 'v' or col eq <guid>`` filters (all the engine sends)."""
        self._count("query")
        quoted = re.findall(r"(\w+) eq '((?:[^']|'')*)'", filter or "")
        bare = re.findall(r"(\w+) eq ([0-9a-fA-F-]{36})", filter or "")
        wanted = quoted + bare
        rows = [
            {c: row.get(c) for c in (select or row)}
            for row in self.tables.get(entity_set, {}).values()
            if any(str(row.get(col) or "").lower() == val.replace("''", "'").lower() for col, val in wanted)
        ]
        if rows:
            yield rows

    def upsert_records(
        self,
        entity_set: str,
        records: Sequence[Mapping[str, Any]],
        key_columns: Sequence[str],
        *,
        id_column: str | None = None,
        batch_size: int = 100,
        change_set_size: int | None = None,
        only: Literal["existing", "new"] | None = None,
    ) -> list[WriteResult]:
        self._count("upsert_records")
        out = []
        for i, rec in enumerate(records):
            if str(rec[key_columns[0]]) in self.fail:
                code = self.fail[str(rec[key_columns[0]])]
                out.append(WriteResult(i, WriteStatus.FAILED, reason="refused", code=code))
                continue
            existed = rec[key_columns[0]] in self.tables.get(entity_set, {})
            if only == "existing" and not existed:  # If-Match: * on a missing row
                out.append(WriteResult(i, WriteStatus.FAILED, reason="Does Not Exist", code=ROW_MISSING))
                continue
            if only == "new" and existed:  # If-None-Match: * on an existing row
                out.append(WriteResult(i, WriteStatus.SKIPPED, reason="exists", code=ROW_EXISTS))
                continue
            self.put(entity_set, dict(rec), key_columns[0])
            status = WriteStatus.UPDATED if existed else WriteStatus.CREATED
            out.append(WriteResult(i, status, str(rec[key_columns[0]])))
        return out


@dataclass
class FakeMarketo:
    """Persons keyed by id, Lead Database objects keyed by dedupe field, an activity feed."""

    persons: dict[int, dict[str, Any]] = field(default_factory=dict)
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    activities: list[int] = field(default_factory=list)  # lead ids, in order; token "t<n>"
    fail: dict[str, str] = field(default_factory=dict)  # external key -> error code
    calls: dict[str, int] = field(default_factory=dict)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def get_paging_token(self, since: datetime) -> str:
        self._count("get_paging_token")
        return f"t{len(self.activities)}"

    def get_lead_changes(
        self, next_page_token: str, fields: Sequence[str], batch_size: int = 300, list_id: int | None = None
    ) -> Iterator[FeedPage]:
        self._count("get_lead_changes")
        start = int(next_page_token[1:])
        records = [{"leadId": lead_id} for lead_id in self.activities[start:]]
        yield FeedPage(records, f"t{len(self.activities)}", False)

    def get_deleted_leads(self, next_page_token: str, batch_size: int = 300) -> Iterator[FeedPage]:
        self._count("get_deleted_leads")
        yield FeedPage([], next_page_token, False)

    def get_activities(
        self, next_page_token: str, activity_type_ids: Sequence[int], batch_size: int = 300
    ) -> Iterator[FeedPage]:
        self._count("get_activities")
        yield FeedPage([], next_page_token, False)

    def get_leads(
        self,
        filter_type: str,
        filter_values: Sequence[str | int],
        fields: Sequence[str] | None = None,
        batch_size: int = 300,
    ) -> Iterator[list[dict[str, Any]]]:
        self._count("get_leads")
        wanted = {str(v) for v in filter_values}
        found = [p for p in self.persons.values() if str(p.get(filter_type)) in wanted]
        yield [{f: p.get(f) for f in (fields or p)} for p in found]

    def person(self, key: str, value: str) -> dict[str, Any] | None:
        return next((p for p in self.persons.values() if str(p.get(key)) == value), None)

    def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        action: str = "createOrUpdate",
        lookup_field: str = "email",
        partition_name: str | None = None,
    ) -> list[WriteResult]:
        self._count("sync_leads")
        out = []
        for i, rec in enumerate(records):
            key = str(rec[lookup_field])
            if key in self.fail:
                out.append(WriteResult(i, WriteStatus.SKIPPED, reason="refused", code=self.fail[key]))
                continue
            found = self.person(lookup_field, key)
            if found is None and action == "updateOnly":
                out.append(WriteResult(i, WriteStatus.SKIPPED, reason="not found", code="1004"))
                continue
            if found is None:
                found = {"id": len(self.persons) + 1}
                self.persons[found["id"]] = found
            found.update(rec)
            self.activities.append(found["id"])
            out.append(WriteResult(i, WriteStatus.UPDATED, str(found["id"])))
        return out

    def merge_leads(self, winner_id: int, loser_ids: Sequence[int]) -> WriteResult:
        self._count("merge_leads")
        if any(i not in self.persons for i in [winner_id, *loser_ids]):
            return WriteResult(0, WriteStatus.FAILED, reason="not found", code="1004")
        for loser in loser_ids:
            del self.persons[loser]
        self.activities.append(winner_id)
        return WriteResult(0, WriteStatus.UPDATED, str(winner_id))

    def sync_objects(
        self,
        object_name: str,
        records: Sequence[Mapping[str, Any]],
        action: str = "createOrUpdate",
        dedupe_by: str = "dedupeFields",
        required_fields: Sequence[str] = (),
    ) -> list[WriteResult]:
        self._count("sync_objects")
        store = self.objects.setdefault(object_name, {})
        out = []
        for i, rec in enumerate(records):
            key = str(rec[required_fields[0]])
            if key in self.fail:
                out.append(WriteResult(i, WriteStatus.FAILED, reason="refused", code=self.fail[key]))
                continue
            store.setdefault(key, {"id": len(store) + 1}).update(rec)
            out.append(WriteResult(i, WriteStatus.UPDATED, str(store[key]["id"])))
        return out

    def delete_objects(
        self, object_name: str, keys: Sequence[Mapping[str, Any]], delete_by: str = "dedupeFields"
    ) -> list[WriteResult]:
        self._count("delete_objects")
        store = self.objects.setdefault(object_name, {})
        out = []
        for i, key in enumerate(keys):
            value = str(next(iter(key.values())))
            gone = store.pop(value, None)
            status = WriteStatus.DELETED if gone else WriteStatus.SKIPPED
            out.append(WriteResult(i, status, code=None if gone else "1013"))
        return out


@pytest.fixture(scope="session")
def entities() -> dict[str, EntityConfig]:
    return load_entities()


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade(url)
    return url


@pytest.fixture
def make_ctx(tmp_path: Path, state_url: str) -> Iterator[Any]:
    """Return a factory of run contexts sharing one state store and one staging root."""
    from airflow.sdk import ObjectStoragePath

    engine = make_engine(state_url)
    staging = StagingArea(ObjectStoragePath(f"file://{tmp_path / 'staging'}"))
    yield lambda run_id: RunContext(run_id, staging, engine)
    engine.dispose()
