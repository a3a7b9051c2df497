"""Bulk lead extract and bulk lead import: job state machines and the worker that runs them.

Extract: ``Created`` → (enqueue) ``Queued`` → ``Processing`` → ``Completed`` (or ``Cancelled``,
``Failed``); at most ``export_running`` jobs process at once and ``export_queued`` may be
queued including those (1029 beyond), the daily export volume is the sum of today's file
sizes (1029 "Export daily quota ... exceeded"), and date filters span at most 31 days.
Import: ``Queued`` → ``Importing`` → ``Complete`` (or ``Failed``), ``import_running`` at once,
``import_queued`` queued (1016 beyond). Each job spends at least ``bulk_job_s × time_scale``
in its running state, so tests can watch the queue limits bite.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, text

from emulators.marketo import leads as lead_ops
from emulators.marketo.envelope import MarketoError
from emulators.marketo.fields import LEAD_FIELD_MAP, FieldDef, format_datetime, parse_datetime, to_csv
from emulators.marketo.limits import QUOTA_TZ, LimitsConfig
from emulators.marketo.store import Store, export_jobs, import_jobs, make_engine

if TYPE_CHECKING:
    from emulators.marketo.lead_schema import LeadSchema

log = logging.getLogger(__name__)

DELIMITERS = {"CSV": ",", "TSV": "\t", "SSV": ";"}  # SSV = semicolon-separated (unconfirmed)
EXPORT_FIELDS_OUT = (
    "exportId",
    "status",
    "format",
    "createdAt",
    "queuedAt",
    "startedAt",
    "finishedAt",
    "numberOfRecords",
    "fileSize",
    "fileChecksum",
    "errorMsg",
)
ACTIVE_EXPORT = ("Queued", "Processing")
ACTIVE_IMPORT = ("Queued", "Importing")


def _now() -> str:
    return lead_ops.now_text()


def export_view(row: Any) -> dict[str, Any]:
    """Status record of an export job, with only the members its state has."""
    return {k: row[k] for k in EXPORT_FIELDS_OUT if row[k] is not None}


def _day_start_utc() -> str:
    local = dt.datetime.now(QUOTA_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    return format_datetime(local)


def exported_today(conn: Connection) -> int:
    """Bytes of export files completed since midnight US Central."""
    used = conn.execute(
        text("SELECT SUM(fileSize) FROM export_jobs WHERE status = 'Completed' AND finishedAt >= :d"),
        {"d": _day_start_utc()},
    ).scalar()
    return int(used or 0)


def _check_export_quota(conn: Connection, cfg: LimitsConfig) -> None:
    if exported_today(conn) >= cfg.export_daily_mb * 1024 * 1024:
        raise MarketoError("1029", f"Export daily quota {cfg.export_daily_mb:g}MB exceeded")


def create_export(conn: Connection, schema: LeadSchema, cfg: LimitsConfig, body: Any) -> dict[str, Any]:
    """Validate a lead export request and store the job as ``Created``.

    Raises:
        MarketoError: 701/1006/1003/1035/704 for a bad request, 1029 over the daily volume. A
            field bare mode hides is unknown (1006, response level like any unknown field).
    """
    if not isinstance(body, dict):
        raise MarketoError("609")
    fields = body.get("fields")
    if not fields or not isinstance(fields, list):
        raise MarketoError("701", "fields cannot be blank")
    for name in fields:
        if not isinstance(name, str) or schema.get(name) is None:
            raise MarketoError("1006", f"Field '{name}' not found")
    fmt = str(body.get("format") or "CSV").upper()
    if fmt not in DELIMITERS:
        raise MarketoError("1003", f"Invalid format '{fmt}'")
    headers = body.get("columnHeaderNames") or {}
    if not isinstance(headers, dict):
        raise MarketoError("1003", "columnHeaderNames must be an object")
    flt = body.get("filter")
    if not isinstance(flt, dict) or len(flt) != 1:
        raise MarketoError("1003", "filter must hold exactly one filter")
    ((kind, window),) = flt.items()
    if kind not in ("createdAt", "updatedAt"):
        raise MarketoError("1035", f"Unsupported filter type for target subscription: {kind}")
    if not isinstance(window, dict) or "startAt" not in window or "endAt" not in window:
        raise MarketoError("1003", f"filter.{kind} needs startAt and endAt")
    try:
        start, end = parse_datetime(str(window["startAt"])), parse_datetime(str(window["endAt"]))
    except ValueError:
        raise MarketoError("704", "Invalid date format") from None
    if end < start:
        raise MarketoError("1003", f"filter.{kind}: endAt is before startAt")
    if end - start > dt.timedelta(days=cfg.export_max_days):
        # The real code for an over-long window is unconfirmed (reference §5.5); 1003 is documented.
        raise MarketoError("1003", f"Date range of filter.{kind} exceeds {cfg.export_max_days} days")
    if cfg.enabled:
        _check_export_quota(conn, cfg)
    request = {
        "fields": fields,
        "headers": headers,
        "filter": kind,
        "startAt": format_datetime(start),
        "endAt": format_datetime(end),
    }
    row = {
        "exportId": str(uuid.uuid4()),
        "entity": "leads",
        "status": "Created",
        "format": fmt,
        "request": json.dumps(request),
        "createdAt": _now(),
    }
    conn.execute(insert(export_jobs), row)
    return {"exportId": row["exportId"], "status": "Created", "createdAt": row["createdAt"], "format": fmt}


def get_export(conn: Connection, export_id: str) -> Any:
    """Return the job row.

    Raises:
        MarketoError: 1003 for an unknown export id.
    """
    row = (
        conn.execute(text("SELECT * FROM export_jobs WHERE exportId = :i"), {"i": export_id})
        .mappings()
        .first()
    )
    if row is None:
        raise MarketoError("1003", f"Export job '{export_id}' not found")
    return row


def enqueue_export(conn: Connection, cfg: LimitsConfig, export_id: str) -> dict[str, Any]:
    """Move a ``Created`` job to ``Queued``.

    Raises:
        MarketoError: 1029 when already queued, the queue is full or the daily volume is used up.
    """
    row = get_export(conn, export_id)
    if row["status"] in ACTIVE_EXPORT:
        raise MarketoError("1029", "Job already queued")
    if row["status"] != "Created":
        raise MarketoError("1003", f"Job is {row['status']}; only Created jobs can be enqueued")
    active = (
        conn.execute(
            text("SELECT COUNT(*) FROM export_jobs WHERE status IN ('Queued','Processing')")
        ).scalar()
        or 0
    )
    if cfg.enabled and active >= cfg.export_queued:
        raise MarketoError("1029", "Too many jobs in queue")
    if cfg.enabled:
        _check_export_quota(conn, cfg)
    conn.execute(
        text("UPDATE export_jobs SET status = 'Queued', queuedAt = :t WHERE exportId = :i"),
        {"t": _now(), "i": export_id},
    )
    return export_view(get_export(conn, export_id))


def cancel_export(conn: Connection, export_id: str) -> dict[str, Any]:
    row = get_export(conn, export_id)
    if row["status"] in ("Created", "Queued", "Processing"):
        conn.execute(
            text("UPDATE export_jobs SET status = 'Cancelled' WHERE exportId = :i"), {"i": export_id}
        )
    return export_view(get_export(conn, export_id))


def list_exports(conn: Connection, statuses: list[str]) -> list[dict[str, Any]]:
    """Jobs of the last 7 days, optionally only those in ``statuses`` (any case, either spelling)."""
    since = format_datetime(dt.datetime.now(dt.UTC) - dt.timedelta(days=7))
    rows = (
        conn.execute(text("SELECT * FROM export_jobs WHERE createdAt >= :s ORDER BY createdAt"), {"s": since})
        .mappings()
        .all()
    )
    wanted = {s.lower().replace("canceled", "cancelled") for s in statuses}
    return [export_view(r) for r in rows if not wanted or r["status"].lower() in wanted]


def create_import(
    conn: Connection, store: Store, cfg: LimitsConfig, data: bytes, fmt: str, lookup: str
) -> dict[str, Any]:
    """Store an uploaded file as a ``Queued`` import job.

    Raises:
        MarketoError: 1016 when the import queue is full, 1003 for a bad format or lookup field.
    """
    fmt = fmt.upper()
    if fmt not in DELIMITERS:
        raise MarketoError("1003", f"Invalid format '{fmt}'")
    if store.lead_schema.get(lookup) is None:
        raise MarketoError("1006", f"Field '{lookup}' not found")
    active = (
        conn.execute(text("SELECT COUNT(*) FROM import_jobs WHERE status IN ('Queued','Importing')")).scalar()
        or 0
    )
    if cfg.enabled and active >= cfg.import_queued:
        raise MarketoError("1016", "Too many imports")
    batch_id = store.next_batch_id
    store.next_batch_id += 1
    path = store.files_dir / f"import-{batch_id}.{fmt.lower()}"
    path.write_bytes(data)
    conn.execute(
        insert(import_jobs),
        {
            "batchId": batch_id,
            "status": "Queued",
            "format": fmt,
            "lookupField": lookup,
            "createdAt": _now(),
            "filePath": str(path),
            "numOfLeadsProcessed": 0,
            "numOfRowsFailed": 0,
            "numOfRowsWithWarning": 0,
        },
    )
    return {"batchId": batch_id, "importId": str(batch_id), "status": "Queued"}


def import_view(conn: Connection, batch_id: int) -> dict[str, Any]:
    """Status record of an import job.

    Raises:
        MarketoError: 1003 for an unknown batch id.
    """
    row = (
        conn.execute(text("SELECT * FROM import_jobs WHERE batchId = :b"), {"b": batch_id}).mappings().first()
    )
    if row is None:
        raise MarketoError("1003", f"Import batch '{batch_id}' not found")
    out = {
        "batchId": row["batchId"],
        "importId": str(row["batchId"]),
        "status": row["status"],
        "numOfLeadsProcessed": row["numOfLeadsProcessed"],
        "numOfRowsFailed": row["numOfRowsFailed"],
        "numOfRowsWithWarning": row["numOfRowsWithWarning"],
    }
    if row["message"]:
        out["message"] = row["message"]
    return out


def import_report(store: Store, batch_id: int, kind: str) -> Path:
    """Path of the failures or warnings file of an import (may not exist yet)."""
    return store.files_dir / f"import-{batch_id}.{kind}.csv"


class BulkWorker:
    """Background thread that advances export and import jobs.

    Args:
        store: Shared store (its lock guards writes).
        config: Live limits (read on every tick, so run-time changes apply at once).
        stats_add: ``CallStats.add_records`` for counting exported/imported rows.
    """

    def __init__(self, store: Store, config: LimitsConfig, stats_add: Any) -> None:
        self.store = store
        self.config = config
        self.stats_add = stats_add
        self._started: dict[str, float] = {}
        # Test switch (``POST /_emulator/import-report-fault``): the failure files of later
        # imports leave out their last row ("drop-row", the status still counts it) or blank
        # the lookup column of every row ("blank-key"), as a truncated or rewritten report would.
        self.report_fault: str | None = None
        self._stop = threading.Event()
        self._reader = make_engine(store.db_path)  # own connection: WAL lets it read beside writers
        self._thread = threading.Thread(target=self._run, name="marketo-bulk", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.tick()
            except Exception:  # the worker must survive one bad job
                log.exception("bulk worker tick failed")

    def _min_duration(self) -> float:
        return self.config.bulk_job_s * self.config.time_scale

    def tick(self) -> None:
        """Advance every job by at most one state."""
        self._tick_exports()
        self._tick_imports()

    def _tick_exports(self) -> None:
        with self.store.begin() as conn:
            processing = (
                conn.execute(text("SELECT exportId FROM export_jobs WHERE status = 'Processing'"))
                .scalars()
                .all()
            )
            free = self.config.export_running - len(processing)
            if free > 0:
                queued = (
                    conn.execute(
                        text(
                            "SELECT exportId FROM export_jobs WHERE status = 'Queued' "
                            "ORDER BY queuedAt, createdAt LIMIT :n"
                        ),
                        {"n": free},
                    )
                    .scalars()
                    .all()
                )
                for export_id in queued:
                    conn.execute(
                        text(
                            "UPDATE export_jobs SET status = 'Processing', startedAt = :t WHERE exportId = :i"
                        ),
                        {"t": _now(), "i": export_id},
                    )
                    self._started[export_id] = time.monotonic()
                processing = [*processing, *queued]
        for export_id in processing:
            started = self._started.setdefault(export_id, time.monotonic())
            if time.monotonic() - started >= self._min_duration():
                self._finish_export(export_id)

    def _finish_export(self, export_id: str) -> None:
        with self.store.begin() as conn:
            row = get_export(conn, export_id)
        request = json.loads(row["request"])
        path = self.store.files_dir / f"export-{export_id}.{row['format'].lower()}"
        count = self._write_export(path, row["format"], request)
        data_hash = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                data_hash.update(chunk)
        with self.store.begin() as conn:
            # A job cancelled while its file was being written stays cancelled.
            updated = conn.execute(
                text(
                    "UPDATE export_jobs SET status = 'Completed', finishedAt = :t, numberOfRecords = :n, "
                    "fileSize = :s, fileChecksum = :c, filePath = :p "
                    "WHERE exportId = :i AND status = 'Processing'"
                ),
                {
                    "t": _now(),
                    "n": count,
                    "s": path.stat().st_size,
                    "c": "sha256:" + data_hash.hexdigest(),
                    "p": str(path),
                    "i": export_id,
                },
            ).rowcount
        self._started.pop(export_id, None)
        if updated:
            self.stats_add("lead.exported", count)
        else:
            path.unlink(missing_ok=True)

    def _write_export(self, path: Path, fmt: str, request: dict[str, Any]) -> int:
        fields = [self._export_field(n) for n in request["fields"]]
        headers = [request["headers"].get(f.name, f.name) for f in fields]
        cols = ",".join(f'"{f.name}"' for f in fields)
        column = request["filter"]
        sql = text(f'SELECT {cols} FROM leads WHERE "{column}" >= :a AND "{column}" <= :b ORDER BY id')
        count = 0
        with path.open("w", newline="", encoding="utf-8") as fh, self._reader.connect() as conn:
            writer = csv.writer(fh, delimiter=DELIMITERS[fmt], lineterminator="\n")
            writer.writerow(headers)
            result = conn.execute(sql, {"a": request["startAt"], "b": request["endAt"]})
            while batch := result.fetchmany(5000):
                writer.writerows([to_csv(f, v) for f, v in zip(fields, r, strict=True)] for r in batch)
                count += len(batch)
        return count

    def _export_field(self, name: str) -> FieldDef:
        # A field hidden again (forced bare mode) after the job was created: export it as text.
        return self.store.lead_schema.get(name) or LEAD_FIELD_MAP.get(name) or FieldDef(name, name)

    def _tick_imports(self) -> None:
        with self.store.begin() as conn:
            running = (
                conn.execute(text("SELECT COUNT(*) FROM import_jobs WHERE status = 'Importing'")).scalar()
                or 0
            )
            free = self.config.import_running - running
            queued: list[int] = []
            if free > 0:
                queued = list(
                    conn.execute(
                        text(
                            "SELECT batchId FROM import_jobs WHERE status = 'Queued' "
                            "ORDER BY batchId LIMIT :n"
                        ),
                        {"n": free},
                    )
                    .scalars()
                    .all()
                )
                for batch_id in queued:
                    conn.execute(
                        text("UPDATE import_jobs SET status = 'Importing' WHERE batchId = :b"),
                        {"b": batch_id},
                    )
        for batch_id in queued:
            threading.Thread(
                target=self._run_import, args=(batch_id,), daemon=True, name=f"marketo-import-{batch_id}"
            ).start()

    def _run_import(self, batch_id: int) -> None:
        started = time.monotonic()
        try:
            processed, failed, warned, message = self._import_file(batch_id)
            status = "Complete"
        except MarketoError as exc:
            processed, failed, warned, message, status = 0, 0, 0, f"Import failed: {exc.message}", "Failed"
        # Hold the job in Importing for the configured minimum, so queue limits are observable.
        while time.monotonic() - started < self._min_duration() and not self._stop.is_set():
            time.sleep(0.02)
        with self.store.begin() as conn:
            conn.execute(
                text(
                    "UPDATE import_jobs SET status = :s, numOfLeadsProcessed = :p, numOfRowsFailed = :f, "
                    "numOfRowsWithWarning = :w, message = :m WHERE batchId = :b"
                ),
                {"s": status, "p": processed, "f": failed, "w": warned, "m": message, "b": batch_id},
            )

    def _import_file(self, batch_id: int) -> tuple[int, int, int, str]:
        with self.store.begin() as conn:
            job = (
                conn.execute(text("SELECT * FROM import_jobs WHERE batchId = :b"), {"b": batch_id})
                .mappings()
                .first()
            )
        assert job is not None
        delimiter = DELIMITERS[job["format"]]
        lookup = job["lookupField"]
        raw = Path(job["filePath"]).read_text(encoding="utf-8-sig").replace("\x00", "")
        rows = list(csv.reader(io.StringIO(raw), delimiter=delimiter))
        if not rows or not any(rows[0]):
            raise MarketoError("1003", "the file has no header row")
        header = rows[0]
        if lookup not in header and lookup != "id":
            raise MarketoError("1003", f"the lookup field '{lookup}' is not a column of the file")
        # A column naming a field bare mode hides goes to sync, which skips each row with 1006
        # (the reference's record-level code); a column no field ever had is ignored with a
        # warning, as before.
        schema = self.store.lead_schema
        known = [i for i, name in enumerate(header) if schema.knows(name)]
        unknown = [name for name in header if not schema.knows(name)]
        failures: list[list[str]] = []
        warnings: list[list[str]] = []
        processed = 0
        action = "updateOnly" if lookup == "id" else "createOrUpdate"
        body = rows[1:]
        for start in range(0, len(body), lead_ops.MAX_BATCH):
            chunk = body[start : start + lead_ops.MAX_BATCH]
            records: list[dict[str, Any]] = []
            # One slot per file row, in file order: a fixed failure reason, or None (sent to sync).
            slots: list[tuple[list[str], str | None]] = []
            for line_no, row in enumerate(chunk, start=start + 2):
                if len(row) != len(header):
                    slots.append((row, f"Row {line_no}: expected {len(header)} columns, found {len(row)}"))
                    continue
                records.append({header[i]: (None if row[i] == "null" else row[i]) for i in known})
                slots.append((row, None))
            with self.store.begin() as conn:
                outcome = lead_ops.sync(conn, self.store, records, action, lookup, reason="List import")
            results = iter(outcome.results)
            for row, reason in slots:
                if reason is None:
                    result = next(results)
                    if result["status"] == "skipped":
                        reason = f"{result['reasons'][0]['code']}: {result['reasons'][0]['message']}"
                    elif unknown:
                        # Imported, minus the columns Marketo does not know (reason text unconfirmed).
                        warnings.append([*row, f"Field '{unknown[0]}' not found; column ignored"])
                if reason is not None:
                    failures.append([*row, reason])
            processed += outcome.created + outcome.updated
            self.stats_add("lead.imported", outcome.created + outcome.updated)
            # Counters are running totals while the job imports (marketo-rest-api.md §6).
            with self.store.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE import_jobs SET numOfLeadsProcessed = :p, numOfRowsFailed = :f "
                        "WHERE batchId = :b"
                    ),
                    {"p": processed, "f": len(failures), "b": batch_id},
                )
        reported = self._faulty_report(failures, header.index(lookup) if lookup in header else None)
        self._write_report(batch_id, "failures", header, "Import Failure Reason", reported, delimiter)
        self._write_report(batch_id, "warnings", header, "Import Warning Reason", warnings, delimiter)
        if failures:
            message = (
                f"Import completed with errors, {processed} records imported ({processed} members), "
                f"{len(failures)} failed"
            )
        else:
            message = f"Import succeeded, {processed} records imported ({processed} members)"
        return processed, len(failures), len(warnings), message

    def _faulty_report(self, failures: list[list[str]], key_col: int | None) -> list[list[str]]:
        if self.report_fault == "drop-row":
            return failures[:-1]
        if self.report_fault == "blank-key" and key_col is not None:
            return [[*row[:key_col], "", *row[key_col + 1 :]] for row in failures]
        return failures

    def _write_report(
        self, batch_id: int, kind: str, header: list[str], reason: str, rows: list[list[str]], delimiter: str
    ) -> None:
        with import_report(self.store, batch_id, kind).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
            writer.writerow([*header, reason])
            writer.writerows(rows)
