"""Task entry points of the ``rebaseline`` DAG: detect, pause, plan (dry run), re-link.

The logic is :mod:`crm_sync.rebaseline`'s; these build the hooks and the run context, stage the
plan and its report between the tasks, and send the alerts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crm_sync.alerting import send_alert
from crm_sync.config import select_entities
from crm_sync.rebaseline import (
    AirflowApiMissing,
    RefreshNotDetected,
    RelinkGuardFailed,
    apply_relink,
    check_relink_deletes,
    detect_refresh,
    pause_dags,
    plan_relink,
    relink_report,
    sync_dag_ids,
)
from crm_sync.tasks.common import entities_in, task_session

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow.sdk import ObjectStoragePath

    from crm_sync.config import EntityConfig
    from crm_sync.engine.context import RunContext, RunSettings

log = logging.getLogger(__name__)


def _selected(settings: RunSettings, names: Sequence[str]) -> list[EntityConfig]:

    return select_entities(entities_in(settings.entities_dir), ",".join(names))


def run_detect(settings: RunSettings, names: Sequence[str]) -> dict[str, Any]:
    """Task ``detect``: report whether the org looks refreshed (organization id, unresolved ids)."""
    with task_session(settings, dynamics=True, migrate=True) as task:
        found = detect_refresh(_selected(settings, names), task.dynamics, task.ctx.state)
    log.warning("sandbox refresh check: %s", found)
    return found


def run_pause(settings: RunSettings, paused: bool) -> list[str]:
    """Tasks ``pause_sync``/``unpause_sync``: (un)pause every sync DAG through the REST API.

    Before the unpause, the sync runs the pause held ``running`` are failed
    (:func:`crm_sync.rebaseline.pause_dags`): they hold data from before the re-baseline.
    Without an ``airflow_api`` connection the DAGs are left as they are, with a warning (a
    paused DAG must then be unpaused by hand, and its held runs marked failed).
    """

    try:
        return pause_dags(
            sync_dag_ids(entities_in(settings.entities_dir).values()), paused, fail_held_runs=not paused
        )
    except AirflowApiMissing as exc:
        log.warning("%s; (un)pause the sync DAGs by hand", exc)
        return []


PLAN = "relink-plan"


def _plan_folder(ctx: RunContext, run_id: str) -> ObjectStoragePath:
    from crm_sync.engine.staging import run_key

    return ctx.staging.root / "rebaseline" / run_key(run_id)


def run_plan(
    settings: RunSettings,
    names: Sequence[str],
    poll_seconds: float = 10.0,
    *,
    tolerance: float = 0.5,
    accept_row_counts: bool = False,
) -> dict[str, Any]:
    """Task ``plan``: read both systems, check visibility, stage the plan and the dry-run report.

    The report (``report.csv`` next to the staged plan) lists every Marketo record the re-link
    would delete, flag as deleted or re-point; nothing is written to either system.
    """
    import io

    from crm_sync.engine.staging import replace_file
    from crm_sync.reconcile.artefacts import spreadsheet_safe

    with task_session(settings, marketo=True, dynamics=True, migrate=True) as task:
        ctx = task.ctx
        try:
            plan = plan_relink(
                _selected(settings, names),
                dynamics=task.dynamics,
                marketo=task.marketo,
                state=ctx.state,
                poll_seconds=poll_seconds,
                tolerance=tolerance,
                accept_row_counts=accept_row_counts,
            )
        except RelinkGuardFailed as exc:
            send_alert("rebaseline", "plan", settings.run_id, f"Re-link stopped before any write: {exc}")
            raise
        folder = _plan_folder(ctx, settings.run_id)
        ctx.staging.write_json(folder, PLAN, plan)
        report = relink_report(plan)
        buffer = io.StringIO()
        report.map(spreadsheet_safe).to_csv(buffer, index=False, lineterminator="\r\n")
        report_url = replace_file(folder / "report.csv", buffer.getvalue().encode())
    actions = {str(k): int(v) for k, v in report["action"].value_counts().items()}
    summary = {
        name: {**part["counts"], "seen": part["seen"], "linked": part["linked"]}
        for name, part in plan["entities"].items()
    }
    log.warning("re-link plan (dry run, nothing written): %s; report %s", actions, report_url)
    return {"report": report_url, "actions": actions, "entities": summary}


def run_relink(
    settings: RunSettings,
    names: Sequence[str],
    detected: Mapping[str, Any],
    *,
    confirm_deletes: bool = False,
    max_share: float | None = None,
    min_records: int = 10,
) -> dict[str, Any]:
    """Task ``relink``: apply the staged plan, only for a refreshed org and through the guards.

    Raises:
        RefreshNotDetected: ``detect`` found no sandbox refresh: nothing is deleted.
        RelinkGuardFailed: The plan deletes or flags more than the mass-delete guard allows and
            ``confirm_deletes`` is not set.
    """

    if not detected.get("refreshed"):
        raise RefreshNotDetected(
            "detection found no sandbox refresh (organization id "
            f"{detected.get('current')} as recorded, {detected.get('unresolved')} of "
            f"{detected.get('sampled')} sampled ids unresolved): nothing was re-linked or deleted"
        )
    entities = _selected(settings, names)
    with task_session(settings, marketo=True, migrate=True) as task:
        ctx = task.ctx
        plan = ctx.staging.read_json(_plan_folder(ctx, settings.run_id), PLAN)
        if plan is None:
            raise FileNotFoundError(f"no staged re-link plan for run {settings.run_id}")
        try:
            guard = check_relink_deletes(
                entities, plan, max_share=max_share, min_records=min_records, confirmed=confirm_deletes
            )
        except RelinkGuardFailed as exc:
            send_alert("rebaseline", "relink", settings.run_id, f"Re-link stopped before any write: {exc}")
            raise
        counts = apply_relink(entities, plan, marketo=task.marketo, state=ctx.state)
    send_alert(
        "rebaseline",
        "relink",
        settings.run_id,
        f"Re-baselined after a Dynamics sandbox refresh: {counts}. The state store's identity and "
        "watermarks were reset; the next run of each sync DAG re-reads its table and updates the "
        "re-linked Marketo records.",
    )
    return {"counts": counts, "deletes": guard}
