"""Dataverse table customization and the caller's rights, as a mixin of ``DynamicsHook``.

What a set-up tool needs beyond reading table definitions: create a column or an alternate key,
turn change tracking on, and read the privileges and field-security rights of a user. Every call
goes through the host hook's ``call``/``call_json``, so it shares the hook's limits, retries and
error classes (a refused call raises :class:`~crm_sync_hooks.errors.FatalApiError` naming the
endpoint and Dataverse's code).

Creating a column or a key is not idempotent: when a retried ``POST`` finds that the first
attempt went through, Dataverse refuses it as a duplicate (column: code ``0x80047013``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from crm_sync_hooks.dynamics_writes import key_literal

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import requests

MERGE_LABELS = {"MSCRM.MergeLabels": "true"}  # keep the labels of other languages on a PUT
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def label(text: str, language_code: int = 1033) -> dict[str, Any]:
    """A Dataverse ``Label`` with one localized text."""
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
                "Label": text,
                "LanguageCode": language_code,
            }
        ],
    }


def _table_path(logical_name: str) -> str:
    return f"EntityDefinitions(LogicalName={key_literal(logical_name)})"


def _user_path(user_id: str) -> str:
    if not _GUID.match(user_id):
        raise ValueError(f"user_id must be a GUID, got {user_id!r}")
    return f"systemusers({user_id.lower()})"


class DynamicsMetadataMixin:
    """Table customization and rights look-ups; the host class sends the calls."""

    if TYPE_CHECKING:

        def call(self, method: str, url_or_path: str, **kwargs: Any) -> requests.Response: ...

        def call_json(self, method: str, url_or_path: str, **kwargs: Any) -> dict[str, Any]: ...

    def entity_keys(self, logical_name: str) -> list[dict[str, Any]]:
        """Return a table's alternate keys (``SchemaName``, ``KeyAttributes``, ``EntityKeyIndexStatus``)."""
        body = self.call_json("GET", f"{_table_path(logical_name)}/Keys")
        return list(body.get("value") or [])

    def create_attribute(self, logical_name: str, definition: Mapping[str, Any]) -> None:
        """Add a column to a table.

        Args:
            logical_name: The table, e.g. ``lead``.
            definition: A typed attribute definition: ``@odata.type`` (e.g.
                ``Microsoft.Dynamics.CRM.BooleanAttributeMetadata``), ``SchemaName`` with the
                publisher prefix (``new_SyncToMkto``), ``DisplayName``, ``RequiredLevel`` and the
                type's own properties (``OptionSet``, ``DefaultValue``, ``MaxLength``...).

        Raises:
            FatalApiError: Refused, e.g. a name in use (code ``0x80047013``) or no prefix.
        """
        self.call(
            "POST",
            f"{_table_path(logical_name)}/Attributes",
            json=dict(definition),
            headers={"Content-Type": "application/json"},
        )

    def create_key(
        self, logical_name: str, schema_name: str, key_attributes: Sequence[str], display_name: str
    ) -> None:
        """Add an alternate key on ``key_attributes`` (column logical names) to a table.

        Dataverse builds the key's index in a background job: read :meth:`entity_keys` until
        its ``EntityKeyIndexStatus`` is ``Active`` before addressing rows by it.

        Raises:
            FatalApiError: Refused, e.g. the key exists or names an unknown column.
        """
        body = {
            "SchemaName": schema_name,
            "DisplayName": label(display_name),
            "KeyAttributes": list(key_attributes),
        }
        self.call(
            "POST",
            f"{_table_path(logical_name)}/Keys",
            json=body,
            headers={"Content-Type": "application/json"},
        )

    def enable_change_tracking(self, logical_name: str) -> None:
        """Turn change tracking on for a table (it cannot be turned off again).

        Table definitions are updated whole (``PUT``): the definition is read, changed and sent
        back with ``MSCRM.MergeLabels: true``. Nothing is sent when it is on already.
        """
        path = _table_path(logical_name)
        definition = self.call_json("GET", path)
        if definition.get("ChangeTrackingEnabled") is True:
            return
        body = {k: v for k, v in definition.items() if not k.startswith("@odata.context")}
        body["ChangeTrackingEnabled"] = True
        self.call("PUT", path, json=body, headers={"Content-Type": "application/json", **MERGE_LABELS})

    def user_privileges(self, user_id: str) -> list[dict[str, Any]]:
        """Return a user's privileges (``PrivilegeName``, ``Depth``, ``PrivilegeId``, ``BusinessUnitId``).

        Raises:
            ValueError: ``user_id`` is not a GUID.
        """
        body = self.call_json("GET", f"{_user_path(user_id)}/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()")
        return list(body.get("RolePrivileges") or [])

    def attribute_privileges(self, user_id: str) -> list[dict[str, Any]]:
        """Return a user's rights on secured columns.

        One item per column the user has a field permission on: ``AttributeId`` (the column's
        ``MetadataId``) and ``CanRead``/``CanCreate``/``CanUpdate`` (4 allowed, 0 not allowed).

        Raises:
            ValueError: ``user_id`` is not a GUID.
        """
        path = f"{_user_path(user_id)}/Microsoft.Dynamics.CRM.RetrievePrincipalAttributePrivileges()"
        body = self.call_json("GET", path)
        return list(body.get("AttributePrivileges") or [])
