"""Alerts on every channel at once, and the freshness alerts, against real local receivers.

The receivers: the demo's webhook sink, a local SMTP server that requires a login
(tests/support/smtp_sink.py) and a local Slack incoming-webhook stand-in
(tests/support/slack_sink.py), all on 127.0.0.1. Channels are chosen by the Variables a
deployment sets (``mds_alert_channels`` and friends), connections come in as ``AIRFLOW_CONN_*``.

* A real ``dag.test()`` run of ``sync_lead`` fails against a Dataverse outage: its failure alert
  arrives by webhook, e-mail and Slack, without any secret. The same run, handed to the freshness
  deadline callback the way Airflow's triggerer runs it, alerts on all three too.
* A backlog held past its threshold in a real SQLite state store alerts once by webhook and
  e-mail, stays quiet while the episode lasts, and alerts again for the next episode.
* A real Airflow (scheduler, triggerer, DAG processor, API server) runs a DAG that carries
  :func:`crm_sync.freshness.freshness_deadline`: its queued run outlives the deadline, the
  scheduler sees the miss, the triggerer runs the callback, and the alert arrives on all three.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crm_sync.freshness import alert_stale, freshness_deadline
from crm_sync.state import make_engine, session_scope, upgrade
from crm_sync.state.backlog import backlog_rows, mark_committed, record_peek
from demo.alert_sink import AlertSink, read_alerts, serving
from demo.faults import LEADS_ENDPOINT, outage
from emulators.common.credentials import default_credentials
from tests.e2e.conftest import SyncEnv, fail_fast
from tests.support.slack_sink import SlackSink
from tests.support.slots import stack_marks
from tests.support.smtp_sink import SmtpSink

pytestmark = [pytest.mark.e2e, *stack_marks(minutes=2)]  # the last test starts its own Airflow

SMTP_PASSWORD = "smtp-pw-e2e-0c41d7"
SLACK_TOKEN = "T0E2E0000/B0E2E0000/slack-token-e2e-83fa"
RECIPIENTS = ("marketing-ops@example.test", "oncall@example.test")


@dataclass
class Receivers:
    webhook: AlertSink
    smtp: SmtpSink
    slack: SlackSink

    def secrets(self) -> list[str]:
        return [SMTP_PASSWORD, SLACK_TOKEN]


@pytest.fixture
def receivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receivers]:
    """The three receivers running, their connections set and all three channels chosen."""
    with (
        serving(tmp_path / "log" / "alerts.jsonl") as webhook,
        SmtpSink(user="alerts", password=SMTP_PASSWORD) as smtp,
        SlackSink(token=SLACK_TOKEN) as slack,
    ):
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(smtp.connection()))
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_DEFAULT", json.dumps(slack.connection()))
        monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", webhook.url)
        monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "webhook,email,slack")
        monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_EMAIL_TO", ",".join(RECIPIENTS))
        for name in ("EMAIL_FROM", "SMTP_CONN_ID", "SLACK_CONN_ID"):
            monkeypatch.delenv(f"AIRFLOW_VAR_MDS_ALERT_{name}", raising=False)
        yield Receivers(webhook, smtp, slack)


def _run_context(dag_id: str, run_id: str) -> dict[str, Any]:
    """The ``dag_run`` part of a deadline callback's context, built as Airflow's ``Deadline.handle_miss``
    builds it (the run as the REST API shows it)."""
    from airflow.api_fastapi.core_api.datamodels.dag_run import DAGRunResponse
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        return dict(DAGRunResponse.model_validate(row).model_dump(mode="json"))


async def _trigger_events(path: str, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Run a deadline callback the way the triggerer does: through Airflow's ``CallbackTrigger``."""
    from airflow.triggers.callback import CallbackTrigger

    trigger = CallbackTrigger(callback_path=path, callback_kwargs=kwargs)
    return [event.payload async for event in trigger.run()]


def test_a_failed_sync_task_and_its_missed_deadline_alert_by_webhook_email_and_slack(
    sync_env: SyncEnv, receivers: Receivers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fail_fast(monkeypatch, "dynamics_default")
    dag = sync_env.dag("sync_lead")
    for task in dag.tasks:  # no Airflow retry: the first failed try alerts
        task.retries = 0
    sync_env.dynamics.admin("PUT", "faults", json=outage())
    try:
        run = dag.test()
    finally:
        sync_env.dynamics.admin("DELETE", "faults")
    assert run.state == "failed"

    (hooked,) = read_alerts(receivers.webhook.alerts_file)
    assert (hooked["dag_id"], hooked["task_id"], hooked["run_id"]) == (
        "sync_lead",
        "extract_changes",
        run.run_id,
    )
    assert LEADS_ENDPOINT in hooked["error"]
    assert "503" in hooked["error"]
    (mail,) = receivers.smtp.wait_for(1)
    assert mail.recipients == RECIPIENTS
    assert mail.subject == "[marketo-dynamics-sync] Task failed: sync_lead.extract_changes"
    assert run.run_id in mail.body
    assert LEADS_ENDPOINT in mail.body
    (post,) = receivers.slack.wait_for(1)
    assert post["text"].startswith("[marketo-dynamics-sync] Task failed: sync_lead.extract_changes\n")
    assert f"Run: {run.run_id}" in post["text"]
    assert LEADS_ENDPOINT in post["text"]

    # The same run missed its freshness deadline: the callback runs as the triggerer runs it.
    deadline = freshness_deadline("lead", threshold_seconds=300)
    deadline_time = datetime.now(UTC)
    kwargs = dict(deadline.callback.kwargs)
    kwargs["context"] = {
        "dag_run": _run_context("sync_lead", run.run_id),
        "deadline": {"id": "deadline-1", "deadline_time": deadline_time},
    }
    events = asyncio.run(_trigger_events(deadline.callback.path, kwargs))
    assert [e["state"] for e in events] == ["running", "success"], events
    assert events[-1]["body"] == "webhook: delivered, email: delivered, slack: delivered"

    hooked = read_alerts(receivers.webhook.alerts_file)[1]
    assert (hooked["dag_id"], hooked["task_id"], hooked["run_id"]) == (
        "sync_lead",
        "freshness_deadline",
        run.run_id,
    )
    assert hooked["details"]["kind"] == "freshness_deadline"
    assert hooked["details"]["threshold_seconds"] == 300.0
    assert hooked["details"]["state"] == "failed"
    mail = receivers.smtp.wait_for(2)[1]
    assert mail.subject.startswith(f"[marketo-dynamics-sync] Freshness: the lead sync run {run.run_id}")
    assert "had not succeeded 300 s later" in receivers.slack.wait_for(2)[1]["text"]

    everything = (
        receivers.webhook.alerts_file.read_text()
        + "".join(m.raw.decode() for m in receivers.smtp.messages)
        + json.dumps(receivers.slack.posts)
        + caplog.text
    )
    secrets = [*receivers.secrets()]
    secrets += [default_credentials(c).client_secret for c in ("marketo_default", "dynamics_default")]
    for secret in secrets:
        assert secret not in everything


def test_a_backlog_held_past_its_threshold_alerts_once_per_episode_by_webhook_and_email(
    tmp_path: Path, receivers: Receivers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "webhook,email")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_FRESHNESS_THRESHOLD_SECONDS", '{"lead": 2, "default": 3600}')
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)

    def peek(pending: int, oldest: datetime | None) -> None:
        with session_scope(engine) as s:
            for entity in ("lead", "contact"):  # contact has the default threshold, an hour
                record_peek(
                    s, entity=entity, direction="d2m", pending=pending, oldest_change_at=oldest,
                    newest_change_at=oldest,
                )  # fmt: skip

    def evaluate() -> list[tuple[str, str, int]]:
        with session_scope(engine) as s:
            return [(a.entity, a.direction, a.pending) for a in alert_stale(s)]

    # A fault holds the sync back: the peeks keep seeing the same oldest change, 5 s old.
    first_change = datetime.now(UTC) - timedelta(seconds=5)
    peek(4, first_change)
    assert evaluate() == [("lead", "d2m", 4)]
    peek(6, first_change)  # still failing, more changes: the same episode
    assert evaluate() == []
    with session_scope(engine) as s:
        alerted = {r["entity"]: r["alerted_at"] for r in backlog_rows(s)}
    assert alerted["lead"] is not None
    assert alerted["contact"] is None

    (hooked,) = read_alerts(receivers.webhook.alerts_file)
    assert (hooked["dag_id"], hooked["task_id"]) == ("sync_lead", "freshness")
    assert hooked["details"]["pending"] == 4
    assert hooked["details"]["threshold_seconds"] == 2.0
    assert hooked["details"]["oldest_change_at"] == first_change.isoformat()
    (mail,) = receivers.smtp.wait_for(1)
    assert mail.recipients == RECIPIENTS
    assert mail.subject.startswith("[marketo-dynamics-sync] Freshness: lead d2m has 4 change(s) pending")
    assert "(threshold 2 s)" in mail.body
    assert receivers.slack.posts == []  # not chosen this time

    # The fault clears, a run commits: the episode ends. New changes wait too long again.
    with session_scope(engine) as s:
        mark_committed(s, entity="lead", direction="d2m")
    second_change = datetime.now(UTC) - timedelta(seconds=3)
    peek(1, second_change)
    assert evaluate() == [("lead", "d2m", 1)]
    assert [a["details"]["pending"] for a in read_alerts(receivers.webhook.alerts_file)] == [4, 1]
    assert len(receivers.smtp.wait_for(2)) == 2

    # An empty peek ends an episode as well.
    peek(0, None)
    peek(2, datetime.now(UTC) - timedelta(seconds=10))
    assert evaluate() == [("lead", "d2m", 2)]
    assert len(read_alerts(receivers.webhook.alerts_file)) == 3
    engine.dispose()


PROBE_DAG = """
from datetime import UTC, datetime

from airflow.sdk import DAG, task

from crm_sync.freshness import freshness_deadline

with DAG(
    "freshness_probe",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    deadline=freshness_deadline("lead", threshold_seconds=3, direction="d2m"),
):

    @task
    def sync_that_outlives_its_deadline() -> None:
        import os
        import time
        from pathlib import Path

        alerts = Path(os.environ["MDS_PROBE_ALERTS_FILE"])
        end = time.monotonic() + 150
        while time.monotonic() < end and not alerts.exists():  # finish once the alert is out
            time.sleep(1)

    sync_that_outlives_its_deadline()
"""


def test_a_queued_run_that_outlives_its_freshness_deadline_alerts_from_a_real_triggerer(
    tmp_path: Path, receivers: Receivers, monkeypatch: pytest.MonkeyPatch, stack_slot_held: int
) -> None:
    import sqlite3
    import time

    from tests.e2e.backfill_support import airflow_cli, standalone_airflow

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "freshness_probe.py").write_text(PROBE_DAG)
    monkeypatch.setenv("MDS_PROBE_ALERTS_FILE", str(receivers.webhook.alerts_file))
    with standalone_airflow(tmp_path, parallelism=2, dags_folder=dags) as airflow:
        env, home, log, proc = airflow.env, airflow.db.parent, airflow.log, airflow.proc
        airflow_cli(env, "dags", "unpause", "freshness_probe")
        airflow_cli(env, "dags", "trigger", "freshness_probe")
        end = time.monotonic() + 180
        while time.monotonic() < end and not read_alerts(receivers.webhook.alerts_file):
            time.sleep(1)
        alerts = read_alerts(receivers.webhook.alerts_file)
        assert alerts, f"no deadline alert within 180 s:\n{log.read_text()[-4000:]}"
        with sqlite3.connect(home / "airflow.db") as db:
            (run_id, queued_at) = db.execute(
                "SELECT run_id, queued_at FROM dag_run WHERE dag_id = 'freshness_probe'"
            ).fetchone()
        (hooked,) = alerts
        assert (hooked["dag_id"], hooked["task_id"], hooked["run_id"]) == (
            "freshness_probe", "freshness_deadline", run_id,
        )  # fmt: skip
        assert hooked["details"]["entity"] == "lead"
        assert hooked["details"]["direction"] == "d2m"
        assert hooked["details"]["threshold_seconds"] == 3.0
        assert hooked["details"]["queued_at"] is not None
        assert queued_at is not None
        (mail,) = receivers.smtp.wait_for(1)
        assert mail.subject.startswith("[marketo-dynamics-sync] Freshness: the lead d2m sync run")
        (post,) = receivers.slack.wait_for(1)
        assert f"Run: {run_id}" in post["text"]

        # The triggerer recorded what the callback did, and kept running (a dict result stops it).
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with sqlite3.connect(home / "airflow.db") as db:
                callbacks = db.execute("SELECT state, output FROM callback").fetchall()
            if callbacks and callbacks[0][0] == "success":
                break
            time.sleep(1)
        assert callbacks == [("success", "webhook: delivered, email: delivered, slack: delivered")]
        assert proc.poll() is None, log.read_text()[-4000:]
