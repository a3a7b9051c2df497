"""A small client of Airflow's REST API v2: pause and unpause DAGs, trigger and watch runs.

The rebaseline pauses the sync DAGs with it (task code cannot write Airflow's metadata DB in
Airflow 3), with the ``airflow_api`` connection's login; the demo commands log in as the demo's
admin (the password its simple auth manager generated). The JWT is kept in memory only.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

if TYPE_CHECKING:
    from pathlib import Path


class AirflowApiError(RuntimeError):
    """The Airflow API refused a call; the message names the call and the status."""


def admin_password(airflow_home: Path, timeout_s: float = 30.0) -> str:
    """The admin password ``airflow standalone`` wrote into its home (waits for the file).

    Raises:
        FileNotFoundError: The file did not appear within ``timeout_s``.
    """
    file = airflow_home / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + timeout_s
    while not file.exists():
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"{file} does not exist; is the demo's Airflow running?")
        time.sleep(1)
    return str(json.loads(file.read_text())["admin"])


class AirflowApi:
    """The REST API v2 calls the rebaseline and the demo need.

    Args:
        base_url: ``http://127.0.0.1:<port>``.
        username: Login (``admin`` in the demo).
        password: Its password.
    """

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        resp = self.session.post(
            f"{self.base_url}/auth/token",
            json={"username": username, "password": password},
            timeout=timeout,
        )
        if resp.status_code not in (200, 201):
            raise AirflowApiError(f"POST /auth/token: HTTP {resp.status_code}")
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        attempts: int = 5,
        done_if_conflict: bool = False,
    ) -> Any:
        """One API call; a 5xx, a dropped connection or an answer that does not come in time is
        retried (SQLite's "database is locked" reaches the client as a 500 while the scheduler
        writes, and an API server on a busy machine can take longer than ``timeout``). Every call
        this class makes may be repeated: reads, pause switches, and triggers that name their run
        (``done_if_conflict``: a 409 on a repeat means the first attempt created it)."""
        for attempt in range(1, attempts + 1):
            try:
                resp = self.session.request(
                    method, f"{self.base_url}/api/v2/{path}", json=body, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout):
                if attempt == attempts:
                    raise
                time.sleep(2 * attempt)
                continue
            if resp.status_code >= 500 and attempt < attempts:
                time.sleep(2 * attempt)
                continue
            if resp.status_code == 409 and done_if_conflict and attempt > 1:
                return body
            if resp.status_code >= 400:
                raise AirflowApiError(f"{method} /api/v2/{path}: HTTP {resp.status_code} {resp.text[:300]}")
            return resp.json() if resp.content else None
        raise AirflowApiError(f"{method} /api/v2/{path}: no answer after {attempts} attempts")

    def dag_ids(self) -> set[str]:
        """Ids of every DAG the dag-processor has parsed so far."""
        found: set[str] = set()
        offset = 0
        while True:
            page = self._call("GET", f"dags?limit=100&offset={offset}")
            found |= {d["dag_id"] for d in page["dags"]}
            offset += len(page["dags"])
            if not page["dags"] or offset >= page["total_entries"]:
                return found

    def wait_for_dags(self, wanted: set[str], timeout_s: float) -> set[str]:
        """Wait until every DAG in ``wanted`` is listed; return those still missing at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = wanted - self.dag_ids()
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Pause or unpause one DAG."""
        self._call("PATCH", f"dags/{quote(dag_id)}", {"is_paused": paused})

    def reparse(self, dag_ids: list[str]) -> int:
        """Ask the DAG processor to parse the files of ``dag_ids`` now; returns the files asked for.

        An unpaused DAG's asset watchers are registered only when a parse finds it unpaused;
        without this they start at the processor's next pass over the file.
        """
        tokens = {str(self._call("GET", f"dags/{quote(d)}/details")["file_token"]) for d in dag_ids}
        for token in sorted(tokens):
            self._call("PUT", f"parseDagFile/{quote(token)}")
        return len(tokens)

    def run_count(self, dag_id: str) -> int:
        """How many runs ``dag_id`` has had (any state)."""
        return int(self._call("GET", f"dags/{quote(dag_id)}/dagRuns?limit=1")["total_entries"])

    def runs(self, dag_id: str, run_type: str | None = None, state: str | None = None) -> dict[str, str]:
        """Run id → state of ``dag_id``'s latest runs (100 at most), optionally of one run type
        and in one state (``running``)."""
        query = "limit=100&order_by=-run_after" + (f"&run_type={run_type}" if run_type else "")
        query += f"&state={state}" if state else ""
        page = self._call("GET", f"dags/{quote(dag_id)}/dagRuns?{query}")
        return {str(r["dag_run_id"]): str(r["state"]) for r in page["dag_runs"]}

    def fail_run(self, dag_id: str, run_id: str) -> None:
        """Mark one run failed: Airflow fails its running tasks and skips those not started."""
        self._call("PATCH", f"dags/{quote(dag_id)}/dagRuns/{quote(run_id)}", {"state": "failed"})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a manual run now; return its run id (named here, so a repeated POST is harmless)."""
        body = {
            "dag_run_id": f"manual__{datetime.now(UTC).isoformat()}",
            "logical_date": None,
            "conf": conf or {},
        }
        run = self._call("POST", f"dags/{quote(dag_id)}/dagRuns", body, done_if_conflict=True)
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        """State of one run (queued, running, success, failed)."""
        return str(self._call("GET", f"dags/{quote(dag_id)}/dagRuns/{quote(run_id)}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, tuple[str | None, int]]:
        """``task_id[map index]`` → (state, try number) of one run's task instances."""
        page = self._call("GET", f"dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances?limit=1000")
        out: dict[str, tuple[str | None, int]] = {}
        for ti in page["task_instances"]:
            name = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
            out[name] = (ti.get("state"), int(ti.get("try_number") or 0))
        return out

    def close(self) -> None:
        """Close the keep-alive connection."""
        self.session.close()
