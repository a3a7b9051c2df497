"""Fixtures for the Dataverse emulator tests: real emulator processes over HTTPS, real msal tokens."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal
import pytest
import requests
from azure.core.credentials import AccessToken
from PowerPlatform.Dataverse.client import DataverseClient

from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import RunningEmulator, start_emulator

CREDS = default_credentials("dynamics_default")
SEED_LEADS = 300


def msal_app(emu: RunningEmulator, secret: str = CREDS.client_secret) -> msal.ConfidentialClientApplication:
    """An msal client pointed at the emulator's authority, exactly as the module docstring of
    ``emulators.dynamics.auth`` documents (the test session has no REQUESTS_CA_BUNDLE set, see
    tests/conftest.py, so msal's ``verify`` is honoured)."""
    return msal.ConfidentialClientApplication(
        CREDS.client_id,
        client_credential=secret,
        authority=f"{emu.base_url}/{CREDS.tenant_id}",
        instance_discovery=False,
        verify=str(emu.ca_file),
    )


@dataclass
class Dataverse:
    """A minimal Web API caller for the tests: bearer token, CA file, the API root."""

    emu: RunningEmulator
    token: str

    @property
    def api(self) -> str:
        return f"{self.emu.base_url}/api/data/v9.2"

    def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> requests.Response:
        url = path if path.startswith("https://") else f"{self.api}/{path}"
        hdrs = {"Authorization": f"Bearer {self.token}", "Accept": "application/json", "OData-Version": "4.0"}
        hdrs.update(headers or {})
        return requests.request(method, url, headers=hdrs, verify=str(self.emu.ca_file), timeout=60, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.call("GET", path, **kw)

    def read_all(self, path: str, page: int, prefer: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Follow nextLinks; return every row and the last page's body."""
        prefer_value = f"odata.maxpagesize={page}" + (f",{prefer}" if prefer else "")
        rows: list[dict[str, Any]] = []
        url = path
        while True:
            resp = self.get(url, headers={"Prefer": prefer_value})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert len(body["value"]) <= page
            rows.extend(body["value"])
            if "@odata.nextLink" not in body:
                return rows, body
            url = body["@odata.nextLink"]


def close_msal(app: msal.ConfidentialClientApplication) -> None:
    """Close msal's pooled connection: uvicorn's graceful shutdown waits for open keep-alive
    connections, which would make every emulator stop take the 10 s kill timeout."""
    app.http_client.close()


def token_for(emu: RunningEmulator) -> str:
    app = msal_app(emu)
    try:
        result = app.acquire_token_for_client(scopes=[f"{emu.base_url}/.default"])
    finally:
        close_msal(app)
    assert "access_token" in result, result
    return str(result["access_token"])


@pytest.fixture(scope="module")
def dataverse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataverse]:
    """One seeded emulator (300 leads, limits off) shared by a test module."""
    emu = start_emulator(
        "dynamics", tmp_path_factory.mktemp("dyn"), ["--limits", "off"], seed_scale=SEED_LEADS
    )
    try:
        yield Dataverse(emu, token_for(emu))
    finally:
        emu.stop()


@pytest.fixture
def fresh_emulator(tmp_path: Path) -> Iterator[Callable[..., Dataverse]]:
    """Start an unseeded emulator with extra options, for tests that need their own settings."""
    started: list[RunningEmulator] = []

    def start(*args: str) -> Dataverse:
        emu = start_emulator("dynamics", tmp_path / f"emu{len(started)}", list(args))
        started.append(emu)
        return Dataverse(emu, token_for(emu))

    yield start
    for emu in started:
        emu.stop()


def wait_until(check: Callable[[], bool], timeout: float = 15.0, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class MsalCredential:
    """A TokenCredential backed by msal client credentials against the emulator."""

    def __init__(self, emu):
        self.app = msal_app(emu)

    def get_token(self, *scopes, **_kw):
        result = self.app.acquire_token_for_client(scopes=list(scopes))
        assert "access_token" in result, result
        return AccessToken(result["access_token"], int(time.time()) + int(result["expires_in"]))

    def close(self):
        close_msal(self.app)


@pytest.fixture
def sdk(dataverse, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(dataverse.emu.ca_file))
    credential = MsalCredential(dataverse.emu)
    with DataverseClient(dataverse.emu.base_url, credential) as client:
        yield client
    credential.close()
