"""The client credentials the emulators accept by default: those in ``airflow_settings.yaml``.

Reading the project's settings file keeps the demo connections and the emulators in step
without a second copy of the fake secrets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

SETTINGS_FILE = (
    Path(os.environ.get("MDS_PROJECT_DIR", Path(__file__).resolve().parents[2])) / "airflow_settings.yaml"
)


@dataclass(frozen=True)
class ClientCredentials:
    """One accepted client id and secret (plus the tenant, for Entra ID)."""

    client_id: str
    client_secret: str
    tenant_id: str | None = None


def default_credentials(conn_id: str, settings_file: Path = SETTINGS_FILE) -> ClientCredentials:
    """Return the credentials of connection ``conn_id`` in the settings file.

    Raises:
        KeyError: The file has no such connection, or it lacks a login or password.
    """
    raw = yaml.safe_load(settings_file.read_text()) or {}
    for entry in (raw.get("airflow") or {}).get("connections") or []:
        if entry.get("conn_id") == conn_id:
            login, password = entry.get("conn_login"), entry.get("conn_password")
            if not login or not password:
                raise KeyError(f"{settings_file}: connection {conn_id!r} needs conn_login and conn_password")
            extra = entry.get("conn_extra") or {}
            return ClientCredentials(str(login), str(password), extra.get("tenant_id"))
    raise KeyError(f"{settings_file}: no connection {conn_id!r}")
