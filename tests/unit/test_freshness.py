"""The freshness rule, its thresholds, the backlog episode on a real SQLite state store, and the
deadline alert a sync DAG gets."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from crm_sync.freshness import (
    DEFAULT_THRESHOLD_SECONDS,
    FreshnessAlert,
    Thresholds,
    alert_stale,
    deadline_alert,
    describe_delivery,
    freshness_deadline,
    freshness_deadline_missed,
    parse_thresholds,
    stale_rows,
)
from crm_sync.state import make_engine, session_scope, upgrade
from crm_sync.state.backlog import backlog_rows, mark_committed, record_peek
from demo.alert_sink import AlertSink, read_alerts, serving

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _row(
    entity: str = "lead",
    direction: str = "d2m",
    pending: int = 4,
    age: float | None = 600.0,
    alerted_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "entity": entity,
        "direction": direction,
        "pending": pending,
        "oldest_change_at": None if age is None else NOW - timedelta(seconds=age),
        "alerted_at": alerted_at,
    }


# --- thresholds --------------------------------------------------------------------------------


def test_thresholds_per_entity_with_a_default() -> None:
    t = parse_thresholds('{"lead": 300, "contact": 42.5, "default": 1200}')
    assert (t.for_entity("lead"), t.for_entity("contact"), t.for_entity("account")) == (300.0, 42.5, 1200.0)


def test_no_variable_means_the_built_in_default_for_every_entity() -> None:
    for raw in (None, "", "  "):
        assert parse_thresholds(raw).for_entity("lead") == DEFAULT_THRESHOLD_SECONDS
    assert parse_thresholds('{"lead": 60}').for_entity("account") == DEFAULT_THRESHOLD_SECONDS


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"lead": "5m"}', r"mds_freshness_threshold_seconds: the threshold of 'lead' must be a number"),
        (
            '{"lead": 300, "account": -1}',
            r"mds_freshness_threshold_seconds: the threshold of 'account' must be a positive",
        ),
        ('{"default": 0}', r"the threshold of 'default' must be a positive"),
        ('{"lead": true}', r"the threshold of 'lead' must be a number"),
        ('{"lead": Infinity}', r"the threshold of 'lead' must be a positive, finite"),
        ("[300]", r"mds_freshness_threshold_seconds: must be a JSON object"),
        ("{lead: 300}", r"mds_freshness_threshold_seconds: not JSON"),
    ],
)
def test_a_bad_threshold_names_the_variable_and_the_entity(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_thresholds(raw)


# --- the rule ------------------------------------------------------------------------------------


def test_a_pending_backlog_older_than_its_threshold_alerts_with_its_figures() -> None:
    (got,) = stale_rows([_row(age=600.0)], Thresholds({"lead": 300}), NOW)
    assert got == FreshnessAlert(
        entity="lead",
        direction="d2m",
        pending=4,
        oldest_change_at=NOW - timedelta(seconds=600),
        oldest_age_seconds=600.0,
        threshold_seconds=300.0,
    )
    assert got.message() == (
        "Freshness: lead d2m has 4 change(s) pending, the oldest from 2026-12-07T11:50:00+00:00, "
        "600 s old (threshold 300 s)"
    )


def test_what_does_not_alert() -> None:
    rows = [
        _row(entity="lead", age=300.0),  # exactly at the threshold: not older than it
        _row(entity="lead", direction="m2d", age=299.0),  # younger
        _row(entity="contact", pending=0, age=None),  # empty backlog
        _row(entity="account", age=5000.0, alerted_at=NOW - timedelta(minutes=1)),  # already alerted
        _row(entity="opportunity", age=800.0),  # under the default of 900
    ]
    assert stale_rows(rows, Thresholds({"lead": 300}), NOW) == []


def test_each_entity_takes_its_own_threshold_or_the_default() -> None:
    rows = [_row(entity="lead", age=400.0), _row(entity="account", age=400.0), _row(entity="user", age=901.0)]
    got = stale_rows(rows, Thresholds({"lead": 300, "account": 3600}, default=900), NOW)
    assert [(a.entity, a.threshold_seconds) for a in got] == [("lead", 300.0), ("user", 900.0)]


def test_naive_times_are_taken_as_utc() -> None:
    row = _row(age=None) | {"oldest_change_at": datetime(2026, 12, 7, 11, 0)}
    (got,) = stale_rows([row], Thresholds({}), NOW)
    assert got.oldest_age_seconds == 3600.0
    assert got.oldest_change_at.tzinfo is UTC


def test_the_alert_names_the_backlog_episode_and_carries_the_figures() -> None:
    (item,) = stale_rows([_row(entity="contact", direction="m2d", pending=12, age=1000)], Thresholds({}), NOW)
    alert = item.to_alert()
    assert (alert.dag_id, alert.task_id, alert.run_id) == (
        "sync_contact", "freshness", "backlog_m2d_2026-12-07T11:43:20+00:00",
    )  # fmt: skip
    assert alert.details == {
        "kind": "freshness",
        "entity": "contact",
        "direction": "m2d",
        "pending": 12,
        "oldest_change_at": "2026-12-07T11:43:20+00:00",
        "oldest_age_seconds": 1000.0,
        "threshold_seconds": 900.0,
    }
    assert alert.subject().startswith("[marketo-dynamics-sync] Freshness: contact m2d has 12 change(s)")
    assert item.to_alert("sync_custom_contact").dag_id == "sync_custom_contact"


# --- alert_stale on a real state store ----------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AlertSink]:
    with serving(tmp_path / "alerts.jsonl", poll_interval=0.1) as server:
        monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", server.url)
        monkeypatch.setenv("AIRFLOW_VAR_MDS_FRESHNESS_THRESHOLD_SECONDS", '{"lead": 300}')
        monkeypatch.delenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", raising=False)
        yield server


def _peek(engine: Engine, pending: int, oldest: datetime | None, at: datetime) -> None:
    with session_scope(engine) as s:
        record_peek(
            s, entity="lead", direction="d2m", pending=pending, oldest_change_at=oldest,
            newest_change_at=oldest, now=at,
        )  # fmt: skip


def _alert_stale(engine: Engine, at: datetime) -> list[FreshnessAlert]:
    with session_scope(engine) as s:
        return alert_stale(s, now=at)


def test_one_alert_per_episode_and_a_new_episode_after_a_commit(engine: Engine, sink: AlertSink) -> None:
    t0 = NOW - timedelta(minutes=10)
    _peek(engine, 3, t0, NOW - timedelta(minutes=9))
    assert _alert_stale(engine, t0 + timedelta(seconds=299)) == []  # young yet
    first = _alert_stale(engine, NOW)
    assert [(a.entity, a.direction, a.pending) for a in first] == [("lead", "d2m", 3)]
    assert _alert_stale(engine, NOW + timedelta(minutes=5)) == []  # same episode: quiet
    with session_scope(engine) as s:
        assert backlog_rows(s, now=NOW)[0]["alerted_at"] == NOW

    _peek(engine, 5, t0, NOW + timedelta(minutes=6))  # the backlog grows: still the same episode
    assert _alert_stale(engine, NOW + timedelta(minutes=7)) == []

    with session_scope(engine) as s:
        mark_committed(s, entity="lead", direction="d2m", now=NOW + timedelta(minutes=8))
    t1 = NOW + timedelta(minutes=9)
    _peek(engine, 1, t1, t1)
    with session_scope(engine) as s:  # a custom entity's DAG id comes from the caller
        second = alert_stale(s, now=t1 + timedelta(seconds=301), dag_ids={"lead": "sync_custom_lead"})
    assert [(a.pending, a.oldest_change_at) for a in second] == [(1, t1)]

    alerts = read_alerts(sink.alerts_file)
    assert [a["details"]["pending"] for a in alerts] == [3, 1]
    assert alerts[0]["run_id"] != alerts[1]["run_id"]
    assert [a["dag_id"] for a in alerts] == ["sync_lead", "sync_custom_lead"]


def test_one_attempt_per_episode_even_when_every_channel_fails(
    engine: Engine, sink: AlertSink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/alerts")  # nobody there
    _peek(engine, 2, NOW - timedelta(hours=1), NOW)
    assert len(_alert_stale(engine, NOW)) == 1
    assert "Freshness: lead d2m has 2 change(s) pending" in caplog.text  # the log line holds it
    assert "alert channel webhook failed: ConnectionError" in caplog.text
    with session_scope(engine) as s:
        assert backlog_rows(s, now=NOW)[0]["alerted_at"] == NOW
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", sink.url)  # the receiver is back
    assert _alert_stale(engine, NOW + timedelta(seconds=5)) == []  # the watcher is not held up again
    assert read_alerts(sink.alerts_file) == []


def test_with_no_channel_the_log_line_is_the_alert_and_the_backlog_is_marked(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "none")
    _peek(engine, 2, NOW - timedelta(hours=1), NOW)
    assert len(_alert_stale(engine, NOW)) == 1
    assert "Freshness: lead d2m has 2 change(s) pending" in caplog.text
    assert _alert_stale(engine, NOW + timedelta(seconds=5)) == []


def test_a_bad_thresholds_variable_is_logged_by_name_and_the_default_applies(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "none")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_FRESHNESS_THRESHOLD_SECONDS", '{"lead": "soon"}')
    _peek(engine, 2, NOW - timedelta(seconds=901), NOW)
    (got,) = _alert_stale(engine, NOW)  # the watcher goes on; the backlog alerts on the default
    assert got.threshold_seconds == DEFAULT_THRESHOLD_SECONDS
    assert (
        "Variable mds_freshness_threshold_seconds: the threshold of 'lead' must be a number of seconds, "
        "not 'soon'; using 900 s for every entity"
    ) in caplog.text


# --- the deadline alert --------------------------------------------------------------------------


def test_freshness_deadline_is_queued_at_plus_the_threshold_with_an_async_callback() -> None:
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineReference

    alert = freshness_deadline("lead", threshold_seconds=300, direction="d2m")
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(seconds=300)
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "crm_sync.freshness.freshness_deadline_missed"
    assert alert.callback.kwargs == {"entity": "lead", "threshold_seconds": 300.0, "direction": "d2m"}
    assert alert.name == "freshness_lead_d2m"
    assert freshness_deadline("account").interval == timedelta(seconds=DEFAULT_THRESHOLD_SECONDS)


def test_freshness_deadline_refuses_a_bad_threshold() -> None:
    with pytest.raises(ValueError, match=r"freshness_deadline: the threshold of 'lead' must be a positive"):
        freshness_deadline("lead", threshold_seconds=0)


def test_a_dag_with_the_freshness_deadline_serializes_as_the_scheduler_reads_it() -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG(
        "freshness_probe", schedule=None, deadline=freshness_deadline("lead", threshold_seconds=120)
    ) as dag:
        pass
    data = DagSerialization.to_dict(dag)
    (serialized,) = data["dag"]["deadline"]
    assert "crm_sync.freshness.freshness_deadline_missed" in str(serialized)
    assert "120" in str(serialized)


def test_the_deadline_alert_reads_the_context_airflow_hands_a_deadline_callback() -> None:
    context = {
        "dag_run": {
            "dag_id": "sync_lead",
            "dag_run_id": "asset_triggered__2026-12-07T11:50:00+00:00",
            "queued_at": "2026-12-07T11:50:00Z",
            "state": "running",
        },
        "deadline": {"id": "0193", "deadline_time": datetime(2026, 12, 7, 11, 55, tzinfo=UTC)},
    }
    alert = deadline_alert("lead", 300.0, context)
    assert (alert.dag_id, alert.task_id, alert.run_id) == (
        "sync_lead", "freshness_deadline", "asset_triggered__2026-12-07T11:50:00+00:00",
    )  # fmt: skip
    assert alert.error == (
        "Freshness: the lead sync run asset_triggered__2026-12-07T11:50:00+00:00 was queued at "
        "2026-12-07T11:50:00Z and had not succeeded 300 s later (deadline 2026-12-07 11:55:00+00:00, "
        "state running)"
    )
    assert alert.log_url is not None
    assert alert.log_url.endswith("/dags/sync_lead/runs/asset_triggered__2026-12-07T11%3A50%3A00%2B00%3A00")
    assert alert.details is not None
    assert alert.details["kind"] == "freshness_deadline"


async def _call(**kwargs: Any) -> str:
    return await freshness_deadline_missed(**kwargs)


def test_the_deadline_callback_sends_through_the_dispatcher(sink: AlertSink) -> None:
    import asyncio

    delivered = asyncio.run(
        _call(
            entity="lead",
            threshold_seconds=300.0,
            context={"dag_run": {"dag_id": "sync_lead", "dag_run_id": "r1"}},
        )
    )
    assert delivered == "webhook: delivered"  # text: the triggerer stores it in a text column
    (got,) = read_alerts(sink.alerts_file)
    assert (got["dag_id"], got["task_id"], got["run_id"]) == ("sync_lead", "freshness_deadline", "r1")


def test_the_callback_result_is_text_for_the_triggerers_text_column() -> None:
    assert describe_delivery({"webhook": True, "email": False}) == "webhook: delivered, email: failed"
    assert describe_delivery({}) == "log only"
