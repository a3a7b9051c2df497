"""The small client interfaces the engine needs from the hooks.

``crm_sync_hooks.MarketoHook`` and ``crm_sync_hooks.DynamicsHook`` satisfy them; unit tests
pass fakes. Keeping the engine on these protocols keeps it free of Airflow imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from datetime import datetime

    from crm_sync_hooks.dynamics import ChangePage
    from crm_sync_hooks.marketo import FeedPage
    from crm_sync_hooks.results import WriteResult


class DynamicsClient(Protocol):
    """What the engine calls on the Dataverse side."""

    def organization_id(self) -> str:
        """The organization id (state-store identity check)."""
        ...

    def track_changes(
        self,
        entity_set: str,
        select: Sequence[str],
        delta_link: str | None = None,
        page_size: int = ...,
    ) -> Iterator[ChangePage]:
        """Pages of changes since ``delta_link`` (the whole table without one)."""
        ...

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        expand: str | None = None,
        page_size: int = ...,
        annotations: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of rows matching an OData query."""
        ...

    def upsert_records(
        self,
        entity_set: str,
        records: Sequence[Mapping[str, Any]],
        key_columns: Sequence[str],
        *,
        id_column: str | None = None,
        batch_size: int = ...,
        change_set_size: int | None = None,
        only: Literal["existing", "new"] | None = None,
    ) -> list[WriteResult]:
        """Create or update rows (or only one of the two), one result per record."""
        ...


class MarketoClient(Protocol):
    """What the engine calls on the Marketo side."""

    def get_paging_token(self, since: datetime) -> str:
        """Activity paging token for ``since``."""
        ...

    def get_lead_changes(
        self,
        next_page_token: str,
        fields: Sequence[str],
        batch_size: int = ...,
        list_id: int | None = None,
    ) -> Iterator[FeedPage]:
        """Pages of lead changes since a token."""
        ...

    def get_deleted_leads(self, next_page_token: str, batch_size: int = ...) -> Iterator[FeedPage]:
        """Pages of Delete Lead activities since a token."""
        ...

    def get_activities(
        self, next_page_token: str, activity_type_ids: Sequence[int], batch_size: int = ...
    ) -> Iterator[FeedPage]:
        """Pages of activities of the given types since a token."""
        ...

    def get_leads(
        self,
        filter_type: str,
        filter_values: Sequence[str | int],
        fields: Sequence[str] | None = None,
        batch_size: int = ...,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of leads matching ``filter_type``."""
        ...

    def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        action: str = ...,
        lookup_field: str = ...,
        partition_name: str | None = None,
    ) -> list[WriteResult]:
        """Create or update leads, one result per record."""
        ...

    def merge_leads(self, winner_id: int, loser_ids: Sequence[int]) -> WriteResult:
        """Merge persons into ``winner_id``; one result for the whole merge."""
        ...

    def sync_objects(
        self,
        object_name: str,
        records: Sequence[Mapping[str, Any]],
        action: str = ...,
        dedupe_by: str = ...,
        required_fields: Sequence[str] = ...,
    ) -> list[WriteResult]:
        """Create or update Lead Database objects, one result per record."""
        ...

    def delete_objects(
        self, object_name: str, keys: Sequence[Mapping[str, Any]], delete_by: str = ...
    ) -> list[WriteResult]:
        """Delete Lead Database objects, one result per key."""
        ...
