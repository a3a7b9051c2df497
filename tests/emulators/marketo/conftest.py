"""Fixtures: a real Marketo emulator process over HTTPS, and a thin JSON client for it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import RunningEmulator, start_emulator


class Api:
    """Minimal Marketo caller: fetches a token, sends it as a bearer header, returns JSON."""

    def __init__(self, emu: RunningEmulator) -> None:
        self.emu = emu
        self.session = requests.Session()
        self.session.verify = emu.verify
        creds = default_credentials("marketo_default")
        self.client_id, self.client_secret = creds.client_id, creds.client_secret
        self.token: str | None = None

    def authenticate(self) -> dict[str, Any]:
        resp = self.session.get(
            f"{self.emu.base_url}/identity/oauth/token",
            verify=self.emu.verify,
            params={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            },
            timeout=10,
        )
        resp.raise_for_status()
        body = resp.json()
        self.token = body["access_token"]
        return body

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        if self.token is None:
            self.authenticate()
        headers = dict(kwargs.pop("headers", {}))
        headers.setdefault("Authorization", f"Bearer {self.token}")
        return self.session.request(
            method, f"{self.emu.base_url}{path}", headers=headers, timeout=60, **kwargs
        )

    def stats(self) -> dict[str, Any]:
        """The emulator's ``/_emulator/stats`` counters."""
        return dict(self.emu.admin("GET", "stats").json())

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        resp = self.call("GET", path, params=params)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def post(self, path: str, body: Any = None, **params: Any) -> dict[str, Any]:
        resp = self.call("POST", path, json=body, params=params)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def error_code(body: dict[str, Any]) -> str | None:
    """The first response-level error code, or None on success."""
    if body.get("success"):
        return None
    return str(body["errors"][0]["code"])


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """One emulator per test module, limits off (tests switch them on through the admin area)."""
    workdir: Path = tmp_path_factory.mktemp("marketo")
    emu = start_emulator("marketo", workdir, ["--limits", "off", "--time-scale", "0.05"], seed_scale=200)
    yield emu
    emu.stop()


@pytest.fixture
def api(emulator: RunningEmulator) -> Iterator[Api]:
    """A client for the module's emulator; limits and faults are reset after each test."""
    initial = emulator.admin("GET", "limits").json()
    initial.pop("counters")
    client = Api(emulator)
    yield client
    client.session.close()
    emulator.admin("DELETE", "faults")
    emulator.admin("PUT", "limits", json=initial)
    emulator.admin("POST", "reset-counters")
