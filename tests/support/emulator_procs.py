"""Start the project's emulators as real server processes on 127.0.0.1 for tests.

Each emulator runs as ``python -m emulators <side>`` on a free port, over HTTPS with the
project's local CA, exactly as ``make demo`` runs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

PROJECT_DIR = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def held_calls(stats: dict[str, Any], route: str) -> int:
    """Calls to ``route`` (``"POST /rest/v1/leads.json"``) a latency fault holds open, from stats."""
    return int(stats.get("held", {}).get(route, 0))


@dataclass
class RunningEmulator:
    """A started emulator process and how to reach it."""

    side: str
    base_url: str
    ca_file: Path | None
    db_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def verify(self) -> str | bool:
        """The ``verify`` argument for requests: the CA file, or True over plain http."""
        return str(self.ca_file) if self.ca_file else True

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the emulator's ``/_emulator/`` admin area."""
        resp = requests.request(
            method, f"{self.base_url}/_emulator/{path.lstrip('/')}", verify=self.verify, timeout=30, **kwargs
        )
        resp.raise_for_status()
        return resp

    def stats(self) -> dict[str, Any]:
        return dict(self.admin("GET", "stats").json())

    def connection(self, **extra: Any) -> str:
        """The ``AIRFLOW_CONN_<SIDE>_DEFAULT`` value (JSON) pointing a hook at this emulator with
        its default credentials; ``extra`` adds to the connection's extras (timeout, limiter)."""
        import json

        from emulators.common.credentials import default_credentials

        cred = default_credentials(f"{self.side}_default")
        extras: dict[str, Any] = {"ca_bundle": str(self.ca_file)}
        if self.side == "dynamics":
            extras |= {"tenant_id": cred.tenant_id, "authority_host": self.base_url, "api_version": "9.2"}
        conn = {
            "conn_type": self.side,
            "host": self.base_url,
            "login": cred.client_id,
            "password": cred.client_secret,
            "extra": extras | extra,
        }
        return json.dumps(conn)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_emulator(
    side: str,
    workdir: Path,
    extra_args: list[str] | None = None,
    tls: bool = True,
    seed_scale: int | None = None,
    ready_timeout: float = 60.0,
) -> RunningEmulator:
    """Start ``python -m emulators <side>`` and wait until its health endpoint answers.

    Args:
        side: ``"marketo"`` or ``"dynamics"``.
        workdir: A directory for the database, certificates and log.
        extra_args: More command-line options for the emulator (limits, time scale...).
        tls: Serve HTTPS with a CA generated under ``workdir``.
        seed_scale: Seed the database with this many leads first.
        ready_timeout: Seconds to wait for the server.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / f"{side}.db"
    certs = workdir / "certs"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_DIR), env.get("PYTHONPATH", "")])
    if seed_scale is not None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "emulators",
                "seed",
                side,
                "--db",
                str(db_path),
                "--scale",
                str(seed_scale),
            ],
            check=True,
            env=env,
            cwd=PROJECT_DIR,
        )
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "emulators",
        side,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        str(db_path),
        "--certs-dir",
        str(certs),
    ]
    if not tls:
        argv.append("--no-tls")
    argv += extra_args or []
    log_path = workdir / f"{side}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_DIR)
    scheme = "https" if tls else "http"
    emu = RunningEmulator(
        side, f"{scheme}://127.0.0.1:{port}", certs / "ca.pem" if tls else None, db_path, proc, log_path
    )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{side} emulator exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if emu.ca_file is None or emu.ca_file.exists():
                requests.get(
                    f"{emu.base_url}/_emulator/health", verify=emu.verify, timeout=2
                ).raise_for_status()
                return emu
        except requests.RequestException:
            pass
        time.sleep(0.2)
    emu.stop()
    raise TimeoutError(f"{side} emulator not ready after {ready_timeout}s:\n{log_path.read_text()[-3000:]}")
