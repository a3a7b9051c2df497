"""Staged payloads handed to the hooks as records, parsed from their JSON text when read.

A bulk unit holds tens of thousands of payloads; parsed all at once as dicts they were the
largest part of a load task's memory (about 120 MB for 28,000 leads, measured on a 100,000-lead
full copy). The hooks only iterate, index or slice their input, and the bulk import streams it
into files, so each record is parsed when it is read and dropped after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import msgspec
import numpy as np
import pyarrow as pa


def _plain(value: Any) -> Any:
    """Encoder fallback: numpy scalars become Python values, anything else is an error."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot stage a {type(value).__name__} value")


# msgspec (Airflow's own JSON library) encodes a plan's payloads about 15 times faster than
# json.dumps; keys sorted, so staged files are reproducible.
_ENCODER = msgspec.json.Encoder(enc_hook=_plain, order="sorted")
_DECODER = msgspec.json.Decoder()


def to_json_texts(records: Sequence[Any]) -> list[str]:
    """Compact, key-sorted JSON text of each record, encoded in one call (JSON lines: a text
    holds no raw line break, JSON escapes them)."""
    if not records:
        return []
    return _ENCODER.encode_lines(records).decode().split("\n")[:-1]


def parse(text: str) -> Any:
    """The value of one JSON text."""
    return _DECODER.decode(text)


@dataclass(frozen=True)
class ImportLines:
    """Records' lines in a bulk import file as a full copy's plan staged them (their cells
    quoted and joined by commas, no line end), and how many of the file's columns each holds.

    Attributes:
        texts: One line a record.
        widths: Columns in each line (the file's first ``width`` columns; the rest are empty).
    """

    texts: pa.Array
    widths: np.ndarray

    def __len__(self) -> int:
        return len(self.widths)

    def take(self, positions: Sequence[int] | np.ndarray) -> ImportLines:
        """The lines at ``positions``, in that order."""
        index = np.asarray(positions, dtype=np.int64)
        return ImportLines(self.texts.take(pa.array(index)), self.widths[index])


class JsonRecords(Sequence[dict[str, Any]]):
    """A read-only sequence of records over their JSON texts (each parsed when read), with
    their import lines when the plan staged them (:class:`ImportLines`)."""

    def __init__(self, texts: Sequence[str], lines: ImportLines | None = None) -> None:
        if lines is not None and len(lines) != len(texts):
            raise ValueError(f"{len(lines)} import lines for {len(texts)} records")
        self._texts = texts
        self.lines = lines

    def __len__(self) -> int:
        return len(self._texts)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> JsonRecords: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | JsonRecords:
        if isinstance(index, slice):
            lines = None if self.lines is None else self.lines.take(range(len(self))[index])
            return JsonRecords(self._texts[index], lines)
        record: dict[str, Any] = _DECODER.decode(self._texts[index])
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for text in self._texts:
            yield _DECODER.decode(text)

    def take(self, positions: Sequence[int]) -> JsonRecords:
        """The records at ``positions``, in that order (still unparsed); these records when
        that is all of them, in order."""
        if len(positions) == len(self) and all(p == i for i, p in enumerate(positions)):
            return self
        lines = None if self.lines is None else self.lines.take(positions)
        return JsonRecords([self._texts[i] for i in positions], lines)


def take(records: Sequence[dict[str, Any]], positions: Sequence[int]) -> Sequence[dict[str, Any]]:
    """``records`` at ``positions``: lazily for :class:`JsonRecords`, else as a list."""
    if isinstance(records, JsonRecords):
        return records.take(positions)
    return [records[i] for i in positions]
