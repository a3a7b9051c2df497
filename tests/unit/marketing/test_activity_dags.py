"""The activity DAGs' shape, and the low-priority budget check they run before any call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_sync.guards import GuardSettings
from crm_sync.guards.quota import QuotaDeferred, check_low_priority
from tests.e2e.activities_support import activity_dag


def _status(left: int, usable: int = 80) -> dict[str, Any]:
    return {
        "left": left,
        "usable": usable,
        "used_today": usable - left,
        "daily_quota": 100,
        "reserve": 20,
        "resets_at": "2026-12-08T06:00:00+00:00",
    }


def test_a_low_priority_run_goes_on_while_the_headroom_stays() -> None:
    assert check_low_priority("activities", 2, _status(40), GuardSettings()) == {
        "need": 2,
        "left_after": 38,
        "headroom": 20,
    }


@pytest.mark.parametrize("left", [21, 20, 5, 0])
def test_a_low_priority_run_defers_before_eating_into_the_headroom(left: int) -> None:
    with pytest.raises(QuotaDeferred, match="activities: low-priority sync deferred"):
        check_low_priority("activities", 2, _status(left), GuardSettings())


def test_the_history_dag_backfills_monthly_windows_of_at_most_31_days() -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.from_dict(DagSerialization.to_dict(activity_dag("sync_activities_history")))
    infos = dag.iter_dagrun_infos_between(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 12, 1, tzinfo=UTC))
    intervals = [i.data_interval for i in infos if i.data_interval]
    assert len(intervals) == 12
    assert all(i.end - i.start <= timedelta(days=31) for i in intervals)
    assert dag.timetable.can_be_scheduled is False
    assert dag.next_dagrun_info(last_automated_run_info=None) is None, "never scheduled by itself"


def test_the_feed_dag_runs_like_the_entity_dags() -> None:
    dag = activity_dag("sync_activities")
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["extract", "load", "commit"]
    assert dag.task_dict["load"].pool == "dynamics_api"
