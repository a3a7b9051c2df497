"""Dataverse marketing-list and campaign actions, as a mixin of ``DynamicsHook``.

Reading campaigns, lists, ``listmembers``, campaign responses and activities needs nothing new:
``query``, ``track_changes`` and ``upsert_records`` serve those tables (a custom activity is
upserted by its alternate key like any row). What the generic methods cannot do are the list
actions, which are the only way to change a marketing list's members:

- ``AddListMembersList`` (unbound) adds many records at once; Dataverse adds a record that is a
  member already no second time, so a retried or re-run call changes nothing;
- ``RemoveMemberList`` (bound to the list) removes one; many go as one ``$batch``;
- ``AddItemCampaign`` (bound to the list, the documented Web API shape) attaches a list to a
  campaign and answers the ``campaignitem``.

Every call goes through the host hook's ``call``, so it shares its limits, retries and errors.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from crm_sync_hooks.errors import FatalApiError
from crm_sync_hooks.odata_batch import BatchOperation
from crm_sync_hooks.records import chunked

if TYPE_CHECKING:
    from collections.abc import Sequence

    import requests

    from crm_sync_hooks.results import WriteResult

NS = "Microsoft.Dynamics.CRM."
MEMBER_TABLES = ("account", "contact", "lead")  # a list's createdfromcode 1, 2, 4
MAX_MEMBERS_PER_CALL = 1000
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _guid(value: str, what: str) -> str:
    if not _GUID.match(str(value)):
        raise ValueError(f"{what} must be a GUID, got {value!r}")
    return str(value).lower()


class DynamicsMarketingMixin:
    """Marketing-list and campaign actions; the host class sends the calls."""

    if TYPE_CHECKING:

        @property
        def api_url(self) -> str: ...

        def call(self, method: str, url_or_path: str, **kwargs: Any) -> requests.Response: ...

        def call_json(self, method: str, url_or_path: str, **kwargs: Any) -> dict[str, Any]: ...

        def _run_batches(
            self,
            ops: list[tuple[int, BatchOperation]],
            batch_size: int,
            change_set_size: int | None,
            id_column: str | None,
            deleting: bool = False,
        ) -> dict[int, WriteResult]: ...

    def add_list_members(
        self,
        list_id: str,
        member_table: str,
        member_ids: Sequence[str],
        *,
        chunk_size: int = MAX_MEMBERS_PER_CALL,
    ) -> int:
        """Add records to a static marketing list with ``AddListMembersList``, ``chunk_size`` a call.

        Args:
            list_id: The list's ``listid``.
            member_table: ``account``, ``contact`` or ``lead``: the list's member type.
            member_ids: Primary keys of the records to add (members already in the list stay).
            chunk_size: Members per call (each call is atomic: one refused member fails its chunk).

        Returns:
            How many ids were sent.

        Raises:
            ValueError: A bad id, member table or chunk size (nothing is sent).
            FatalApiError: Dataverse refused a chunk (a member of another type, a missing
                record, a dynamic or locked list); the chunks before it were added.
        """
        list_id = _guid(list_id, "list_id")
        if member_table not in MEMBER_TABLES:
            raise ValueError(f"member_table must be one of {', '.join(MEMBER_TABLES)}, got {member_table!r}")
        if not 1 <= chunk_size <= MAX_MEMBERS_PER_CALL:
            raise ValueError(f"chunk_size must be 1..{MAX_MEMBERS_PER_CALL}, got {chunk_size}")
        ids = [_guid(m, "member id") for m in member_ids]
        kind = f"{NS}{member_table}"
        for _, chunk in chunked(ids, chunk_size):
            body = {
                "List": {"@odata.type": f"{NS}list", "listid": list_id},
                "Members": [{"@odata.type": kind, f"{member_table}id": m} for m in chunk],
            }
            self.call("POST", "AddListMembersList", json=body)
        return len(ids)

    def remove_list_members(
        self, list_id: str, member_ids: Sequence[str], *, batch_size: int = 100
    ) -> list[WriteResult]:
        """Remove records from a marketing list: one ``RemoveMemberList`` per record, in ``$batch``.

        Returns:
            One result per id, in input order: deleted, or failed with Dataverse's reason. A
            record that was not a member is answered like a removed one.

        Raises:
            ValueError: A bad id or batch size (nothing is sent).
        """
        list_id = _guid(list_id, "list_id")
        ids = [_guid(m, "member id") for m in member_ids]
        url = f"{urlsplit(self.api_url).path}lists({list_id})/{NS}RemoveMemberList"
        ops = [(i, BatchOperation("POST", url, {"EntityId": m})) for i, m in enumerate(ids)]
        results = self._run_batches(ops, batch_size, None, None, deleting=True)
        return [results[i] for i in range(len(ids))]

    def add_list_to_campaign(self, list_id: str, campaign_id: str) -> str:
        """Attach a marketing list to a campaign with ``AddItemCampaign``; return the ``campaignitemid``.

        Raises:
            ValueError: A bad id (nothing is sent).
            FatalApiError: Dataverse refused it, or its answer names no campaign item.
        """
        list_id = _guid(list_id, "list_id")
        body = {"Campaign": {"@odata.type": f"{NS}campaign", "campaignid": _guid(campaign_id, "campaign_id")}}
        path = f"lists({list_id})/{NS}AddItemCampaign"
        answer = self.call_json("POST", path, json=body)
        item = answer.get("campaignitemid")
        if not item:
            raise FatalApiError("AddItemCampaign answered no campaignitemid", endpoint=f"POST {path}")
        return str(item)
