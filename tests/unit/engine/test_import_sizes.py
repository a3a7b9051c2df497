"""A bulk unit is filled by the size each record's line will have in the import file: the
count, made column by column, must equal what the hook's CSV writer writes, byte for byte
(or, where the module says so, be larger)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from crm_sync.engine.full_copy.import_sizes import _read_columns, import_cells
from crm_sync.engine.json_records import to_json_texts
from crm_sync_hooks.marketo_bulk_import import ImportLineWriter, csv_cell

RECORDS: list[dict[str, Any]] = [
    {"email": "a@example.com", "firstName": "Ann", "unsubscribed": True, "score": 12.0, "visits": 4},
    {"email": "b@example.com", "firstName": 'Bob "the" Builder', "unsubscribed": False, "score": 1.5},
    {"email": "c@example.com", "firstName": "Smith, Jane", "company": "Line\nbreak\r\n", "score": 1e16},
    {"email": "d@example.com", "firstName": "Zoë Ærø 東京", "company": None, "score": None, "visits": -3},
    {"email": "e@example.com", "msdCreatedDate": "2026-12-07T12:00:00Z", "birth": "1990-02-03"},
    {"email": "", "firstName": ",", "company": '"', "title": 'comma, and "quotes"'},
]
MIXED = {"email": "f@example.com", "visits": "many"}  # a number elsewhere, text here


def _written(records: list[dict[str, Any]], columns: list[str]) -> list[int]:
    writer = ImportLineWriter()
    return [len(writer.line([csv_cell(r.get(c), 0, c) for c in columns])) for r in records]


@pytest.fixture(params=["columns", "one by one"])
def records(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    import pyarrow as pa

    if request.param == "columns":
        assert _read_columns(pa.array(to_json_texts(RECORDS))) is not None
        return RECORDS
    # A field holding a number in one record and text in another cannot be an Arrow column:
    # the records are read one at a time, into the same cells.
    assert _read_columns(pa.array(to_json_texts([*RECORDS, MIXED]))) is None
    return [*RECORDS, MIXED]


def test_each_line_is_counted_as_the_hook_writes_it(records: list[dict[str, Any]]) -> None:
    # Times included: Arrow's reader would take them for times; they are counted as the texts sent.
    cells = import_cells(to_json_texts(records))
    assert cells.line_bytes(len(cells.columns)).tolist() == _written(records, cells.columns)


def test_a_wider_file_adds_a_comma_per_column_and_each_line_can_have_its_own_width() -> None:
    cells = import_cells(to_json_texts(RECORDS))
    assert cells.columns[:2] == ["email", "firstName"]  # in the order they first appear
    narrow, wide = cells.line_bytes(len(cells.columns)), cells.line_bytes(len(cells.columns) + 3)
    assert (wide - narrow).tolist() == [3] * len(RECORDS)
    own = [_written([r], list(r))[0] for r in RECORDS]  # each record in a file of its own fields
    assert cells.line_bytes(np.array([len(r) for r in RECORDS])).tolist() == own


def test_a_line_of_one_empty_cell_is_quoted() -> None:
    records: list[dict[str, Any]] = [{"email": None}, {"email": "x@example.com"}]
    cells = import_cells(to_json_texts(records))
    assert cells.line_bytes(1).tolist() == _written(records, ["email"]) == [3, 14]


def test_a_lone_carriage_return_is_counted_quoted() -> None:
    # Python's writer (3.11) leaves it bare; counting the quotes can only make a unit smaller.
    record = {"email": "a@example.com", "title": "one\rtwo"}
    cells = import_cells(to_json_texts([record]))
    assert cells.line_bytes(2).tolist() == [len('a@example.com,"one\rtwo"\n')]
    assert cells.line_bytes(2).tolist() == [_written([record], ["email", "title"])[0] + 2]


def test_a_nested_value_is_refused_with_its_record_and_field() -> None:
    with pytest.raises(ValueError, match="row 1 field 'tags' holds a list"):
        import_cells(to_json_texts([{"email": "a@example.com"}, {"email": "b@example.com", "tags": ["x"]}]))


def test_each_line_is_the_hook_writers_line(records: list[dict[str, Any]]) -> None:
    cells = import_cells(to_json_texts(records))
    header = [*cells.columns, "notInThesePayloads"]
    writer = ImportLineWriter()
    expected = [writer.line([csv_cell(r.get(c), 0, c) for c in header]) for r in records]
    assert [(line + "\n").encode() for line in cells.lines(header).to_pylist()] == expected


def test_a_field_of_integers_and_fractions_keeps_each_as_written() -> None:
    # Arrow's reader makes the column fractions; the integers stay integers, as the hook writes
    # them, and a text holding what looks like the field is not taken for it.
    records: list[dict[str, Any]] = [
        {"email": "a@example.com", "n": 12},
        {"email": "b@example.com", "n": 1.5},
        {"email": "c@example.com", "n": 100000.0, "note": 'x,"n":7,'},
        {"email": "d@example.com", "n": -3},
        {"email": "e@example.com", "n": 1e16},
        {"email": "f@example.com", "n": None, "note": '{"n":9}'},
        {"email": "g@example.com", "n": 0},
    ]
    header = ["email", "n", "note"]
    cells = import_cells(to_json_texts(records))
    writer = ImportLineWriter()
    expected = [writer.line([csv_cell(r.get(c), 0, c) for c in header]) for r in records]
    assert [(line + "\n").encode() for line in cells.lines(header).to_pylist()] == expected
    assert cells.lines(header).to_pylist()[:3] == [
        "a@example.com,12,",
        "b@example.com,1.5,",
        'c@example.com,100000.0,"x,""n"":7,"',
    ]
    assert cells.line_bytes(3).tolist() == _written(records, header)


def test_a_header_without_a_field_of_the_payloads_is_refused() -> None:
    cells = import_cells(to_json_texts([{"email": "a@example.com", "title": "x"}]))
    with pytest.raises(ValueError, match=r"lacks the fields \['title'\]"):
        cells.lines(["email"])
