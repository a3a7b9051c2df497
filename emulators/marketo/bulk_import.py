"""Bulk lead import: ``Queued`` → ``Importing`` → ``Complete`` (or ``Failed``).

``import_running`` imports run at once and ``import_queued`` may wait including those (1016
beyond). Each job spends at least ``bulk_job_s × time_scale`` importing, so tests can watch the
queue limits bite. :class:`ImportRunner` is driven by the bulk worker's ticks (``bulk``).
"""

from __future__ import annotations

import csv
import io
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, text

from emulators.marketo import leads as lead_ops
from emulators.marketo.envelope import MarketoError
from emulators.marketo.store import Store, import_jobs

if TYPE_CHECKING:
    from emulators.marketo.limits import LimitsConfig

DELIMITERS = {"CSV": ",", "TSV": "\t", "SSV": ";"}  # SSV = semicolon-separated (unconfirmed)


def _now() -> str:
    return lead_ops.now_text()


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


class ImportRunner:
    """Starts queued imports and runs each in its own thread.

    Args:
        store: Shared store (its lock guards writes).
        config: Live limits.
        stats_add: ``CallStats.add_records`` for counting imported rows.
        stop: Set when the emulator shuts down.
    """

    def __init__(self, store: Store, config: LimitsConfig, stats_add: Any, stop: threading.Event) -> None:
        self.store = store
        self.config = config
        self.stats_add = stats_add
        self._stop = stop
        # Test switch (``POST /_emulator/import-report-fault``): the failure files of later
        # imports leave out their last row ("drop-row", the status still counts it) or blank
        # the lookup column of every row ("blank-key"), as a truncated or rewritten report would.
        self.report_fault: str | None = None

    def _min_duration(self) -> float:
        return self.config.bulk_job_s * self.config.time_scale

    def tick(self) -> None:
        """Start as many queued imports as there are free slots."""
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
