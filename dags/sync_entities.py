"""One incremental ``sync_<entity>`` DAG per entity YAML file (``sync_custom_<name>`` for custom ones).

Thin wiring only: every task calls :mod:`crm_sync.engine.runner`, imported inside the task so
parsing this file stays cheap and touches no network or database. Adding an entity is adding a
YAML file under ``include/crm_sync/entities/`` (or the folder named by ``$MDS_ENTITIES_DIR``).

Run shape: ``extract_changes`` → ``transform`` → ``load`` (mapped, one task per staged batch) →
``commit`` (advances the watermark only when every batch is loaded).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, get_current_context, task

from crm_sync.config import ENTITIES_DIR, Direction, EntityConfig, load_entities
from crm_sync.dag_defaults import START_DATE, TAG_VOCABULARY, default_args

if TYPE_CHECKING:
    from crm_sync.engine.runner import RunSettings

log = logging.getLogger(__name__)

ENTITIES_ENV = "MDS_ENTITIES_DIR"
MARKETO_POOL = "marketo_api"
DYNAMICS_POOL = "dynamics_api"


def _settings(entities_dir: str) -> RunSettings:
    """Run settings from the task context and the project's Airflow Variables."""
    from airflow.sdk import Variable

    from crm_sync.engine.runner import RunSettings
    from crm_sync.localenv import PROJECT_DIR
    from crm_sync.state import default_url

    run_id = str(get_current_context()["run_id"])
    state_url = Variable.get("mds_state_db_url", default=None) or default_url()
    staging = Variable.get("mds_staging_path", default=None) or f"file://{PROJECT_DIR / 'var' / 'staging'}"
    return RunSettings(run_id=run_id, state_url=state_url, staging_url=staging, entities_dir=entities_dir)


def _tags(entity: EntityConfig) -> list[str]:
    entity_tag = f"entity:{entity.name}"
    if entity.custom or entity_tag not in TAG_VOCABULARY:
        entity_tag = "entity:custom"
    return ["marketo-dynamics-sync", "kind:incremental", f"direction:{entity.direction.value}", entity_tag]


def _doc(entity: EntityConfig) -> str:
    source = entity.source_path.name if entity.source_path else f"{entity.name}.yaml"
    return (
        f"### {entity.dag_id}\n\n{entity.description or entity.name}\n\n"
        f"* Dynamics `{entity.dynamics.table}` ↔ Marketo `{entity.marketo.object.value}`, "
        f"direction `{entity.direction.value}`, schedule `{entity.schedule}`\n"
        f"* Defined by `{source}`; batches of {entity.batch_size}.\n"
        "* `extract_changes` stages the changes since the watermark as Parquet, `transform` plans the "
        "writes (invalid records go to the record-error table), `load` writes one staged batch per "
        "mapped task, `commit` advances the watermark and writes the run ledger.\n"
    )


def build_dag(entity: EntityConfig, entities_dir: str) -> DAG:
    """Build the incremental DAG of one entity."""
    name = entity.name
    extract_pool = DYNAMICS_POOL if entity.direction.includes(Direction.D2M) else MARKETO_POOL
    load_pool = MARKETO_POOL if entity.direction.includes(Direction.D2M) else DYNAMICS_POOL
    with DAG(
        dag_id=entity.dag_id,
        schedule=entity.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        tags=_tags(entity),
        doc_md=_doc(entity),
    ) as dag:

        @task(task_id="extract_changes", pool=extract_pool)
        def extract_changes() -> dict[str, Any]:
            from crm_sync.engine.runner import run_extract

            counts = run_extract(_settings(entities_dir), name)
            log.info("extracted: %s", counts)
            return counts

        @task(task_id="transform")
        def transform() -> list[dict[str, Any]]:
            from crm_sync.engine.runner import run_transform

            batches = run_transform(_settings(entities_dir), name)
            log.info("%d load batches staged: %s", len(batches), [b["name"] for b in batches])
            return batches

        @task(task_id="load", pool=load_pool)
        def load(batch: dict[str, Any]) -> dict[str, Any]:
            from crm_sync.engine.runner import run_load

            outcome = run_load(_settings(entities_dir), name, batch)
            log.info("loaded: %s", outcome)
            return outcome

        @task(task_id="commit", trigger_rule="none_failed")
        def commit() -> dict[str, Any]:
            from crm_sync.engine.runner import run_commit

            counts = run_commit(_settings(entities_dir), name)
            log.info("run counts: %s", counts)
            return counts

        # Transform and commit read the run's manifests from staging; XCom carries references only.
        planned = transform()
        extract_changes() >> planned
        load.expand(batch=planned) >> commit()
    return dag


def _entities_dir() -> str:
    return os.environ.get(ENTITIES_ENV) or str(ENTITIES_DIR)


for _entity in load_entities(Path(_entities_dir())).values():
    globals()[_entity.dag_id] = build_dag(_entity, _entities_dir())
