"""A bulk unit is filled by the size each record's line will have in the import file: the
count must equal what the hook's CSV writer writes, byte for byte."""

from __future__ import annotations

from typing import Any

import pytest

from crm_sync.engine.full_copy.units import _csv_bytes
from crm_sync_hooks.marketo_bulk_import import _LineWriter, csv_cell

RECORDS: list[dict[str, Any]] = [
    {"email": "a@example.com", "firstName": "Ann", "unsubscribed": True, "score": 12},
    {"email": "b@example.com", "firstName": 'Bob "the" Builder', "unsubscribed": False, "score": 1.5},
    {"email": "c@example.com", "firstName": "Smith, Jane", "company": "Line\nbreak\r\n"},
    {"email": "d@example.com", "firstName": "Zoë Ærø 東京", "company": None, "score": -3},
    {"email": "e@example.com"},
    {"email": "", "firstName": ",", "company": '"'},
]
COLUMNS = ["email", "firstName", "unsubscribed", "score", "company"]


def _written(record: dict[str, Any], columns: list[str]) -> int:
    return len(_LineWriter().line([csv_cell(record.get(c), 0, c) for c in columns]))


def test_each_line_is_counted_as_the_hook_writes_it() -> None:
    assert [_csv_bytes(r, COLUMNS) for r in RECORDS] == [_written(r, COLUMNS) for r in RECORDS]


def test_a_line_of_one_empty_cell_is_quoted() -> None:
    records: list[dict[str, Any]] = [{"email": None}, {"email": "x@example.com"}]
    assert [_csv_bytes(r, ["email"]) for r in records] == [_written(r, ["email"]) for r in records] == [3, 14]


def test_a_nested_value_is_refused_with_its_field() -> None:
    with pytest.raises(ValueError, match="field 'tags' holds a list"):
        _csv_bytes({"email": "a@example.com", "tags": ["x"]}, ["email", "tags"])
