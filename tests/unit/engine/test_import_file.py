"""A bulk unit's import files are written from the lines its plan staged: byte for byte the
files the hook's own writer makes from the same records, cut at the same lines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from crm_sync.engine.full_copy.import_file import import_files
from crm_sync.engine.full_copy.import_sizes import import_cells
from crm_sync.engine.json_records import ImportLines, JsonRecords, to_json_texts
from crm_sync_hooks.marketo_bulk_import import MarketoBulkImportMixin

# Two plan batches of one unit: the second brings fields the first did not have.
FIRST: list[dict[str, Any]] = [
    {"email": f"p{i}@example.com", "firstName": f"Name {i}", "unsubscribed": i % 2 == 0} for i in range(40)
]
SECOND: list[dict[str, Any]] = [
    {"email": f"q{i}@example.com", "title": 'Head of "Sales", EMEA', "score": i * 1.5, "visits": i}
    for i in range(40)
]


def _staged(batches: list[list[dict[str, Any]]]) -> tuple[ImportLines, list[str]]:
    """The lines as the plan stages them (each under the columns seen so far) and the header."""
    columns: dict[str, None] = {}
    texts: list[str] = []
    widths: list[int] = []
    for records in batches:
        cells = import_cells(to_json_texts(records))
        columns.update(dict.fromkeys(cells.columns))
        texts += cells.lines(list(columns)).to_pylist()
        widths += [len(columns)] * len(records)
    return ImportLines(pa.array(texts, pa.string()), np.array(widths)), list(columns)


def _hook_files(records: list[dict[str, Any]], header: list[str], max_bytes: int) -> list[tuple[bytes, int]]:
    skipped: list[Any] = []
    files = MarketoBulkImportMixin._import_files(records, header, "email", max_bytes, skipped)
    assert skipped == []
    return [(data, count) for data, _, count in files]


@pytest.mark.parametrize("max_bytes", [10_000_000, 1_500, 400])
def test_files_from_lines_equal_the_hooks_files(max_bytes: int) -> None:
    lines, header = _staged([FIRST, SECOND])
    assert header[:3] == ["email", "firstName", "unsubscribed"]
    assert len(set(lines.widths.tolist())) == 2  # the first batch's lines are narrower
    ours = list(import_files(lines, header, max_bytes))
    theirs = _hook_files([*FIRST, *SECOND], header, max_bytes)
    assert [(data, count) for data, _, count in ours] == theirs
    assert [start for _, start, _ in ours] == [sum(c for _, c in theirs[:i]) for i in range(len(theirs))]
    assert all(len(data) <= max_bytes for data, _, _ in ours)
    if max_bytes < 10_000_000:
        assert len(ours) > 1


def test_a_line_wider_than_the_header_is_refused() -> None:
    lines, header = _staged([FIRST, SECOND])
    with pytest.raises(ValueError, match="holds 6 columns; the header has 3"):
        list(import_files(lines, header[:3], 10_000_000))


def test_records_keep_their_lines_when_taken_or_sliced() -> None:
    lines, _ = _staged([FIRST])
    records = JsonRecords(to_json_texts(FIRST), lines)
    taken = records.take([3, 1])
    assert taken.lines is not None
    assert taken.lines.texts.to_pylist() == [lines.texts[3].as_py(), lines.texts[1].as_py()]
    sliced = records[10:12]
    assert sliced.lines is not None
    assert sliced.lines.texts.to_pylist() == lines.texts.to_pylist()[10:12]
    assert [r["email"] for r in sliced] == ["p10@example.com", "p11@example.com"]
    with pytest.raises(ValueError, match="3 import lines for 40 records"):
        JsonRecords(to_json_texts(FIRST), lines.take([0, 1, 2]))
