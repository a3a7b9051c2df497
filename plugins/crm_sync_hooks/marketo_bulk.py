"""Marketo bulk extract and bulk lead import, as a mixin of :class:`~crm_sync_hooks.marketo.MarketoHook`.

Extract: every exportable object (``leads``, ``activities``, ``program/members``, custom objects)
shares one job life cycle under ``/bulk/v1/{object_path}/export/``: create a job, enqueue it,
poll its status, then download the file in ``Range`` chunks to a temporary file and check its
SHA-256, so no step holds the whole export in memory. The generic methods take the object path;
the ``*_lead_export`` methods are the same for leads. Windows of at most 31 days are exported
two jobs at a time (:meth:`MarketoBulkMixin.export_windows`).

Import (the base class, ``marketo_bulk_import``): write the rows to CSV files under 10 MB,
submit each, poll until it completes and read the failures and warnings files back into per-row
results.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import tempfile
import time
from collections import deque
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_sync_hooks.errors import BulkJobFailed, FatalApiError
from crm_sync_hooks.marketo_bulk_import import (
    MAX_IMPORT_FILE_BYTES,
    BulkImportJob,
    ImportLineWriter,
    MarketoBulkImportMixin,
    csv_cell,
    import_wait,
    marketo_time,
    reconcile_import,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Mapping, Sequence

__all__ = [
    "MAX_IMPORT_FILE_BYTES",
    "BulkImportJob",
    "ImportLineWriter",
    "MarketoBulkMixin",
    "csv_cell",
    "extract_windows",
    "import_wait",
    "marketo_time",
    "read_csv_batches",
    "reconcile_import",
]

log = logging.getLogger(__name__)

MAX_EXTRACT_WINDOW = timedelta(days=31)
EXPORT_JOBS_PROCESSING = 2  # export jobs Marketo processes at once per instance
EXPORT_QUEUE_SIZE = 10  # export jobs queued per instance, processing ones included
DELIMITERS = {"CSV": ",", "TSV": "\t", "SSV": " "}
LEADS = "leads"
_DONE_EXPORT = {"completed"}
_FAILED_EXPORT = {"failed", "cancelled", "canceled"}


def extract_windows(
    start: datetime, end: datetime, width: timedelta = MAX_EXTRACT_WINDOW
) -> list[tuple[datetime, datetime]]:
    """Split ``[start, end)`` into consecutive windows no wider than ``width``."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if end <= start:
        raise ValueError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    windows = []
    cursor = start
    while cursor < end:
        upper = min(cursor + width, end)
        windows.append((cursor, upper))
        cursor = upper
    return windows


def read_csv_batches(
    path: Path, batch_size: int, delimiter: str = ","
) -> Iterator[list[dict[str, str | None]]]:
    """Yield the rows of an export file in batches; the literal ``null`` becomes None.

    NUL bytes are dropped first: exports have been seen to contain them and ``csv`` rejects them.
    """
    with path.open("r", encoding="utf-8", newline="") as handle:
        lines = (line.replace("\x00", "") for line in handle)
        reader = csv.DictReader(lines, delimiter=delimiter)
        batch: list[dict[str, str | None]] = []
        for row in reader:
            batch.append({k: (None if v == "null" else v) for k, v in row.items() if k is not None})
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


class MarketoBulkMixin(MarketoBulkImportMixin):
    """Bulk extract and import methods; the host class provides the authenticated calls."""

    # --- extract, any object -------------------------------------------------------------
    def create_export(self, object_path: str, body: Mapping[str, Any]) -> str:
        """Create an export job of ``object_path`` (``leads``, ``activities``, ``program/members``)
        from a create body (``fields``, ``format``, ``filter``...) and return its ``exportId``."""
        path = f"/bulk/v1/{object_path}/export/create.json"
        result = self._first_result(self.call_json("POST", path, json=dict(body)), f"POST {path}")
        return str(result["exportId"])

    def enqueue_export(self, object_path: str, export_id: str) -> dict[str, Any]:
        """Queue a created export job (waits while Marketo's export queue is full)."""
        path = f"/bulk/v1/{object_path}/export/{export_id}/enqueue.json"
        try:
            return self._first_result(self.call_json("POST", path), f"POST {path}")
        except FatalApiError as exc:
            # A repeated enqueue (say, after a dropped answer) is refused as already queued.
            if exc.code == "1029" and "already" in str(exc).lower():
                return self.export_status(object_path, export_id)
            raise

    def export_status(self, object_path: str, export_id: str) -> dict[str, Any]:
        """Return the status record of an export job."""
        path = f"/bulk/v1/{object_path}/export/{export_id}/status.json"
        return self._first_result(self.call_json("GET", path), f"GET {path}")

    def wait_for_export(
        self,
        object_path: str,
        export_id: str,
        poll_seconds: float,
        max_wait_seconds: float,
        first_poll_seconds: float = 0.0,
    ) -> dict[str, Any]:
        """Poll an export job until it completes and return its final status.

        ``first_poll_seconds`` is waited before the first status call (a job just enqueued is
        never finished yet).

        Raises:
            BulkJobFailed: The job failed, was cancelled or did not finish in ``max_wait_seconds``.
        """
        label = f"GET /bulk/v1/{object_path}/export/{{id}}/status.json"
        deadline = time.monotonic() + max_wait_seconds
        if first_poll_seconds > 0:
            self.poll_sleep(min(first_poll_seconds, max_wait_seconds))
        while True:
            status = self.export_status(object_path, export_id)
            state = str(status.get("status", "")).lower()
            if state in _DONE_EXPORT:
                return status
            if state in _FAILED_EXPORT:
                raise BulkJobFailed(
                    f"export {export_id} ended {status.get('status')}: {status.get('errorMsg', '')}",
                    endpoint=label,
                )
            if time.monotonic() + poll_seconds > deadline:
                raise BulkJobFailed(
                    f"export {export_id} still {status.get('status')} after {max_wait_seconds:.0f}s",
                    endpoint=label,
                )
            self.poll_sleep(poll_seconds)

    def download_export(
        self,
        object_path: str,
        export_id: str,
        dest: Path,
        status: Mapping[str, Any],
        chunk_bytes: int = 8 * 1024 * 1024,
    ) -> Path:
        """Download a completed export to ``dest`` in ``Range`` chunks and check size and SHA-256."""
        path = f"/bulk/v1/{object_path}/export/{export_id}/file.json"
        size = status.get("fileSize")
        digest = hashlib.sha256()
        received = 0
        with dest.open("wb") as handle:
            while size is None or received < int(size):
                headers = {}
                if size is not None:
                    last = min(received + chunk_bytes, int(size)) - 1
                    headers["Range"] = f"bytes={received}-{last}"
                resp = self.call("GET", path, headers=headers, check=self._check_file)
                data = resp.content
                if resp.status_code == 200 and received:
                    # The server ignored the range and sent the whole file again.
                    handle.seek(0)
                    handle.truncate()
                    digest, received = hashlib.sha256(), 0
                handle.write(data)
                digest.update(data)
                received += len(data)
                if resp.status_code == 200 or not data:
                    break
        _verify_download(object_path, export_id, status, received, digest.hexdigest())
        return dest

    def cancel_export(self, object_path: str, export_id: str) -> dict[str, Any]:
        """Cancel a queued or processing export job."""
        path = f"/bulk/v1/{object_path}/export/{export_id}/cancel.json"
        return self._first_result(self.call_json("POST", path), f"POST {path}")

    def export_windows(
        self,
        object_path: str,
        bodies: Iterator[Mapping[str, Any]],
        *,
        poll_seconds: float,
        max_wait_seconds: float,
        first_poll_seconds: float = 0.0,
        parallel_jobs: int = EXPORT_JOBS_PROCESSING,
        workdir: Path | None = None,
    ) -> Generator[tuple[str, dict[str, Any], Path], None, None]:
        """Run one export job per create body and yield ``(exportId, status, file)`` in body order.

        Up to ``parallel_jobs`` jobs are queued at once (Marketo processes two export jobs of an
        instance at a time), so the next job runs while the caller reads this one's file. Each
        file is a verified download in a temporary directory, deleted when the caller asks for
        the next one. Jobs not yet read when the caller stops (or one fails) are cancelled.
        """
        if not 1 <= parallel_jobs <= EXPORT_QUEUE_SIZE:
            raise ValueError(f"parallel_jobs must be 1..{EXPORT_QUEUE_SIZE}, got {parallel_jobs}")
        queued: deque[str] = deque()

        def submit_next() -> None:
            body = next(bodies, None)
            if body is None:
                return
            export_id = self.create_export(object_path, body)
            queued.append(export_id)
            self.enqueue_export(object_path, export_id)

        try:
            for _ in range(parallel_jobs):
                submit_next()
            while queued:
                export_id = queued[0]
                status = self.wait_for_export(
                    object_path, export_id, poll_seconds, max_wait_seconds, first_poll_seconds
                )
                queued.popleft()
                submit_next()  # processes while this file is downloaded and read
                log.info(
                    "%s export %s completed: %s records, %s bytes",
                    object_path,
                    export_id,
                    status.get("numberOfRecords"),
                    status.get("fileSize"),
                )
                with tempfile.TemporaryDirectory(dir=workdir, prefix="marketo-export-") as tmp:
                    name = object_path.replace("/", "-") + ".csv"
                    yield (
                        export_id,
                        status,
                        self.download_export(object_path, export_id, Path(tmp) / name, status),
                    )
        finally:
            for export_id in queued:  # the caller stopped early, or a job failed
                try:
                    self.cancel_export(object_path, export_id)
                except Exception:  # best effort: an uncancelled job only expires unread
                    log.warning("could not cancel export job %s", export_id, exc_info=True)

    # --- extract, leads --------------------------------------------------------------------
    def create_lead_export(
        self, fields: Sequence[str], export_filter: Mapping[str, Any], fmt: str = "CSV"
    ) -> str:
        """Create a bulk lead export job and return its ``exportId``."""
        if not fields:
            raise ValueError("a lead export needs at least one field")
        return self.create_export(
            LEADS, {"fields": list(fields), "format": fmt, "filter": dict(export_filter)}
        )

    def enqueue_lead_export(self, export_id: str) -> dict[str, Any]:
        """Queue a created lead export job (waits while Marketo's export queue is full)."""
        return self.enqueue_export(LEADS, export_id)

    def lead_export_status(self, export_id: str) -> dict[str, Any]:
        """Return the status record of a lead export job."""
        return self.export_status(LEADS, export_id)

    def wait_for_lead_export(
        self, export_id: str, poll_seconds: float, max_wait_seconds: float, first_poll_seconds: float = 0.0
    ) -> dict[str, Any]:
        """Poll a lead export job until it completes (see :meth:`wait_for_export`)."""
        return self.wait_for_export(LEADS, export_id, poll_seconds, max_wait_seconds, first_poll_seconds)

    def download_lead_export(
        self, export_id: str, dest: Path, status: Mapping[str, Any], chunk_bytes: int = 8 * 1024 * 1024
    ) -> Path:
        """Download a completed lead export (see :meth:`download_export`)."""
        return self.download_export(LEADS, export_id, dest, status, chunk_bytes)

    def cancel_lead_export(self, export_id: str) -> dict[str, Any]:
        """Cancel a queued or processing lead export job."""
        return self.cancel_export(LEADS, export_id)

    def bulk_extract_leads(
        self,
        fields: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        date_filter: str = "createdAt",
        batch_size: int = 5000,
        poll_seconds: float | None = None,
        max_wait_seconds: float = 6 * 3600,
        workdir: Path | None = None,
        window: timedelta = MAX_EXTRACT_WINDOW,
        first_poll_seconds: float = 0.0,
        parallel_jobs: int = EXPORT_JOBS_PROCESSING,
    ) -> Iterator[list[dict[str, str | None]]]:
        """Yield batches of leads whose ``date_filter`` (``createdAt``/``updatedAt``) is in ``[start, end)``.

        One export job runs per window of at most 31 days; each file is streamed to a temporary
        file, verified, read back in batches of ``batch_size`` rows and deleted. Up to
        ``parallel_jobs`` windows are queued at once (Marketo processes two export jobs of an
        instance at a time, so the next window's job runs while this one's file is read);
        windows are still yielded in order. Jobs not yet read when the caller stops are
        cancelled.
        """
        if window > MAX_EXTRACT_WINDOW:
            raise ValueError("bulk extract windows cannot exceed 31 days")
        if not fields:
            raise ValueError("a lead export needs at least one field")
        bodies = (
            {
                "fields": list(fields),
                "format": "CSV",
                "filter": {date_filter: {"startAt": marketo_time(lower), "endAt": marketo_time(upper)}},
            }
            for lower, upper in extract_windows(start, end, window)
        )
        files = self.export_windows(
            LEADS,
            bodies,
            poll_seconds=self.bulk_queue_wait if poll_seconds is None else poll_seconds,
            max_wait_seconds=max_wait_seconds,
            first_poll_seconds=first_poll_seconds,
            parallel_jobs=parallel_jobs,
            workdir=workdir,
        )
        try:
            for _export_id, status, file_path in files:
                delimiter = DELIMITERS.get(str(status.get("format", "CSV")), ",")
                yield from read_csv_batches(file_path, batch_size, delimiter)
        finally:
            files.close()  # cancels the windows not read yet


def _verify_download(
    object_path: str, export_id: str, status: Mapping[str, Any], received: int, sha256: str
) -> None:
    size, checksum = status.get("fileSize"), status.get("fileChecksum")
    label = f"GET /bulk/v1/{object_path}/export/{{id}}/file.json"
    if size is not None and received != int(size):
        raise FatalApiError(f"export {export_id}: received {received} bytes, expected {size}", endpoint=label)
    if checksum and str(checksum).split(":", 1)[-1].lower() != sha256:
        raise FatalApiError(
            f"export {export_id}: SHA-256 of the file does not match fileChecksum", endpoint=label
        )
