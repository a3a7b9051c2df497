"""Every DAG file imports cleanly and every DAG follows the project's policies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag

from crm_sync.alerting import SyncFailureNotifier
from crm_sync.dag_defaults import TAG_VOCABULARY

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))

# DAGs that are only ever triggered by hand, on purpose; any other DAG must have a schedule.
MANUAL_ONLY: frozenset[str] = frozenset({"rebaseline"})  # run by a user after a sandbox refresh


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_DIR))


def test_dags_folder_has_dag_files() -> None:
    assert DAG_FILES, f"no DAG files in {DAGS_DIR}"


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}


# Defines no DAG while every entity file is valid; it exists to fail naming a broken one.
CHECK_ONLY: frozenset[str] = frozenset({"entity_files.py"})


def test_every_file_defines_a_dag(dagbag: DagBag) -> None:
    files_with_dags = {Path(dag.fileloc).name for dag in dagbag.dags.values()}
    assert {p.name for p in DAG_FILES} - CHECK_ONLY <= files_with_dags


def test_a_broken_entity_file_is_one_import_error_and_the_other_dags_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from crm_sync.config import ENTITIES_DIR

    entities = tmp_path / "entities"
    shutil.copytree(ENTITIES_DIR, entities, ignore=shutil.ignore_patterns("*.md"))
    broken = entities / "opportunity.yaml"
    broken.write_text(broken.read_text().replace("direction: d2m", "direction: sideways", 1))
    monkeypatch.setenv("MDS_ENTITIES_DIR", str(entities))

    bag = DagBag(dag_folder=str(DAGS_DIR))

    assert [Path(f).name for f in bag.import_errors] == ["entity_files.py"]
    (message,) = bag.import_errors.values()
    assert f"{broken}: direction: Input should be" in message
    healthy = {"sync_user", "sync_team", "sync_account", "sync_lead", "sync_contact"}
    others = {"sync_custom_new_project", "full_copy", "reconcile", "rebaseline", "check_connections"}
    assert healthy | others <= set(bag.dags)
    assert "sync_opportunity" not in bag.dags
    assert not any(t.task_id.startswith("opportunity.") for t in bag.dags["full_copy"].tasks)


def test_the_marketing_dags_run_on_their_mapping_files_schedules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``schedule`` in activities.yaml and programs.yaml is the DAGs' cron; a bad one is one
    import error naming the file and the key, and the other DAGs load."""
    from crm_sync.marketing.activity_config import ACTIVITIES_ENV, ACTIVITIES_FILE
    from crm_sync.marketing.program_config import PROGRAMS_ENV, PROGRAMS_FILE

    activities, programs = tmp_path / "activities.yaml", tmp_path / "programs.yaml"
    shipped_activities, shipped_programs = ACTIVITIES_FILE.read_text(), PROGRAMS_FILE.read_text()
    activities.write_text(shipped_activities.replace('schedule: "17 * * * *"', 'schedule: "5 */2 * * *"'))
    programs.write_text(shipped_programs.replace('schedule: "47 * * * *"', "schedule: '@daily'"))
    monkeypatch.setenv(ACTIVITIES_ENV, str(activities))
    monkeypatch.setenv(PROGRAMS_ENV, str(programs))

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    assert _cron(bag, "sync_activities") == "5 */2 * * *"
    assert _cron(bag, "sync_program_membership") == "0 0 * * *"  # Airflow expands the preset
    assert bag.dags["sync_activities_history"].timetable.can_be_scheduled is False

    programs.write_text(shipped_programs.replace('schedule: "47 * * * *"', 'schedule: "hourly"'))
    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert [Path(f).name for f in bag.import_errors] == ["sync_program_membership.py"]
    (message,) = bag.import_errors.values()
    assert f"{programs}: schedule: " in message
    assert "is not a cron schedule" in message
    assert {"sync_activities", "sync_lead", "full_copy"} <= set(bag.dags)


def _cron(bag: DagBag, dag_id: str) -> str:
    from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

    timetable = bag.dags[dag_id].timetable
    assert isinstance(timetable, CronTriggerTimetable), (dag_id, timetable)
    return str(timetable.expression)


def _dag_ids() -> list[str]:
    return sorted(DagBag(dag_folder=str(DAGS_DIR)).dags)


@pytest.mark.parametrize("dag_id", _dag_ids())
def test_dag_policy(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.tags, f"{dag_id} has no tags"
    unknown = set(dag.tags) - TAG_VOCABULARY
    assert not unknown, f"{dag_id} uses tags outside the vocabulary: {sorted(unknown)}"
    assert dag.doc_md, f"{dag_id} has no doc_md"
    assert dag.catchup is False, f"{dag_id} must set catchup explicitly to False"
    if dag_id not in MANUAL_ONLY:
        assert dag.schedule is not None, f"{dag_id} has no schedule"
    for task in dag.tasks:
        where = f"{dag_id}.{task.task_id}"
        assert task.owner, f"{where} has no owner"
        assert task.owner != "airflow", f"{where} keeps Airflow's placeholder owner"
        assert task.retries, f"{where} has no retries"
        assert task.retry_exponential_backoff, f"{where} retries without exponential backoff"
        assert task.retry_delay >= timedelta(seconds=1), f"{where} has no retry delay"
        assert task.execution_timeout is not None, f"{where} has no execution timeout"
        configured: Any = task.on_failure_callback
        callbacks = configured if isinstance(configured, list) else [configured]
        assert any(isinstance(cb, SyncFailureNotifier) for cb in callbacks), f"{where} has no failure alert"


_NO_IO_AT_IMPORT = textwrap.dedent(
    """
    import importlib.util, socket, sqlite3, sys
    def _forbidden(*args, **kwargs):
        raise RuntimeError("network or database access at DAG import time")
    socket.socket.connect = _forbidden
    socket.create_connection = _forbidden
    sqlite3.connect = _forbidden
    import sqlalchemy.engine.base
    sqlalchemy.engine.base.Engine.connect = _forbidden
    spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    """
)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_makes_no_network_or_db_calls_at_import(dag_file: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_IO_AT_IMPORT, str(dag_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_full_copy_backfills_monthly_but_is_never_scheduled(dagbag: DagBag) -> None:
    """The scheduler and API server rebuild full_copy's timetable from the serialized DAG (through
    the plugin registry): it walks monthly intervals for a backfill and never starts a run itself."""
    from datetime import UTC, datetime

    from airflow.serialization.serialized_objects import DagSerialization

    from crm_sync_timetables.backfill_only import BackfillOnlyCronTimetable

    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags["full_copy"]))
    timetable = serialized.timetable
    assert isinstance(timetable, BackfillOnlyCronTimetable)
    assert timetable.can_be_scheduled is False
    assert timetable.periodic is True
    infos = serialized.iter_dagrun_infos_between(
        datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC)
    )
    starts = [info.data_interval.start.date().isoformat() for info in infos if info.data_interval]
    assert starts == ["2025-04-01", "2025-05-01", "2025-06-01"]
    # What the scheduler and DAG processor ask: the DAG's own, unbounded restriction.
    assert serialized.next_dagrun_info(last_automated_run_info=None) is None
