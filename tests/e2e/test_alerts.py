"""A sync task that fails against the real emulators alerts the demo's sink, then the sync recovers.

The Dataverse emulator answers 503 to every call on the leads entity set (the fault
``make demo-fault`` switches on), a real ``dag.test()`` run of ``sync_lead`` fails its extract
after one Airflow retry, and the failure alert arrives over HTTP at the alert sink with the DAG,
task, run, try and the task's log link, and without any connection secret. With the fault off,
the next run succeeds and sends no alert. Only ``mds_alert_webhook_url`` is set, so the webhook
is the one channel (tests/e2e/test_freshness_alerts.py sends on all three).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest

from demo.alert_sink import AlertSink, read_alerts, serving
from demo.faults import LEADS_ENDPOINT, outage
from emulators.common.credentials import default_credentials
from tests.e2e.conftest import SyncEnv, fail_fast

pytestmark = pytest.mark.e2e


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AlertSink]:
    with serving(tmp_path / "log" / "alerts.jsonl") as server:
        monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", server.url)
        # Only the webhook URL is set, no mds_alert_channels: the webhook alone, as before channels.
        monkeypatch.delenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", raising=False)
        yield server


def test_failed_task_alerts_the_sink_with_dag_task_run_try_and_log_link_and_no_secret(
    sync_env: SyncEnv, sink: AlertSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.configuration import conf

    fail_fast(monkeypatch, "dynamics_default")
    dag = sync_env.dag("sync_lead")
    for task in dag.tasks:  # one Airflow retry, a second apart (the DAG's own delay is 30 s)
        task.retries = 1
        task.retry_delay = timedelta(seconds=1)
        task.retry_exponential_backoff = 0
    sync_env.dynamics.admin("PUT", "faults", json=outage())
    try:
        run = dag.test()
    finally:
        sync_env.dynamics.admin("DELETE", "faults")
    assert run.state == "failed"
    injected = sync_env.dynamics.stats()["faults_injected"]
    assert injected.get("503", 0) >= 2, injected

    alerts = read_alerts(sink.alerts_file)
    assert len(alerts) == 1, alerts  # the first failed try was retried; the second one alerted
    (alert,) = alerts
    assert set(alert) == {"received_at", "dag_id", "task_id", "run_id", "try_number", "log_url", "error"}
    base = conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
    assert alert["dag_id"] == "sync_lead"
    assert alert["task_id"] == "extract_changes"
    assert alert["run_id"] == run.run_id
    assert alert["try_number"] == 2
    assert alert["log_url"] == (
        f"{base}/dags/sync_lead/runs/{quote(run.run_id)}/tasks/extract_changes?try_number=2"
    )
    assert LEADS_ENDPOINT in alert["error"]
    assert "503" in alert["error"]

    raw = sink.alerts_file.read_text()
    for conn_id in ("marketo_default", "dynamics_default"):
        assert default_credentials(conn_id).client_secret not in raw

    # The fault is gone: the next run succeeds and alerts nobody.
    recovered = dag.test()
    assert recovered.state == "success"
    assert len(read_alerts(sink.alerts_file)) == 1
