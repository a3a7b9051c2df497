"""Load of a full copy: one unit per task, through bulk import or sync calls; a unit whose
outcome is staged is never written again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from crm_sync.engine.contracts import LoadBatch
from crm_sync.engine.full_copy.import_file import import_files
from crm_sync.engine.json_records import ImportLines, JsonRecords
from crm_sync.engine.load import OUTCOME, load_batch
from crm_sync.state import utcnow
from crm_sync_hooks.marketo_bulk import MAX_IMPORT_FILE_BYTES

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crm_sync.config import EntityConfig
    from crm_sync.engine.clients import MarketoClient
    from crm_sync.engine.context import RunContext
    from crm_sync_hooks.results import WriteResult

log = logging.getLogger(__name__)

IMPORT_PACE = "import-pace"


# --- load ----------------------------------------------------------------------------------------


class BulkAwareMarketo:
    """The Marketo client the load of one unit writes through.

    New persons are written with the unit's lookup field, through one bulk import in a bulk
    unit; everything else is passed to the hook unchanged.
    """

    def __init__(
        self,
        hook: Any,
        *,
        mode: str,
        lookup: str | None,
        first_poll_seconds: float = 0.0,
        columns: Sequence[str] | None = None,
    ) -> None:
        self._hook = hook
        self.mode = mode
        self.lookup = lookup
        self.first_poll_seconds = first_poll_seconds
        self.columns = list(columns) if columns else None  # the import file's header
        self.imports: list[Any] = []
        self.files_from_lines = 0  # import files written from the plan's lines

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)

    def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        action: str = "createOrUpdate",
        lookup_field: str = "email",
        partition_name: str | None = None,
    ) -> list[WriteResult]:
        """Write persons: new ones by the unit's lookup field (their key, or email for persons
        no other record shares an email with), through one bulk import in a bulk unit, else
        sync calls; linked persons (``updateOnly``) by their key."""
        if action == "createOrUpdate" and self.lookup:
            lookup_field = self.lookup
        if self.mode == "bulk" and action == "createOrUpdate":
            return self._bulk(records, lookup_field)
        return cast(
            "list[WriteResult]",
            self._hook.sync_leads(
                records, action=action, lookup_field=lookup_field, partition_name=partition_name
            ),
        )

    def _bulk(self, records: Sequence[Mapping[str, Any]], lookup_field: str) -> list[WriteResult]:
        from crm_sync_hooks.results import WriteResult, WriteStatus

        lines = records.lines if isinstance(records, JsonRecords) else None
        if lines is not None and self.columns and lookup_field in self.columns:
            jobs = self._import_lines(cast("JsonRecords", records), lines, self.columns, lookup_field)
        else:
            # A unit staged without lines (an older plan) or not all of whose persons have one.
            fields = list(dict.fromkeys(k for r in records for k in r))
            jobs = self._hook.bulk_import_leads(
                records,
                fields,
                lookup_field=lookup_field,
                first_poll_seconds=self.first_poll_seconds,
                max_file_bytes=_FILE_BYTES,
            )
        self.imports.extend(jobs)
        failed: dict[int, WriteResult] = {}
        for job in jobs:
            for res in job.failures:
                failed[res.index] = WriteResult(
                    res.index, WriteStatus.FAILED, reason=res.reason, code=res.code or "bulk-import"
                )
        return [failed.get(i, WriteResult(i, WriteStatus.UPSERTED)) for i in range(len(records))]

    def _import_lines(
        self, records: JsonRecords, lines: ImportLines, columns: Sequence[str], lookup_field: str
    ) -> list[Any]:
        """Import the records through files written from their staged lines; each job's
        results indexed by record (a failed line's lookup value is read from its payload)."""
        jobs = []
        for data, start, count in import_files(lines, columns, _FILE_BYTES):
            job = self._hook.bulk_import_file(
                data,
                count,
                lambda start=start, count=count: [
                    records[i].get(lookup_field) for i in range(start, start + count)
                ],
                lookup_field=lookup_field,
                first_poll_seconds=self.first_poll_seconds,
            )
            self.files_from_lines += 1
            job.failures = [replace(r, index=r.index + start) for r in job.failures]
            job.warnings = [replace(r, index=r.index + start) for r in job.warnings]
            jobs.append(job)
        return jobs


# Under the hook's 10 MB file limit, with room for the header.
_FILE_BYTES = MAX_IMPORT_FILE_BYTES - 10_000

# Seconds per imported row assumed before the first job of a load has been measured; later
# jobs wait what the previous one took per row. Waiting before the first status call saves
# the calls that would only see a job still queued.
_FIRST_POLL_PER_ROW = 0.00015
_FIRST_POLL_BASE = 1.0


def first_poll_estimate(rows: int, seconds_per_row: float | None = None) -> float:
    """Seconds to wait before the first status call of an import of ``rows`` rows."""
    per_row = seconds_per_row if seconds_per_row is not None else _FIRST_POLL_PER_ROW
    return _FIRST_POLL_BASE + rows * per_row


def load_unit(
    entity: EntityConfig,
    ctx: RunContext,
    unit: Mapping[str, Any],
    marketo: MarketoClient,
    *,
    total_records: int | None = None,
) -> dict[str, Any]:
    """Write one load unit, unless an earlier attempt already did (its outcome is staged)."""
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "plans" / unit["name"]
    done = ctx.staging.read_json(folder, OUTCOME)
    if done is not None:
        log.info(
            "%s %s: loaded by an earlier try (%d records); not written again",
            entity.name,
            unit["name"],
            done["loaded"],
        )
        return {**done, "reused": True}
    started = time.monotonic()
    started_at = utcnow().isoformat()
    pace_dir = ctx.staging.root / "full_copy"
    pace = ctx.staging.read_json(pace_dir, IMPORT_PACE) or {}
    client = BulkAwareMarketo(
        marketo,
        mode=str(unit.get("mode") or "sync"),
        lookup=unit.get("lookup"),
        first_poll_seconds=first_poll_estimate(int(unit.get("records") or 0), pace.get("seconds_per_row")),
        columns=LoadBatch.from_xcom(unit).columns,
    )
    loaded = load_batch(entity, ctx, dict(unit), marketo=client)
    seconds = max(time.monotonic() - started, 1e-6)
    outcome = {
        **loaded.to_xcom(),
        "seconds": round(seconds, 3),
        "imports": len(client.imports),
        "import_files_from_lines": client.files_from_lines,
        "mode": unit.get("mode"),
        "started_at": started_at,
    }
    ctx.staging.write_json(folder, OUTCOME, outcome)
    for job in client.imports:
        if job.seconds and job.rows_submitted:
            # The next import's first status call waits as long as this one took per row
            # (shared by every entity and run: it measures this Marketo instance).
            pace = {"seconds_per_row": job.seconds / job.rows_submitted}
            ctx.staging.write_json(pace_dir, IMPORT_PACE, pace)
    log.info(
        "%s %s (%s): %d loaded, %d failed, %.0f records/s%s",
        entity.name,
        unit["name"],
        unit.get("mode"),
        loaded.loaded,
        loaded.failed,
        loaded.loaded / seconds,
        f"; {total_records:,} records in this copy" if total_records else "",
    )
    return outcome


def unit_progress(entity: EntityConfig, ctx: RunContext, transform: Mapping[str, Any]) -> str:
    """Progress of the load: records written so far, of the total, from the staged outcomes."""
    total = sum(int(u.get("records") or 0) for u in transform.get("batches", []))
    done = 0
    for unit in transform.get("batches", []):
        folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "plans" / unit["name"]
        outcome = ctx.staging.read_json(folder, OUTCOME)
        if outcome is not None:
            done += int(outcome.get("loaded", 0)) + int(outcome.get("failed", 0))
    return f"{entity.name}: {done:,} of {total:,} records written"
