"""``make demo-fault``: break one Dataverse endpoint and watch a sync task fail, retry, alert, recover.

``on`` switches the Dataverse emulator's faults on through its admin API (every call under the
``leads`` entity set answers 503, as in an outage of that service), triggers ``sync_lead`` and
prints its task states as they change and each alert that reaches the demo's alert sink. The
fault stays on until the first alert of that run has arrived (or ``--max-seconds``, 15 minutes
by default) and at least ``--min-seconds``; then it is switched off and the command waits until
``sync_lead`` succeeds again, triggering a fresh run if the broken one ran out of retries.
Ctrl-C switches the fault off too. ``off`` only switches faults off (both emulators).

Usage: ``python -m demo.faults on|off [--min-seconds 120] [--max-seconds 900]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from demo.alert_sink import read_alerts

if TYPE_CHECKING:
    from crm_sync.airflow_api import AirflowApi

DAG_ID = "sync_lead"
#: Every Dataverse call on the leads entity set fails: change tracking, reads and writes.
LEADS_ENDPOINT = "/api/data/v9.2/leads"


def outage(endpoint: str = LEADS_ENDPOINT, code: str = "503") -> dict[str, Any]:
    """The fault configuration of a full outage of one endpoint (every call answers ``code``)."""
    return {"error_rate": 1.0, "error_codes": [code], "endpoints": [endpoint]}


def set_faults(emulator_url: str, verify: str | bool, faults: dict[str, Any] | None) -> dict[str, Any]:
    """Switch an emulator's faults on (``faults``) or off (``None``); return what it now applies."""
    url = f"{emulator_url.rstrip('/')}/_emulator/faults"
    resp = (
        requests.put(url, json=faults, verify=verify, timeout=30)
        if faults is not None
        else requests.delete(url, verify=verify, timeout=30)
    )
    resp.raise_for_status()
    return dict(resp.json())


def alerts_for_run(alerts_file: Path, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The alerts recorded by the sink for one DAG run."""
    return [a for a in read_alerts(alerts_file) if a.get("dag_id") == dag_id and a.get("run_id") == run_id]


class Watcher:
    """Prints a run's task state changes and its new alerts, once each."""

    def __init__(self, api: AirflowApi, alerts_file: Path, dag_id: str, run_id: str) -> None:
        self.api = api
        self.alerts_file = alerts_file
        self.dag_id = dag_id
        self.run_id = run_id
        self.seen: dict[str, tuple[str | None, int]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def poll(self) -> str:
        """Print what changed since the last poll; return the run's state."""
        elapsed = time.monotonic() - self.started
        for task, (state, tries) in sorted(self.api.task_states(self.dag_id, self.run_id).items()):
            if self.seen.get(task) != (state, tries):
                self.seen[task] = (state, tries)
                print(f"[{elapsed:5.0f} s] {self.dag_id} {task}: {state} (try {tries})", flush=True)
        for alert in alerts_for_run(self.alerts_file, self.dag_id, self.run_id)[len(self.alerts) :]:
            self.alerts.append(alert)
            print(
                f"[{elapsed:5.0f} s] ALERT at the sink: task {alert.get('task_id')} try "
                f"{alert.get('try_number')}: {str(alert.get('error'))[:160]}\n"
                f"          log: {alert.get('log_url')}",
                flush=True,
            )
        return self.api.run_state(self.dag_id, self.run_id)


def demo_fault(
    api: AirflowApi,
    dynamics_url: str,
    verify: str | bool,
    alerts_file: Path,
    min_seconds: float,
    max_seconds: float,
    poll_s: float = 5.0,
) -> bool:
    """Run the whole fault demo; return True when ``sync_lead`` succeeded again at the end."""
    set_faults(dynamics_url, verify, outage())
    print(f"fault ON: every Dataverse call under {LEADS_ENDPOINT} answers 503", flush=True)
    try:
        run_id = api.trigger(DAG_ID)
        print(f"triggered {DAG_ID} run {run_id}; watch it at {api.base_url}/dags/{DAG_ID}", flush=True)
        watcher = Watcher(api, alerts_file, DAG_ID, run_id)
        state = "queued"
        while True:
            state = watcher.poll()
            elapsed = time.monotonic() - watcher.started
            if (watcher.alerts and elapsed >= min_seconds) or elapsed >= max_seconds or state == "success":
                break
            time.sleep(poll_s)
    finally:
        set_faults(dynamics_url, verify, None)
        print("fault OFF: Dataverse answers normally again", flush=True)
    if not watcher.alerts:
        print(f"no alert arrived within {max_seconds:.0f} s", flush=True)
    while state not in ("success", "failed"):
        time.sleep(poll_s)
        state = watcher.poll()
    if state == "failed":
        run_id = api.trigger(DAG_ID)
        print(f"{DAG_ID} ran out of retries; triggered run {run_id} to show the recovery", flush=True)
        watcher = Watcher(api, alerts_file, DAG_ID, run_id)
        state = watcher.poll()
        while state not in ("success", "failed"):
            time.sleep(poll_s)
            state = watcher.poll()
    print(f"{DAG_ID} run {watcher.run_id}: {state}", flush=True)
    return state == "success"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (used by ``make demo-fault`` / ``make demo-fault-off``)."""
    from crm_sync.airflow_api import AirflowApi, admin_password
    from crm_sync.localenv import AIRFLOW_API_PORT, DYNAMICS_EMULATOR_PORT, MARKETO_EMULATOR_PORT, PROJECT_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=["on", "off"])
    parser.add_argument("--stack-dir", type=Path, default=PROJECT_DIR)
    parser.add_argument("--min-seconds", type=float, default=120.0)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)
    ca_file = str(args.stack_dir / "var" / "emulators" / "ca" / "ca.pem")
    dynamics_url = f"https://127.0.0.1:{DYNAMICS_EMULATOR_PORT}"
    if args.command == "off":
        for url in (f"https://127.0.0.1:{MARKETO_EMULATOR_PORT}", dynamics_url):
            set_faults(url, ca_file, None)
        print("faults OFF on both emulators")
        return 0
    api = AirflowApi(
        f"http://127.0.0.1:{AIRFLOW_API_PORT}", "admin", admin_password(args.stack_dir / ".airflow")
    )
    try:
        ok = demo_fault(
            api,
            dynamics_url,
            ca_file,
            args.stack_dir / "var" / "log" / "alerts.jsonl",
            args.min_seconds,
            args.max_seconds,
        )
    finally:
        api.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
