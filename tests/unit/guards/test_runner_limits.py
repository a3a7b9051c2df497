"""The runner's Dataverse hook leaves the configured share of the request window to others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crm_sync.engine.context import RunSettings
from crm_sync.tasks.common import dynamics_hook


@pytest.fixture
def dynamics_conn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conn = {
        "conn_type": "dynamics",
        "host": "https://org.example.crm.dynamics.com",
        "login": "client-id",
        "password": "not-a-real-secret",
        "extra": {"tenant_id": "tenant", "limiter_url": f"sqlite:///{tmp_path / 'limiter.sqlite'}"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS_DEFAULT", json.dumps(conn))


@pytest.mark.usefixtures("dynamics_conn")
@pytest.mark.parametrize(("reserve", "calls"), [(0.0, 6000), (0.2, 4800), (0.5, 3000)])
def test_window_reserve_caps_the_shared_limiter(reserve: float, calls: int) -> None:
    settings = RunSettings(
        run_id="r", state_url="sqlite://", staging_url="file:///tmp", dynamics_window_reserve=reserve
    )
    hook = dynamics_hook(settings)
    limiter = hook.transport.limiter
    assert limiter.limits.max_calls == calls
    assert limiter.scope == "dynamics:https://org.example.crm.dynamics.com:client-id", "the hook's own scope"
