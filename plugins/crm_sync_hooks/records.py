"""Small helpers for write inputs: validation with clear messages, chunking by count and size."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any


def validate_records(records: Sequence[Any], what: str) -> None:
    """Check that every record is a mapping of JSON-serialisable values.

    Args:
        records: The caller's input.
        what: Name of the input for messages, e.g. ``"sync_leads input"``.

    Raises:
        ValueError: A record is not a mapping or has a value JSON cannot carry; the message
            names the record's index and the field.
    """
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"{what}: record {index} is a {type(record).__name__}, not a mapping")
        for field, value in record.items():
            if not isinstance(field, str):
                raise ValueError(f"{what}: record {index} has a non-string field name {field!r}")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{what}: record {index} field {field!r} holds a {type(value).__name__} "
                    "that cannot be sent as JSON"
                ) from None


def chunked(items: Sequence[Any], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """Yield ``(offset, chunk)`` pairs of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def json_size(payload: Any) -> int:
    """Return the size in bytes of ``payload`` encoded as compact UTF-8 JSON."""
    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())


def missing_fields(record: Mapping[str, Any], fields: Sequence[str]) -> list[str]:
    """Return the fields of ``fields`` that ``record`` lacks or holds as None/empty."""
    return [f for f in fields if record.get(f) is None or record.get(f) == ""]
