"""Fixtures for real ``dag.test()`` runs of the sync DAGs against real emulator processes.

Each test gets both emulators (empty databases, HTTPS with their own CA, free ports), Airflow
connections and Variables through ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` pointing at them, a
fresh SQLite state store and a ``file://`` staging folder. The project's entity YAML files are
copied unchanged to a temporary folder (``$MDS_ENTITIES_DIR``), so a test can add one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from crm_sync.config import ENTITIES_DIR
from tests.support.emulator_procs import RunningEmulator, start_emulator

if TYPE_CHECKING:
    from airflow.sdk import DAG
    from sqlalchemy.engine import Engine

    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "sync_entities.py"


def _clear_hook_caches() -> None:
    """Forget per-process tokens, msal apps and limiters (every test has new emulators).

    Closing the msal sessions matters: an open keep-alive connection makes the emulator's
    graceful shutdown wait for it.
    """
    from crm_sync_hooks.caches import clear_process_caches

    clear_process_caches()


@dataclass
class SyncEnv:
    """The running emulators and what the DAGs were pointed at."""

    marketo: RunningEmulator
    dynamics: RunningEmulator
    state_url: str
    staging: Path
    entities_dir: Path

    def mkto(self) -> MarketoHook:
        from crm_sync_hooks.marketo import MarketoHook

        return MarketoHook("marketo_default")

    def dyn(self) -> DynamicsHook:
        from crm_sync_hooks.dynamics import DynamicsHook

        return DynamicsHook("dynamics_default")

    def state(self) -> Engine:
        from crm_sync.state import make_engine

        return make_engine(self.state_url)

    def reset_stats(self) -> None:
        for emu in (self.marketo, self.dynamics):
            emu.admin("POST", "stats/reset")

    def dag(self, dag_id: str) -> DAG:
        """Parse the DAG factory file now (it reads ``$MDS_ENTITIES_DIR``) and return one DAG."""
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAG_FILE))
        assert bag.import_errors == {}, bag.import_errors
        return bag.dags[dag_id]

    def run(self, dag_id: str) -> Any:
        """One real ``dag.test()`` run; fails the test unless the run succeeded."""
        run = self.dag(dag_id).test()
        assert run.state == "success", f"{dag_id} run ended {run.state}"
        return run


@pytest.fixture
def sync_env(
    airflow_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[SyncEnv]:
    """Both emulators, connections, Variables, a state store and an entity folder for one test.

    Indirect parametrization with ``{"dynamics_seed": N}`` seeds the Dataverse emulator with
    its fake organization (N leads and proportional accounts, contacts, opportunities, users,
    teams); otherwise both emulators start empty. ``{"bare": True}`` starts both without the
    sync's own fields (``--bare``), as a real org is before ``setup apply``.
    """
    _clear_hook_caches()
    options: dict[str, Any] = getattr(request, "param", None) or {}
    bare = ["--bare"] if options.get("bare") else []  # systems without the sync's own fields
    marketo = start_emulator("marketo", tmp_path / "marketo", extra_args=bare)
    dynamics = start_emulator(
        "dynamics", tmp_path / "dynamics", extra_args=bare, seed_scale=options.get("dynamics_seed")
    )
    try:
        limiter = f"sqlite:///{tmp_path / 'limiter.sqlite'}"
        monkeypatch.setenv(
            "AIRFLOW_CONN_MARKETO_DEFAULT", marketo.connection(timeout=30, limiter_url=limiter)
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_DYNAMICS_DEFAULT", dynamics.connection(timeout=30, limiter_url=limiter)
        )
        state_url = f"sqlite:///{tmp_path / 'state.db'}"
        staging = tmp_path / "staging"
        monkeypatch.setenv("AIRFLOW_VAR_MDS_STATE_DB_URL", state_url)
        monkeypatch.setenv("AIRFLOW_VAR_MDS_STAGING_PATH", f"file://{staging}")
        entities = tmp_path / "entities"
        shutil.copytree(ENTITIES_DIR, entities, ignore=shutil.ignore_patterns("*.md"))
        monkeypatch.setenv("MDS_ENTITIES_DIR", str(entities))
        yield SyncEnv(marketo, dynamics, state_url, staging, entities)
    finally:
        _clear_hook_caches()
        marketo.stop()
        dynamics.stop()


def fail_fast(monkeypatch: pytest.MonkeyPatch, conn_id: str) -> None:
    """Let the hook of ``conn_id`` give up on a failing API within seconds, not minutes of retries."""
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    conn = json.loads(os.environ[name])
    conn["extra"]["max_retry_seconds"] = 2
    monkeypatch.setenv(name, json.dumps(conn))


def write_calls(stats: dict[str, Any]) -> dict[str, int]:
    """API calls that can write, from an emulator's stats (token endpoints excluded).

    Marketo reads by id list go through ``POST …?_method=GET`` too, which the stats do not tell
    apart from writes, so for ``leads.json`` the records written are counted instead.
    """
    calls: dict[str, int] = dict(stats.get("calls", {}))
    records: dict[str, int] = dict(stats.get("records", {}))
    out = {
        route: n
        for route, n in calls.items()
        if route.split(" ", 1)[0] in ("POST", "PATCH", "PUT", "DELETE")
        and "oauth" not in route
        and "/identity/" not in route
        and route != "POST /rest/v1/leads.json"
    }
    out.update({k: v for k, v in records.items() if k.endswith((".write", ".delete")) and v})
    return out


def read_calls(stats: dict[str, Any]) -> int:
    """API calls that only read data (token and metadata discovery excluded).

    Metadata includes the schema reads of each run's drift check (Dataverse ``EntityDefinitions``,
    Marketo ``describe``), which do not grow with the data.
    """
    calls: dict[str, int] = dict(stats.get("calls", {}))
    return sum(
        n
        for route, n in calls.items()
        if route.startswith("GET ")
        and "oauth" not in route
        and "openid-configuration" not in route
        and "/identity/" not in route
        and "EntityDefinitions" not in route
        and not route.endswith("/describe.json")
    )


@pytest.fixture
def new_guid() -> Callable[[], str]:
    import uuid

    return lambda: str(uuid.uuid4())
