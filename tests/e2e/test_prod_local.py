"""``scripts/prod_stack.py`` runs Airflow in its production shape on this machine and stops it by PID.

PostgreSQL holds Airflow's metadata (and the Celery results) and the sync's state store; Redis is
the Celery broker and holds the API limiter's counters; scheduler, dag-processor, API server,
triggerer and two Celery workers run as separate processes. The test starts an isolated stack (its
own databases, Redis db numbers, ports and run folder), runs ``check_connections`` through the REST
API, shows where its tasks ran, stops everything and drops what it created.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.emulator_procs import free_port
from tests.support.wait import wait_until

PROJECT_DIR = Path(__file__).resolve().parents[2]
PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}"
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}"
WORKERS = ("worker1", "worker2")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.stack,
    pytest.mark.timeout(1500),  # a stack test may first wait for a stack slot: that wait counts too
    pytest.mark.skipif(
        not _reachable(PG_HOST, PG_PORT), reason=f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}"
    ),
    pytest.mark.skipif(
        not _reachable(REDIS_HOST, REDIS_PORT), reason=f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT}"
    ),
]


@dataclass
class ProdStack:
    """An isolated prod-local stack's settings (not started yet)."""

    env: dict[str, str]
    home: Path
    airflow_db: str
    state_db: str
    broker_db: int
    limiter_db: int

    @property
    def port(self) -> int:
        return int(self.env["MDS_AIRFLOW_PORT"])

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(PROJECT_DIR / "scripts" / "prod_stack.py"), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def query(
        self, database: str, statement: str, params: tuple[object, ...] = ()
    ) -> list[tuple[object, ...]]:
        import psycopg2

        conn = psycopg2.connect(f"{PG_URL}/{database}", connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return list(cur.fetchall())
        finally:
            conn.close()


CLAIM_KEY = "mds-test:claimed-by"


def _free_redis_dbs(count: int, tag: str) -> list[int]:
    """Claim ``count`` Redis db numbers that held no keys, for this test alone.

    Only dbs 3..14 are considered: db 0 is everyone's default and db 15 belongs to the limiter's
    own tests, so flushing ours afterwards never touches another test's keys. A db is claimed by
    writing ``CLAIM_KEY`` with SET NX and then finding it the only key: two tests running at once
    (pytest-xdist workers) can never both take the same db, which "holds no keys" alone allowed.
    """
    import redis

    found: list[int] = []
    for number in range(14, 2, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
        try:
            if client.set(CLAIM_KEY, tag, nx=True):
                if client.dbsize() == 1:
                    found.append(number)
                else:  # keys of someone who does not claim: leave the db to them
                    client.delete(CLAIM_KEY)
        finally:
            client.close()
        if len(found) == count:
            return found
    for number in found:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
        try:
            client.delete(CLAIM_KEY)
        finally:
            client.close()
    pytest.fail(f"no {count} empty Redis databases among 3..14 (found {found}); is another stack running?")


def _drop_databases(*names: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(f"{PG_URL}/postgres", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in names:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


@contextlib.contextmanager
def isolated_stack(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[ProdStack]:
    """Settings for a stack that shares nothing with a developer's demo or prod-local stack.

    Its own folder (``home``), ports, PostgreSQL databases and empty Redis db numbers; on exit the
    stack is stopped (a no-op when the test already stopped it), its databases are dropped and
    its Redis dbs flushed. ``extra_env`` adds settings for every process of the stack.
    """
    import redis

    tag = uuid.uuid4().hex[:8]
    broker_db, limiter_db = _free_redis_dbs(2, tag)
    env = dict(os.environ)
    for var in ("AIRFLOW_HOME", "AIRFLOW__CORE__FERNET_KEY", "MDS_TEST_AIRFLOW_HOME"):
        env.pop(var, None)
    env.update(
        {
            "MDS_STACK_DIR": str(home),
            "MDS_AIRFLOW_PORT": str(free_port()),
            "MDS_MARKETO_PORT": str(free_port()),
            "MDS_DYNAMICS_PORT": str(free_port()),
            "MDS_PROD_PG_URL": PG_URL,
            "MDS_PROD_AIRFLOW_DB": f"mds_test_{tag}_airflow",
            "MDS_PROD_STATE_DB": f"mds_test_{tag}_state",
            "MDS_PROD_REDIS_URL": REDIS_URL,
            "MDS_PROD_BROKER_DB": str(broker_db),
            "MDS_PROD_LIMITER_DB": str(limiter_db),
            "MDS_PROD_STAGING_URL": f"file://{home / 'shared-staging'}",
            **(extra_env or {}),
        }
    )
    stack = ProdStack(
        env=env,
        home=home,
        airflow_db=env["MDS_PROD_AIRFLOW_DB"],
        state_db=env["MDS_PROD_STATE_DB"],
        broker_db=broker_db,
        limiter_db=limiter_db,
    )
    try:
        yield stack
    finally:
        stack.run("stop", timeout=120)  # a no-op when the test stopped it; a safety net otherwise
        _drop_databases(stack.airflow_db, stack.state_db)
        for number in (broker_db, limiter_db):
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
            try:
                client.flushdb()
            finally:
                client.close()


@pytest.fixture
def prod_stack(tmp_path: Path, stack_slot_held: int) -> Iterator[ProdStack]:
    """An isolated stack's settings for one test (see :func:`isolated_stack`)."""
    with isolated_stack(tmp_path) as stack:
        yield stack


def _process_tree(run_dir: Path) -> set[int]:
    """PIDs of every process the stack's PID files lead, with all their descendants."""
    tree: set[int] = set()
    for file in run_dir.glob("*.pid"):
        pid = int(file.read_text())
        tree.add(pid)
        try:
            tree |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:  # a component that died (or was killed by the test)
            continue
    return tree


def _listen_addresses(pids: set[int]) -> set[tuple[str, int]]:
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    }


def _worker_runs(home: Path) -> dict[str, tuple[str, str]]:
    """Map each task-instance id a worker log says it executed to (worker, Celery task id)."""
    found: dict[str, tuple[str, str]] = {}
    pattern = re.compile(
        r"\[([0-9a-f-]{36})\] Executing workload in Celery: .*?TaskInstanceDTO\(id=UUID\('([^']+)'\)"
    )
    for worker in WORKERS:
        text = (home / "var" / "log" / f"celery-{worker}.log").read_text(errors="replace")
        for celery_id, ti_id in pattern.findall(text):
            found[ti_id] = (worker, celery_id)
    return found


def test_prod_local_runs_check_connections_on_celery_workers_reports_health_and_stops_by_pid(
    prod_stack: ProdStack,
) -> None:
    timings: dict[str, float] = {}
    began = time.monotonic()
    started = prod_stack.run("start")
    timings["start"] = time.monotonic() - began
    run_dir = prod_stack.home / ".run"
    tree: set[int] = set()
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"Airflow UI:  http://127.0.0.1:{prod_stack.port}" in started.stdout
        assert re.search(r"^Login:       admin / \S+$", started.stdout, re.M), started.stdout
        assert {p.stem for p in run_dir.glob("*.pid")} == {
            "airflow-scheduler",
            "airflow-dag-processor",
            "airflow-api-server",
            "airflow-triggerer",
            "celery-worker1",
            "celery-worker2",
            "emulator-marketo",
            "emulator-dynamics",
        }
        tree = _process_tree(run_dir)
        listeners = _listen_addresses(tree)
        assert (("127.0.0.1", prod_stack.port)) in listeners
        assert {ip for ip, _ in listeners} == {"127.0.0.1"}, listeners

        health = prod_stack.run("health", timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        for line in ("scheduler: healthy", "triggerer: healthy", "dag_processor: healthy"):
            assert line in health.stdout
        for worker in WORKERS:
            assert f"celery {worker}: pong" in health.stdout
        assert "state store: revision " in health.stdout

        base = f"http://127.0.0.1:{prod_stack.port}"
        password = re.search(r"^Login:       admin / (\S+)$", started.stdout, re.M).group(1)  # type: ignore[union-attr]
        token = requests.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30
        ).json()["access_token"]
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {token}"
        # The tasks find the state store on PostgreSQL and staging on the shared location.
        variables = {
            key: api.get(f"{base}/api/v2/variables/{key}", timeout=30).json()["value"]
            for key in ("mds_state_db_url", "mds_staging_path")
        }
        assert variables == {
            "mds_state_db_url": f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{prod_stack.state_db}",
            "mds_staging_path": prod_stack.env["MDS_PROD_STAGING_URL"],
        }
        wait_until(
            "check_connections parsed",
            90,
            lambda: api.get(f"{base}/api/v2/dags/check_connections", timeout=30).status_code == 200,
        )
        began = time.monotonic()
        created = api.post(
            f"{base}/api/v2/dags/check_connections/dagRuns", json={"logical_date": None}, timeout=30
        )
        assert created.status_code == 200, created.text
        run_id = created.json()["dag_run_id"]
        assert api.patch(f"{base}/api/v2/dags/check_connections", json={"is_paused": False}, timeout=30).ok
        run_url = f"{base}/api/v2/dags/check_connections/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        state = wait_until(
            "check_connections run finished",
            120,
            lambda: (s := api.get(run_url, timeout=30).json()["state"]) in ("success", "failed") and s,
        )
        timings["run"] = time.monotonic() - began
        tis = api.get(f"{run_url}/taskInstances", timeout=30).json()["task_instances"]
        assert state == "success", tis
        assert sorted((ti["task_id"], ti["map_index"], ti["state"]) for ti in tis) == [
            ("test_connection", 0, "success"),
            ("test_connection", 1, "success"),
        ]

        # Each task instance was executed by one of the two Celery workers (its own log says so), and
        # the Celery result backend on PostgreSQL names the same worker for that Celery task.
        runs = _worker_runs(prod_stack.home)
        for ti in tis:
            assert ti["id"] in runs, f"no Celery worker log mentions task instance {ti['id']}"
            worker, celery_id = runs[ti["id"]]

            def result_row(celery_id: str = celery_id) -> list[tuple[object, ...]]:
                rows = prod_stack.query(
                    prod_stack.airflow_db,
                    "SELECT status, worker FROM celery_taskmeta WHERE task_id = %s",
                    (celery_id,),
                )
                return rows if rows and rows[0][0] == "SUCCESS" else []

            rows = wait_until(f"Celery result of {celery_id}", 30, result_row)
            assert isinstance(rows, list)
            assert str(rows[0][1]).split("@", 1)[0] == worker

        # The state store's tables exist in its own PostgreSQL database, created by the migrations.
        from crm_sync.state.models import Base

        tables = {
            str(name)
            for (name,) in prod_stack.query(
                prod_stack.state_db,
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
            )
        }
        assert set(Base.metadata.tables) | {"alembic_version"} <= tables, tables

        # The hooks counted their calls in the shared Redis limiter, not in a per-host SQLite file.
        import redis

        limiter = redis.Redis.from_url(f"{REDIS_URL}/{prod_stack.limiter_db}")
        try:
            scopes = {key.decode() for key in limiter.scan_iter("crm_sync:limiter:*")}
        finally:
            limiter.close()
        assert any("marketo:" in key for key in scopes), scopes
        assert any("dynamics:" in key for key in scopes), scopes

        # health notices a worker that died: its PID is dead and it no longer answers the ping.
        victim = int((run_dir / "celery-worker2.pid").read_text())
        os.killpg(victim, signal.SIGKILL)
        wait_until("worker2's process group gone", 30, lambda: not psutil.pid_exists(victim))
        degraded = prod_stack.run("health", timeout=60)
        assert degraded.returncode != 0, degraded.stdout
        assert f"celery-worker2: dead (pid {victim})" in degraded.stdout
        assert "celery worker2: no answer" in degraded.stdout
        assert "celery worker1: pong" in degraded.stdout
    finally:
        with contextlib.suppress(OSError, psutil.Error):
            tree |= _process_tree(run_dir)
        began = time.monotonic()
        stopped = prod_stack.run("stop", timeout=120)
        timings["stop"] = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stderr
    assert not list(run_dir.glob("*.pid"))
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert alive == []
    print("prod-local timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
