"""Bulk extract jobs (leads, activities, program members) and the worker that runs them and imports.

Every export object shares one life cycle: ``Created`` → (enqueue) ``Queued`` → ``Processing`` →
``Completed`` (or ``Cancelled``, ``Failed``). The limits are per instance, across objects
(reference §5.5): at most ``export_running`` jobs process at once and ``export_queued`` may be
queued including those (1029 beyond), the daily export volume is the sum of today's file sizes
(1029 "Export daily quota ... exceeded"), and date filters span at most 31 days. Each job spends
at least ``bulk_job_s × time_scale`` processing, so tests can watch the queue limits bite.

What differs per object is an :class:`ExportKind`: how a create request is checked and how the
file is written. This module holds the lead kind; ``activity_export`` and ``member_export`` hold
the others. Jobs belong to their object: another object's paths do not find them (1003).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, text

from emulators.marketo import leads as lead_ops
from emulators.marketo.bulk_import import DELIMITERS, ImportRunner
from emulators.marketo.envelope import MarketoError
from emulators.marketo.fields import LEAD_FIELD_MAP, FieldDef, format_datetime, parse_datetime, to_csv
from emulators.marketo.limits import QUOTA_TZ, LimitsConfig
from emulators.marketo.store import Store, export_jobs, make_engine

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ExportKind:
    """One exportable object.

    Attributes:
        entity: Its path under ``/bulk/v1/`` (``leads``, ``activities``, ``program/members``).
        prepare: ``(conn, store, cfg, body) -> request``: check the create body's ``fields`` and
            ``filter`` (raising :class:`MarketoError`) and return what the writer needs, as JSON.
        write: ``(conn, store, request, writer) -> rows``: write the header and the rows.
        stat: The stats counter of exported rows.
    """

    entity: str
    prepare: Callable[[Connection, Store, LimitsConfig, dict[str, Any]], dict[str, Any]]
    write: Callable[[Connection, Store, dict[str, Any], Any], int]
    stat: str


def _now() -> str:
    return lead_ops.now_text()


def export_view(row: Any) -> dict[str, Any]:
    """Status record of an export job, with only the members its state has."""
    return {k: row[k] for k in EXPORT_FIELDS_OUT if row[k] is not None}


def _day_start_utc() -> str:
    local = dt.datetime.now(QUOTA_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    return format_datetime(local)


def exported_today(conn: Connection) -> int:
    """Bytes of export files (of every object) completed since midnight US Central."""
    used = conn.execute(
        text("SELECT SUM(fileSize) FROM export_jobs WHERE status = 'Completed' AND finishedAt >= :d"),
        {"d": _day_start_utc()},
    ).scalar()
    return int(used or 0)


def _check_export_quota(conn: Connection, cfg: LimitsConfig) -> None:
    if exported_today(conn) >= cfg.export_daily_mb * 1024 * 1024:
        raise MarketoError("1029", f"Export daily quota {cfg.export_daily_mb:g}MB exceeded")


def date_window(window: Any, name: str, cfg: LimitsConfig) -> tuple[str, str]:
    """Check a ``{startAt, endAt}`` filter and return it as stored text.

    Raises:
        MarketoError: 1003 without both bounds, reversed or longer than ``export_max_days``
            (the real code for an over-long window is unconfirmed, reference §5.5), 704 for a
            bad date.
    """
    if not isinstance(window, dict) or "startAt" not in window or "endAt" not in window:
        raise MarketoError("1003", f"filter.{name} needs startAt and endAt")
    try:
        start, end = parse_datetime(str(window["startAt"])), parse_datetime(str(window["endAt"]))
    except ValueError:
        raise MarketoError("704", "Invalid date format") from None
    if end < start:
        raise MarketoError("1003", f"filter.{name}: endAt is before startAt")
    if end - start > dt.timedelta(days=cfg.export_max_days):
        raise MarketoError("1003", f"Date range of filter.{name} exceeds {cfg.export_max_days} days")
    return format_datetime(start), format_datetime(end)


def header_row(names: list[str], headers: Mapping[str, str], defaults: Mapping[str, str]) -> list[str]:
    """Column names: ``columnHeaderNames`` first, else the object's default header, else the API name."""
    return [headers.get(n) or defaults.get(n) or n for n in names]


def create_export(
    conn: Connection, store: Store, cfg: LimitsConfig, kind: ExportKind, body: Any
) -> dict[str, Any]:
    """Validate an export request for ``kind`` and store the job as ``Created``.

    Raises:
        MarketoError: 609 for a body that is not an object, the kind's own codes for its fields
            and filter, 1003 for a bad format or ``columnHeaderNames``, 1029 over the daily volume.
    """
    if not isinstance(body, dict):
        raise MarketoError("609")
    request = kind.prepare(conn, store, cfg, body)
    fmt = str(body.get("format") or "CSV").upper()
    if fmt not in DELIMITERS:
        raise MarketoError("1003", f"Invalid format '{fmt}'")
    headers = body.get("columnHeaderNames") or {}
    if not isinstance(headers, dict):
        raise MarketoError("1003", "columnHeaderNames must be an object")
    if cfg.enabled:
        _check_export_quota(conn, cfg)
    row = {
        "exportId": str(uuid.uuid4()),
        "entity": kind.entity,
        "status": "Created",
        "format": fmt,
        "request": json.dumps({**request, "headers": headers}),
        "createdAt": _now(),
    }
    conn.execute(insert(export_jobs), row)
    return {"exportId": row["exportId"], "status": "Created", "createdAt": row["createdAt"], "format": fmt}


def get_export(conn: Connection, export_id: str, entity: str | None = None) -> Any:
    """Return the job row (of ``entity`` when given).

    Raises:
        MarketoError: 1003 for an unknown export id or one of another object.
    """
    row = (
        conn.execute(text("SELECT * FROM export_jobs WHERE exportId = :i"), {"i": export_id})
        .mappings()
        .first()
    )
    if row is None or (entity is not None and row["entity"] != entity):
        raise MarketoError("1003", f"Export job '{export_id}' not found")
    return row


def enqueue_export(
    conn: Connection, cfg: LimitsConfig, export_id: str, entity: str | None = None
) -> dict[str, Any]:
    """Move a ``Created`` job to ``Queued``.

    Raises:
        MarketoError: 1029 when already queued, the queue (shared by all objects) is full or the
            daily volume is used up.
    """
    row = get_export(conn, export_id, entity)
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


def cancel_export(conn: Connection, export_id: str, entity: str | None = None) -> dict[str, Any]:
    row = get_export(conn, export_id, entity)
    if row["status"] in ("Created", "Queued", "Processing"):
        conn.execute(
            text("UPDATE export_jobs SET status = 'Cancelled' WHERE exportId = :i"), {"i": export_id}
        )
    return export_view(get_export(conn, export_id))


def list_exports(conn: Connection, statuses: list[str], entity: str = "leads") -> list[dict[str, Any]]:
    """``entity`` jobs of the last 7 days, only those in ``statuses`` if given (any case, either spelling)."""
    since = format_datetime(dt.datetime.now(dt.UTC) - dt.timedelta(days=7))
    rows = (
        conn.execute(
            text("SELECT * FROM export_jobs WHERE createdAt >= :s AND entity = :e ORDER BY createdAt"),
            {"s": since, "e": entity},
        )
        .mappings()
        .all()
    )
    wanted = {s.lower().replace("canceled", "cancelled") for s in statuses}
    return [export_view(r) for r in rows if not wanted or r["status"].lower() in wanted]


# ---- leads ------------------------------------------------------------------------------------
def _prepare_leads(conn: Connection, store: Store, cfg: LimitsConfig, body: dict[str, Any]) -> dict[str, Any]:
    """Lead export: ``fields`` required, exactly one ``createdAt``/``updatedAt`` filter.

    Raises:
        MarketoError: 701/1006 for the fields (a field bare mode hides is unknown, 1006), 1003
            for a filter that is not exactly one, 1035 for the list filters (not emulated).
    """
    fields = body.get("fields")
    if not fields or not isinstance(fields, list):
        raise MarketoError("701", "fields cannot be blank")
    for name in fields:
        if not isinstance(name, str) or store.lead_schema.get(name) is None:
            raise MarketoError("1006", f"Field '{name}' not found")
    flt = body.get("filter")
    if not isinstance(flt, dict) or len(flt) != 1:
        raise MarketoError("1003", "filter must hold exactly one filter")
    ((kind, window),) = flt.items()
    if kind not in ("createdAt", "updatedAt"):
        raise MarketoError("1035", f"Unsupported filter type for target subscription: {kind}")
    start, end = date_window(window, kind, cfg)
    return {"fields": fields, "filter": kind, "startAt": start, "endAt": end}


def _lead_field(store: Store, name: str) -> FieldDef:
    # A field hidden again (forced bare mode) after the job was created: export it as text.
    return store.lead_schema.get(name) or LEAD_FIELD_MAP.get(name) or FieldDef(name, name)


def _write_leads(conn: Connection, store: Store, request: dict[str, Any], writer: Any) -> int:
    fields = [_lead_field(store, n) for n in request["fields"]]
    writer.writerow(header_row([f.name for f in fields], request["headers"], {}))
    cols = ",".join(f'"{f.name}"' for f in fields)
    column = request["filter"]
    sql = text(f'SELECT {cols} FROM leads WHERE "{column}" >= :a AND "{column}" <= :b ORDER BY id')
    count = 0
    result = conn.execute(sql, {"a": request["startAt"], "b": request["endAt"]})
    while batch := result.fetchmany(5000):
        writer.writerows([to_csv(f, v) for f, v in zip(fields, r, strict=True)] for r in batch)
        count += len(batch)
    return count


LEAD_EXPORT = ExportKind("leads", _prepare_leads, _write_leads, "lead.exported")


class BulkWorker:
    """Background thread that advances export and import jobs.

    Args:
        store: Shared store (its lock guards writes).
        config: Live limits (read on every tick, so run-time changes apply at once).
        stats_add: ``CallStats.add_records`` for counting exported/imported rows.
        kinds: The export objects by entity (leads only when omitted).
    """

    def __init__(
        self,
        store: Store,
        config: LimitsConfig,
        stats_add: Any,
        kinds: Mapping[str, ExportKind] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.stats_add = stats_add
        self.kinds = dict(kinds or {LEAD_EXPORT.entity: LEAD_EXPORT})
        self._started: dict[str, float] = {}
        self._stop = threading.Event()
        self.imports = ImportRunner(store, config, stats_add, self._stop)
        self._reader = make_engine(store.db_path)  # own connection: WAL lets it read beside writers
        self._thread = threading.Thread(target=self._run, name="marketo-bulk", daemon=True)

    @property
    def report_fault(self) -> str | None:
        """The import report fault switch (``POST /_emulator/import-report-fault``)."""
        return self.imports.report_fault

    @report_fault.setter
    def report_fault(self, mode: str | None) -> None:
        self.imports.report_fault = mode

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
        self.imports.tick()

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
        kind = self.kinds[row["entity"]]
        request = json.loads(row["request"])
        path = self.store.files_dir / f"export-{export_id}.{row['format'].lower()}"
        with path.open("w", newline="", encoding="utf-8") as fh, self._reader.connect() as reader:
            writer = csv.writer(fh, delimiter=DELIMITERS[row["format"]], lineterminator="\n")
            count = kind.write(reader, self.store, request, writer)
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
            self.stats_add(kind.stat, count)
        else:
            path.unlink(missing_ok=True)
