"""The OData error the Dataverse emulator raises and how it goes on the wire (reference §8)."""

from __future__ import annotations

from typing import Any

NOT_FOUND = "0x80040217"  # ObjectDoesNotExist
DUPLICATE = "0x80040237"  # DuplicateRecord
BAD_PROPERTY = "0x80060888"  # unknown property in a query (unconfirmed code, per the reference)
BAD_PAYLOAD = "0x80048d19"  # unknown property in a body (unconfirmed code, per the reference)
VALIDATION = "0x80044331"
EXPIRED_VERSION = "0x80044352"  # ExpiredVersionStamp; documented for metadata tracking, used for data too
INVALID_ARGUMENT = "0x80040203"  # InvalidArgument: the generic code, where no specific one is confirmed
# Security (documented codes; Dataverse answers all three with HTTP 403):
PRIVILEGE_DENIED = "0x80040220"  # PrivilegeDenied, -2147220960: "Principal user is missing prv..."
SECURED_CREATE_MISSING = "0x8004F502"  # AttributePrivilegeCreateIsMissing
SECURED_UPDATE_MISSING = "0x8004F507"  # AttributePermissionUpdateIsMissingDuringUpdate
# Metadata writes: the code is the one Microsoft's samples test for; the HTTP status is unconfirmed.
DUPLICATE_ATTRIBUTE = "0x80047013"  # DuplicateAttributeSchemaName


class ODataError(Exception):
    """An error the Web API answers with ``{"error": {"code": ..., "message": ...}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def not_found(table: str, key: object) -> ODataError:
    """The 404 Dataverse gives for a missing record."""
    return ODataError(404, NOT_FOUND, f"{table} With Id = {key} Does Not Exist")
