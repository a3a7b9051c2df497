"""Start, check and stop the local stack: the API emulators and Airflow standalone.

``make demo`` calls ``start``; ``make stop`` calls ``stop``. Every process is started in its own
session, its PID is written under ``.run/``, and ``stop`` ends exactly those process groups
(by PID, never by name).
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

from crm_sync.localenv import (
    AIRFLOW_API_PORT,
    DYNAMICS_EMULATOR_PORT,
    MARKETO_EMULATOR_PORT,
    PROJECT_DIR,
    airflow_env,
)

# MDS_STACK_DIR moves all run-time state (PIDs, logs, databases, Airflow home) elsewhere.
STACK_DIR = Path(os.environ.get("MDS_STACK_DIR", PROJECT_DIR))
RUN_DIR = STACK_DIR / ".run"
VAR_DIR = STACK_DIR / "var"
LOG_DIR = VAR_DIR / "log"
AIRFLOW_HOME = STACK_DIR / ".airflow"
BIN_DIR = Path(sys.executable).parent
CA_FILE = VAR_DIR / "emulators" / "ca" / "ca.pem"
# Demo data on first start: Dynamics is the system of record; Marketo has its own persons too.
DEMO_SEED_SCALE = {"marketo": 500, "dynamics": 2000}


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
    # airflow standalone starts its components as `airflow ...` found on PATH.
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
    """Start ``airflow standalone`` and wait until its API answers."""
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    _spawn("airflow", [str(BIN_DIR / "airflow"), "standalone"], env)
    if not _wait_http(f"http://127.0.0.1:{AIRFLOW_API_PORT}/api/v2/monitor/health", 180):
        raise SystemExit(f"Airflow did not become healthy within 180 s; see {LOG_DIR / 'airflow.log'}")


def load_settings(env: dict[str, str]) -> None:
    subprocess.run(
        [
            str(BIN_DIR / "python"),
            "-m",
            "crm_sync.settings_loader",
            str(PROJECT_DIR / "airflow_settings.yaml"),
        ],
        env=env,
        check=True,
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
        start_airflow(env)
        load_settings(env)
    except (SystemExit, subprocess.CalledProcessError):
        print("start-up failed; stopping what was started")
        stop()
        raise
    print()
    print(f"Airflow UI:  http://127.0.0.1:{AIRFLOW_API_PORT}")
    print(f"Login:       admin / {admin_password()}")
    print("Stop with:   make stop")


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
    for file in sorted(RUN_DIR.glob("*.pid")):
        pgid = int(file.read_text().strip())  # each process leads its own session and group
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
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args()
    if args.command == "start":
        start()
    elif args.command == "stop":
        stop()
    else:
        return status()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
