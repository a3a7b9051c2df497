"""The demo's alert sink: a real process on 127.0.0.1 that records each POSTed alert as a JSON line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from demo.alert_sink import read_alerts
from tests.support.emulator_procs import free_port

PROJECT_DIR = Path(__file__).resolve().parents[3]


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes], Path]]:
    port = free_port()
    alerts = tmp_path / "log" / "alerts.jsonl"
    log_file = tmp_path / "sink.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_DIR / "include"), str(PROJECT_DIR)]))
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "demo.alert_sink", "--port", str(port), "--file", str(alerts)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{base}/health", timeout=2).raise_for_status()
            break
        except requests.RequestException:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(log_file.read_text()) from None
            time.sleep(0.2)
    yield base, alerts, proc, log_file
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_each_alert_becomes_one_json_line_and_one_log_line_and_sigterm_stops_it(
    sink: tuple[str, Path, subprocess.Popen[bytes], Path],
) -> None:
    base, alerts, proc, log_file = sink
    sent = [
        {
            "dag_id": "sync_lead",
            "task_id": "extract_changes",
            "run_id": f"manual__2026-11-26T10:0{i}:00+00:00",
            "try_number": i + 1,
            "log_url": f"http://127.0.0.1:8080/dags/sync_lead/runs/r{i}/tasks/extract_changes?try_number={i}",
            "error": "RetriesExhausted: GET /api/data/v9.2/leads: code 503",
        }
        for i in range(2)
    ]
    for alert in sent:
        resp = requests.post(f"{base}/alerts", data=json.dumps(alert), timeout=10)
        assert resp.status_code == 202
    recorded = read_alerts(alerts)
    assert [{k: v for k, v in a.items() if k != "received_at"} for a in recorded] == sent
    assert all(a["received_at"].endswith("+00:00") for a in recorded)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    log_lines = [line for line in log_file.read_text().splitlines() if "ALERT " in line]
    assert len(log_lines) == 2
    assert "dag=sync_lead task=extract_changes run=manual__2026-11-26T10:01:00+00:00 try=2" in log_lines[1]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/alerts", b"not json", 400),
        ("/alerts", b"[1, 2]", 400),
        ("/alerts", b"", 400),
        ("/other", b"{}", 404),
    ],
)
def test_bad_requests_are_refused_and_record_nothing(
    sink: tuple[str, Path, subprocess.Popen[bytes], Path], path: str, body: bytes, status: int
) -> None:
    base, alerts, _proc, _log = sink
    resp = requests.post(f"{base}{path}", data=body, timeout=10)
    assert resp.status_code == status
    assert read_alerts(alerts) == []
