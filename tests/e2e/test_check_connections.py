"""The check_connections DAG, run for real with dag.test() against both emulators.

It also shows the failure alert path: with a wrong secret the task fails, and the alert reaches
a local webhook sink naming the DAG, task, run and log link, without the secret.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import RunningEmulator, start_emulator

pytestmark = pytest.mark.e2e

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningEmulator]]:
    running = {side: start_emulator(side, tmp_path_factory.mktemp(side)) for side in ("marketo", "dynamics")}
    yield running
    for emu in running.values():
        emu.stop()


class _Sink(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []  # noqa: RUF012 - one sink per test module

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Sink.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def alert_sink() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Sink.received = []
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", _Sink.received
    server.shutdown()


def _connections(
    monkeypatch: pytest.MonkeyPatch,
    emulators: dict[str, RunningEmulator],
    tmp_path: Path,
    dynamics_secret: str,
) -> None:
    mk, dv = default_credentials("marketo_default"), default_credentials("dynamics_default")
    limiter = f"sqlite:///{tmp_path}/limiter.sqlite"
    marketo = emulators["marketo"]
    dynamics = emulators["dynamics"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_MARKETO_DEFAULT",
        json.dumps(
            {
                "conn_type": "marketo",
                "host": marketo.base_url,
                "login": mk.client_id,
                "password": mk.client_secret,
                "extra": {"ca_bundle": str(marketo.ca_file), "limiter_url": limiter},
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_DYNAMICS_DEFAULT",
        json.dumps(
            {
                "conn_type": "dynamics",
                "host": dynamics.base_url,
                "login": dv.client_id,
                "password": dynamics_secret,
                "extra": {
                    "tenant_id": dv.tenant_id,
                    "authority_host": dynamics.base_url,
                    "api_version": "9.2",
                    "ca_bundle": str(dynamics.ca_file),
                    "limiter_url": limiter,
                    "max_retry_seconds": 5,
                },
            }
        ),
    )


def _dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS_DIR / "check_connections.py")).dags["check_connections"]
    for task in dag.tasks:
        task.retries = 0  # the failing case must end now, not after Airflow's retry delay
    return dag


def test_check_connections_succeeds_against_the_emulators(
    airflow_db: str, emulators: dict[str, RunningEmulator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _connections(monkeypatch, emulators, tmp_path, default_credentials("dynamics_default").client_secret)
    run = _dag().test()
    assert run.state == "success"
    assert {ti.task_id: str(ti.state) for ti in run.get_task_instances()} == {
        "check_setup": "success",
        "test_connection": "success",
    }
    calls: dict[str, int] = emulators["dynamics"].stats()["calls"]
    assert any("WhoAmI" in key for key in calls)
    assert any("RetrieveUserPrivileges" in key for key in calls), "the setup check read the privileges"
    assert any("describe2" in key for key in emulators["marketo"].stats()["calls"])


def test_wrong_secret_fails_the_task_and_alerts_without_the_secret(
    airflow_db: str,
    emulators: dict[str, RunningEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    alert_sink: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = alert_sink
    wrong_secret = "not-the-dynamics-secret-8d1f"
    _connections(monkeypatch, emulators, tmp_path, wrong_secret)
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", url)

    run = _dag().test()

    assert run.state == "failed"
    assert len(received) == 1
    alert = received[0]
    assert alert["dag_id"] == "check_connections"
    assert alert["task_id"] == "test_connection"
    assert alert["run_id"] == run.run_id
    assert alert["log_url"].startswith("http://127.0.0.1:")
    assert "/dags/check_connections/runs/" in alert["log_url"]
    assert "dynamics_default" in alert["error"]
    assert wrong_secret not in json.dumps(alert)
