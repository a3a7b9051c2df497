"""A freshness alert from the real watcher: faults hold a backlog past its threshold.

A real Airflow (scheduler, triggerer, DAG processor, API server) runs ``sync_lead`` with its
watchers. Marketo's person endpoints fail (the emulator's injected 503s), so the run a
Dataverse change starts cannot load, and the change waits. The Dataverse watcher keeps peeking:
the backlog's oldest change grows older than the lead threshold (20 s here), and the watcher
sends the freshness alert, once, by webhook and by e-mail to a local SMTP server that requires
a login. With the faults lifted, the change arrives and the backlog drains.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from demo.alert_sink import AlertSink, read_alerts, serving
from tests.e2e.backfill_support import airflow_cli, standalone_airflow
from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import dyn_upsert, read_persons
from tests.support.slots import stack_marks
from tests.support.smtp_sink import SmtpSink

pytestmark = [pytest.mark.e2e, pytest.mark.slow, *stack_marks(minutes=4)]

SMTP_PASSWORD = "smtp-pw-watcher-5d1c2a"
RECIPIENT = "oncall@example.test"
PERSON_FAULTS = {"error_rate": 1.0, "error_codes": ["503"], "endpoints": ["/rest/v1/leads"]}


def _wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(1.0)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[AlertSink]:
    with serving(tmp_path / "log" / "alerts.jsonl") as sink:
        yield sink


def test_faults_hold_a_backlog_past_its_threshold_and_the_watcher_alerts_by_webhook_and_email(
    sync_env: SyncEnv,
    new_guid: Callable[[], str],
    tmp_path: Path,
    webhook: AlertSink,
    stack_slot_held: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ann = new_guid()
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": ann, "lastname": "Held", "jobtitle": "Before"}])
    sync_env.run("sync_lead")  # the watermarks the watchers peek from

    with SmtpSink(user="alerts", password=SMTP_PASSWORD) as smtp:
        for key, value in {
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp.connection()),
            "AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL": webhook.url,
            "AIRFLOW_VAR_MDS_ALERT_CHANNELS": "webhook,email",
            "AIRFLOW_VAR_MDS_ALERT_EMAIL_TO": RECIPIENT,
            "AIRFLOW_VAR_MDS_FRESHNESS_THRESHOLD_SECONDS": '{"lead": 20, "default": 3600}',
        }.items():
            monkeypatch.setitem(os.environ, key, value)
        with standalone_airflow(tmp_path) as airflow:
            airflow_cli(airflow.env, "dags", "unpause", "sync_lead")
            airflow_cli(airflow.env, "dags", "reserialize")  # registers the watchers now

            def watching() -> bool:
                with sqlite3.connect(airflow.db) as conn:
                    return int(conn.execute("SELECT COUNT(*) FROM asset_watcher").fetchone()[0]) == 2

            _wait_for("the watchers of sync_lead registered", watching, 120)
            sync_env.marketo.admin("PUT", "faults", json=PERSON_FAULTS)
            dyn_upsert(sync_env, "leads", "leadid", [{"leadid": ann, "jobtitle": "Held-Back"}])

            def freshness_alerts(direction: str = "d2m") -> list[dict]:
                return [
                    a
                    for a in read_alerts(webhook.alerts_file)
                    if a.get("task_id") == "freshness" and a["details"]["direction"] == direction
                ]

            waited = _wait_for("the freshness alert by webhook", lambda: bool(freshness_alerts()), 240)
            _wait_for(
                "the freshness alert by e-mail",
                lambda: any("Freshness: lead d2m" in m.subject for m in smtp.messages),
                60,
            )
            mails = smtp.messages
            (alert,) = freshness_alerts()
            print(f"freshness alert {waited:.0f} s after the change (threshold 20 s)")

            sync_env.marketo.admin("PUT", "faults", json={"error_rate": 0.0})

            def arrived() -> bool:
                persons = read_persons(sync_env, [ann], ["externalPersonId", "title"])
                return bool(persons) and persons[0].get("title") == "Held-Back"

            _wait_for("the held change in Marketo after the faults", arrived, 420)
            with sync_env.state().connect() as conn:

                def drained() -> bool:
                    pending = conn.execute(
                        text("SELECT pending FROM change_backlog WHERE entity = 'lead' AND direction = 'd2m'")
                    ).scalar_one()
                    conn.rollback()
                    return int(pending) == 0

                _wait_for("the backlog drained", drained, 120)

    assert alert["dag_id"] == "sync_lead"
    assert alert["details"]["entity"] == "lead"
    assert alert["details"]["pending"] >= 1
    assert alert["details"]["threshold_seconds"] == 20.0
    assert alert["details"]["oldest_age_seconds"] > 20.0
    freshness_mails = [m for m in mails if "Freshness: lead d2m" in m.subject]
    assert freshness_mails, [m.subject for m in mails]
    assert freshness_mails[0].recipients == (RECIPIENT,)
    assert len(freshness_alerts()) == 1, "one alert per backlog episode"
    # The run's own Marketo write, read back as a Marketo change while Marketo failed, is a
    # backlog of its own (M→D): it alerts once too, or not at all if a run carried it in time.
    assert len(freshness_alerts("m2d")) <= 1
    assert SMTP_PASSWORD not in json.dumps(read_alerts(webhook.alerts_file))
