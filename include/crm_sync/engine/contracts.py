"""What the stages hand each other, typed: a load batch, a load outcome, a run's commit summary.

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
    """

    name: str
    ops: BatchRef
    links: BatchRef
    mode: str | None = None
    lookup: str | None = None
    records: int | None = None

    def to_xcom(self) -> dict[str, Any]:
        """The JSON form (references and counts)."""
        out: dict[str, Any] = {"name": self.name, "ops": self.ops.to_dict(), "links": self.links.to_dict()}
        for key in ("mode", "lookup", "records"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
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
        )


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
