"""Per-record outcome of a write, the same shape for Marketo and Dynamics."""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Codes of conditional writes (Dataverse ``If-Match: *`` / ``If-None-Match: *``): an update of a
# row that is gone, and a create of a row that is already there.
ROW_MISSING = "row-missing"
ROW_EXISTS = "row-exists"


class WriteStatus(enum.StrEnum):
    """What happened to one input record."""

    CREATED = "created"
    UPDATED = "updated"
    # Bulk import and Dataverse upserts without a representation do not say which of the two.
    UPSERTED = "upserted"
    DELETED = "deleted"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class WriteResult:
    """Outcome of writing one record.

    Attributes:
        index: Position of the record in the caller's input sequence.
        status: What happened.
        id: The record's id in the target system, when known.
        reason: Why the record was skipped or failed (the API's code and message).
        code: The API's error code for skipped/failed records.
    """

    index: int
    status: WriteStatus
    id: str | None = None
    reason: str | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        """True when the record was written (or deleted)."""
        return self.status not in (WriteStatus.SKIPPED, WriteStatus.FAILED)
