"""Marketo lead field schema (list all lead fields, create custom ones), as a mixin of
:class:`~crm_sync_hooks.marketo.MarketoHook`.

Endpoints (Adobe's "Leads" page, sections "Query Fields" and "Create Fields"): Get Lead Fields
``GET /rest/v1/leads/schema/fields.json`` pages with ``batchSize`` (at most 300) and
``nextPageToken`` until ``moreResult`` is false; Create Lead Fields
``POST /rest/v1/leads/schema/fields.json`` takes ``{"input": [...]}`` of at most 100 fields and
answers one ``{"name", "status"}`` entry per field, ``created`` or ``skipped`` with ``reasons``.
Both need the API user's role to hold "Read-Write Schema Custom Field".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crm_sync_hooks.errors import FatalApiError
from crm_sync_hooks.records import chunked, missing_fields, validate_records

FIELDS_PATH = "/rest/v1/leads/schema/fields.json"
MAX_FIELDS_PAGE = 300  # Get Lead Fields: records per page, at most
MAX_CREATE_FIELDS = 100  # Create Lead Fields: fields per call, at most
REQUIRED_FIELD_KEYS = ("name", "displayName", "dataType")


class MarketoSchemaMixin:
    """Lead field schema methods; the host class provides the authenticated calls."""

    if TYPE_CHECKING:

        def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def lead_field_schema(self, batch_size: int = MAX_FIELDS_PAGE) -> list[dict[str, Any]]:
        """Return the metadata of every lead field (all pages of Get Lead Fields).

        Each entry carries ``name``, ``displayName``, ``dataType``, ``length`` (string-like types),
        ``description``, ``isHidden``, ``isHtmlEncodingInEmail``, ``isSensitive`` and ``isCustom``.

        Args:
            batch_size: Fields per page, 1 to 300.

        Raises:
            ValueError: ``batch_size`` out of range.
            FatalApiError: The service returned the same page token twice (the paging would loop).
        """
        if not 1 <= batch_size <= MAX_FIELDS_PAGE:
            raise ValueError(f"batch_size must be 1..{MAX_FIELDS_PAGE}, got {batch_size}")
        fields: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"batchSize": batch_size}
            if token:
                params["nextPageToken"] = token
            body = self.call_json("GET", FIELDS_PATH, params=params)
            fields += [dict(entry) for entry in body.get("result") or [] if isinstance(entry, Mapping)]
            following = body.get("nextPageToken")
            if not body.get("moreResult") or not following:
                return fields
            if following == token:
                raise FatalApiError("the page token did not advance", endpoint=f"GET {FIELDS_PATH}")
            token = str(following)

    def create_lead_fields(self, fields: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Create custom lead fields in calls of up to 100; return one result entry per input field.

        A field that cannot be made (its name or display name in use, an unsupported type...) comes
        back ``skipped`` with its ``reasons``; it never raises. A call repeated after a lost answer
        reports the fields it had created as skipped because they exist, so read
        :meth:`lead_field_schema` to know the outcome when that matters.

        Args:
            fields: Field definitions: ``name``, ``displayName`` and ``dataType`` (required), and
                optionally ``description``, ``isHidden``, ``isHtmlEncodingInEmail``, ``isSensitive``.

        Returns:
            The service's entries (``{"name", "status", "reasons"?}``) in input order. An input the
            answer leaves out gets ``status: "failed"`` with a reason saying so.

        Raises:
            ValueError: A field is not a mapping or lacks a required key (before any call).
        """
        validate_records(fields, "create_lead_fields input")
        for index, field in enumerate(fields):
            missing = missing_fields(field, REQUIRED_FIELD_KEYS)
            if missing:
                raise ValueError(f"create_lead_fields input: field {index} has no {', '.join(missing)}")
        results: list[dict[str, Any]] = []
        for _, chunk in chunked(fields, MAX_CREATE_FIELDS):
            body = self.call_json("POST", FIELDS_PATH, json={"input": [dict(f) for f in chunk]})
            results += match_results(chunk, body.get("result"))
        return results


def match_results(sent: Sequence[Mapping[str, Any]], entries: Any) -> list[dict[str, Any]]:
    """Pair each sent field with its result entry, by name and in order (names may repeat)."""
    pending: dict[str, list[dict[str, Any]]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping):
            pending.setdefault(str(entry.get("name")), []).append(dict(entry))
    out = []
    for field in sent:
        name = str(field["name"])
        queue = pending.get(name)
        if queue:
            out.append(queue.pop(0))
        else:
            reason = {"code": None, "message": "no result returned for this field"}
            out.append({"name": name, "status": "failed", "reasons": [reason]})
    return out
