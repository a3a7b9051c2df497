"""Marketo Lead Database writes (sync and delete in calls of up to 300), as a mixin of
:class:`~crm_sync_hooks.marketo.MarketoHook`.

Writes are not atomic on Marketo's side: each record of a call succeeds or is skipped on its
own, so every input record comes back as one :class:`~crm_sync_hooks.results.WriteResult`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crm_sync_hooks.errors import FatalApiError
from crm_sync_hooks.records import chunked, json_size, missing_fields, validate_records
from crm_sync_hooks.results import WriteResult, WriteStatus

MAX_BATCH = 300  # records per read page, per write call and per filterValues list
MAX_BODY_BYTES = 1_000_000  # standard request body limit (HTTP 413 above)

_STATUS = {
    "created": WriteStatus.CREATED,
    "updated": WriteStatus.UPDATED,
    "deleted": WriteStatus.DELETED,
    "skipped": WriteStatus.SKIPPED,
}


def reason_text(entry: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Return ``(code, "code: message; ...")`` from a result entry's ``reasons`` (or ``reason``)."""
    reasons = entry.get("reasons") or ([entry["reason"]] if entry.get("reason") else [])
    if not reasons:
        return None, None
    parts = [f"{r.get('code')}: {r.get('message')}" if isinstance(r, Mapping) else str(r) for r in reasons]
    first = reasons[0]
    return (str(first.get("code")) if isinstance(first, Mapping) else None), "; ".join(parts)


def record_results(entries: Any, offset: int, count: int, id_fields: Sequence[str]) -> list[WriteResult]:
    """Map a write call's ``result`` entries to one :class:`WriteResult` per input record.

    Entries carry ``seq`` (non-lead objects) or come in input order (leads).
    """
    out: list[WriteResult | None] = [None] * count
    for pos, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, Mapping):
            continue
        seq = entry.get("seq", pos)
        if not isinstance(seq, int) or not 0 <= seq < count:
            continue
        raw_status = str(entry.get("status", ""))
        status = _STATUS.get(raw_status)
        code, reason = reason_text(entry)
        if status is None:
            status, reason = WriteStatus.FAILED, reason or f"unexpected status {raw_status!r}"
        ident = next((entry[f] for f in id_fields if entry.get(f) is not None), None)
        out[seq] = WriteResult(offset + seq, status, None if ident is None else str(ident), reason, code)
    return [
        r
        if r is not None
        else WriteResult(offset + i, WriteStatus.FAILED, reason="no result returned for this record")
        for i, r in enumerate(out)
    ]


class MarketoWritesMixin:
    """Sync and delete methods; the host class provides the authenticated calls."""

    if TYPE_CHECKING:
        timeout: float

        def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        action: str = "createOrUpdate",
        lookup_field: str = "email",
        partition_name: str | None = None,
    ) -> list[WriteResult]:
        """Create or update leads in calls of up to 300, one result per input record.

        Records without a value for ``lookup_field`` are skipped without a call (code 1002).
        """
        validate_records(records, "sync_leads input")
        body: dict[str, Any] = {"action": action, "lookupField": lookup_field}
        if partition_name:
            body["partitionName"] = partition_name
        required = [] if action == "createDuplicate" else [lookup_field]
        return self._write("/rest/v1/leads.json", records, body, required, ("id",))

    def delete_leads(self, lead_ids: Sequence[int]) -> list[WriteResult]:
        """Delete leads by id, one result per id."""
        records = [{"id": int(i)} for i in lead_ids]
        return self._write("/rest/v1/leads/delete.json", records, {}, ["id"], ("id",))

    def merge_leads(self, winner_id: int, loser_ids: Sequence[int]) -> WriteResult:
        """Merge ``loser_ids`` into ``winner_id`` (one call; Marketo answers no per-lead result).

        ``mergeInCRM`` stays false: the merge this mirrors already happened in the CRM. A lead
        Marketo does not have (1004) or any other refusal is a failed result naming the code,
        not an exception, so one merge's failure leaves the rest of a batch going.
        """
        params = {"leadIds": ",".join(str(int(i)) for i in loser_ids), "mergeInCRM": "false"}
        try:
            self.call_json("POST", f"/rest/v1/leads/{int(winner_id)}/merge.json", params=params)
        except FatalApiError as exc:
            return WriteResult(0, WriteStatus.FAILED, str(winner_id), str(exc), exc.code)
        return WriteResult(0, WriteStatus.UPDATED, str(winner_id))

    def sync_objects(
        self,
        object_name: str,
        records: Sequence[Mapping[str, Any]],
        action: str = "createOrUpdate",
        dedupe_by: str = "dedupeFields",
        required_fields: Sequence[str] = (),
    ) -> list[WriteResult]:
        """Sync Lead Database objects (``companies``, ``opportunities``, ``opportunities/roles``,
        ``salespersons``, ``namedaccounts``, ``customobjects/<apiName>``) in calls of up to 300.

        Args:
            object_name: The object path segment.
            records: Records keyed by field API name.
            action: ``createOrUpdate``, ``createOnly`` or ``updateOnly``.
            dedupe_by: ``dedupeFields`` or ``idField`` (``idField`` only with ``updateOnly``).
            required_fields: Fields every record must carry (the dedupe key); records lacking one
                are skipped without a call.
        """
        validate_records(records, f"sync {object_name} input")
        return self._write(
            f"/rest/v1/{object_name}.json",
            records,
            {"action": action, "dedupeBy": dedupe_by},
            list(required_fields),
            ("id", "marketoGUID"),
        )

    def sync_companies(
        self, records: Sequence[Mapping[str, Any]], action: str = "createOrUpdate"
    ) -> list[WriteResult]:
        """Sync companies keyed by ``externalCompanyId``."""
        return self.sync_objects("companies", records, action, required_fields=["externalCompanyId"])

    def sync_opportunities(
        self, records: Sequence[Mapping[str, Any]], action: str = "createOrUpdate"
    ) -> list[WriteResult]:
        """Sync opportunities keyed by ``externalOpportunityId``."""
        return self.sync_objects("opportunities", records, action, required_fields=["externalOpportunityId"])

    def sync_opportunity_roles(
        self, records: Sequence[Mapping[str, Any]], action: str = "createOrUpdate"
    ) -> list[WriteResult]:
        """Sync opportunity roles keyed by ``externalOpportunityId`` + ``leadId`` + ``role``."""
        return self.sync_objects(
            "opportunities/roles",
            records,
            action,
            required_fields=["externalOpportunityId", "leadId", "role"],
        )

    def sync_sales_persons(
        self, records: Sequence[Mapping[str, Any]], action: str = "createOrUpdate"
    ) -> list[WriteResult]:
        """Sync sales persons keyed by ``externalSalesPersonId``."""
        return self.sync_objects("salespersons", records, action, required_fields=["externalSalesPersonId"])

    def sync_custom_objects(
        self,
        api_name: str,
        records: Sequence[Mapping[str, Any]],
        action: str = "createOrUpdate",
        dedupe_by: str = "dedupeFields",
    ) -> list[WriteResult]:
        """Sync records of custom object ``api_name`` (dedupe fields come from its type)."""
        return self.sync_objects(f"customobjects/{api_name}", records, action, dedupe_by)

    def delete_objects(
        self, object_name: str, keys: Sequence[Mapping[str, Any]], delete_by: str = "dedupeFields"
    ) -> list[WriteResult]:
        """Delete Lead Database objects by dedupe fields or id field, one result per key."""
        validate_records(keys, f"delete {object_name} input")
        return self._write(
            f"/rest/v1/{object_name}/delete.json", keys, {"deleteBy": delete_by}, [], ("id", "marketoGUID")
        )

    def _write(
        self,
        path: str,
        records: Sequence[Mapping[str, Any]],
        body: dict[str, Any],
        required: Sequence[str],
        id_fields: Sequence[str],
    ) -> list[WriteResult]:
        results: list[WriteResult] = []
        for offset, chunk in chunked(records, MAX_BATCH):
            results.extend(self._write_chunk(path, offset, list(chunk), body, required, id_fields))
        return results

    def _write_chunk(
        self,
        path: str,
        offset: int,
        chunk: list[Mapping[str, Any]],
        body: dict[str, Any],
        required: Sequence[str],
        id_fields: Sequence[str],
    ) -> list[WriteResult]:
        results: dict[int, WriteResult] = {}
        sendable: list[int] = []
        for i, record in enumerate(chunk):
            missing = missing_fields(record, required)
            if missing:
                results[i] = WriteResult(
                    offset + i,
                    WriteStatus.SKIPPED,
                    code="1002",
                    reason=f"record {offset + i} has no value for {', '.join(missing)}",
                )
            else:
                sendable.append(i)
        for part in self._split_by_size([chunk[i] for i in sendable], body):
            idx = [sendable[j] for j in part]
            if len(idx) == 1 and json_size({**body, "input": [chunk[idx[0]]]}) > MAX_BODY_BYTES:
                results[idx[0]] = WriteResult(
                    offset + idx[0],
                    WriteStatus.FAILED,
                    code="413",
                    reason="record is larger than Marketo's 1 MB request limit",
                )
                continue
            payload = {**body, "input": [chunk[i] for i in idx]}
            answer = self.call_json("POST", path, json=payload, timeout=max(self.timeout, 120.0))
            for j, res in enumerate(record_results(answer.get("result"), 0, len(idx), id_fields)):
                results[idx[j]] = WriteResult(offset + idx[j], res.status, res.id, res.reason, res.code)
        return [results[i] for i in range(len(chunk))]

    @staticmethod
    def _split_by_size(records: list[Mapping[str, Any]], body: dict[str, Any]) -> list[list[int]]:
        """Split positions into groups whose request body stays under 1 MB."""
        groups: list[list[int]] = []
        pending = [list(range(len(records)))] if records else []
        while pending:
            group = pending.pop()
            if len(group) > 1 and json_size({**body, "input": [records[i] for i in group]}) > MAX_BODY_BYTES:
                half = len(group) // 2
                pending.extend([group[half:], group[:half]])
            else:
                groups.append(group)
        return groups
