"""Reconciliation reports in the state store: one ``reconcile_run`` row per run, one
``reconcile_difference`` row per finding (the tables come from migration 0004)."""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 - SQLAlchemy resolves Mapped[...] at runtime
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    insert,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from crm_sync.reconcile.compare import DIFF_COLUMNS
from crm_sync.state.db import chunks
from crm_sync.state.models import Base

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from crm_sync.reconcile.core import Report


class ReconcileRun(Base):
    """One reconciliation: when, which entities, how many findings, where the artefacts are."""

    __tablename__ = "reconcile_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(250), unique=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float] = mapped_column(Float)
    entities: Mapped[list[str]] = mapped_column(JSON)
    total: Mapped[int] = mapped_column(Integer)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)  # entity -> kind -> n, plus rows read
    csv_path: Mapped[str | None] = mapped_column(Text)
    html_path: Mapped[str | None] = mapped_column(Text)
    repaired: Mapped[bool] = mapped_column(Boolean, default=False)


class ReconcileDifference(Base):
    """One finding of a reconciliation (see :mod:`crm_sync.reconcile.compare`)."""

    __tablename__ = "reconcile_difference"
    __table_args__ = (Index("ix_reconcile_difference_run_entity", "reconcile_run_id", "entity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reconcile_run_id: Mapped[int] = mapped_column(ForeignKey("reconcile_run.id", ondelete="CASCADE"))
    entity: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    dynamics_id: Mapped[str | None] = mapped_column(String(64))
    marketo_id: Mapped[str | None] = mapped_column(String(64))
    field: Mapped[str | None] = mapped_column(String(128))
    dynamics_value: Mapped[str | None] = mapped_column(Text)
    marketo_value: Mapped[str | None] = mapped_column(Text)


def save_report(
    session: Session,
    report: Report,
    *,
    run_id: str,
    csv_path: str | None = None,
    html_path: str | None = None,
    repaired: bool = False,
) -> int:
    """Store ``report`` under ``run_id`` (a re-run of the same task replaces it); returns its id."""
    old = session.execute(select(ReconcileRun.id).where(ReconcileRun.run_id == run_id)).scalar()
    if old is not None:
        session.execute(delete(ReconcileDifference).where(ReconcileDifference.reconcile_run_id == old))
        session.execute(delete(ReconcileRun).where(ReconcileRun.id == old))
    run = ReconcileRun(
        run_id=run_id,
        started_at=report.started_at,
        seconds=round(report.seconds, 3),
        entities=sorted(report.records),
        total=report.total,
        counts={"findings": report.counts(), "records": report.records},
        csv_path=csv_path,
        html_path=html_path,
        repaired=repaired,
    )
    session.add(run)
    session.flush()
    plain = report.differences.astype(object).where(report.differences.notna(), None)
    rows = [{**r, "reconcile_run_id": run.id} for r in plain.to_dict("records")]
    for part in chunks(rows, 1000):
        session.execute(insert(ReconcileDifference), list(part))
    return int(run.id)


def load_differences(session: Session, reconcile_run_id: int) -> pd.DataFrame:
    """The findings stored for one reconciliation, as a frame with :data:`DIFF_COLUMNS`."""
    cols = [getattr(ReconcileDifference, c) for c in DIFF_COLUMNS]
    found = session.execute(
        select(*cols)
        .where(ReconcileDifference.reconcile_run_id == reconcile_run_id)
        .order_by(ReconcileDifference.id)
    )
    frame = pd.DataFrame([tuple(r) for r in found], columns=DIFF_COLUMNS, dtype=object)
    return frame.where(frame.notna(), None)


def latest_run(session: Session) -> ReconcileRun | None:
    """The newest stored reconciliation, if any."""
    return session.execute(select(ReconcileRun).order_by(ReconcileRun.id.desc()).limit(1)).scalar()
