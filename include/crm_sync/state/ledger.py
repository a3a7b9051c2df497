"""Run ledger (counts per run, entity and direction), the conflict log and the consent log."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
from sqlalchemy import select

from crm_sync.state.db import as_utc, upsert, upsert_frame, utcnow
from crm_sync.state.models import ConflictLog, ConsentLog, RunLedger

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CONFLICT_KEY = ("run_id", "entity", "record_key", "field")
CONSENT_KEY = CONFLICT_KEY


@dataclass
class RunCounts:
    """One ledger row; write it at the start (status ``running``) and again at the end."""

    run_id: str
    entity: str
    direction: str
    status: str = "running"
    extracted: int = 0
    transformed: int = 0
    loaded: int = 0
    skipped: int = 0
    failed: int = 0
    conflicts: int = 0
    api_calls: int = 0
    started_at: datetime = field(default_factory=utcnow)
    ended_at: datetime | None = None
    latency_p50_s: float | None = None  # change-to-arrival latency of the run's changes
    latency_p95_s: float | None = None
    latency_max_s: float | None = None


def write_ledger(session: Session, counts: RunCounts) -> None:
    """Insert or overwrite the ledger row of (run_id, entity, direction); idempotent."""
    row = asdict(counts)
    keys = ("run_id", "entity", "direction")
    upsert(session, RunLedger, [row], keys=keys, update=[c for c in row if c not in keys])


def ledger_rows(session: Session, *, entity: str | None = None, limit: int = 100) -> pd.DataFrame:
    """Latest ledger rows, newest first."""
    stmt = select(RunLedger).order_by(RunLedger.started_at.desc(), RunLedger.id.desc()).limit(limit)
    if entity:
        stmt = stmt.where(RunLedger.entity == entity)
    cols = [c.name for c in RunLedger.__table__.columns]
    rows = [{c: getattr(r, c) for c in cols} for r in session.execute(stmt).scalars()]
    frame = pd.DataFrame(rows, columns=cols)
    for col in ("started_at", "ended_at"):
        frame[col] = frame[col].map(as_utc)
    return frame


def log_conflicts(
    session: Session, conflicts: pd.DataFrame, *, run_id: str, at: datetime | None = None
) -> int:
    """Store conflict rows (the transforms' conflict frame); a repeat in the same run is ignored.

    Returns:
        Number of rows sent.
    """
    if conflicts.empty:
        return 0
    cols = ["entity", "record_key", "field", "marketo_value", "dynamics_value", "winner"]
    plain = conflicts[cols].astype(object).where(conflicts[cols].notna(), None)
    when = at or utcnow()
    rows = [{**r, "run_id": run_id, "at": when} for r in plain.to_dict("records")]
    for r in rows:
        r["record_key"] = str(r["record_key"])
        for v in ("marketo_value", "dynamics_value"):
            r[v] = None if r[v] is None else str(r[v])
    return upsert(session, ConflictLog, rows, keys=CONFLICT_KEY)


CONSENT_LINES = 50  # consent changes of one batch logged one line each


def log_consents(session: Session, consents: pd.DataFrame, *, run_id: str, at: datetime | None = None) -> int:
    """Store consent rows (the merge's consent frame); a repeat in the same run is ignored.

    Returns:
        Number of rows sent.
    """
    if consents.empty:
        return 0
    cols = ["entity", "record_key", "field", "marketo_value", "dynamics_value", "changed_in", "outcome"]
    plain = consents[cols].astype(object).where(consents[cols].notna(), None)
    plain = plain.assign(record_key=plain["record_key"].astype(str), run_id=run_id, at=at or utcnow())
    # A line per record for a run's handful of consent changes; a full copy logs its counts
    # (a line per record of a million-person copy cost more than the rest of its plan).
    if len(plain) <= CONSENT_LINES:
        for r in plain.to_dict("records"):
            log.info(
                "consent %s %s.%s: %s (changed in %s; Marketo %s, Dynamics %s)",
                *(r[k] for k in ("entity", "record_key", "field", "outcome", "changed_in")),
                r["marketo_value"],
                r["dynamics_value"],
            )
    else:
        counts = plain.groupby(["entity", "field", "outcome"]).size()
        log.info(
            "consent: %d changes stored in the consent log (%s)",
            len(plain),
            ", ".join(f"{e}.{f} {o}: {n}" for (e, f, o), n in counts.items()),
        )
    return upsert_frame(session, ConsentLog, plain, keys=CONSENT_KEY)


def conflict_rows(session: Session, *, entity: str | None = None, run_id: str | None = None) -> pd.DataFrame:
    """Conflict log rows, oldest first."""
    stmt = select(ConflictLog).order_by(ConflictLog.id)
    if entity:
        stmt = stmt.where(ConflictLog.entity == entity)
    if run_id:
        stmt = stmt.where(ConflictLog.run_id == run_id)
    cols = [c.name for c in ConflictLog.__table__.columns]
    return pd.DataFrame(
        [{c: getattr(r, c) for c in cols} for r in session.execute(stmt).scalars()], columns=cols
    )
