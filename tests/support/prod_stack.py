"""An isolated production-shaped stack (``scripts/prod_stack.py``) for the tests that run one.

PostgreSQL holds Airflow's metadata (and the Celery results) and the sync's state store; Redis is
the Celery broker and holds the API limiter's counters; scheduler, dag-processor, API server,
triggerer and two Celery workers run as separate processes. :func:`isolated_stack` gives a test
its own databases, Redis db numbers, ports and run folder, and drops and flushes them afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.emulator_procs import free_port

PROJECT_DIR = Path(__file__).resolve().parents[2]
PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}"
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}"
WORKERS = ("worker1", "worker2")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# Marks for a test module that runs a prod-shaped stack: skipped, with the reason, where the
# services it needs cannot be reached.
NEEDS_SERVICES = [
    pytest.mark.skipif(
        not reachable(PG_HOST, PG_PORT), reason=f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}"
    ),
    pytest.mark.skipif(
        not reachable(REDIS_HOST, REDIS_PORT), reason=f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT}"
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


def process_tree(run_dir: Path) -> set[int]:
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


def listen_addresses(pids: set[int]) -> set[tuple[str, int]]:
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    }


_EXECUTED = re.compile(
    r"\[([0-9a-f-]{36})\] Executing workload in Celery: .*?TaskInstanceDTO\(id=UUID\('([^']+)'\)"
)


def worker_runs(home: Path) -> dict[str, tuple[str, str]]:
    """Map each task-instance id a worker log says it executed to (worker, Celery task id)."""
    found: dict[str, tuple[str, str]] = {}
    for worker in WORKERS:
        text = (home / "var" / "log" / f"celery-{worker}.log").read_text(errors="replace")
        for celery_id, ti_id in _EXECUTED.findall(text):
            found[ti_id] = (worker, celery_id)
    return found
