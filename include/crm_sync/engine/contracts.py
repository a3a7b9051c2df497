"""What the stages hand each other, typed: the extract manifest, a load batch, a load outcome, a
run's commit summary.

Each is a small frozen dataclass with one JSON form, used both for XCom (references and counts
only, never the data) and for the files staged beside a run's batches; ``from_xcom`` reads that
form back and names what is missing or of the wrong type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from crm_sync.engine.staging import BatchRef

if TYPE_CHECKING:
    from collections.abc import Mapping


class ContractError(ValueError):
    """A hand-over between stages is not of the expected shape; the message names the field."""


def _field(data: Mapping[str, Any], key: str, what: str) -> Any:
    try:
        return data[key]
    except (KeyError, TypeError):
        raise ContractError(
            f"{what} has no {key!r}: {dict(data) if hasattr(data, 'keys') else data!r}"
        ) from None


def _int(data: Mapping[str, Any], key: str, what: str) -> int:
    value = _field(data, key, what)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ContractError(f"{what} field {key!r} is not a whole number: {value!r}") from None


@dataclass(frozen=True)
class LoadBatch:
    """One staged plan the load writes: its name and the staged operations and links files.

    Attributes:
        name: ``batch-00000`` (incremental) or ``unit-00000`` (full copy); names the plan folder.
        ops: The operations frame (``op``, Dataverse id, JSON payload).
        links: The id-map rows of the records the plan writes.
        mode: ``bulk`` or ``sync`` for a full-copy unit; None for an incremental batch.
        lookup: The bulk import's lookup field (full copy), when there is one.
        records: Operations in the unit (full copy), when counted.
        columns: The import file's columns of a bulk unit (the fields of its staged lines).
    """

    name: str
    ops: BatchRef
    links: BatchRef
    mode: str | None = None
    lookup: str | None = None
    records: int | None = None
    columns: tuple[str, ...] | None = None

    def to_xcom(self) -> dict[str, Any]:
        """The JSON form (references and counts)."""
        out: dict[str, Any] = {"name": self.name, "ops": self.ops.to_dict(), "links": self.links.to_dict()}
        for key in ("mode", "lookup", "records"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any] | LoadBatch) -> LoadBatch:
        """Read :meth:`to_xcom`'s form (an instance passes through)."""
        if isinstance(data, LoadBatch):
            return data
        what = "load batch"
        try:
            ops = BatchRef.from_dict(dict(_field(data, "ops", what)))
            links = BatchRef.from_dict(dict(_field(data, "links", what)))
        except ValueError as exc:
            raise ContractError(f"{what} {data.get('name')!r}: {exc}") from None
        records = data.get("records")
        return cls(
            name=str(_field(data, "name", what)),
            ops=ops,
            links=links,
            mode=None if data.get("mode") is None else str(data["mode"]),
            lookup=None if data.get("lookup") is None else str(data["lookup"]),
            records=None if records is None else _int(data, "records", what),
            columns=_columns(data, what),
        )


def _columns(data: Mapping[str, Any], what: str) -> tuple[str, ...] | None:
    columns = data.get("columns")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise ContractError(f"{what} {data.get('name')!r}: columns must be a list of field names")
    return None if columns is None else tuple(columns)


@dataclass(frozen=True)
class LoadOutcome:
    """What the load of one batch did (staged last, as the proof the commit looks for).

    Attributes:
        name: The batch's name.
        loaded: Records all of whose writes succeeded.
        failed: Records with a failed write (each one is in the record-error table).
        calls: Operations sent per kind (``marketo_upsert``...).
    """

    name: str
    loaded: int
    failed: int
    calls: dict[str, int] = field(default_factory=dict)

    def to_xcom(self) -> dict[str, Any]:
        """The JSON form."""
        return {"name": self.name, "loaded": self.loaded, "failed": self.failed, "calls": dict(self.calls)}

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> LoadOutcome:
        """Read :meth:`to_xcom`'s form (extra keys, such as a full-copy unit's timings, ignored)."""
        what = f"load outcome {data.get('name')!r}"
        calls = data.get("calls") or {}
        return cls(
            name=str(_field(data, "name", what)),
            loaded=_int(data, "loaded", what),
            failed=_int(data, "failed", what),
            calls={str(k): int(v) for k, v in dict(calls).items()},
        )


@dataclass(frozen=True)
class CommitSummary:
    """A committed run's counts (the ledger row's figures, and the task's XCom).

    Attributes:
        extracted: Rows and deletes read from both systems.
        transformed: Valid records planned.
        loaded: Records written.
        skipped: Records filtered out or unchanged.
        failed: Invalid records and failed writes.
        conflicts: Fields changed on both sides since the last sync.
        seconds: From the extract's start to the commit.
        records_per_second: ``loaded / seconds``.
        api_calls: Calls the run's tasks sent, per system.
    """

    extracted: int
    transformed: int
    loaded: int
    skipped: int
    failed: int
    conflicts: int
    seconds: float
    records_per_second: float
    api_calls: dict[str, int] = field(default_factory=dict)

    def to_xcom(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)


def _refs(data: Mapping[str, Any], key: str, what: str) -> tuple[BatchRef, ...]:
    try:
        return tuple(BatchRef.from_dict(dict(r)) for r in (data.get(key) or []))
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{what} field {key!r}: {exc}") from None


def _ref(data: Mapping[str, Any], key: str, what: str) -> BatchRef | None:
    """The optional single reference under ``key`` (None when absent)."""
    return _refs({key: [data[key]]}, key, what)[0] if data.get(key) else None


def _counts(data: Mapping[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in dict(data).items()}


@dataclass(frozen=True)
class DynamicsPart:
    """The Dataverse side of an extract.

    Attributes:
        batches: Staged rows (changes, or the full read of a first run or a copy; retried and
            unmerged rows are batches too).
        deleted: Staged ids of deleted rows (``id`` column).
        rows: Rows in ``batches`` as read (before retries).
        deleted_rows: Ids in ``deleted``.
        token: The delta link to store once committed (None: a copy that takes none).
        initial: The read was a full read (no watermark yet, or a copy).
        retried: Rows re-read because their earlier failure was due.
        rebaseline: After an expired delta link, the re-read's counts (``read``,
            ``unchanged``, ``staged``, ``deleted``); None otherwise.
        merges: Records merged into another in Dynamics, staged with their survivors (read
            again, together), so one plan sees both; the transform leaves them out of the
            other batches.
    """

    batches: tuple[BatchRef, ...] = ()
    deleted: tuple[BatchRef, ...] = ()
    rows: int = 0
    deleted_rows: int = 0
    token: str | None = None
    initial: bool = False
    retried: int = 0
    rebaseline: Mapping[str, int] | None = None
    merges: BatchRef | None = None

    def to_xcom(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "batches": [b.to_dict() for b in self.batches],
            "deleted": [b.to_dict() for b in self.deleted],
            "rows": self.rows,
            "deleted_rows": self.deleted_rows,
            "token": self.token,
            "initial": self.initial,
            "retried": self.retried,
            **({"rebaseline": dict(self.rebaseline)} if self.rebaseline is not None else {}),
            **({"merges": self.merges.to_dict()} if self.merges is not None else {}),
        }

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> DynamicsPart:
        """Read :meth:`to_xcom`'s form."""
        what = "extract manifest (dynamics)"
        return cls(
            batches=_refs(data, "batches", what),
            deleted=_refs(data, "deleted", what),
            rows=_int(data, "rows", what),
            deleted_rows=int(data.get("deleted_rows") or 0),
            token=None if data.get("token") is None else str(data["token"]),
            initial=bool(data.get("initial")),
            retried=int(data.get("retried") or 0),
            rebaseline=_counts(data["rebaseline"]) if data.get("rebaseline") else None,
            merges=_ref(data, "merges", what),
        )


@dataclass(frozen=True)
class FeedChunk:
    """A staged part of the Marketo person feed (or the re-read of persons with due errors).

    Attributes:
        batches: Staged person snapshots.
        rows: Persons in ``batches``.
        read_at: When the snapshots were taken (ISO); None when the chunk saw no change.
        start: The paging token the chunk starts at (None for a retry chunk).
        token: The paging token it ends at (None for a retry chunk).
        retry: The chunk re-reads persons whose earlier failure is due.
    """

    batches: tuple[BatchRef, ...] = ()
    rows: int = 0
    read_at: str | None = None
    start: str | None = None
    token: str | None = None
    retry: bool = False

    def to_xcom(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"batches": [b.to_dict() for b in self.batches], "rows": self.rows}
        for key in ("read_at", "start", "token"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.retry:
            out["retry"] = True
        return out

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> FeedChunk:
        """Read :meth:`to_xcom`'s form."""
        what = "extract manifest (feed chunk)"
        return cls(
            batches=_refs(data, "batches", what),
            rows=_int(data, "rows", what),
            read_at=None if data.get("read_at") is None else str(data["read_at"]),
            start=None if data.get("start") is None else str(data["start"]),
            token=None if data.get("token") is None else str(data["token"]),
            retry=bool(data.get("retry")),
        )


@dataclass(frozen=True)
class MarketoPart:
    """The Marketo side of an extract: the person feed walked from ``start`` to ``token``.

    Attributes:
        start: The paging token the run started at.
        token: The paging token to store once committed.
        chunks: The staged chunks, oldest first (a retry chunk last).
        rows: Persons over all chunks.
        reused: Chunks another entity's run had staged already.
        fresh: The run read a new tail of the feed (the shared feed head moves on).
        retried: Persons re-read because their earlier failure was due.
        gone: Persons deleted or merged away in Marketo since ``start`` (``marketo_id``,
            ``survivor_id`` for a merge), staged for the transform to report.
    """

    start: str
    token: str
    chunks: tuple[FeedChunk, ...] = ()
    rows: int = 0
    reused: int = 0
    fresh: bool = False
    retried: int = 0
    gone: BatchRef | None = None

    def to_xcom(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "start": self.start,
            "token": self.token,
            "chunks": [c.to_xcom() for c in self.chunks],
            "rows": self.rows,
            "reused": self.reused,
            "fresh": self.fresh,
            "retried": self.retried,
            **({"gone": self.gone.to_dict()} if self.gone is not None else {}),
        }

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> MarketoPart:
        """Read :meth:`to_xcom`'s form."""
        what = "extract manifest (marketo)"
        return cls(
            start=str(_field(data, "start", what)),
            token=str(_field(data, "token", what)),
            chunks=tuple(FeedChunk.from_xcom(c) for c in (data.get("chunks") or [])),
            rows=_int(data, "rows", what),
            reused=int(data.get("reused") or 0),
            fresh=bool(data.get("fresh")),
            retried=int(data.get("retried") or 0),
            gone=_ref(data, "gone", what),
        )


@dataclass(frozen=True)
class ExtractManifest:
    """What an extract staged for the rest of the run (the run folder's ``extract.json``).

    Attributes:
        entity: The entity.
        run_id: The Airflow run id (the copy's attempt id for a full copy).
        started_at: When the extract started (ISO): the run's changes are those before it.
        pending: Direction (``d2m``/``m2d``) → token the commit stores as the watermark.
        dynamics: The Dataverse side, when the entity reads Dataverse.
        marketo: The person feed, when the entity reads Marketo.
        email_matches: Staged Dataverse email matches of flagged Marketo-only persons.
        scope: A full copy's scope (:class:`~crm_sync.engine.full_copy.scope.CopyScope` form).
        change_times: When the run's changes were made at their source (ISO times ``oldest``,
            ``p05``, ``median`` and the count ``n``; :func:`crm_sync.engine.latency.summarize`),
            for the ledger's change-to-arrival latency; None when the source gave no times.
    """

    entity: str
    run_id: str
    started_at: str
    pending: Mapping[str, str] = field(default_factory=dict)
    dynamics: DynamicsPart | None = None
    marketo: MarketoPart | None = None
    email_matches: BatchRef | None = None
    scope: Mapping[str, Any] | None = None
    change_times: Mapping[str, Any] | None = None

    def rows_read(self) -> int:
        """Rows and deletes read from both systems (the ledger's ``extracted``)."""
        d = self.dynamics.rows + self.dynamics.deleted_rows if self.dynamics else 0
        return d + (self.marketo.rows if self.marketo else 0)

    def to_xcom(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {
            "entity": self.entity,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "pending": dict(self.pending),
            "dynamics": self.dynamics.to_xcom() if self.dynamics else None,
            "marketo": self.marketo.to_xcom() if self.marketo else None,
            "email_matches": self.email_matches.to_dict() if self.email_matches else None,
        }
        if self.scope is not None:
            out["scope"] = dict(self.scope)
        if self.change_times is not None:
            out["change_times"] = dict(self.change_times)
        return out

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any] | ExtractManifest) -> ExtractManifest:
        """Read :meth:`to_xcom`'s form (an instance passes through)."""
        if isinstance(data, ExtractManifest):
            return data
        what = "extract manifest"
        pending = dict(data.get("pending") or {})
        empty = sorted(str(k) for k, v in pending.items() if v in (None, ""))
        if empty:
            raise ContractError(f"{what} has no token to store for {', '.join(empty)}")
        return cls(
            entity=str(_field(data, "entity", what)),
            run_id=str(_field(data, "run_id", what)),
            started_at=str(_field(data, "started_at", what)),
            pending={str(k): str(v) for k, v in pending.items()},
            dynamics=DynamicsPart.from_xcom(data["dynamics"]) if data.get("dynamics") else None,
            marketo=MarketoPart.from_xcom(data["marketo"]) if data.get("marketo") else None,
            email_matches=_ref(data, "email_matches", what),
            scope=dict(data["scope"]) if data.get("scope") else None,
            change_times=dict(data["change_times"]) if data.get("change_times") else None,
        )
