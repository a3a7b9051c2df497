"""Marketo bulk lead import, as the base of :class:`~crm_sync_hooks.marketo_bulk.MarketoBulkMixin`.

Write the rows to CSV files under 10 MB, submit each, poll until it completes and read the
failures and warnings files back into per-row results.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crm_sync_hooks.errors import BulkImportMismatch, BulkJobFailed, FatalApiError
from crm_sync_hooks.results import WriteResult, WriteStatus

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

MAX_IMPORT_FILE_BYTES = 10_000_000


@dataclass
class BulkImportJob:
    """Outcome of one bulk import file.

    Rows absent from ``failures`` were created or updated (Marketo does not say which), so they
    count as :attr:`WriteStatus.UPSERTED`; ``warnings`` lists rows imported with a warning.
    """

    batch_id: str
    status: str
    rows_submitted: int
    rows_processed: int
    rows_failed: int
    rows_warning: int
    message: str
    failures: list[WriteResult] = field(default_factory=list)
    warnings: list[WriteResult] = field(default_factory=list)
    seconds: float = 0.0  # from the upload to the final status


def marketo_time(value: datetime) -> str:
    """Format a datetime as bulk filters want it: ISO 8601 in UTC, no milliseconds."""
    from datetime import UTC

    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def csv_cell(value: Any, index: int, column: str) -> str:
    """Return one import CSV cell; None becomes empty, nested values are refused."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, datetime):
        return marketo_time(value)
    raise ValueError(f"bulk import row {index} field {column!r} holds a {type(value).__name__}, not a scalar")


class MarketoBulkImportMixin:
    """Bulk import methods and the helpers bulk extract shares; the host class provides the calls."""

    if TYPE_CHECKING:
        timeout: float

        @property
        def bulk_queue_wait(self) -> float: ...

        def call(self, method: str, path: str, **kwargs: Any) -> requests.Response: ...
        def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...
        def _check(self, resp: requests.Response, label: str) -> None: ...

    poll_sleep = staticmethod(time.sleep)

    def _check_file(self, resp: requests.Response, label: str) -> None:
        if resp.headers.get("Content-Type", "").startswith("application/json"):
            self._check(resp, label)  # an error envelope (e.g. 601) instead of the file
            return
        from crm_sync_hooks.marketo import check_http

        check_http(resp, label)

    def bulk_import_leads(
        self,
        rows: Iterable[Mapping[str, Any]],
        fields: Sequence[str],
        *,
        lookup_field: str = "email",
        list_id: int | None = None,
        partition_name: str | None = None,
        max_file_bytes: int = 9_500_000,
        poll_seconds: float | None = None,
        max_wait_seconds: float = 6 * 3600,
        first_poll_seconds: float = 0.0,
    ) -> list[BulkImportJob]:
        """Import leads through bulk import jobs of CSV files under 10 MB; one summary per file.

        Only the columns in ``fields`` are sent. Rows without a ``lookup_field`` value are
        reported as skipped in the first job's failures without being sent.
        ``first_poll_seconds`` is waited before a job's first status call: a caller that can
        estimate the job's duration saves the status calls of a job still queued.
        """
        if lookup_field not in fields:
            raise ValueError(f"fields must include the lookup field {lookup_field!r}")
        if max_file_bytes > MAX_IMPORT_FILE_BYTES:
            raise ValueError("bulk import files are limited to 10 MB")
        poll = 5.0 if poll_seconds is None else poll_seconds
        params = _import_params(lookup_field, list_id, partition_name)
        jobs: list[BulkImportJob] = []
        skipped: list[WriteResult] = []
        for data, index_by_key, count in self._import_files(
            rows, fields, lookup_field, max_file_bytes, skipped
        ):
            job = self._run_import(
                data, params, index_by_key, count, lookup_field, poll, max_wait_seconds, first_poll_seconds
            )
            jobs.append(job)
        if skipped:
            if not jobs:
                jobs.append(BulkImportJob("", "NotSubmitted", 0, 0, 0, 0, "no row had a lookup value"))
            jobs[0].failures[:0] = skipped
        return jobs

    def bulk_import_file(
        self,
        data: bytes,
        count: int,
        keys: Callable[[], Sequence[Any]],
        *,
        lookup_field: str,
        list_id: int | None = None,
        partition_name: str | None = None,
        poll_seconds: float | None = None,
        max_wait_seconds: float = 6 * 3600,
        first_poll_seconds: float = 0.0,
    ) -> BulkImportJob:
        """Import one CSV file the caller wrote: a header naming ``lookup_field`` and ``count``
        lines, in this hook's dialect (minimal quoting, ``\\n`` line ends), under 10 MB.

        ``keys`` returns each line's lookup value, in file order; it is called only when a
        failures or warnings file has rows to match. The results' indexes are line positions.
        """
        if len(data) > MAX_IMPORT_FILE_BYTES:
            raise ValueError(f"bulk import files are limited to 10 MB; this one has {len(data):,} bytes")
        header = next(csv.reader(io.StringIO(data[: data.find(b"\n") + 1].decode())), [])
        if lookup_field not in header:
            raise ValueError(f"the file's header must include the lookup field {lookup_field!r}")

        def index_by_key() -> dict[str, list[int]]:
            index: dict[str, list[int]] = {}
            for position, key in enumerate(keys()):
                index.setdefault(_report_key(key), []).append(position)
            return index

        return self._run_import(
            data,
            _import_params(lookup_field, list_id, partition_name),
            index_by_key,
            count,
            lookup_field,
            5.0 if poll_seconds is None else poll_seconds,
            max_wait_seconds,
            first_poll_seconds,
        )

    @staticmethod
    def _import_files(
        rows: Iterable[Mapping[str, Any]],
        fields: Sequence[str],
        lookup_field: str,
        max_file_bytes: int,
        skipped: list[WriteResult],
    ) -> Iterator[tuple[bytes, dict[str, list[int]], int]]:
        writer = ImportLineWriter()
        header = writer.line(list(fields))
        buffer, size = [header], len(header)
        index_by_key: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"bulk import row {index} is a {type(row).__name__}, not a mapping")
            key = row.get(lookup_field)
            if key is None or key == "":
                skipped.append(
                    WriteResult(
                        index,
                        WriteStatus.SKIPPED,
                        code="1002",
                        reason=f"row {index} has no value for {lookup_field}",
                    )
                )
                continue
            # Text cells as they are; a call of csv_cell per cell was most of the file's cost.
            values = [row.get(col) for col in fields]
            line = writer.line(
                [
                    v if v.__class__ is str else csv_cell(v, index, col)
                    for v, col in zip(values, fields, strict=True)
                ]
            )
            if size + len(line) > max_file_bytes and len(buffer) > 1:
                # The lines are let go before the file is sent: only the joined bytes stay.
                data, keys, count = b"".join(buffer), index_by_key, len(buffer) - 1
                buffer, size, index_by_key = [header], len(header), {}
                yield data, keys, count
                del data
            buffer.append(line)
            size += len(line)
            index_by_key.setdefault(_report_key(key), []).append(index)
        if len(buffer) > 1:
            data, count = b"".join(buffer), len(buffer) - 1
            buffer.clear()
            yield data, index_by_key, count

    def _run_import(
        self,
        data: bytes,
        params: dict[str, Any],
        index_by_key: Mapping[str, list[int]] | Callable[[], Mapping[str, list[int]]],
        count: int,
        lookup_field: str,
        poll_seconds: float,
        max_wait_seconds: float,
        first_poll_seconds: float = 0.0,
    ) -> BulkImportJob:
        created = self._first_result(
            self.call(
                "POST",
                "/bulk/v1/leads.json",
                params=params,
                data={"format": "csv"},
                files={"file": ("leads.csv", io.BytesIO(data), "text/csv")},
                timeout=max(self.timeout, 300.0),
            ).json(),
            "POST /bulk/v1/leads.json",
        )
        batch_id = str(created.get("batchId") or created.get("importId"))
        submitted = time.monotonic()
        deadline = submitted + max_wait_seconds
        # The job's pace is measured from the upload, or, once it was seen waiting in Marketo's
        # queue (two imports run at once), from the first status that showed it importing:
        # counted from the upload, a job that had queued looked slow, and the next status call
        # came up to ten polls after it had finished.
        since: float | None = submitted
        done_before = 0  # rows processed at ``since``
        if first_poll_seconds > 0:
            self.poll_sleep(min(first_poll_seconds, max_wait_seconds))
        while True:
            status = self._first_result(
                self.call_json("GET", f"/bulk/v1/leads/batch/{batch_id}.json"),
                "GET /bulk/v1/leads/batch/{id}.json",
            )
            state = str(status.get("status", ""))
            if state.lower() in ("complete", "completed", "failed"):
                break
            processed, now = int(status.get("numOfLeadsProcessed") or 0), time.monotonic()
            if state.lower() == "queued":
                since = None
            elif since is None:
                since, done_before = now, processed
            elapsed = 0.0 if since is None else now - since
            wait = import_wait(count - done_before, processed - done_before, elapsed, poll_seconds)
            if time.monotonic() + wait > deadline:
                raise BulkJobFailed(
                    f"import {batch_id} still {state} after {max_wait_seconds:.0f}s",
                    endpoint="GET /bulk/v1/leads/batch/{id}.json",
                )
            self.poll_sleep(wait)
        job = BulkImportJob(
            batch_id,
            state,
            count,
            int(status.get("numOfLeadsProcessed") or 0),
            int(status.get("numOfRowsFailed") or 0),
            int(status.get("numOfRowsWithWarning") or 0),
            str(status.get("message") or ""),
            seconds=time.monotonic() - submitted,
        )
        if state.lower() == "failed" and not job.rows_failed:
            raise BulkJobFailed(
                f"import {batch_id} failed: {job.message}", endpoint="POST /bulk/v1/leads.json"
            )
        lost_failures: list[str] = []
        lost_warnings: list[str] = []
        if job.rows_failed or job.rows_warning:
            # A lazy index is built only now, once, when a report has rows to match.
            keys = index_by_key() if callable(index_by_key) else index_by_key
            if job.rows_failed:
                job.failures, lost_failures = self._import_report(
                    batch_id, "failures", keys, lookup_field, WriteStatus.FAILED
                )
            if job.rows_warning:
                job.warnings, lost_warnings = self._import_report(
                    batch_id, "warnings", keys, lookup_field, WriteStatus.UPSERTED
                )
        reconcile_import(job, lost_failures + lost_warnings, len(job.failures) + len(lost_failures))
        log.info(
            "import %s %s: %d rows, %d failed, %d with warnings",
            batch_id,
            state,
            count,
            job.rows_failed,
            job.rows_warning,
        )
        return job

    def _import_report(
        self,
        batch_id: str,
        kind: str,
        index_by_key: Mapping[str, list[int]],
        lookup_field: str,
        status: WriteStatus,
    ) -> tuple[list[WriteResult], list[str]]:
        """Read a failures/warnings file: the submitted row plus a last column with the reason.

        Returns:
            One result per report row matched to a submitted row by its lookup value (rows
            sharing a value in file order), and a description of each report row that matched
            none.
        """
        text = self.call("GET", f"/bulk/v1/leads/batch/{batch_id}/{kind}.json", check=self._check_file).text
        reader = csv.reader(io.StringIO(text.replace("\x00", "")))
        header = next(reader, None)
        if not header:
            return [], []
        key_col = header.index(lookup_field) if lookup_field in header else None
        left = {key: list(indexes) for key, indexes in index_by_key.items()}
        results: list[WriteResult] = []
        unmatched: list[str] = []
        for row in reader:
            if not row:
                continue
            key = _report_key(row[key_col]) if key_col is not None and key_col < len(row) else ""
            indexes = left.get(key)
            if not indexes:
                unmatched.append(f"{kind} row {len(results) + len(unmatched) + 1} ({lookup_field} {key!r})")
                continue
            results.append(WriteResult(indexes.pop(0), status, reason=row[-1], code=kind))
        return results, unmatched

    @staticmethod
    def _first_result(body: Mapping[str, Any], label: str) -> dict[str, Any]:
        result = body.get("result")
        if not isinstance(result, list) or not result or not isinstance(result[0], Mapping):
            raise FatalApiError("answer has no result", endpoint=label)
        return dict(result[0])


def _import_params(lookup_field: str, list_id: int | None, partition_name: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"format": "csv", "lookupField": lookup_field}
    if list_id is not None:
        params["listId"] = list_id
    if partition_name:
        params["partitionName"] = partition_name
    return params


def _report_key(value: Any) -> str:
    """How a lookup value is matched between the submitted file and a report file."""
    return str(value).strip().lower()


def reconcile_import(job: BulkImportJob, unmatched: Sequence[str], failures_listed: int) -> None:
    """Fail the import unless its status and report files account for every submitted row.

    Every row must come back as imported (counted in ``numOfLeadsProcessed``) or failed (counted
    in ``numOfRowsFailed`` and listed, with its reason, in the failures file), and each report
    row must match a submitted row. Otherwise a row could be counted as written while it was
    not, so the caller's unit fails instead (a re-run imports the same keys again).

    Args:
        job: The finished import, its failures and warnings read.
        unmatched: Report rows that matched no submitted row.
        failures_listed: Rows in the failures file, matched or not.

    Raises:
        BulkImportMismatch: Naming the import and every figure that disagrees.
    """
    problems = []
    if unmatched:
        more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        problems.append(
            f"{len(unmatched)} report rows match no submitted row: {', '.join(unmatched[:5])}{more}"
        )
    if failures_listed != job.rows_failed:
        problems.append(
            f"Marketo counted {job.rows_failed} failed rows, its failures file lists {failures_listed}"
        )
    if job.rows_processed + job.rows_failed != job.rows_submitted:
        problems.append(
            f"{job.rows_submitted} rows were submitted, Marketo accounts for "
            f"{job.rows_processed} imported and {job.rows_failed} failed"
        )
    if problems:
        raise BulkImportMismatch(
            f"import {job.batch_id} ({job.status}) does not account for every row: " + "; ".join(problems),
            endpoint="GET /bulk/v1/leads/batch/{id}.json",
            code="import-mismatch",
        )


def import_wait(rows: int, processed: int, elapsed: float, poll_seconds: float) -> float:
    """Seconds to wait before the next status call of an import still running.

    The job's running counter tells its pace: wait for the rows left at that pace (a quarter
    more, so the next call finds it finished), never less than a tenth of ``poll_seconds`` nor
    more than ten times it. Without progress yet, wait ``poll_seconds``.
    """
    if processed <= 0 or elapsed <= 0:
        return poll_seconds
    left = max(rows - processed, 0) * elapsed / processed
    return min(max(left * 1.25 + 0.5, poll_seconds / 10), poll_seconds * 10)


class ImportLineWriter:
    """The import files' CSV dialect, a line at a time (minimal quoting, ``\n`` ends): one
    writer whose buffer is emptied for each line."""

    def __init__(self) -> None:
        self._out = io.StringIO()
        self._writer = csv.writer(self._out, lineterminator="\n")

    def line(self, cells: list[str]) -> bytes:
        self._out.seek(0)
        self._out.truncate(0)
        self._writer.writerow(cells)
        return self._out.getvalue().encode()
