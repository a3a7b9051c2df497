"""Load `airflow_settings.yaml` (the Astro CLI format) into an Airflow environment.

Connections, pools and variables are imported with Airflow's own batch imports, each in
overwrite mode, so loading the same file twice leaves the metadata DB unchanged.

Usage: ``python -m crm_sync.settings_loader [airflow_settings.yaml]``
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crm_sync.localenv import PROJECT_DIR

log = logging.getLogger(__name__)

_CONN_FIELDS = {
    "conn_type": "conn_type",
    "conn_host": "host",
    "conn_schema": "schema",
    "conn_login": "login",
    "conn_password": "password",
    "conn_port": "port",
    "conn_extra": "extra",
    "conn_description": "description",
}


class SettingsError(ValueError):
    """The settings file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class AirflowSettings:
    """Connections, pools and variables in the shapes of Airflow's batch imports."""

    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)


def _expand(value: Any, env: dict[str, str]) -> Any:
    """Expand ``${VAR}`` in strings (recursively), so paths can name the project directory."""
    if isinstance(value, str):
        for key, val in env.items():
            value = value.replace("${" + key + "}", val)
        return value
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    return value


def parse_settings(path: Path, env: dict[str, str] | None = None) -> AirflowSettings:
    """Read an Astro-format settings file into import payloads.

    Args:
        path: The YAML file.
        env: Values for ``${VAR}`` placeholders; defaults to the process environment plus
            ``MDS_PROJECT_DIR``.

    Raises:
        SettingsError: An entry lacks its id or has an unknown key.
    """
    variables_env = {"MDS_PROJECT_DIR": str(PROJECT_DIR), **os.environ} if env is None else env
    raw = yaml.safe_load(path.read_text()) or {}
    section = raw.get("airflow") or {}
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: top-level key 'airflow' must be a mapping")

    connections: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(section.get("connections") or []):
        conn_id = entry.get("conn_id")
        if not conn_id:
            raise SettingsError(f"{path}: airflow.connections[{i}] has no conn_id")
        unknown = set(entry) - set(_CONN_FIELDS) - {"conn_id"}
        if unknown:
            raise SettingsError(f"{path}: connection {conn_id!r} has unknown keys {sorted(unknown)}")
        conn: dict[str, Any] = {}
        for src, dst in _CONN_FIELDS.items():
            value = _expand(entry.get(src), variables_env)
            if value in (None, "", {}):
                continue
            conn[dst] = (
                json.dumps(value, sort_keys=True) if dst == "extra" and isinstance(value, dict) else value
            )
        if "conn_type" not in conn:
            raise SettingsError(f"{path}: connection {conn_id!r} has no conn_type")
        connections[conn_id] = conn

    pools: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(section.get("pools") or []):
        name = entry.get("pool_name")
        if not name or entry.get("pool_slot") is None:
            raise SettingsError(f"{path}: airflow.pools[{i}] needs pool_name and pool_slot")
        pools[name] = {
            "slots": int(entry["pool_slot"]),
            "description": entry.get("pool_description") or "",
            "include_deferred": False,
        }

    variables: dict[str, str] = {}
    for i, entry in enumerate(section.get("variables") or []):
        key = entry.get("variable_name")
        if not key:
            raise SettingsError(f"{path}: airflow.variables[{i}] has no variable_name")
        value = entry.get("variable_value")
        variables[key] = "" if value is None else str(_expand(value, variables_env))

    return AirflowSettings(connections=connections, pools=pools, variables=variables)


def _airflow_cli() -> str:
    beside = Path(sys.executable).with_name("airflow")
    found = str(beside) if beside.exists() else shutil.which("airflow")
    if not found:
        raise FileNotFoundError("the 'airflow' command is not installed in this environment")
    return found


def load_into_airflow(settings: AirflowSettings, env: dict[str, str] | None = None) -> None:
    """Import the settings with ``airflow connections/pools/variables import`` (overwrite mode).

    The temporary files hold secrets, so they are private to the user and removed afterwards;
    the CLI output is not echoed because Airflow prints connection ids only.
    """
    cli = _airflow_cli()
    with tempfile.TemporaryDirectory(prefix="mds-settings-") as tmp:
        os.chmod(tmp, 0o700)
        steps: list[tuple[str, dict[str, Any], list[str]]] = [
            ("connections.json", settings.connections, ["connections", "import", "--overwrite"]),
            ("pools.json", settings.pools, ["pools", "import"]),
            ("variables.json", settings.variables, ["variables", "import", "-a", "overwrite"]),
        ]
        for name, payload, command in steps:
            if not payload:
                continue
            file = Path(tmp) / name
            file.write_text(json.dumps(payload, indent=2))
            file.chmod(0o600)
            result = subprocess.run(
                [cli, *command, str(file)], env=env, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(f"airflow {' '.join(command[:2])} failed: {result.stderr.strip()[-2000:]}")
            log.info("airflow %s: %d item(s)", " ".join(command[:2]), len(payload))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else PROJECT_DIR / "airflow_settings.yaml"
    settings = parse_settings(path)
    load_into_airflow(settings)
    log.info(
        "loaded %s: %d connection(s), %d pool(s), %d variable(s)",
        path,
        len(settings.connections),
        len(settings.pools),
        len(settings.variables),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
