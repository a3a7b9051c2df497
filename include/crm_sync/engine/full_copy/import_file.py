"""A bulk unit's import files, written from the lines its plan staged.

The plan staged each person's line (:mod:`crm_sync.engine.full_copy.import_sizes`) with the
number of columns it holds; the unit names the file's columns. A file is the header and the
lines, each padded with empty cells to the header's width, cut where the next line would pass
the file limit: no payload is parsed and no cell formatted, and the file's bytes are joined in
Arrow memory.

    for data, start, count in import_files(lines, header, max_bytes):
        ...  # data: one file's bytes; its lines are records start .. start + count - 1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crm_sync_hooks.marketo_bulk import ImportLineWriter

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from crm_sync.engine.json_records import ImportLines


def header_line(columns: Sequence[str]) -> bytes:
    """The file's first line, in the hook's dialect (minimal quoting, ``\\n`` line end)."""
    return ImportLineWriter().line(list(columns))


def import_files(
    lines: ImportLines, columns: Sequence[str], max_file_bytes: int
) -> Iterator[tuple[bytes, int, int]]:
    """The import files of ``lines`` under ``columns``: each file's bytes, its first record
    and its number of records; every file stays under ``max_file_bytes`` (a line that alone
    would not fit gets a file of its own, which the hook refuses if over Marketo's limit).

    Raises:
        ValueError: A line holds more columns than the header.
    """
    if len(lines) == 0:
        return
    width = len(columns)
    if int(lines.widths.max()) > width:
        raise ValueError(f"an import line holds {int(lines.widths.max())} columns; the header has {width}")
    head = header_line(columns)
    pads = pc.binary_repeat(pa.scalar(","), pa.array(width - lines.widths))
    ended = pc.binary_join_element_wise(lines.texts, pads, "\n", "")
    del pads
    offsets = np.frombuffer(ended.buffers()[1], dtype=np.int32)[ended.offset : ended.offset + len(ended) + 1]
    body = ended.buffers()[2]
    start = 0
    while start < len(ended):
        # The last line that fits: the file's bytes are the header and lines start .. end - 1.
        room = offsets[start] + max_file_bytes - len(head)
        end = max(int(np.searchsorted(offsets, room, side="right")) - 1, start + 1)
        end = min(end, len(ended))
        data = b"".join(
            (head, memoryview(body.slice(int(offsets[start]), int(offsets[end] - offsets[start]))))
        )
        yield data, start, end - start
        del data
        start = end
