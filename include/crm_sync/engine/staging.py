"""Durable staging of batches as Parquet under an object-storage root (``file://`` by default).

Every run of an entity gets its own folder, named from the entity and the Airflow run id, so the
layout is deterministic: the same run and batch number always map to the same file. A retried
task therefore overwrites (never duplicates) what it staged before, and a retried load re-reads
the batch its transform staged instead of extracting again. XCom carries only the small
references this module returns (paths and row counts).

Layout under the root::

    runs/<entity>/<run key>/<stage>/<name>.parquet     one batch
    runs/<entity>/<run key>/<stage>/<name>.json        a small manifest (counts, tokens)
    feeds/<feed>/<token key>/...                       a change feed chunk shared by entities

Files are written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    import pyarrow as pa
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

# Arrow's default allocator in these wheels (mimalloc) kept more memory resident after each
# staged read than the system allocator: reading one 28,000-lead unit's ops and links took a load
# task from 147 to 313 MB, against 244 MB with the system pool (jemalloc: 271 MB). The sync's Arrow
# work is reading and writing Parquet files, which does not need a faster allocator. The package
# asks for it before pyarrow is imported (crm_sync/__init__.py); this covers a process that
# imported pyarrow first, unless the environment chose another allocator.
if os.environ.get("ARROW_DEFAULT_MEMORY_POOL") == "system":
    pyarrow.set_memory_pool(pyarrow.system_memory_pool())

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_key(run_id: str) -> str:
    """Turn an Airflow run id (``manual__2026-11-26T13:44:19+00:00``) into a safe folder name.

    A short digest of the original id is appended so two ids that differ only in unsafe
    characters never share a folder.
    """
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', run_id).strip('_')[:120]}-{digest}"


def token_key(token: str) -> str:
    """Folder name of a feed chunk that starts at ``token`` (tokens may hold any characters)."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def temporary_path(target: ObjectStoragePath) -> ObjectStoragePath:
    """The writer's own temporary name beside ``target`` (its folder made), renamed into place
    once the file is whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"


def replace_file(target: ObjectStoragePath, data: bytes) -> str:
    """Write ``data`` to ``target`` through a temporary file and a rename (idempotent); its URL.

    The temporary name is the writer's own, and the rename replaces the target in one step
    (never unlink, then rename): two processes writing the same target at once (two entities
    staging one feed chunk) each leave a whole file, the last rename winning, and neither can
    remove the other's.
    """
    tmp = temporary_path(target)
    with tmp.open("wb") as fh:
        fh.write(data)
    tmp.rename(target)
    return str(target)


@dataclass(frozen=True)
class BatchRef:
    """A staged batch: where it is and how many rows it holds (what XCom carries).

    Attributes:
        path: Full URL of the Parquet file (``file:///…`` or ``s3://…``).
        rows: Number of rows in the batch.
    """

    path: str
    rows: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for XCom and manifests."""
        return {"path": self.path, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRef:
        """Rebuild a reference from :meth:`to_dict` output.

        Raises:
            ValueError: ``data`` lacks ``path`` or ``rows``.
        """
        try:
            return cls(path=str(data["path"]), rows=int(data["rows"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"not a batch reference: {data!r}") from None


class StagingArea:
    """Reads and writes staged batches and manifests below one object-storage root.

    Args:
        root: The staging root, e.g. ``ObjectStoragePath("file:///srv/mds/staging")``.
    """

    def __init__(self, root: ObjectStoragePath) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"StagingArea({self.root})"

    # --- locations ---------------------------------------------------------------------------
    def run_dir(self, entity: str, run_id: str) -> ObjectStoragePath:
        """Folder of one run of one entity."""
        return self.root / "runs" / entity / run_key(run_id)

    def feed_dir(self, feed: str, start_token: str) -> ObjectStoragePath:
        """Folder of the change-feed chunk of ``feed`` that starts at ``start_token``."""
        return self.root / "feeds" / feed / token_key(start_token)

    def path(self, url: str) -> ObjectStoragePath:
        """Turn a stored reference URL back into a path object of the same storage."""
        from airflow.sdk import ObjectStoragePath

        conn_id = getattr(self.root, "conn_id", None)
        return ObjectStoragePath(url, conn_id=conn_id) if conn_id else ObjectStoragePath(url)

    # --- writes ------------------------------------------------------------------------------
    def _replace(self, target: ObjectStoragePath, data: bytes) -> None:
        replace_file(target, data)

    def write_frame(self, folder: ObjectStoragePath, name: str, frame: pd.DataFrame) -> BatchRef:
        """Stage ``frame`` as ``<folder>/<name>.parquet`` and return its reference.

        The index is dropped; a rerun with the same folder and name replaces the file.
        """
        import io

        buffer = io.BytesIO()
        frame.reset_index(drop=True).to_parquet(buffer, index=False)
        target = folder / f"{name}.parquet"
        self._replace(target, buffer.getvalue())
        log.debug("staged %d rows at %s", len(frame), target)
        return BatchRef(path=str(target), rows=len(frame))

    def frame_writer(self, folder: ObjectStoragePath, name: str, schema: pa.Schema) -> FrameWriter:
        """A writer that stages ``<folder>/<name>.parquet`` a part at a time (one row group per
        part), so a file larger than memory allows is never held whole; see :class:`FrameWriter`."""
        return FrameWriter(folder / f"{name}.parquet", schema)

    def exists(self, ref: BatchRef | dict[str, Any]) -> bool:
        """Whether a staged batch's file is still there."""
        batch = ref if isinstance(ref, BatchRef) else BatchRef.from_dict(ref)
        return bool(self.path(batch.path).exists())

    def _source(self, batch: BatchRef) -> ObjectStoragePath:
        source = self.path(batch.path)
        if not source.exists():
            raise FileNotFoundError(f"staged batch {batch.path} does not exist")
        return source

    @staticmethod
    def _check_rows(batch: BatchRef, rows: int) -> None:
        if rows != batch.rows:
            raise ValueError(f"staged batch {batch.path} holds {rows} rows, reference says {batch.rows}")

    def read_frame(
        self,
        ref: BatchRef | dict[str, Any],
        columns: Sequence[str] | None = None,
        *,
        arrow_strings: bool = False,
    ) -> pd.DataFrame:
        """Read a staged batch (only ``columns``, when given); with ``arrow_strings``, its columns
        keep their Arrow types (text stays in Arrow memory instead of one Python string a cell).

        Raises:
            FileNotFoundError: The batch is gone (staging cleaned up before the run finished).
        """
        batch = ref if isinstance(ref, BatchRef) else BatchRef.from_dict(ref)
        with self._source(batch).open("rb") as fh:
            options: dict[str, Any] = {"dtype_backend": "pyarrow"} if arrow_strings else {}
            frame = pd.read_parquet(fh, columns=list(columns) if columns is not None else None, **options)
        self._check_rows(batch, len(frame))
        return frame

    def iter_frames(
        self, ref: BatchRef | dict[str, Any], rows: int, columns: Sequence[str] | None = None
    ) -> Iterator[pd.DataFrame]:
        """Read a staged batch ``rows`` rows at a time (only ``columns``, when given), so a large
        file is never held whole as Python objects.

        Raises:
            FileNotFoundError: The batch is gone.
            ValueError: The file holds another number of rows than its reference says.
        """
        import pyarrow.parquet as pq

        batch = ref if isinstance(ref, BatchRef) else BatchRef.from_dict(ref)
        with self._source(batch).open("rb") as fh:
            parquet = pq.ParquetFile(fh)
            self._check_rows(batch, parquet.metadata.num_rows)
            for part in parquet.iter_batches(batch_size=rows, columns=list(columns) if columns else None):
                yield part.to_pandas()

    def write_json(self, folder: ObjectStoragePath, name: str, data: dict[str, Any]) -> str:
        """Stage a small JSON document (a manifest) and return its URL."""
        target = folder / f"{name}.json"
        self._replace(target, json.dumps(data, sort_keys=True, default=str).encode())
        return str(target)

    def read_json(self, folder: ObjectStoragePath, name: str) -> dict[str, Any] | None:
        """Read a staged JSON document, or None when it was never written."""
        source = folder / f"{name}.json"
        if not source.exists():
            return None
        loaded = json.loads(source.read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{source}: expected a JSON object")
        return loaded


def rows_frame(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows as a frame with every expected column (absent ones empty), OData annotations dropped."""
    frame = pd.DataFrame.from_records(list(records)) if records else pd.DataFrame()
    frame = frame[[c for c in frame.columns if not str(c).startswith("@odata.")]]
    for col in columns:
        if col not in frame:
            frame[col] = None
    return frame


class FrameWriter:
    """Stages one Parquet file part by part, under a temporary name renamed by :meth:`close`.

    Every part is converted to the writer's schema (a column missing from a part is written
    empty), so parts whose columns pandas typed differently (all empty in one, text in the
    next) still make one file. An aborted writer leaves the target as it was.
    """

    def __init__(self, target: ObjectStoragePath, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        self.target = target
        self.schema = schema
        self.rows = 0
        self._tmp = temporary_path(target)
        self._fh = self._tmp.open("wb")
        self._writer = pq.ParquetWriter(self._fh, schema)

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame`` (its index dropped) as one row group."""
        self._writer.write_table(arrow_table(frame, self.schema))
        self.rows += len(frame)

    def abort(self) -> None:
        """Drop what was written (the target, if an earlier attempt staged it, stays as it was)."""
        import contextlib

        with contextlib.suppress(Exception):
            self._writer.close()
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def close(self) -> BatchRef:
        """Finish the file and put it in place; its reference."""
        self._writer.close()
        self._fh.close()
        self._tmp.rename(self.target)
        log.debug("staged %d rows at %s", self.rows, self.target)
        return BatchRef(path=str(self.target), rows=self.rows)


def arrow_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``frame`` as an Arrow table of ``schema``: text columns as strings (missing values null),
    other columns converted by Arrow; a column the frame lacks is all null.

    Raises:
        ValueError: A value cannot be converted (names the column).
    """
    import pyarrow as pa

    columns = []
    for fld in schema:
        values = frame[fld.name] if fld.name in frame else pd.Series([None] * len(frame), dtype=object)
        try:
            try:
                array = pa.array(values, type=fld.type, from_pandas=True)  # NaN, None, NA: null
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                if not pa.types.is_string(fld.type):
                    raise
                # Text columns holding other values too (a Marketo id as a number): as text.
                text = values.astype(object)
                text = text.where(text.isna(), text.map(str))
                array = pa.array(text, type=fld.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"staged column {fld.name!r} does not fit {fld.type}: {exc}") from exc
        columns.append(array)
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass
class Batcher:
    """Collects rows and stages a batch each time ``size`` rows are buffered."""

    staging: StagingArea
    folder: ObjectStoragePath
    prefix: str
    size: int
    columns: Sequence[str]

    def __post_init__(self) -> None:
        self.buffer: list[Mapping[str, Any]] = []
        self.refs: list[BatchRef] = []
        self.total = 0

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.buffer.extend(rows)
        while len(self.buffer) >= self.size:
            self._flush(self.buffer[: self.size])
            self.buffer = self.buffer[self.size :]

    def close(self) -> list[BatchRef]:
        if self.buffer:
            self._flush(self.buffer)
            self.buffer = []
        return self.refs

    def _flush(self, rows: Sequence[Mapping[str, Any]]) -> None:
        name = f"{self.prefix}-{len(self.refs):05d}"
        self.refs.append(self.staging.write_frame(self.folder, name, rows_frame(rows, self.columns)))
        self.total += len(rows)
