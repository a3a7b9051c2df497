"""Each person's line in a bulk import file, built and measured column by column.

The plan fills a bulk unit up to Marketo's file limit by the bytes each person's line will
take in the import file, and stages the line itself beside the person's payload: the load
writes the file from those lines (:mod:`crm_sync.engine.full_copy.import_file`), without
parsing a payload or formatting a cell. The payloads are read into Arrow columns in one call
and each column is formatted, quoted and measured as a whole.

The lines follow the hook's dialect (:func:`crm_sync_hooks.marketo_bulk_import.csv_cell`
and ``csv.writer`` with minimal quoting and ``\\n`` line ends): None and missing values are
empty, booleans ``true``/``false``, numbers as Python writes them, a cell holding a comma, a
quote or a line break is quoted with its quotes doubled. One difference is kept, on the safe
side: a cell holding only a carriage return is quoted (Python's writer leaves it bare, and a
reader would take it for a line end).

    cells = import_cells(texts)             # texts: JSON objects, one per person
    sizes = cells.line_bytes(len(header))   # bytes of each line, its line end included
    lines = cells.lines(header)             # each line, without its line end
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

_NEEDS_QUOTES = r'[,"\r\n]'
_PLAIN = (pa.types.is_string, pa.types.is_large_string)
_AS_CAST = (pa.types.is_boolean, pa.types.is_integer)
_TEMPORAL = (pa.types.is_timestamp, pa.types.is_date, pa.types.is_time)


@dataclass(frozen=True)
class ImportCells:
    """The import file's cells of some persons, one text column per field.

    Attributes:
        columns: The fields found, in the order they first appear.
        cells: Each field's cells as they stand in the file, quoted where needed (null: empty).
        count: Persons.
    """

    columns: list[str]
    cells: dict[str, pa.Array]
    count: int

    def line_bytes(self, width: int | np.ndarray) -> np.ndarray:
        """Bytes of each person's line in a file of ``width`` columns, the line end included.

        ``width`` counts the file's columns, these persons' fields among them (the others
        are empty cells: a comma each); an array gives each person's line its own width.
        """
        widths = np.broadcast_to(np.maximum(np.asarray(width, dtype=np.int64), 1), (self.count,))
        sizes = widths.copy()  # the commas and the line end
        for column in self.columns:
            sizes += pc.binary_length(self.cells[column]).fill_null(0).to_numpy(zero_copy_only=False)
        sizes[(widths == 1) & (sizes == 1)] += 2  # a line of one empty cell is written as ""
        return sizes

    def lines(self, header: Sequence[str]) -> pa.Array:
        """Each person's line in a file whose columns are ``header`` (these persons' fields
        among them; the others are empty cells), without its line end."""
        missing = [c for c in self.columns if c not in header]
        if missing:
            raise ValueError(f"the import header lacks the fields {missing}")
        empty = pa.scalar("", pa.string())
        cells = [self.cells.get(name, empty) for name in header]
        if not cells or self.count == 0:
            return pa.array([""] * self.count, pa.string())
        joined: pa.Array = pc.binary_join_element_wise(
            *cells, ",", null_handling="replace", null_replacement=""
        )
        if isinstance(joined, pa.Scalar):  # every cell a scalar: no field of these persons
            joined = pa.array([joined.as_py()] * self.count, pa.string())
        if len(header) == 1:
            joined = pc.if_else(pc.equal(joined, ""), '""', joined)  # a line of one empty cell
        return joined


def import_cells(texts: Sequence[str]) -> ImportCells:
    """The import cells of persons given as JSON object texts.

    Raises:
        ValueError: A field holds a nested value (a list or an object), naming the person's
            position and the field.
    """
    array = pa.array(texts, pa.string())
    columns = _read_columns(array)
    if columns is None:  # types Arrow cannot read as a column: one record at a time
        columns = _columns_one_by_one(texts)
    cells = {name: _quoted(_as_text(name, values, array)) for name, values in columns.items()}
    return ImportCells(list(cells), cells, len(array))


def _integers_written(name: str, values: pa.Array, texts: pa.Array) -> pa.Array | None:
    """The JSON text of each value of a column the reader typed as fractions that its record
    wrote as an integer (null elsewhere); None when no value is a whole number.

    The reader reads 12 and 12.0 alike; the hook writes them as they were sent. A float is
    encoded with a point or an exponent (12.0, 1e16), an integer without, and the staged
    texts are compact: the field's value follows ``"name":`` right after ``{`` or ``,`` (a
    quote inside a text value is escaped, so a value cannot be taken for a field).
    """
    if values.null_count == len(values) or not pc.any(pc.equal(pc.floor(values), values)).as_py():
        return None
    pattern = "[{,]" + re.escape(json.dumps(name, ensure_ascii=False)) + ":(?P<v>-?[0-9]+)[,}]"
    return pc.struct_field(pc.extract_regex(texts, pattern), [0])


def _json_lines(array: pa.Array) -> pa.Buffer:
    """The texts as one buffer of JSON lines, joined in Arrow memory."""
    ended = pc.binary_join_element_wise(array, pa.scalar(""), "\n")
    offsets = np.frombuffer(ended.buffers()[1], dtype=np.int32)[ended.offset : ended.offset + len(ended) + 1]
    data: pa.Buffer = ended.buffers()[2]
    return data.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def _read_columns(array: pa.Array) -> dict[str, pa.Array] | None:
    """The texts read by Arrow's JSON reader, one column per field; None when it cannot."""
    if len(array) == 0:
        return {}
    if array.null_count:
        return None
    data = _json_lines(array)
    # One block: the column types are decided on all the records together.
    options = pa_json.ReadOptions(block_size=data.size + 1)
    try:
        table = pa_json.read_json(pa.BufferReader(data), read_options=options)
        temporal = [f.name for f in table.schema if any(t(f.type) for t in _TEMPORAL)]
        if temporal:
            # The reader takes ISO texts for times: they stay texts, as they were sent.
            order = table.column_names
            schema = pa.schema([pa.field(n, pa.string()) for n in temporal])
            parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
            table = pa_json.read_json(pa.BufferReader(data), read_options=options, parse_options=parse)
            table = table.select(order)  # the fields in the order they first appear
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        log.debug("import cells read one record at a time: %s", exc)
        return None
    if table.num_rows != len(array):
        return None
    known = (*_PLAIN, *_AS_CAST, pa.types.is_floating, pa.types.is_null)
    if not all(any(t(f.type) for t in known) for f in table.schema):
        return None  # nested values: the record-by-record path names the record and field
    return {name: table.column(name).combine_chunks() for name in table.column_names}


def _columns_one_by_one(texts: Sequence[str]) -> dict[str, pa.Array]:
    """The texts parsed one at a time, their cells formatted as the hook formats them."""
    from crm_sync.engine.json_records import parse
    from crm_sync_hooks.marketo_bulk import csv_cell

    records = [parse(t) for t in texts]
    names = dict.fromkeys(k for r in records for k in r)
    out: dict[str, pa.Array] = {}
    for name in names:
        cells: list[str | None] = []
        for index, record in enumerate(records):
            value = record.get(name)
            cells.append(
                None if value is None else value if value.__class__ is str else csv_cell(value, index, name)
            )
        out[name] = pa.array(cells, pa.string())
    return out


def _as_text(name: str, values: pa.Array, texts: pa.Array) -> pa.Array:
    """A column's values as the hook's cells would hold them (null for None); ``texts``: the
    records' JSON texts."""
    kind = values.type
    if any(t(kind) for t in _PLAIN):
        return values.cast(pa.string())
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    if any(t(kind) for t in _AS_CAST):
        return values.cast(pa.string())  # true/false; integers as Python writes them
    if pa.types.is_floating(kind):
        # Python's float text (1e+16, 100.0), not Arrow's, as the hook writes floats; a value
        # sent as an integer keeps its text.
        floats = pa.array([None if v is None else str(v) for v in values.to_pylist()], pa.string())
        integers = _integers_written(name, values, texts)
        return floats if integers is None else pc.if_else(pc.is_valid(integers), integers, floats)
    raise ValueError(f"import field {name!r} has values of type {kind}")


def _quoted(text: pa.Array) -> pa.Array:
    """Cells as they stand in the file: quoted, their quotes doubled, when they need it."""
    needs = pc.match_substring_regex(text, _NEEDS_QUOTES)
    if not pc.any(needs).as_py():
        return text
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
    result: Any = pc.if_else(needs, quoted, text)
    return result
