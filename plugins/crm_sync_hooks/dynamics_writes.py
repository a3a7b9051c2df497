"""Dataverse writes through ``$batch``, as a mixin of :class:`~crm_sync_hooks.dynamics.DynamicsHook`.

Every record becomes one ``PATCH`` (upsert) or ``DELETE`` operation addressed by primary key or
alternate key; operations go in ``$batch`` requests of up to 1,000 with
``Prefer: odata.continue-on-error`` so that one bad record never hides the others' outcome.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

from crm_sync_hooks.errors import FatalApiError, RetriableApiError
from crm_sync_hooks.odata_batch import BatchOperation, BatchResponse, build_batch, parse_batch
from crm_sync_hooks.records import chunked, missing_fields, validate_records
from crm_sync_hooks.results import ROW_EXISTS, ROW_MISSING, WriteResult, WriteStatus

if TYPE_CHECKING:
    import requests

MAX_BATCH_OPERATIONS = 1000
# What an upsert may do to a row: create or update it (None), only update an existing row
# ("existing": If-Match: *, a missing row answers 404 and is not created), or only create a
# new one ("new": If-None-Match: *, an existing row answers 412 and is not changed).
Only = Literal["existing", "new"]
_CONDITION = {"existing": {"If-Match": "*"}, "new": {"If-None-Match": "*"}}

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ENTITY_ID = re.compile(
    r"\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)\s*$"
)


def key_literal(value: Any) -> str:
    """Return an OData key value literal: strings quoted with ``'`` doubled, numbers and booleans bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def alternate_key_segment(key: Mapping[str, Any]) -> str:
    """Return ``col1='v1',col2=2`` for an alternate-key address, percent-encoding unsafe characters."""
    # Characters allowed in a URL path segment stay as they are (an e-mail keeps its "@"); the
    # rest (space, "/", "?", "#", "%", "&", non-ASCII) are percent-encoded.
    safe = "'@:!$()*,;=+-._~"
    return ",".join(f"{column}={quote(key_literal(value), safe=safe)}" for column, value in key.items())


def _conditional(result: WriteResult, only: Only | None) -> WriteResult:
    """Name the answers a conditional upsert gives for a row that is missing or already there."""
    if only == "existing" and result.code == "404":
        return replace(result, code=ROW_MISSING)
    if only == "new" and result.code == "412":
        return replace(result, status=WriteStatus.SKIPPED, code=ROW_EXISTS)
    return result


class DynamicsWritesMixin:
    """Upserts and deletes with one :class:`WriteResult` per record; the host class sends the calls."""

    if TYPE_CHECKING:

        @property
        def api_url(self) -> str: ...

        def call(self, method: str, url_or_path: str, **kwargs: Any) -> requests.Response: ...

        def _check(self, resp: requests.Response, label: str) -> None: ...

    def _check_batch(self, resp: requests.Response, label: str) -> None:
        """The host's response check, then a multipart answer: anything else (a proxy's HTML page)
        is retried inside the transport's loop, and named by endpoint when retries run out."""
        self._check(resp, label)
        kind = resp.headers.get("Content-Type", "")
        if not kind.lower().startswith("multipart/mixed") or "boundary=" not in kind.lower():
            raise RetriableApiError(
                f"$batch answer is not multipart ({kind or 'no content type'})",
                endpoint=label,
                code="not-multipart",
            )

    def upsert_records(
        self,
        entity_set: str,
        records: Sequence[Mapping[str, Any]],
        key_columns: Sequence[str],
        *,
        id_column: str | None = None,
        batch_size: int = 100,
        change_set_size: int | None = None,
        only: Only | None = None,
    ) -> list[WriteResult]:
        """Create or update rows through ``$batch`` with ``PATCH``; one result per record.

        Args:
            entity_set: Entity set name, e.g. ``contacts``.
            records: Rows keyed by column logical name (lookups as ``name@odata.bind``).
            key_columns: ``[id_column]`` to address rows by primary key, otherwise the columns of
                an alternate key (e.g. ``["emailaddress1"]``). Key columns are not sent in the body.
            id_column: The table's primary key column (e.g. ``contactid``); lets the answer carry
                only the id.
            batch_size: Operations per ``$batch`` (at most 1,000; Microsoft advises small batches).
            change_set_size: Group this many operations per change set (atomic: one failure rolls
                back the group); None sends every operation on its own.
            only: ``"existing"`` updates rows that exist and never creates one (a missing row
                fails with code :data:`ROW_MISSING`); ``"new"`` creates rows and never changes
                one that exists (it is skipped with code :data:`ROW_EXISTS`); None does either.

        Records lacking a key value fail without being sent, with the field named in the reason.
        """
        if not key_columns:
            raise ValueError("key_columns must name the primary key or an alternate key")
        validate_records(records, f"upsert {entity_set} input")
        by_id = id_column is not None and list(key_columns) == [id_column]
        prefix = urlsplit(self.api_url).path
        query = f"?$select={id_column}" if id_column else ""
        ops: list[tuple[int, BatchOperation]] = []
        results: dict[int, WriteResult] = {}
        for index, record in enumerate(records):
            missing = missing_fields(record, key_columns)
            if missing:
                results[index] = WriteResult(
                    index,
                    WriteStatus.FAILED,
                    code="missing-key",
                    reason=f"record {index} has no value for {', '.join(missing)}",
                )
                continue
            if by_id:
                guid = str(record[key_columns[0]])
                if not _GUID.match(guid):
                    results[index] = WriteResult(
                        index,
                        WriteStatus.FAILED,
                        code="bad-key",
                        reason=f"record {index} field {key_columns[0]!r} is not a GUID",
                    )
                    continue
                address = f"{entity_set}({guid})"
            else:
                address = f"{entity_set}({alternate_key_segment({c: record[c] for c in key_columns})})"
            body = {k: v for k, v in record.items() if k not in key_columns}
            headers = {"Prefer": "return=representation", **_CONDITION.get(only or "", {})}
            ops.append((index, BatchOperation("PATCH", f"{prefix}{address}{query}", body, headers)))
        results.update(self._run_batches(ops, batch_size, change_set_size, id_column))
        return [_conditional(results[i], only) for i in range(len(records))]

    def delete_records(
        self,
        entity_set: str,
        keys: Sequence[str | Mapping[str, Any]],
        *,
        batch_size: int = 100,
        change_set_size: int | None = None,
    ) -> list[WriteResult]:
        """Delete rows by id (GUID strings) or alternate key (mappings) through ``$batch``.

        A row that is already gone is reported as skipped, not failed.
        """
        prefix = urlsplit(self.api_url).path
        ops: list[tuple[int, BatchOperation]] = []
        results: dict[int, WriteResult] = {}
        for index, key in enumerate(keys):
            if isinstance(key, Mapping):
                address = f"{entity_set}({alternate_key_segment(key)})"
            elif _GUID.match(str(key)):
                address = f"{entity_set}({key})"
            else:
                results[index] = WriteResult(
                    index,
                    WriteStatus.FAILED,
                    code="bad-key",
                    reason=f"key {index} is neither a GUID nor an alternate-key mapping",
                )
                continue
            ops.append((index, BatchOperation("DELETE", f"{prefix}{address}")))
        results.update(self._run_batches(ops, batch_size, change_set_size, None, deleting=True))
        return [results[i] for i in range(len(keys))]

    def _run_batches(
        self,
        ops: list[tuple[int, BatchOperation]],
        batch_size: int,
        change_set_size: int | None,
        id_column: str | None,
        deleting: bool = False,
    ) -> dict[int, WriteResult]:
        if not 1 <= batch_size <= MAX_BATCH_OPERATIONS:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_OPERATIONS}, got {batch_size}")
        results: dict[int, WriteResult] = {}
        for _, batch in chunked(ops, batch_size):
            group = change_set_size or 1
            groups = [list(g) for _, g in chunked(list(batch), group)]
            content_type, body = build_batch(
                [[op for _, op in g] for g in groups], atomic=change_set_size is not None
            )
            resp = self.call(
                "POST",
                "$batch",
                data=body.encode(),
                headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"},
                check=self._check_batch,
            )
            try:
                answers = parse_batch(resp.headers.get("Content-Type", ""), resp.text)
            except ValueError as exc:
                raise FatalApiError(
                    f"malformed $batch answer: {exc}",
                    endpoint=f"POST {urlsplit(resp.url).path}",
                    code="bad-batch",
                ) from None
            results.update(
                self._map_answers(groups, answers, change_set_size is not None, id_column, deleting)
            )
        return results

    def _map_answers(
        self,
        groups: list[list[tuple[int, BatchOperation]]],
        answers: list[BatchResponse],
        atomic: bool,
        id_column: str | None,
        deleting: bool,
    ) -> dict[int, WriteResult]:
        results: dict[int, WriteResult] = {}
        if atomic:
            # A change set that succeeded comes back as a nested part with one answer per
            # operation; one that failed comes back as a single error answer (nested or not).
            position = 0
            for group in groups:
                got: list[BatchResponse] = []
                if position < len(answers):
                    marker = answers[position].change_set
                    if marker is None:
                        got = [answers[position]]
                        position += 1
                    else:
                        while position < len(answers) and answers[position].change_set == marker:
                            got.append(answers[position])
                            position += 1
                if len(got) == len(group) and all(a.status < 400 for a in got):
                    for (idx, _), answer in zip(group, got, strict=True):
                        results[idx] = self._result(idx, answer, id_column, deleting)
                    continue
                failed = next((a for a in got if a.status >= 400), None)
                reason = self._reason(failed) if failed else "no answer for this change set"
                for idx, _ in group:
                    results[idx] = WriteResult(
                        idx,
                        WriteStatus.FAILED,
                        code=str(failed.status) if failed else None,
                        reason=f"change set rolled back: {reason}",
                    )
            return results
        flat = [item for group in groups for item in group]
        for position, (idx, _) in enumerate(flat):
            if position < len(answers):
                results[idx] = self._result(idx, answers[position], id_column, deleting)
            else:
                results[idx] = WriteResult(
                    idx, WriteStatus.FAILED, reason="not processed: the batch stopped early"
                )
        return results

    @staticmethod
    def _reason(answer: BatchResponse) -> str:
        body = answer.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return f"HTTP {answer.status}{' ' + str(code) if code else ''}: {message or answer.reason}"

    def _result(
        self, index: int, answer: BatchResponse, id_column: str | None, deleting: bool
    ) -> WriteResult:
        if answer.status >= 400:
            status = WriteStatus.SKIPPED if deleting and answer.status == 404 else WriteStatus.FAILED
            return WriteResult(index, status, code=str(answer.status), reason=self._reason(answer))
        if deleting:
            return WriteResult(index, WriteStatus.DELETED)
        body = answer.json()
        ident = body.get(id_column) if isinstance(body, dict) and id_column else None
        if ident is None:
            match = _ENTITY_ID.search(
                answer.headers.get("odata-entityid", "") or answer.headers.get("location", "")
            )
            ident = match.group(1) if match else None
        # With return=representation a create answers 201 and an update 200 (unconfirmed for
        # upserts, documented for POST/PATCH); a bare 204 does not say which.
        status = {201: WriteStatus.CREATED, 200: WriteStatus.UPDATED}.get(answer.status, WriteStatus.UPSERTED)
        return WriteResult(index, status, None if ident is None else str(ident))
