"""Acceptance of the production shape: the sync on PostgreSQL + CeleryExecutor with two workers.

One isolated ``scripts/prod_stack.py`` stack (own databases, Redis dbs, ports and folder) serves
both tests of this module, because starting it is the expensive part; its emulators are seeded
small and keep their default limits (Marketo 100 calls/20 s and 10 concurrent, Dataverse 6,000
requests/5 min and 52 concurrent):

1. The stack as ``make prod-local`` starts it: the printed login, one PID file per component,
   every listener on 127.0.0.1, ``health`` healthy with both workers answering, the Variables
   pointing the tasks at PostgreSQL and shared staging, the state store migrated in its own
   database. ``check_connections`` and ``full_copy`` are triggered through the REST API and
   succeed, ``check_connections``' two tasks on Celery workers (each worker's log and the
   result backend on PostgreSQL agree). Records are then created and changed on both sides
   through the emulators' APIs; every ``sync_*`` DAG is triggered at once, and once more (that
   cycle carries back what Dataverse filled in on the leads created from Marketo).
   ``python -m crm_sync.reconcile check`` finds no difference, the changes arrived, the hooks
   counted their calls in the shared Redis limiter, and the emulators' stats show no limit hit
   and peak concurrency within the limits.
2. While ``sync_lead`` loads new leads (Marketo's person endpoint slowed down), the Celery worker
   running a load task is SIGKILLed with its whole process group (a lost worker host). The
   scheduler notices the missing task heartbeat (lowered to 30 s here), Airflow retries the task
   on the other worker, and the run succeeds: every new lead exists exactly once in Marketo and
   has exactly one id-map row. ``health`` then names the dead worker, and ``stop`` stops every
   process of the stack by PID.

The scheduler's own cron runs are off (``[scheduler] use_job_schedule``): only the runs the tests
trigger exist, so the figures belong to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import held_calls
from tests.support.prod_stack import (
    NEEDS_SERVICES,
    PG_HOST,
    PG_PORT,
    REDIS_URL,
    WORKERS,
    ProdStack,
    isolated_stack,
    listen_addresses,
    process_tree,
    worker_runs,
)
from tests.support.slots import stack_marks, stack_slot
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.slow,
    *stack_marks(minutes=8),  # the Celery stack's start, full_copy, two cycles of seven DAGs, the kill
    *NEEDS_SERVICES,
]

SEED_LEADS = 300  # Dataverse seed (contacts, accounts, opportunities, projects in proportion)
SYNC_DAGS = (
    "sync_user",
    "sync_team",
    "sync_account",
    "sync_contact",
    "sync_lead",
    "sync_opportunity",
    "sync_custom_new_project",
)
HEARTBEAT_TIMEOUT_S = 30
KILL_LEADS = 1200  # four load batches of 300
WRITE_LATENCY_MS = 4000  # each write call of a load task stays in flight for 4 s
LEADS_PATH = "/rest/v1/leads.json"
RUN_TIMEOUT_S = 420.0


@dataclass
class RunningStack:
    """A started stack: its settings, an authenticated REST API session and the emulators."""

    stack: ProdStack
    base: str
    api: requests.Session
    marketo_url: str
    dynamics_url: str
    ca_file: Path
    started: str  # what ``prod_stack.py start`` printed
    tree: set[int]  # the stack's processes right after the start
    figures: dict[str, Any] = field(default_factory=dict)

    def admin(self, side: str, method: str, path: str, body: Any = None) -> Any:
        """Call an emulator's admin API (``/_emulator/<path>``)."""
        url = self.marketo_url if side == "marketo" else self.dynamics_url
        resp = requests.request(
            method, f"{url}/_emulator/{path}", json=body, verify=str(self.ca_file), timeout=30
        )
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def trigger(self, dag_id: str) -> str:
        """Create a manual run of a (paused) DAG, then unpause it; returns the run id."""
        created = self.api.post(
            f"{self.base}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, timeout=60
        )
        assert created.status_code == 200, f"{dag_id}: {created.status_code} {created.text}"
        unpaused = self.api.patch(f"{self.base}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=60)
        assert unpaused.ok, unpaused.text
        return str(created.json()["dag_run_id"])

    def run_url(self, dag_id: str, run_id: str) -> str:
        return f"{self.base}/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api.get(self.run_url(dag_id, run_id), timeout=60).json()["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        resp = self.api.get(f"{self.run_url(dag_id, run_id)}/taskInstances", timeout=60)
        resp.raise_for_status()
        return list(resp.json()["task_instances"])

    def wait_runs(self, runs: dict[str, str], timeout_s: float = RUN_TIMEOUT_S) -> dict[str, float]:
        """Wait until every run ended; fail naming each unsuccessful one with its task states.

        Returns:
            Seconds from the call until each run was seen finished.
        """
        began = time.monotonic()
        deadline = began + timeout_s
        pending = dict(runs)
        states: dict[str, str] = {}
        finished: dict[str, float] = {}
        while pending and time.monotonic() < deadline:
            for dag_id, run_id in list(pending.items()):
                states[dag_id] = self.run_state(dag_id, run_id)
                if states[dag_id] in ("success", "failed"):
                    finished[dag_id] = time.monotonic() - began
                    del pending[dag_id]
            if pending:
                time.sleep(3)
        failed = {d: s for d, s in states.items() if s != "success"}
        if failed:
            details = {
                dag_id: sorted(
                    (ti["task_id"], ti["map_index"], ti["state"], ti["try_number"])
                    for ti in self.task_instances(dag_id, runs[dag_id])
                )
                for dag_id in failed
            }
            pytest.fail(f"runs not successful within {timeout_s:.0f} s: {failed}; tasks: {details}")
        return finished


def _login(base: str, password: str) -> requests.Session:
    token = requests.post(
        f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=60
    ).json()["access_token"]
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    return api


def _connections(running: RunningStack, limiter_url: str) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` values aimed at the stack's emulators, drawing on the stack's limiter.

    The test's own calls (changes, checks, reconcile) count against the same Redis budget as the
    workers' calls, so they cannot push the emulators over their limits either.
    """
    m_cred = default_credentials("marketo_default")
    d_cred = default_credentials("dynamics_default")
    ca = str(running.ca_file)
    return {
        "AIRFLOW_CONN_MARKETO_DEFAULT": json.dumps(
            {
                "conn_type": "marketo",
                "host": running.marketo_url,
                "login": m_cred.client_id,
                "password": m_cred.client_secret,
                "extra": {"ca_bundle": ca, "timeout": 60, "limiter_url": limiter_url},
            }
        ),
        "AIRFLOW_CONN_DYNAMICS_DEFAULT": json.dumps(
            {
                "conn_type": "dynamics",
                "host": running.dynamics_url,
                "login": d_cred.client_id,
                "password": d_cred.client_secret,
                "extra": {
                    "ca_bundle": ca,
                    "tenant_id": d_cred.tenant_id,
                    "authority_host": running.dynamics_url,
                    "api_version": "9.2",
                    "timeout": 60,
                    "limiter_url": limiter_url,
                },
            }
        ),
    }


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """One started stack for the module; stopped, its databases dropped, at the end."""
    from crm_sync_hooks.caches import clear_process_caches

    home = tmp_path_factory.mktemp("prod-sync")
    extra_env = {
        "MDS_DEMO_SCALE": str(SEED_LEADS),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }
    with (
        stack_slot("test_prod_sync"),
        isolated_stack(home, extra_env) as stack,
        pytest.MonkeyPatch.context() as mp,
    ):
        began = time.monotonic()
        started = stack.run("start", timeout=400)
        assert started.returncode == 0, started.stdout + started.stderr
        password = re.search(r"^Login:       admin / (\S+)$", started.stdout, re.M)
        assert password, started.stdout
        base = f"http://127.0.0.1:{stack.port}"
        result = RunningStack(
            stack=stack,
            base=base,
            api=_login(base, password.group(1)),
            marketo_url=f"https://127.0.0.1:{stack.env['MDS_MARKETO_PORT']}",
            dynamics_url=f"https://127.0.0.1:{stack.env['MDS_DYNAMICS_PORT']}",
            ca_file=home / "var" / "emulators" / "ca" / "ca.pem",
            started=started.stdout,
            tree=process_tree(home / ".run"),
        )
        result.figures["start_s"] = round(time.monotonic() - began, 1)
        for name, value in _connections(result, f"{REDIS_URL}/{stack.limiter_db}").items():
            mp.setenv(name, value)
        clear_process_caches()
        try:
            wait_until(
                "every DAG parsed",
                180,
                lambda: all(
                    result.api.get(f"{base}/api/v2/dags/{d}", timeout=60).status_code == 200
                    for d in ("check_connections", "full_copy", *SYNC_DAGS)
                ),
            )
            yield result
        finally:
            clear_process_caches()
            result.api.close()
            print(f"prod-sync figures: {json.dumps(result.figures, sort_keys=True)}")


def _state_url(stack: ProdStack) -> str:
    return f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{stack.state_db}"


def _linked_ids(stack: ProdStack, entity: str, count: int) -> list[str]:
    """Dynamics ids of ``count`` records of ``entity`` the id map links to Marketo."""
    rows = stack.query(
        stack.state_db,
        "SELECT dynamics_id FROM id_map WHERE entity = %s AND state = 'active' "
        "AND marketo_id IS NOT NULL ORDER BY dynamics_id LIMIT %s",
        (entity, count),
    )
    ids = [str(r[0]) for r in rows]
    assert len(ids) == count, f"only {len(ids)} linked {entity} records after full_copy"
    return ids


def _marketo_persons(field_name: str, values: list[str], fields: list[str]) -> list[dict[str, Any]]:
    from crm_sync_hooks.marketo import MarketoHook

    mkto = MarketoHook("marketo_default")
    try:
        return [row for page in mkto.get_leads(field_name, values, fields=fields) for row in page]
    finally:
        mkto.close()


def _make_changes(running: RunningStack, tag: str) -> dict[str, Any]:
    """Create and change records on both sides through the emulators' APIs; returns what to expect."""
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

    stack = running.stack
    expected: dict[str, Any] = {}
    dyn = DynamicsHook("dynamics_default")
    mkto = MarketoHook("marketo_default")
    try:
        # Dynamics: new leads, edited contacts, accounts, opportunities and projects.
        new_leads = [
            {
                "leadid": str(uuid.uuid4()),
                "firstname": "Prod",
                "lastname": f"Lead {tag} {i}",
                "emailaddress1": f"prod.lead.{tag}.{i}@example.com",
            }
            for i in range(4)
        ]
        contacts = {cid: f"Engineer {tag} {i}" for i, cid in enumerate(_linked_ids(stack, "contact", 3))}
        accounts = {aid: f"City {tag} {i}" for i, aid in enumerate(_linked_ids(stack, "account", 2))}
        opportunities = {oid: f"Deal {tag} {i}" for i, oid in enumerate(_linked_ids(stack, "opportunity", 2))}
        projects = {pid: f"Project {tag} {i}" for i, pid in enumerate(_linked_ids(stack, "new_project", 2))}
        writes: list[tuple[str, str, list[dict[str, Any]]]] = [
            ("leads", "leadid", new_leads),
            ("contacts", "contactid", [{"contactid": k, "jobtitle": v} for k, v in contacts.items()]),
            ("accounts", "accountid", [{"accountid": k, "address1_city": v} for k, v in accounts.items()]),
            (
                "opportunities",
                "opportunityid",
                [{"opportunityid": k, "name": v} for k, v in opportunities.items()],
            ),
            (
                "new_projects",
                "new_projectid",
                [{"new_projectid": k, "new_name": v} for k, v in projects.items()],
            ),
        ]
        for entity_set, key, rows in writes:
            results = dyn.upsert_records(entity_set, rows, [key], id_column=key)
            assert all(r.ok for r in results), (entity_set, [r for r in results if not r.ok])
        expected["dynamics_new_leads"] = {r["leadid"]: r["lastname"] for r in new_leads}
        expected["contact_titles"] = contacts
        # Marketo: new persons (half flagged for creation in Dynamics), edits of linked leads.
        persons = [
            {
                "firstName": "Mkto",
                "lastName": f"Person {tag} {i}",
                "email": f"mkto.person.{tag}.{i}@example.com",
                **({"msdSyncToDynamics": True} if i % 2 == 0 else {}),
            }
            for i in range(4)
        ]
        results = mkto.sync_leads(persons, action="createOnly", lookup_field="email")
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        expected["flagged_emails"] = [p["email"] for p in persons if p.get("msdSyncToDynamics")]
        lead_titles = {lid: f"Director {tag} {i}" for i, lid in enumerate(_linked_ids(stack, "lead", 2))}
        edits = [{"externalPersonId": k, "title": v} for k, v in lead_titles.items()]
        results = mkto.sync_leads(edits, action="updateOnly", lookup_field="externalPersonId")
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        expected["lead_titles"] = lead_titles
    finally:
        dyn.close()
        mkto.close()
    return expected


def _check_changes_arrived(running: RunningStack, expected: dict[str, Any]) -> None:
    """Each change made before the concurrent runs is on the other side now."""
    from crm_sync_hooks.dynamics import DynamicsHook

    errors = _open_errors(running.stack)
    new_leads: dict[str, str] = expected["dynamics_new_leads"]
    got = {
        str(p["externalPersonId"]).lower(): p["lastName"]
        for p in _marketo_persons("externalPersonId", list(new_leads), ["externalPersonId", "lastName"])
    }
    assert got == {k.lower(): v for k, v in new_leads.items()}, errors
    titles: dict[str, str] = expected["contact_titles"]
    got = {
        str(p["externalPersonId"]).lower(): p["title"]
        for p in _marketo_persons("externalPersonId", list(titles), ["externalPersonId", "title"])
    }
    assert got == {k.lower(): v for k, v in titles.items()}, errors
    dyn = DynamicsHook("dynamics_default")
    try:
        for email in expected["flagged_emails"]:
            rows = [
                r
                for page in dyn.query(
                    "leads", select=["leadid", "emailaddress1"], filter=f"emailaddress1 eq '{email}'"
                )
                for r in page
            ]
            assert len(rows) == 1, f"Marketo person {email} flagged for Dynamics: {len(rows)} leads; {errors}"
        lead_titles: dict[str, str] = expected["lead_titles"]
        for lead_id, title in lead_titles.items():
            rows = [
                r
                for page in dyn.query("leads", select=["jobtitle"], filter=f"leadid eq {lead_id}")
                for r in page
            ]
            assert [r["jobtitle"] for r in rows] == [title], (lead_id, errors)
    finally:
        dyn.close()


def _reconcile(running: RunningStack) -> tuple[int, str, float]:
    """``python -m crm_sync.reconcile check`` against the stack; (exit status, output, seconds)."""
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "crm_sync.reconcile", "check", "--state-url", _state_url(running.stack)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - began


def _limit_figures(running: RunningStack) -> dict[str, Any]:
    """Each emulator's limit hits and peak concurrency next to its configured concurrency limit.

    Marketo reports its limits (``GET /_emulator/limits``). The Dataverse emulator only changes
    them through ``POST``, which also restarts its windows, so its configured values are the
    defaults the stack starts it with (``scripts/stack.py`` passes no limit options).
    """
    from emulators.dynamics.limits import LimitConfig

    marketo_limits = running.admin("marketo", "GET", "limits")
    dynamics_limits = LimitConfig()
    configured = {
        "marketo": (marketo_limits["enabled"], marketo_limits["max_concurrent"]),
        "dynamics": (dynamics_limits.enabled, dynamics_limits.concurrency),
    }
    out: dict[str, Any] = {}
    for side, (enabled, concurrency) in configured.items():
        stats = running.admin(side, "GET", "stats")
        out[side] = {
            "total_calls": stats["total_calls"],
            "limit_hits": dict(stats["limit_hits"]),
            "max_in_flight": stats["max_in_flight"],
            "concurrency_limit": concurrency,
            "limits_enabled": enabled,
            "statuses": dict(stats["statuses"]),
        }
    return out


def _open_errors(stack: ProdStack) -> list[tuple[object, ...]]:
    """Unresolved record errors in the state store (entity, direction, record, field, code, message)."""
    return stack.query(
        stack.state_db,
        "SELECT entity, direction, source_id, field, code, message FROM record_error "
        "WHERE resolved_at IS NULL ORDER BY entity, source_id LIMIT 20",
    )


def _sync_round(running: RunningStack, name: str) -> dict[str, str]:
    """Trigger every sync DAG at once and wait until all succeeded; records the figures."""
    began = time.monotonic()
    runs = {dag_id: running.trigger(dag_id) for dag_id in SYNC_DAGS}
    finished = running.wait_runs(runs)
    running.figures[name] = {
        "all_s": round(time.monotonic() - began, 1),
        "finished_s": {d: round(s, 1) for d, s in sorted(finished.items(), key=lambda x: x[1])},
    }
    return runs


COMPONENTS = {
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-api-server",
    "airflow-triggerer",
    "celery-worker1",
    "celery-worker2",
    "emulator-marketo",
    "emulator-dynamics",
}


def _check_started_stack(running: RunningStack) -> None:
    """The stack as ``make prod-local`` leaves it: login printed, components up, 127.0.0.1 only."""
    stack = running.stack
    assert f"Airflow UI:  http://127.0.0.1:{stack.port}" in running.started
    assert {p.stem for p in (stack.home / ".run").glob("*.pid")} == COMPONENTS
    listeners = listen_addresses(running.tree)
    assert ("127.0.0.1", stack.port) in listeners
    assert {ip for ip, _ in listeners} == {"127.0.0.1"}, listeners

    health = stack.run("health", timeout=60)
    assert health.returncode == 0, health.stdout + health.stderr
    for line in ("scheduler: healthy", "triggerer: healthy", "dag_processor: healthy"):
        assert line in health.stdout
    for worker in WORKERS:
        assert f"celery {worker}: pong" in health.stdout
    assert "state store: revision " in health.stdout

    # The tasks find the state store on PostgreSQL and staging on the shared location.
    variables = {
        key: running.api.get(f"{running.base}/api/v2/variables/{key}", timeout=60).json()["value"]
        for key in ("mds_state_db_url", "mds_staging_path")
    }
    assert variables == {
        "mds_state_db_url": _state_url(stack),
        "mds_staging_path": stack.env["MDS_PROD_STAGING_URL"],
    }
    # The state store's tables exist in its own PostgreSQL database, created by the migrations.
    from crm_sync.state.models import Base

    tables = {
        str(name)
        for (name,) in stack.query(
            stack.state_db,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
    }
    assert set(Base.metadata.tables) | {"alembic_version"} <= tables, tables


def _check_ran_on_celery_workers(running: RunningStack, dag_id: str, run_id: str) -> None:
    """Each task instance of the run was executed by a Celery worker: its own log says so, and the
    Celery result backend on PostgreSQL names the same worker for that Celery task."""
    stack = running.stack
    placed = worker_runs(stack.home)
    for ti in running.task_instances(dag_id, run_id):
        assert ti["id"] in placed, f"no Celery worker log mentions task instance {ti['id']}"
        worker, celery_id = placed[ti["id"]]

        def result_row(celery_id: str = celery_id) -> list[tuple[object, ...]]:
            rows = stack.query(
                stack.airflow_db,
                "SELECT status, worker FROM celery_taskmeta WHERE task_id = %s",
                (celery_id,),
            )
            return rows if rows and rows[0][0] == "SUCCESS" else []

        rows = wait_until(f"Celery result of {celery_id}", 30, result_row)
        assert isinstance(rows, list)
        assert str(rows[0][1]).split("@", 1)[0] == worker


def _limiter_scopes(stack: ProdStack) -> set[str]:
    """The API budgets the hooks counted in the stack's shared Redis limiter."""
    import redis

    limiter = redis.Redis.from_url(f"{REDIS_URL}/{stack.limiter_db}")
    try:
        return {key.decode() for key in limiter.scan_iter("crm_sync:limiter:*")}
    finally:
        limiter.close()


def test_full_copy_then_every_sync_dag_at_once_on_two_celery_workers_stays_within_the_api_limits(
    running: RunningStack,
) -> None:
    figures = running.figures
    _check_started_stack(running)
    began = time.monotonic()
    first = {dag_id: running.trigger(dag_id) for dag_id in ("check_connections", "full_copy")}
    finished = running.wait_runs(first)
    figures["check_connections_s"] = round(finished["check_connections"], 1)
    figures["full_copy_s"] = round(time.monotonic() - began, 1)
    tests = running.task_instances("check_connections", first["check_connections"])
    assert sorted((ti["task_id"], ti["map_index"], ti["state"]) for ti in tests) == [
        ("check_setup", -1, "success"),  # the seeded emulators hold everything the entities need
        ("test_connection", 0, "success"),
        ("test_connection", 1, "success"),
    ]
    _check_ran_on_celery_workers(running, "check_connections", first["check_connections"])
    copied = running.stack.query(
        running.stack.state_db, "SELECT entity, count(*) FROM id_map GROUP BY entity ORDER BY entity"
    )
    figures["id_map_after_full_copy"] = {str(e): int(str(n)) for e, n in copied}
    assert figures["id_map_after_full_copy"].get("lead", 0) > 0, copied

    # Changes on both sides right after the copy, then every DAG at once. The copy gave each
    # person entity its own watermark on the Marketo person feed where the copy started it
    # (e54e2d4), so sync_lead and sync_contact both read every person change made since; before
    # that, the first of them to extract moved the shared head past changes the other never read.
    expected = _make_changes(running, uuid.uuid4().hex[:6])
    runs = _sync_round(running, "first_cycle")
    # Leads the first cycle created in Dynamics from Marketo persons got Dynamics' own values
    # (owner, status, created on); one more cycle carries them back, as in `make demo-check`.
    _sync_round(running, "second_cycle")
    figures["open_record_errors"] = [list(map(str, row)) for row in _open_errors(running.stack)]

    # Seven DAGs' task instances really shared the two workers.
    placed = worker_runs(running.stack.home)
    used = {
        placed[ti["id"]][0]
        for dag_id, run_id in runs.items()
        for ti in running.task_instances(dag_id, run_id)
        if ti["id"] in placed
    }
    assert used == set(WORKERS), used

    _check_changes_arrived(running, expected)
    status, output, seconds = _reconcile(running)
    figures["reconcile_s"] = round(seconds, 1)
    assert status == 0, output
    assert "no differences" in output.lower(), output

    # The hooks counted their calls in the shared Redis limiter, not in a per-host SQLite file.
    scopes = _limiter_scopes(running.stack)
    assert any("marketo:" in key for key in scopes), scopes
    assert any("dynamics:" in key for key in scopes), scopes

    limits = _limit_figures(running)
    figures["limits"] = limits
    print(json.dumps(limits, indent=1, sort_keys=True))
    for side, fig in limits.items():
        assert fig["limits_enabled"], f"{side} emulator limits are off"
        assert fig["limit_hits"] == {}, f"{side}: limit hits {fig['limit_hits']}"
        assert 0 < fig["max_in_flight"] <= fig["concurrency_limit"], (side, fig)


def _lead_writes_and_held(running: RunningStack) -> tuple[int, int]:
    """Person records Marketo wrote, and person calls its latency fault holds open, right now."""
    stats: dict[str, Any] = running.admin("marketo", "GET", "stats")
    return int(stats.get("records", {}).get("lead.write", 0)), held_calls(stats, f"POST {LEADS_PATH}")


def test_worker_sigkilled_mid_load_loses_and_duplicates_no_record(running: RunningStack) -> None:
    from crm_sync_hooks.dynamics import DynamicsHook

    figures = running.figures
    tag = uuid.uuid4().hex[:6]
    guids = [str(uuid.uuid4()) for _ in range(KILL_LEADS)]
    dyn = DynamicsHook("dynamics_default")
    try:
        rows = [
            {"leadid": g, "lastname": f"Kill {tag} {i}", "emailaddress1": f"kill.{tag}.{i}@example.com"}
            for i, g in enumerate(guids)
        ]
        results = dyn.upsert_records("leads", rows, ["leadid"], id_column="leadid", batch_size=500)
        assert all(r.ok for r in results)
    finally:
        dyn.close()
    writes_before, _ = _lead_writes_and_held(running)
    running.admin("marketo", "PUT", "faults", {"latency_ms": WRITE_LATENCY_MS, "endpoints": [LEADS_PATH]})
    run_dir = running.stack.home / ".run"
    try:
        run_id = running.trigger("sync_lead")
        began = time.monotonic()
        victim: tuple[str, int, list[dict[str, Any]]] | None = None
        deadline = began + 300
        while victim is None and time.monotonic() < deadline:
            written, held = _lead_writes_and_held(running)
            written -= writes_before
            # Mid-load, as the emulator sees it: a person write is held open by the latency
            # fault (sent by a load task, not yet applied), so it cannot land before the kill.
            if held > 0:
                # The worker running the most load tasks right now: its writes are in flight.
                placed = worker_runs(running.stack.home)
                loading: dict[str, list[dict[str, Any]]] = {}
                for ti in running.task_instances("sync_lead", run_id):
                    if ti["task_id"] == "load" and ti["state"] == "running" and ti["id"] in placed:
                        loading.setdefault(placed[ti["id"]][0], []).append(ti)
                if loading:
                    worker = max(loading, key=lambda w: len(loading[w]))
                    pid = int((run_dir / f"celery-{worker}.pid").read_text())
                    # Looked up again: the task-instance calls above took time.
                    written, held = _lead_writes_and_held(running)
                    if held > 0:
                        os.killpg(pid, signal.SIGKILL)
                        victim = (worker, written - writes_before, loading[worker])
                        continue
            if written >= KILL_LEADS or running.run_state("sync_lead", run_id) in ("success", "failed"):
                pytest.fail(f"sync_lead wrote {written} of {KILL_LEADS} leads before a kill was possible")
            time.sleep(0.2)
        assert victim is not None, (
            "within 300 s, no load task was seen running while the emulator held a person write open"
        )
        worker, written_at_kill, killed = victim
        figures["kill"] = {
            "worker": worker,
            "lead_writes_at_kill": written_at_kill,
            "after_s": round(time.monotonic() - began, 1),
            "running_loads_killed": sorted(
                f"load[{ti['map_index']}] try {ti['try_number']}" for ti in killed
            ),
        }
        wait_until(
            f"{worker}'s process group gone",
            30,
            lambda: not psutil.pid_exists(int((run_dir / f"celery-{worker}.pid").read_text())),
        )
        # The rest of the run needs no slow writes: the kill has happened.
        running.admin("marketo", "DELETE", "faults")
        running.wait_runs({"sync_lead": run_id}, timeout_s=RUN_TIMEOUT_S)
        figures["kill"]["run_s"] = round(time.monotonic() - began, 1)
    finally:
        with contextlib.suppress(requests.RequestException):
            running.admin("marketo", "DELETE", "faults")

    # The killed load tasks were retried (a later try) on the surviving worker, and succeeded.
    final = {
        ti["map_index"]: ti for ti in running.task_instances("sync_lead", run_id) if ti["task_id"] == "load"
    }
    retried = [
        final[ti["map_index"]] for ti in killed if final[ti["map_index"]]["try_number"] > ti["try_number"]
    ]
    assert retried, f"none of the killed load tasks was retried: {[final[t['map_index']] for t in killed]}"
    placed = worker_runs(running.stack.home)
    survivor = next(w for w in WORKERS if w != worker)
    for ti in retried:
        assert ti["state"] == "success", ti
        assert placed.get(ti["id"], ("?",))[0] == survivor, (ti["id"], placed.get(ti["id"]))
    figures["kill"]["retried"] = sorted(
        f"load[{ti['map_index']}] try {ti['try_number']} on {survivor}" for ti in retried
    )

    # No record lost or duplicated: each key exactly once in Marketo, one id-map row per lead.
    persons = _marketo_persons("externalPersonId", guids, ["id", "externalPersonId", "email"])
    keys = [str(p["externalPersonId"]).lower() for p in persons]
    assert len(keys) == len(set(keys)), "a lead is in Marketo more than once"
    assert set(keys) == {g.lower() for g in guids}, f"{len(set(guids) - set(keys))} leads missing"
    emails = [
        str(p["email"])
        for p in _marketo_persons(
            "email", [f"kill.{tag}.{i}@example.com" for i in range(KILL_LEADS)], ["id", "email"]
        )
    ]
    assert len(emails) == KILL_LEADS, f"{len(emails)} Marketo persons hold the {KILL_LEADS} emails"
    stack = running.stack
    links = stack.query(
        stack.state_db,
        "SELECT dynamics_id, count(*), count(DISTINCT marketo_id) FROM id_map "
        "WHERE entity = 'lead' AND dynamics_id = ANY(%s) GROUP BY dynamics_id",
        ([g.lower() for g in guids],),
    )
    assert len(links) == KILL_LEADS, f"{KILL_LEADS - len(links)} leads have no id-map row"
    assert all(n == 1 and m == 1 for _, n, m in links), [r for r in links if r[1:] != (1, 1)][:5]
    ids = {str(p["id"]) for p in persons}
    mapped = {
        str(m)
        for (m,) in stack.query(
            stack.state_db,
            "SELECT marketo_id FROM id_map WHERE entity = 'lead' AND dynamics_id = ANY(%s)",
            ([g.lower() for g in guids],),
        )
    }
    assert mapped == ids
    print(f"kill figures: {json.dumps(figures['kill'], sort_keys=True)}")

    # health notices the worker that died: its PID is dead and it no longer answers the ping.
    victim_pid = int((run_dir / f"celery-{worker}.pid").read_text())
    degraded = stack.run("health", timeout=60)
    assert degraded.returncode != 0, degraded.stdout
    assert f"celery-{worker}: dead (pid {victim_pid})" in degraded.stdout
    assert f"celery {worker}: no answer" in degraded.stdout
    assert f"celery {survivor}: pong" in degraded.stdout

    # stop ends every process of the stack by PID, the ones started since the start included.
    tree = running.tree | process_tree(run_dir)
    began = time.monotonic()
    stopped = stack.run("stop", timeout=120)
    figures["stop_s"] = round(time.monotonic() - began, 1)
    assert stopped.returncode == 0, stopped.stderr
    assert not list(run_dir.glob("*.pid"))
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert alive == [], alive
