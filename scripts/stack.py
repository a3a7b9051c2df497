"""Start, check and stop the local demo stack.

``make demo`` calls ``start``: the two API emulators (seeded on first start), the alert sink,
Airflow's components as ``airflow standalone`` runs them, without its all-interface log servers
(:mod:`crm_sync.local_airflow`), with ``airflow_settings.yaml`` loaded (pointed at this stack's
ports and folders), every ``sync_*`` DAG unpaused, ``full_copy`` triggered once (when the DAG exists and has
never run), and the activity process that keeps changing both CRMs. ``make stop`` calls ``stop``.
``make demo-check`` calls ``check`` (compares both systems through ``crm_sync.reconcile``).

Every process is started in its own session, its PID is written under ``.run/``, and ``stop``
ends exactly those process groups (by PID, never by name).

Environment: ``MDS_STACK_DIR`` (run-time folder), ``MDS_AIRFLOW_PORT``, ``MDS_MARKETO_PORT``,
``MDS_DYNAMICS_PORT``, ``MDS_ALERT_SINK_PORT``; ``MDS_DEMO_SCALE`` (leads seeded in Dataverse,
default 2000); ``MDS_DEMO_FULL_COPY=0`` (the first incremental runs copy instead of
``full_copy``); ``MDS_ACTIVITY_INTERVAL``/``_LEADS``/``_CONTACTS``/``_OPPORTUNITIES`` (activity
rate; ``MDS_ACTIVITY_INTERVAL=0`` turns the activity off); ``MDS_ENTITIES_DIR`` (entity files).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from crm_sync.config import ENTITIES_DIR, Direction, EntityConfig, load_entities
from crm_sync.localenv import (
    AIRFLOW_API_PORT,
    DYNAMICS_EMULATOR_PORT,
    MARKETO_EMULATOR_PORT,
    PROJECT_DIR,
    airflow_env,
    prepare_sqlite_metadata_db,
)
from crm_sync.settings_loader import AirflowSettings, load_into_airflow, parse_settings
from demo import ALERT_SINK_PORT

# MDS_STACK_DIR moves all run-time state (PIDs, logs, databases, Airflow home) elsewhere.
STACK_DIR = Path(os.environ.get("MDS_STACK_DIR", PROJECT_DIR))
RUN_DIR = STACK_DIR / ".run"
VAR_DIR = STACK_DIR / "var"
LOG_DIR = VAR_DIR / "log"
AIRFLOW_HOME = STACK_DIR / ".airflow"
BIN_DIR = Path(sys.executable).parent
CA_FILE = VAR_DIR / "emulators" / "ca" / "ca.pem"
ALERTS_FILE = LOG_DIR / "alerts.jsonl"
AIRFLOW_URL = f"http://127.0.0.1:{AIRFLOW_API_PORT}"
ALERT_SINK_URL = f"http://127.0.0.1:{ALERT_SINK_PORT}/alerts"
# Demo data on first start: Dynamics is the system of record; Marketo has its own persons too.
_SCALE = int(os.environ.get("MDS_DEMO_SCALE", "2000"))
DEMO_SEED_SCALE = {"marketo": max(1, _SCALE // 4), "dynamics": _SCALE}
FULL_COPY_DAG = "full_copy"
# Issue 20's DAGs (dag id -> its file): no entity YAML makes them, they run beside the entity
# syncs at a lower priority. The history DAG is backfill-only: unpaused, it still never schedules.
MARKETING_DAGS = {
    "sync_activities": "sync_activities.py",
    "sync_activities_history": "sync_activities.py",
    "sync_program_membership": "sync_program_membership.py",
}


def _pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(name: str) -> int | None:
    file = _pid_file(name)
    if not file.exists():
        return None
    pid = int(file.read_text().strip())
    return pid if _alive(pid) else None


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> int:
    pid = _running_pid(name)
    if pid:
        print(f"{name}: already running (pid {pid})")
        return pid
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_file = (LOG_DIR / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv,
        cwd=PROJECT_DIR,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _pid_file(name).write_text(str(proc.pid))
    print(f"{name}: started (pid {proc.pid}, log {LOG_DIR / (name + '.log')})")
    return proc.pid


def _wait_http(url: str, timeout_s: float, cafile: Path | None = None) -> bool:
    """Poll ``url`` until it answers below 500; with ``cafile``, verify TLS against it."""
    import ssl

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            context = None
            if cafile is not None:
                if not cafile.exists():  # the emulator writes its CA on first start
                    time.sleep(0.5)
                    continue
                context = ssl.create_default_context(cafile=str(cafile))
            with urllib.request.urlopen(url, timeout=5, context=context) as resp:
                if resp.status < 500:
                    return True
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    return False


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(airflow_env(AIRFLOW_HOME))
    # Airflow starts helper processes as `airflow ...` found on PATH.
    env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")])
    return env


def start_emulators(env: dict[str, str]) -> None:
    """Start both API emulators when the emulators package provides its entry point."""
    data = VAR_DIR / "emulators"
    data.mkdir(parents=True, exist_ok=True)
    py = str(BIN_DIR / "python")
    started = []
    for side, port in (("marketo", MARKETO_EMULATOR_PORT), ("dynamics", DYNAMICS_EMULATOR_PORT)):
        if not (PROJECT_DIR / "emulators" / side / "cli.py").exists():
            print(f"emulator-{side}: not part of this checkout yet; skipped")
            continue
        started.append(port)
        db = data / f"{side}.db"
        if not db.exists():
            scale = DEMO_SEED_SCALE[side]
            print(f"emulator-{side}: seeding {scale} leads into {db}")
            subprocess.run(
                [py, "-m", "emulators", "seed", side, "--db", str(db), "--scale", str(scale)],
                env=env,
                check=True,
            )
        _spawn(
            f"emulator-{side}",
            [
                py,
                "-m",
                "emulators",
                side,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--db",
                str(data / f"{side}.db"),
                "--certs-dir",
                str(CA_FILE.parent),
            ],
            env,
        )
    for port in started:
        if not _wait_http(f"https://127.0.0.1:{port}/_emulator/health", 60, cafile=CA_FILE):
            raise SystemExit(f"emulator on port {port} did not become ready; see {LOG_DIR}")


def start_airflow(env: dict[str, str]) -> None:
    """Start Airflow (``python -m crm_sync.local_airflow``) and wait until its API answers.

    That is ``airflow standalone``'s set of components without its log servers, which would
    listen on every interface: everything the demo opens stays on 127.0.0.1.
    """
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    prepare_sqlite_metadata_db(AIRFLOW_HOME / "airflow.db")
    _spawn("airflow", [str(BIN_DIR / "python"), "-m", "crm_sync.local_airflow"], env)
    if not _wait_http(f"http://127.0.0.1:{AIRFLOW_API_PORT}/api/v2/monitor/health", 180):
        raise SystemExit(f"Airflow did not become healthy within 180 s; see {LOG_DIR / 'airflow.log'}")


def entities_dir() -> Path:
    """The entity files the DAGs are built from (``$MDS_ENTITIES_DIR`` or the project's)."""
    return Path(os.environ.get("MDS_ENTITIES_DIR") or ENTITIES_DIR)


def demo_settings() -> AirflowSettings:
    """``airflow_settings.yaml`` aimed at this stack.

    ``${MDS_PROJECT_DIR}`` becomes the stack folder (state store, staging, CA under its ``var/``);
    the connections point at the emulators' ports and share one limiter file; the alert
    webhook Variable points at the alert sink's port.
    """
    settings = parse_settings(PROJECT_DIR / "airflow_settings.yaml", env={"MDS_PROJECT_DIR": str(STACK_DIR)})
    hosts = {
        "marketo_default": f"https://127.0.0.1:{MARKETO_EMULATOR_PORT}",
        "dynamics_default": f"https://127.0.0.1:{DYNAMICS_EMULATOR_PORT}",
    }
    for conn_id, conn in settings.connections.items():
        if conn_id not in hosts:
            continue
        extra: dict[str, Any] = json.loads(conn.get("extra") or "{}")
        conn["host"] = hosts[conn_id]
        extra["ca_bundle"] = str(CA_FILE)
        extra.setdefault("limiter_url", f"sqlite:///{VAR_DIR / 'api_limiter.sqlite'}")
        if "authority_host" in extra:
            extra["authority_host"] = hosts[conn_id]
        conn["extra"] = json.dumps(extra, sort_keys=True)
    settings.variables["mds_alert_webhook_url"] = ALERT_SINK_URL
    return settings


def load_settings(env: dict[str, str]) -> None:
    """Import :func:`demo_settings` into Airflow's metadata DB (overwrite mode).

    Also the ``airflow_api`` connection (this stack's API server, its generated admin login),
    which a task uses to pause the sync DAGs when it finds a refreshed sandbox.
    """
    from crm_sync.airflow_api import admin_password as read_password

    settings = demo_settings()
    settings.connections["airflow_api"] = {
        "conn_type": "http",
        "description": "This demo's Airflow REST API (pauses the sync DAGs on a sandbox refresh)",
        "host": AIRFLOW_URL,
        "login": "admin",
        "password": read_password(AIRFLOW_HOME),
        # Standalone's API server speaks plain http, on 127.0.0.1 only.
        "extra": json.dumps({"allow_http": True}),
    }
    load_into_airflow(settings, env)
    print(f"airflow: loaded airflow_settings.yaml (alerts go to {ALERT_SINK_URL})")


def start_alert_sink(env: dict[str, str]) -> None:
    """Start the local webhook receiver the failure alerts are posted to."""
    _spawn(
        "alert-sink",
        [
            str(BIN_DIR / "python"),
            "-m",
            "demo.alert_sink",
            "--port",
            str(ALERT_SINK_PORT),
            "--file",
            str(ALERTS_FILE),
        ],
        env,
    )
    if not _wait_http(f"http://127.0.0.1:{ALERT_SINK_PORT}/health", 30):
        raise SystemExit(f"the alert sink did not start; see {LOG_DIR / 'alert-sink.log'}")


def airflow_api() -> Any:
    """A logged-in :class:`crm_sync.airflow_api.AirflowApi` for this stack."""
    from crm_sync.airflow_api import AirflowApi
    from crm_sync.airflow_api import admin_password as read_password

    return AirflowApi(AIRFLOW_URL, "admin", read_password(AIRFLOW_HOME))


def start_dags(copy_timeout_s: float = 1800.0) -> None:
    """Trigger ``full_copy`` (when it exists and never ran), wait for it, then unpause every sync DAG.

    The incremental DAGs take over from the first full copy (its hand-over token becomes their
    watermark), so they are unpaused, and the activity started, once the copy has ended. Without
    a full copy, every sync DAG runs once first, in dependency order (their first runs copy).
    """
    sync_ids = [entity.dag_id for entity in load_entities(entities_dir()).values()]
    sync_ids += [d for d, file in MARKETING_DAGS.items() if (PROJECT_DIR / "dags" / file).exists()]
    wanted = set(sync_ids)
    if (PROJECT_DIR / "dags" / f"{FULL_COPY_DAG}.py").exists():
        wanted.add(FULL_COPY_DAG)
    api = airflow_api()
    copied = False
    try:
        missing = api.wait_for_dags(wanted, 180)
        if missing - {FULL_COPY_DAG}:
            raise SystemExit(
                f"DAGs not parsed within 180 s: {sorted(missing)}; see {LOG_DIR / 'airflow.log'}"
            )
        if FULL_COPY_DAG in wanted - missing and os.environ.get("MDS_DEMO_FULL_COPY", "1") == "0":
            print(f"airflow: {FULL_COPY_DAG} not triggered (MDS_DEMO_FULL_COPY=0)")
        elif FULL_COPY_DAG in wanted - missing:
            manual = api.runs(FULL_COPY_DAG, run_type="manual")
            copied = "success" in manual.values()
            if not copied:  # never copied, or a start-up stopped while copying: resume or retry
                active = [run for run, state in manual.items() if state in ("queued", "running")]
                copied = _run_full_copy(api, copy_timeout_s, active[0] if active else None)
        elif FULL_COPY_DAG in wanted:
            print(f"airflow: {FULL_COPY_DAG} did not appear in time; not triggered")
        for dag_id in sync_ids:
            api.set_paused(dag_id, False)
        print(f"airflow: unpaused {', '.join(sorted(sync_ids))}")
        # Unpaused, the sync DAGs' watchers start at the next parse of their file: ask for it now.
        print(f"airflow: parsing {api.reparse(sync_ids)} DAG files again (starts the watchers)")
    finally:
        api.close()
    if not copied:
        print("airflow: first sync pass (no full_copy run)", flush=True)
        settle()


def _run_full_copy(api: Any, timeout_s: float, run_id: str | None = None) -> bool:
    """Trigger ``full_copy`` (or follow ``run_id``, still active) until it ends; True on success."""
    if run_id is None:
        run_id = api.trigger(FULL_COPY_DAG)
        print(f"airflow: {FULL_COPY_DAG} triggered (run {run_id}); waiting for it to end", flush=True)
    else:
        print(f"airflow: {FULL_COPY_DAG} run {run_id} still active; waiting for it to end", flush=True)
    api.set_paused(FULL_COPY_DAG, False)  # a manual run waits while its DAG is paused
    started = time.monotonic()
    state = api.run_state(FULL_COPY_DAG, run_id)
    while state not in ("success", "failed") and time.monotonic() - started < timeout_s:
        time.sleep(5)
        state = api.run_state(FULL_COPY_DAG, run_id)
    print(f"airflow: {FULL_COPY_DAG} {state} after {time.monotonic() - started:.0f} s", flush=True)
    return bool(state == "success")


def start_activity(env: dict[str, str]) -> None:
    """Start the process that keeps changing both CRMs (off with ``MDS_ACTIVITY_INTERVAL=0``)."""
    from demo.activity import ActivityConfig

    config = ActivityConfig.from_env(env)
    if config.interval_s <= 0:
        print("activity: off (MDS_ACTIVITY_INTERVAL=0)")
        return
    _spawn(
        "activity",
        [
            str(BIN_DIR / "python"),
            "-m",
            "demo.activity",
            "--marketo-url",
            f"https://127.0.0.1:{MARKETO_EMULATOR_PORT}",
            "--dynamics-url",
            f"https://127.0.0.1:{DYNAMICS_EMULATOR_PORT}",
            "--ca-file",
            str(CA_FILE),
        ],
        env,
    )


def admin_password() -> str:
    file = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if file.exists():
            return str(json.loads(file.read_text())["admin"])
        time.sleep(1)
    return f"(see {file})"


def start() -> None:
    env = _base_env()
    try:
        start_emulators(env)
        start_alert_sink(env)
        start_airflow(env)
        load_settings(env)
        setup_check()
        start_dags()
        start_activity(env)
    except (SystemExit, subprocess.CalledProcessError, RuntimeError, OSError):
        print("start-up failed; stopping what was started")
        stop()
        raise
    print()
    print(f"Airflow UI:  http://127.0.0.1:{AIRFLOW_API_PORT}")
    print(f"Login:       admin / {admin_password()}")
    print(f"Alerts:      {ALERTS_FILE} (sink {ALERT_SINK_URL})")
    print(f"Activity:    {LOG_DIR / 'activity.log'}")
    print("Stop with:   make stop   (make demo-fault: watch a task fail, retry, alert and recover)")


def dependency_waves(entities: list[EntityConfig]) -> list[list[EntityConfig]]:
    """Group entities so that each one comes after every entity it ``depends_on``.

    Entities in one wave do not depend on each other and may run at the same time.
    """
    names = {e.name for e in entities}
    level: dict[str, int] = {}
    for entity in sorted(entities, key=lambda e: e.priority):  # priority follows the dependencies
        deps = [level[d] for d in entity.depends_on if d in names and d in level]
        level[entity.name] = 1 + max(deps, default=-1)
    waves: list[list[EntityConfig]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for entity in entities:
        waves[level[entity.name]].append(entity)
    return waves


def settle(timeout_s: float = 900.0) -> bool:
    """Run every sync DAG once more, in dependency waves, each wave after the previous one ended.

    Whatever changed before this call is then carried across (a scheduled run still active
    is waited for first: the DAGs allow one active run). A record one run creates in Dynamics
    from Marketo (a flagged person) comes back with Dynamics' own values (created on, status,
    owner) in the next run, so the two-way entities run once more at the end. Returns False if a
    run did not succeed.
    """
    entities = list(load_entities(entities_dir()).values())
    waves = dependency_waves(entities)
    two_way = [e for e in entities if e.direction is Direction.BOTH]
    if two_way:
        waves.append(two_way)
    api = airflow_api()
    ok = True
    try:
        for wave in waves:
            runs = {entity.dag_id: api.trigger(entity.dag_id) for entity in wave}
            deadline = time.monotonic() + timeout_s
            states = {dag_id: api.run_state(dag_id, run_id) for dag_id, run_id in runs.items()}
            while time.monotonic() < deadline and any(
                s not in ("success", "failed") for s in states.values()
            ):
                time.sleep(3)
                states = {dag_id: api.run_state(dag_id, run_id) for dag_id, run_id in runs.items()}
            for dag_id, run_id in runs.items():
                print(f"settle: {dag_id} run {run_id}: {states[dag_id]}", flush=True)
                ok = ok and states[dag_id] == "success"
    finally:
        api.close()
    return ok


def connection_env() -> dict[str, str]:
    """The environment of a command line that reads through the demo's connections and state store."""
    settings = demo_settings()
    env = _base_env()
    for conn_id, conn in settings.connections.items():
        data = {k: v for k, v in conn.items() if k != "description"}
        data["extra"] = json.loads(conn.get("extra") or "{}")
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(data)
    env["AIRFLOW_VAR_MDS_STATE_DB_URL"] = settings.variables["mds_state_db_url"]
    return env


def setup_check() -> int:
    """Print ``python -m crm_sync.setup check``'s table for the demo's systems (the seeded
    emulators hold everything, so it is expected to pass; a real org starts with ``setup apply``)."""
    argv = [str(BIN_DIR / "python"), "-m", "crm_sync.setup", "check", "--entities-dir", str(entities_dir())]
    code = subprocess.run(argv, env=connection_env(), check=False).returncode
    if code:
        print(f"setup check: exit {code}; the syncs named above will fail until it passes", flush=True)
    return code


def check(settle_first: bool = True) -> int:
    """Compare both systems with ``crm_sync.reconcile`` and print the differences (exit 1 if any).

    With the activity process running, both systems change all the time, so the activity is
    paused (SIGSTOP) and every sync DAG runs once more first (``settle_first``, in dependency
    waves); the activity
    resumes afterwards. The comparison reads through the demo's connections (aimed at this
    stack's emulators), given to the reconcile command as ``AIRFLOW_CONN_*`` variables, and uses
    this stack's state store.
    """
    activity = _running_pid("activity")
    if activity:
        os.killpg(activity, signal.SIGSTOP)
        print("activity: paused while both systems are compared", flush=True)
    try:
        if settle_first and not settle():
            print("settle: a sync run did not succeed; the comparison shows what is left", flush=True)
        env = connection_env()
        argv = [str(BIN_DIR / "python"), "-m", "crm_sync.reconcile", "check"]
        argv += ["--entities-dir", str(entities_dir())]
        return subprocess.run(argv, env=env, check=False).returncode
    finally:
        if activity:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(activity, signal.SIGCONT)
            print("activity: resumed", flush=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop() -> None:
    """End every process group started by ``start``: SIGTERM, then SIGKILL after 30 s.

    All groups get SIGTERM first and are then awaited together, so shutting down N components
    takes as long as the slowest one, not the sum.
    """
    if not RUN_DIR.exists():
        print("nothing to stop")
        return
    groups: dict[str, int] = {}
    # Every process of the stack as it stands now, for those that left their group (a task
    # runner's own session): they are ended after the groups, so none outlives ``stop``.
    tree: list[psutil.Process] = []
    for file in sorted(RUN_DIR.glob("*.pid")):
        pgid = int(file.read_text().strip())  # each process leads its own session and group
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pgid)
            tree += [root, *root.children(recursive=True)]
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            groups[file.stem] = pgid
        else:
            file.unlink()
    deadline = time.monotonic() + 30
    while any(_group_alive(pgid) for pgid in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name, pgid in groups.items():
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        print(f"{name}: stopped (process group {pgid})")
        _pid_file(name).unlink()
    _end(tree)


def _end(procs: list[psutil.Process]) -> None:
    """SIGTERM what is still running of ``procs``, SIGKILL it after 10 s, and wait for the end."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()  # psutil checks the start time: a reused pid is left alone
    _gone, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


def status() -> int:
    code = 0
    for file in sorted(RUN_DIR.glob("*.pid")) if RUN_DIR.exists() else []:
        pid = int(file.read_text().strip())
        alive = _alive(pid)
        code |= 0 if alive else 1
        print(f"{file.stem}: {'running' if alive else 'dead'} (pid {pid})")
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status", "check"])
    parser.add_argument(
        "--no-settle", action="store_true", help="check: compare as things are, without a last sync pass"
    )
    args = parser.parse_args()
    if args.command == "start":
        start()
    elif args.command == "stop":
        stop()
    elif args.command == "check":
        return check(settle_first=not args.no_settle)
    else:
        return status()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
