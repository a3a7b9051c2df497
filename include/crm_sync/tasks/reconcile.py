"""Entry point of the ``reconcile`` DAG's task: compare, store, write artefacts, repair, alert.

Imported inside the task (never at DAG parse time), like :mod:`crm_sync.tasks.sync`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from crm_sync.tasks.common import entities_in, task_session

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crm_sync.engine.context import RunSettings
    from crm_sync.reconcile.core import Report

log = logging.getLogger(__name__)


class ReconcileThresholdExceeded(AirflowFailException):
    """More records differ than the run's threshold allows; the report is stored all the same.

    Fails the task without retries (a retry would only read both systems again).
    """


def over_threshold(report: Report, threshold: float) -> dict[str, float]:
    """Entities whose share of differing records exceeds ``threshold`` (0.01 = 1 %), with the share."""
    out: dict[str, float] = {}
    for entity, read in report.records.items():
        differing = report.records_with_differences(entity)
        base = max(read["dynamics"], read["marketo"], 1)
        share = differing / base
        if differing and share > threshold:
            out[entity] = round(share, 4)
    return out


def run_reconcile(
    settings: RunSettings,
    names: Sequence[str],
    *,
    repair: bool = False,
    threshold: float = 0.01,
    poll_seconds: float = 10.0,
) -> dict[str, Any]:
    """Compare ``names`` (all entities when empty), store the report and artefacts, optionally repair.

    Raises:
        ReconcileThresholdExceeded: An entity's share of differing records exceeds ``threshold``
            (after the report was stored and any repair was queued).
        KeyError: An unknown entity name.
    """
    from crm_sync.config import select_entities
    from crm_sync.reconcile.artefacts import write_artefacts
    from crm_sync.reconcile.core import reconcile
    from crm_sync.reconcile.repair import repair as requeue
    from crm_sync.reconcile.repair import settle_requeued
    from crm_sync.reconcile.store import save_report
    from crm_sync.state import session_scope

    everything = entities_in(settings.entities_dir)
    unknown = [n for n in names if n not in everything]
    if unknown:
        raise KeyError(f"unknown entities {unknown}; known: {sorted(everything)}")
    entities = select_entities(everything, ",".join(names))
    with task_session(settings, marketo=True, dynamics=True, migrate=True) as task:
        ctx, marketo, dynamics = task.ctx, task.marketo, task.dynamics
        report = reconcile(
            entities, dynamics=dynamics, marketo=marketo, state=ctx.state, poll_seconds=poll_seconds
        )
        # Counts only: the findings carry field values (personal data) and go to the artefacts.
        log.info("reconciliation (%d findings):\n%s", report.total, report.summary())
        csv_url, html_url = write_artefacts(ctx.staging.root, report, settings.run_id)
        outcome = None
        with session_scope(ctx.state) as session:
            for entity in entities:
                mine = report.differences[report.differences["entity"] == entity.name]
                settle_requeued(session, entity.name, mine)
            if repair and report.total:
                outcome = requeue(
                    session, everything, report.differences, run_id=settings.run_id, marketo=marketo
                )
            save_report(
                session, report, run_id=settings.run_id, csv_path=csv_url, html_path=html_url, repaired=repair
            )
    result: dict[str, Any] = {
        "total": report.total,
        "counts": report.counts(),
        "records": report.records,
        "csv": csv_url,
        "html": html_url,
        "requeued": outcome.requeued if outcome else {},
        "unlinked": outcome.unlinked if outcome else [],
        "revived": outcome.revived if outcome else [],
        "not_repaired": len(outcome.skipped) if outcome else 0,
    }
    exceeded = over_threshold(report, threshold)
    if exceeded:
        shares = ", ".join(f"{e} {s:.2%}" for e, s in sorted(exceeded.items()))
        raise ReconcileThresholdExceeded(
            f"reconciliation found {report.total} differences; records differing over the "
            f"{threshold:.2%} threshold: {shares}. Report: {html_url}"
            + (" (repair queued for the next incremental runs)" if repair else "")
        )
    return result
