"""The record-error CSV export of the status page, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

CSV_COLUMNS = (
    "entity",
    "direction",
    "source_id",
    "field",
    "code",
    "message",
    "attempts",
    "state",
    "first_seen",
    "last_seen",
    "next_attempt_at",
)
# A spreadsheet reads a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> str:
    """The cell text of ``value``; text a spreadsheet would run as a formula gets a leading ``'``."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def errors_csv(rows: Iterable[dict[str, Any]]) -> str:
    """CSV text (header row first) of record-error dicts from :func:`crm_sync.status.iter_errors`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        cells = {**r, "state": "parked" if r["parked"] else "retrying"}
        writer.writerow([neutralise(cells[c]) for c in CSV_COLUMNS])
    return out.getvalue()
