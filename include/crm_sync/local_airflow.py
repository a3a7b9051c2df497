"""Airflow on one machine, as ``airflow standalone`` runs it, with every listener on 127.0.0.1.

``airflow standalone`` starts the scheduler and the triggerer with their log servers, which
listen on every interface (``[::]:8793`` and ``8794``) and cannot be told otherwise. With every
component on one machine they are not needed: the API server reads the task and trigger log
files directly. ``python -m crm_sync.local_airflow`` does what standalone does without them:
migrates the metadata DB, then runs the scheduler and triggerer (``--skip-serve-logs``), the DAG
processor and the API server (``--host 127.0.0.1``) with the LocalExecutor and the simple auth
manager (whose API server writes the generated admin password into the Airflow home). It stays
in the foreground; SIGTERM or SIGINT stops every component, and when one component ends the
others are stopped too. The demo (``scripts/stack.py``), the backfill test and the standalone
benchmark run it; ``scripts/prod_stack.py`` starts the same components one by one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
STOP_GRACE_S = 30.0


def airflow_bin() -> str:
    """The ``airflow`` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("airflow"))


def component_argv(name: str, port: int) -> list[str]:
    """The command line of one Airflow component, with no listener beyond 127.0.0.1."""
    airflow = airflow_bin()
    argv = {
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
    }
    return argv[name]


def local_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with standalone's choices: LocalExecutor and the simple auth manager."""
    return {
        **env,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
    }


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(env: dict[str, str]) -> int:
    """Migrate, start every component and wait; the exit code of the first one that ended."""
    env = local_env(env)
    port = int(env.get("AIRFLOW__API__PORT", "8080"))
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True)
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for name in COMPONENTS:
        procs.append(subprocess.Popen(component_argv(name, port), env=env))
        print(f"local_airflow: {name} started (pid {procs[-1].pid})", flush=True)
    code = 0
    while not stopping:
        ended = [
            (name, p.returncode) for name, p in zip(COMPONENTS, procs, strict=True) if p.poll() is not None
        ]
        if ended:
            name, code = ended[0]
            print(f"local_airflow: {name} ended with code {code}; stopping the others", flush=True)
            break
        time.sleep(0.5)
    _stop(procs)
    return code


def main() -> int:
    return run(dict(os.environ))


if __name__ == "__main__":
    raise SystemExit(main())
