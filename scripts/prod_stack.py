"""Start, check and stop the production-shaped local stack (``make prod-local``).

The same components a production Airflow runs, each as its own process on this machine:

* PostgreSQL (already running on 127.0.0.1:5432) holds two databases: Airflow's metadata (also the
  Celery result backend) and the sync's state store. Both are created when missing and migrated.
* Redis (already running on 127.0.0.1:6379) is the Celery broker (one db number) and holds the API
  call limiter's counters (another db number), so the limits hold across every worker process.
* ``airflow scheduler``, ``airflow dag-processor``, ``airflow api-server``, ``airflow triggerer`` and
  two ``airflow celery worker`` processes with distinct Celery hostnames (CeleryExecutor).
* The two API emulators of ``make demo`` (started through ``scripts/stack.py``).

Every process leads its own process group; its PID is written under ``.run/`` next to the demo's,
and ``stop`` ends exactly those groups (by PID, never by name), so ``make stop`` ends this stack too.
Everything binds 127.0.0.1: the worker and triggerer log servers (which bind every interface) are
not started; the API server reads task logs from the shared local log folder instead.

Configuration comes from the environment (all optional):

==============================  ============================================  ======================
variable                        meaning                                       default
==============================  ============================================  ======================
MDS_PROD_PG_URL                 PostgreSQL server, without a database name    postgresql://postgres@127.0.0.1:5432
MDS_PROD_AIRFLOW_DB             database for Airflow's metadata               mds_airflow
MDS_PROD_STATE_DB               database for the sync's state store           mds_state
MDS_PROD_REDIS_URL              Redis server, without a db number             redis://127.0.0.1:6379
MDS_PROD_BROKER_DB              Redis db number of the Celery broker          1
MDS_PROD_LIMITER_DB             Redis db number of the API call limiter       2
MDS_PROD_STAGING_URL            ``mds_staging_path`` (file://, s3://, gs://)  file://<stack>/var/staging
MDS_PROD_WORKER_CONCURRENCY     task slots per Celery worker                  2
MDS_STACK_DIR, MDS_*_PORT       run-time folder and ports, as for make demo   see scripts/stack.py
==============================  ============================================  ======================
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_sync.local_airflow import COMPONENTS, component_argv
from crm_sync.localenv import (
    AIRFLOW_API_PORT,
    DYNAMICS_EMULATOR_PORT,
    MARKETO_EMULATOR_PORT,
    PROJECT_DIR,
    airflow_env,
)
from crm_sync.settings_loader import AirflowSettings, load_into_airflow, parse_settings

# scripts/stack.py (the demo stack) provides process groups, PID files, readiness polling and the
# emulators. Run as a script, this file's folder is first on sys.path; mypy names it scripts.stack.
if TYPE_CHECKING:
    from scripts import stack
else:
    import stack

# Under var/ (ignored by git) and apart from the demo's .airflow/, so the two never share a config.
AIRFLOW_HOME = stack.VAR_DIR / "airflow-prod"
WORKERS = ("worker1", "worker2")
# Components the API's health endpoint reports (the metadata DB and the heartbeat-based jobs).
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ProdConfig:
    """Where the stack's databases, broker, limiter and staging live, and how big it is."""

    pg_url: str = "postgresql://postgres@127.0.0.1:5432"
    airflow_db: str = "mds_airflow"
    state_db: str = "mds_state"
    redis_url: str = "redis://127.0.0.1:6379"
    broker_db: int = 1
    limiter_db: int = 2
    staging_url: str = field(default_factory=lambda: f"file://{stack.VAR_DIR / 'staging'}")
    worker_concurrency: int = 2

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ProdConfig:
        """Read the ``MDS_PROD_*`` variables (see the module docstring); unset ones keep defaults."""
        env = dict(os.environ) if env is None else env
        base = cls()
        return cls(
            pg_url=env.get("MDS_PROD_PG_URL", base.pg_url).rstrip("/"),
            airflow_db=env.get("MDS_PROD_AIRFLOW_DB", base.airflow_db),
            state_db=env.get("MDS_PROD_STATE_DB", base.state_db),
            redis_url=env.get("MDS_PROD_REDIS_URL", base.redis_url).rstrip("/"),
            broker_db=_int_setting(env, "MDS_PROD_BROKER_DB", base.broker_db, minimum=0),
            limiter_db=_int_setting(env, "MDS_PROD_LIMITER_DB", base.limiter_db, minimum=0),
            staging_url=env.get("MDS_PROD_STAGING_URL", base.staging_url),
            worker_concurrency=_int_setting(
                env, "MDS_PROD_WORKER_CONCURRENCY", base.worker_concurrency, minimum=1
            ),
        )

    def sqlalchemy_url(self, database: str) -> str:
        """SQLAlchemy URL (psycopg2 driver) of one database on the configured server."""
        return self.pg_url.replace("postgresql://", "postgresql+psycopg2://", 1) + f"/{database}"

    @property
    def broker_url(self) -> str:
        """Celery broker: a dedicated Redis db."""
        return f"{self.redis_url}/{self.broker_db}"

    @property
    def limiter_url(self) -> str:
        """The hooks' ``limiter_url`` extra: another Redis db, shared by every worker process."""
        return f"{self.redis_url}/{self.limiter_db}"


def _int_setting(env: dict[str, str], name: str, default: int, minimum: int) -> int:
    """Read an integer setting, failing with a message that names the variable and its value."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and output."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not an RFC-1738 URL: show only the scheme
        return url.split("://", 1)[0] + "://…"


def airflow_environment(cfg: ProdConfig) -> dict[str, str]:
    """The environment every Airflow process of this stack runs with."""
    env = dict(os.environ)
    env.update(airflow_env(AIRFLOW_HOME, parallelism=len(WORKERS) * cfg.worker_concurrency * 2))
    metadata_url = cfg.sqlalchemy_url(cfg.airflow_db)
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", None)  # SQLite's; this stack is on PostgreSQL
    env.update(
        {
            "PATH": os.pathsep.join([str(stack.BIN_DIR), env.get("PATH", "")]),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": cfg.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cfg.worker_concurrency),
            # Extended results record which worker ran each Celery task (celery_taskmeta.worker).
            "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps({"result_extended": True}),
            # Workers report task state to the API server's execution API, not to the database.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{AIRFLOW_API_PORT}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            # The state store CLI and any task that does not read the Variable find it here.
            "CRM_SYNC_STATE_URL": cfg.sqlalchemy_url(cfg.state_db),
        }
    )
    return env


def ensure_databases(cfg: ProdConfig) -> None:
    """Create the metadata and state-store databases when they do not exist yet.

    Raises:
        SystemExit: PostgreSQL cannot be reached.
    """
    import psycopg2
    from psycopg2 import sql

    try:
        conn = psycopg2.connect(f"{cfg.pg_url}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as err:
        raise SystemExit(f"PostgreSQL at {masked(cfg.pg_url)} is not reachable: {err}".strip()) from err
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            for name in (cfg.airflow_db, cfg.state_db):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    print(f"postgres: database {name} exists")
                    continue
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                print(f"postgres: created database {name}")
    finally:
        conn.close()


def check_redis(cfg: ProdConfig) -> None:
    """Fail early with a clear message when Redis does not answer."""
    import redis

    client = redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as err:
        raise SystemExit(f"Redis at {masked(cfg.redis_url)} is not reachable: {err}") from err
    finally:
        client.close()


def migrate(cfg: ProdConfig, env: dict[str, str]) -> None:
    """Run ``airflow db migrate`` and the state store's migrations (both idempotent)."""
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run(
        [str(stack.BIN_DIR / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True
    )
    print(f"airflow: metadata database {cfg.airflow_db} migrated ({time.monotonic() - started:.1f} s)")
    subprocess.run(
        [
            str(stack.BIN_DIR / "python"),
            "-m",
            "crm_sync.state",
            "upgrade",
            "--url",
            cfg.sqlalchemy_url(cfg.state_db),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    print(f"state store: database {cfg.state_db} migrated")


def prod_settings(cfg: ProdConfig, env: dict[str, str]) -> AirflowSettings:
    """``airflow_settings.yaml`` with this stack's overrides.

    The connections point at the emulators on their configured ports and CA, and share the Redis
    limiter; the state store and staging Variables point at PostgreSQL and the shared staging URL.
    """
    settings = parse_settings(PROJECT_DIR / "airflow_settings.yaml", env=env)
    emulators = {
        "marketo_default": f"https://127.0.0.1:{MARKETO_EMULATOR_PORT}",
        "dynamics_default": f"https://127.0.0.1:{DYNAMICS_EMULATOR_PORT}",
    }
    for conn_id, conn in settings.connections.items():
        extra: dict[str, Any] = json.loads(conn.get("extra") or "{}")
        extra["limiter_url"] = cfg.limiter_url
        if conn_id in emulators:
            conn["host"] = emulators[conn_id]
            extra["ca_bundle"] = str(stack.CA_FILE)
            if "authority_host" in extra:
                extra["authority_host"] = emulators[conn_id]
        conn["extra"] = json.dumps(extra, sort_keys=True)
    settings.variables["mds_state_db_url"] = cfg.sqlalchemy_url(cfg.state_db)
    settings.variables["mds_staging_path"] = cfg.staging_url
    return settings


def prepare_staging(cfg: ProdConfig) -> None:
    """Create a local (``file://``) staging root; object stores need their bucket to exist already.

    Every worker must see the same staging root: a local folder only works while all workers run
    on this machine. On several hosts use ``s3://<conn_id>@bucket/prefix`` or ``gs://…``.
    """
    if cfg.staging_url.startswith("file://"):
        Path(cfg.staging_url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


def start_airflow(cfg: ProdConfig, env: dict[str, str]) -> None:
    """Start the Airflow components and the two Celery workers, each in its own process group."""
    airflow = str(stack.BIN_DIR / "airflow")
    for name in COMPONENTS:
        stack._spawn(f"airflow-{name}", component_argv(name, AIRFLOW_API_PORT), env)
    for worker in WORKERS:
        stack._spawn(
            f"celery-{worker}",
            [
                airflow,
                "celery",
                "worker",
                "--celery-hostname",
                f"{worker}@%h",
                "--concurrency",
                str(cfg.worker_concurrency),
                "--skip-serve-logs",
            ],
            env,
        )


def api_health() -> dict[str, Any] | None:
    """The API server's ``/api/v2/monitor/health`` document, or None when it does not answer."""
    url = f"http://127.0.0.1:{AIRFLOW_API_PORT}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def unhealthy_components(health: dict[str, Any] | None) -> list[str]:
    """Components the health document does not report healthy (all of them when it is missing)."""
    if health is None:
        return ["api-server", *HEALTH_COMPONENTS]
    return [name for name in HEALTH_COMPONENTS if (health.get(name) or {}).get("status") != "healthy"]


def ping_workers(cfg: ProdConfig, timeout_s: float = 2.0) -> dict[str, bool]:
    """Ping the Celery workers through the broker; maps each configured worker to whether it answered."""
    from celery import Celery

    app = Celery(broker=cfg.broker_url)
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    finally:
        app.close()
    answered = {name.split("@", 1)[0] for reply in replies for name in reply}
    return {worker: worker in answered for worker in WORKERS}


def wait_ready(cfg: ProdConfig, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll until the API reports every component healthy and both workers answer a ping.

    Raises:
        SystemExit: Something is still not ready at the deadline; names what.
    """
    deadline = time.monotonic() + timeout_s
    missing: list[str] = []
    while time.monotonic() < deadline:
        missing = unhealthy_components(api_health())
        if not missing:
            missing = [f"celery-{w}" for w, ok in ping_workers(cfg).items() if not ok]
            if not missing:
                return
        time.sleep(1)
    raise SystemExit(f"not ready within {timeout_s:.0f} s: {', '.join(missing)}; see {stack.LOG_DIR}")


def start(cfg: ProdConfig) -> None:
    """Create and migrate the databases, load the settings and start every process."""
    if stack._running_pid("airflow"):
        raise SystemExit("the demo stack (make demo) is running; stop it first with: make stop")
    began = time.monotonic()
    env = airflow_environment(cfg)
    try:
        ensure_databases(cfg)
        check_redis(cfg)
        migrate(cfg, env)
        prepare_staging(cfg)
        load_into_airflow(prod_settings(cfg, env), env=env)
        print("airflow: loaded airflow_settings.yaml with the prod-local overrides")
        stack.start_emulators(env)
        start_airflow(cfg, env)
        wait_ready(cfg)
    except (SystemExit, subprocess.CalledProcessError) as err:
        if isinstance(err, subprocess.CalledProcessError) and err.stderr:
            sys.stderr.write(err.stderr.decode(errors="replace")[-3000:])
        print("start-up failed; stopping what was started")
        stack.stop()
        raise
    print(f"\nready in {time.monotonic() - began:.0f} s")
    print(f"Airflow UI:  http://127.0.0.1:{AIRFLOW_API_PORT}")
    print(f"Login:       admin / {admin_password()}")
    print(f"State store: {masked(cfg.sqlalchemy_url(cfg.state_db))}")
    print(f"Staging:     {cfg.staging_url}")
    print("Stop with:   make stop")


def admin_password() -> str:
    """The SimpleAuthManager's generated admin password (written by the API server)."""
    file = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if file.exists():
            return str(json.loads(file.read_text())["admin"])
        time.sleep(1)
    return f"(see {file})"


def health(cfg: ProdConfig) -> int:
    """Print each component's state; return 0 only when all are up."""
    code = stack.status()
    doc = api_health()
    if doc is None:
        print(f"api-server: not answering on 127.0.0.1:{AIRFLOW_API_PORT}")
        code = 1
    for name in HEALTH_COMPONENTS:
        state = (doc or {}).get(name) or {}
        print(f"{name}: {state.get('status', 'unknown')}")
        code |= 0 if state.get("status") == "healthy" else 1
    for worker, ok in ping_workers(cfg).items():
        print(f"celery {worker}: {'pong' if ok else 'no answer'}")
        code |= 0 if ok else 1
    revision = state_store_revision(cfg)
    print(f"state store: {'revision ' + revision if revision else 'not migrated or not reachable'}")
    return code | (0 if revision else 1)


def state_store_revision(cfg: ProdConfig) -> str | None:
    """The state store's migration revision, or None when it is unreachable or empty."""
    from sqlalchemy.exc import SQLAlchemyError

    from crm_sync.state.db import current_revision, make_engine

    engine = make_engine(cfg.sqlalchemy_url(cfg.state_db), connect_args={"connect_timeout": 5})
    try:
        return current_revision(engine)
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["start", "stop", "status", "health"])
    args = parser.parse_args()
    cfg = ProdConfig.from_env()
    if args.command == "start":
        start(cfg)
    elif args.command == "stop":
        stack.stop()
    elif args.command == "status":
        return stack.status()
    else:
        return health(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
