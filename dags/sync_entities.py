"""One incremental ``sync_<entity>`` DAG per entity YAML file (``sync_custom_<name>`` for custom ones).

Thin wiring only: every task calls :mod:`crm_sync.tasks.sync`, imported inside the task so
parsing this file stays cheap and touches no network or database. Adding an entity is adding a
YAML file under ``include/crm_sync/entities/`` (or the folder named by ``$MDS_ENTITIES_DIR``).

Schedule: an entity with ``watch`` on (the default) runs when its watchers see changes (an
asset fed by triggers in Airflow's triggerer, :mod:`crm_sync.watch`), and on its ``schedule``
as a slow safety net; with ``watch`` off, on its ``schedule`` only.

Run shape: ``small_run`` decides (:mod:`crm_sync.tasks.small_run`): nothing to do, a small delta
synced end to end in that one task, or the mapped shape: ``preflight`` (Marketo budget left
today, schema drift check) → ``extract_changes`` → ``transform`` → ``guard`` (mass-delete
guard, the load's API cost against the budget) → ``load`` (mapped, one task per staged batch)
→ ``commit`` (advances the watermark only when every batch is loaded). A guard that stops the
run fails its task at once (no retries; the failure alert carries its message); a deferred
low-priority run skips ``load`` and ``commit``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, get_current_context, task

from crm_sync.config import Direction, EntityConfig, load_entities_each
from crm_sync.dag_defaults import START_DATE, TAG_VOCABULARY, default_args
from crm_sync.guards.variables import dynamics_reserve, guard_settings
from crm_sync.tasks.common import entities_dir
from crm_sync.watch.assets import changes_asset

if TYPE_CHECKING:
    from crm_sync.engine.context import RunSettings

log = logging.getLogger(__name__)

MARKETO_POOL = "marketo_api"
DYNAMICS_POOL = "dynamics_api"


def _settings(entities_dir: str) -> RunSettings:
    """Run settings from the task context and the project's Airflow Variables."""
    from crm_sync.tasks.common import settings_from_airflow

    run_id = str(get_current_context()["run_id"])
    return settings_from_airflow(run_id, entities_dir, dynamics_window_reserve=dynamics_reserve())


def _stop(exc: Exception) -> Exception:
    """The Airflow exception for a guard's verdict: skip a deferred run, fail (no retries) otherwise."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from crm_sync.guards.quota import QuotaDeferred

    if isinstance(exc, QuotaDeferred):
        return AirflowSkipException(str(exc))
    return AirflowFailException(str(exc))


def _tags(entity: EntityConfig) -> list[str]:
    entity_tag = f"entity:{entity.name}"
    if entity.custom or entity_tag not in TAG_VOCABULARY:
        entity_tag = "entity:custom"
    return ["marketo-dynamics-sync", "kind:incremental", f"direction:{entity.direction.value}", entity_tag]


def _doc(entity: EntityConfig) -> str:
    source = entity.source_path.name if entity.source_path else f"{entity.name}.yaml"
    when = (
        f"runs on changes (watchers), safety schedule `{entity.schedule}`"
        if entity.watch
        else f"schedule `{entity.schedule}`"
    )
    return (
        f"### {entity.dag_id}\n\n{entity.description or entity.name}\n\n"
        f"* Dynamics `{entity.dynamics.table}` ↔ Marketo `{entity.marketo.object.value}`, "
        f"direction `{entity.direction.value}`, {when}\n"
        f"* Defined by `{source}`; batches of {entity.batch_size}.\n"
        "* `small_run` syncs a small delta end to end in one task (or skips a run with nothing "
        "to do); a bigger one goes on through the mapped tasks below.\n"
        "* `preflight` checks the Marketo budget left today, the schema (a mapped field removed, "
        "renamed or retyped on either side stops the run) and, hourly, that the Dynamics application "
        "user still sees about as many rows as before (unless the Param `accept_row_counts` is set), "
        "`extract_changes` stages the changes since "
        "the watermark as Parquet, `transform` plans the writes (invalid records go to the "
        "record-error table), `guard` stops a mass delete (unless the Param `confirm_deletes` is set) "
        "or a load that would eat into the quota reserve, `load` writes one staged batch per mapped "
        "task, `commit` advances the watermark and writes the run ledger.\n"
    )


def build_dag(entity: EntityConfig, entities_dir: str) -> DAG:
    """Build the incremental DAG of one entity."""
    name = entity.name
    extract_pool = DYNAMICS_POOL if entity.direction.includes(Direction.D2M) else MARKETO_POOL
    load_pool = MARKETO_POOL if entity.direction.includes(Direction.D2M) else DYNAMICS_POOL
    schedule: Any = entity.schedule
    if entity.watch:
        safety = CronTriggerTimetable(entity.schedule, timezone="UTC")
        schedule = AssetOrTimeSchedule(timetable=safety, assets=changes_asset(entity))
    with DAG(
        dag_id=entity.dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        tags=_tags(entity),
        doc_md=_doc(entity),
        params={
            "confirm_deletes": Param(
                False,
                type="boolean",
                description=(
                    "Apply the deletes of a run the mass-delete guard stopped (more than the entity's "
                    "max_delete_share of its linked records deleted or flagged)."
                ),
            ),
            "single_task": Param(
                False,
                type="boolean",
                description=(
                    "Run this delta end to end in the first task (small_run) instead of the mapped "
                    "tasks; watcher-started runs of small deltas do so on their own."
                ),
            ),
            "accept_row_counts": Param(
                False,
                type="boolean",
                description=(
                    "Go on although the Dynamics application user sees far fewer rows than last time "
                    "(the visibility guard); only when the new count is right."
                ),
            ),
        },
    ) as dag:

        @task.short_circuit(task_id="small_run")
        def small_run() -> bool:
            """True hands the run to the mapped tasks; False ends it here (done or nothing to do)."""
            from crm_sync.guards import GuardError
            from crm_sync.guards.variables import number_variable
            from crm_sync.tasks.small_run import DEFAULT_SINGLE_TASK_MAX, run_single, shape_of_run

            context = get_current_context()
            params = context["params"]
            events = context.get("triggering_asset_events") or {}
            payloads = [dict(e.extra.get("payload") or {}) for evs in events.values() for e in evs if e.extra]
            settings = _settings(entities_dir)
            run_type = context["dag_run"].run_type
            shape = shape_of_run(
                settings,
                name,
                str(getattr(run_type, "value", run_type)),  # DagRunType is an enum
                payloads,
                force_single=bool(params.get("single_task", False)),
                max_changes=number_variable("mds_single_task_max_changes", int, DEFAULT_SINGLE_TASK_MAX),
            )
            log.info("run shape: %s (watchers announced %s)", shape, payloads)
            if shape == "mapped":
                return True
            if shape == "single":
                try:
                    counts = run_single(
                        settings,
                        name,
                        guard_settings(),
                        confirm_deletes=bool(params.get("confirm_deletes", False)),
                        accept_row_counts=bool(params.get("accept_row_counts", False)),
                    )
                except GuardError as exc:
                    raise _stop(exc) from exc
                log.info("run counts: %s", counts)
            return False

        @task(task_id="preflight")
        def preflight() -> dict[str, Any]:
            from crm_sync.guards import GuardError
            from crm_sync.tasks.sync import run_preflight

            accept = bool(get_current_context()["params"].get("accept_row_counts", False))
            try:
                report = run_preflight(
                    _settings(entities_dir), name, guard_settings(), accept_row_counts=accept
                )
            except GuardError as exc:
                raise _stop(exc) from exc
            log.info("preflight: %s", report)
            return report

        @task(task_id="extract_changes", pool=extract_pool)
        def extract_changes() -> dict[str, Any]:
            from crm_sync.guards import GuardError
            from crm_sync.tasks.sync import run_extract

            try:  # the visibility guard of a full re-read (expired delta link)
                counts = run_extract(_settings(entities_dir), name)
            except GuardError as exc:
                raise _stop(exc) from exc
            log.info("extracted: %s", counts)
            return counts

        @task(task_id="transform")
        def transform() -> list[dict[str, Any]]:
            from crm_sync.tasks.sync import run_transform

            batches = run_transform(_settings(entities_dir), name)
            log.info("%d load batches staged: %s", len(batches), [b["name"] for b in batches])
            return batches

        @task(task_id="guard")
        def guard(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
            from crm_sync.guards import GuardError
            from crm_sync.tasks.sync import run_guard

            context = get_current_context()
            confirm = bool(context["params"].get("confirm_deletes", False))
            try:
                report = run_guard(
                    _settings(entities_dir), name, list(batches), guard_settings(), confirm_deletes=confirm
                )
            except GuardError as exc:
                raise _stop(exc) from exc
            checks = {k: v for k, v in report.items() if k != "batches"}
            log.info("guard: %s", checks)
            context["ti"].xcom_push(key="checks", value=checks)
            return list(report["batches"])

        @task(task_id="load", pool=load_pool)
        def load(batch: dict[str, Any]) -> dict[str, Any]:
            from crm_sync.tasks.sync import run_load

            outcome = run_load(_settings(entities_dir), name, batch)
            log.info("loaded: %s", outcome)
            return outcome

        # Runs when every batch loaded or there was none to load (the mapped load is then
        # skipped); skipped with the guard when a low-priority run is deferred.
        @task(task_id="commit", trigger_rule="none_failed_min_one_success")
        def commit() -> dict[str, Any]:
            from crm_sync.tasks.sync import run_commit

            counts = run_commit(_settings(entities_dir), name)
            log.info("run counts: %s", counts)
            return counts

        # Transform and commit read the run's manifests from staging; XCom carries references only.
        planned = transform()
        checked = guard(planned)  # type: ignore[arg-type]  # an XComArg resolves to the list
        small_run() >> preflight() >> extract_changes() >> planned
        load.expand(batch=checked) >> (done := commit())
        checked >> done
    return dag


# A broken entity file is skipped here (the others keep their DAGs) and reported as an import
# error of dags/entity_files.py, which names the file and the key.
for _entity in load_entities_each(Path(entities_dir()))[0].values():
    globals()[_entity.dag_id] = build_dag(_entity, entities_dir())
