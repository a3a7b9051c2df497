"""Fixtures for the hook tests: connections through ``AIRFLOW_CONN_*`` and clean per-process caches."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_sync_hooks.caches import clear_process_caches

MARKETO_URL = "https://mkto.unit.test"
DYNAMICS_URL = "https://org.unit.test"
AUTHORITY = "https://login.unit.test"
TENANT = "tenant-0001"
MARKETO_SECRET = "unit-marketo-secret-7f3a9c"
DYNAMICS_SECRET = "unit-dynamics-secret-51be2d"


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    """Forget tokens, msal apps and limiters between tests (they are per-process caches)."""
    clear_process_caches()
    yield
    clear_process_caches()


@pytest.fixture
def set_connection(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Define an Airflow connection through an environment variable and return its id."""

    def define(conn_id: str, **fields: Any) -> str:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
        return conn_id

    return define


@pytest.fixture
def marketo_conn(set_connection: Callable[..., str], tmp_path: Path) -> Callable[..., str]:
    """Return a factory of Marketo connections to the mocked host, with a private limiter file."""

    def make(conn_id: str = "mkto_unit", **extra: Any) -> str:
        extras = {"limiter_url": f"sqlite:///{tmp_path}/limiter.sqlite", "timeout": 5, **extra}
        return set_connection(
            conn_id,
            conn_type="marketo",
            host=MARKETO_URL,
            login="unit-client",
            password=MARKETO_SECRET,
            extra=extras,
        )

    return make


@pytest.fixture
def dynamics_conn(set_connection: Callable[..., str], tmp_path: Path) -> Callable[..., str]:
    """Return a factory of Dynamics connections to the mocked hosts, with a private limiter file."""

    def make(conn_id: str = "dyn_unit", **extra: Any) -> str:
        extras = {
            "limiter_url": f"sqlite:///{tmp_path}/limiter.sqlite",
            "timeout": 5,
            "tenant_id": TENANT,
            "authority_host": AUTHORITY,
            "api_version": "9.2",
            **extra,
        }
        return set_connection(
            conn_id,
            conn_type="dynamics",
            host=DYNAMICS_URL,
            login="00000000-0000-0000-0000-0000000000aa",
            password=DYNAMICS_SECRET,
            extra=extras,
        )

    return make


def hammer_from_two_processes(
    hammer: Callable[[str, dict[str, str], int], int], conn_id: str, count: int
) -> tuple[list[int], float]:
    """Run ``hammer(conn_id, env, count)`` in two spawned processes at once.

    Each process builds its own hook from the connection's ``AIRFLOW_CONN_*`` variable, so only
    the shared limiter store can keep them together under the service's limits.

    Returns:
        What each process returned, and the wall time of both.
    """
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    env = {var: os.environ[var]}
    began = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        done = pool.starmap(hammer, [(conn_id, env, count), (conn_id, env, count)])
    return done, time.monotonic() - began
