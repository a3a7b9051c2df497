"""Fixtures for real ``dag.test()`` runs of the sync DAGs against real emulator processes.

Each test gets both emulators (empty databases, HTTPS with their own CA, free ports), Airflow
connections and Variables through ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` pointing at them, a
fresh SQLite state store and a ``file://`` staging folder. The entity YAML files are copied to
a temporary folder (``$MDS_ENTITIES_DIR``) without the mapped Marketo fields the emulator's
catalogue lacks: the project's files map sync-owned custom fields (``msd…``) that a real
instance has to create, and the emulator does not define all of them yet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from crm_sync.config import ENTITIES_DIR
from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import RunningEmulator, start_emulator

if TYPE_CHECKING:
    from airflow.sdk import DAG
    from sqlalchemy.engine import Engine

    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "sync_entities.py"
# Marketo describe path per entity object, to learn which mapped fields the emulator knows.
_DESCRIBE = {
    "lead": "leads",
    "company": "companies",
    "opportunity": "opportunities",
    "opportunity_role": "opportunities/roles",
    "sales_person": "salespersons",
}
_SYNC_OWNED = ("type_field", "deleted_field", "email_field", "sync_flag_field", "record_id_field")


def _clear_hook_caches() -> None:
    """Forget per-process tokens, msal apps and limiters, closing the msal apps' sessions.

    An open keep-alive connection makes the emulator's graceful shutdown wait for it.
    """
    from crm_sync_hooks import base, dynamics, marketo

    for app in dynamics._MSAL_APPS.values():
        client = getattr(app, "http_client", None)
        if client is not None and hasattr(client, "close"):
            client.close()
    for cache in (marketo._TOKENS, dynamics._MSAL_APPS, base._LIMITERS):
        cache.clear()


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


def _known_fields(emu: RunningEmulator) -> dict[str, set[str]]:
    """Field names the Marketo emulator defines, per object, from its describe endpoints."""
    from crm_sync_hooks.marketo import MarketoHook

    hook = MarketoHook("marketo_default")
    known: dict[str, set[str]] = {}
    try:
        for obj, path in _DESCRIBE.items():
            result = hook.describe(path)
            if obj == "lead":
                known[obj] = {f["rest"]["name"] for f in result if f.get("rest")}
            else:
                known[obj] = {f["name"] for item in result for f in item.get("fields", [])}
    finally:
        hook.close()
    return known


def adapt_entities(source: Path, target: Path, known: dict[str, set[str]]) -> None:
    """Copy the entity YAML files, leaving out mapped Marketo fields the emulator lacks."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        names = known.get(data["marketo"]["object"])
        if names is not None:
            data["fields"] = [f for f in data["fields"] if f["marketo"] in names]
            for key in _SYNC_OWNED:
                if data["marketo"].get(key) and data["marketo"][key] not in names:
                    data["marketo"][key] = None
        (target / path.name).write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def sync_env(airflow_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncEnv]:
    """Both emulators, connections, Variables, a state store and an entity folder for one test."""
    _clear_hook_caches()
    marketo = start_emulator("marketo", tmp_path / "marketo")
    dynamics = start_emulator("dynamics", tmp_path / "dynamics")
    try:
        limiter = f"sqlite:///{tmp_path / 'limiter.sqlite'}"
        m_cred = default_credentials("marketo_default")
        d_cred = default_credentials("dynamics_default")
        monkeypatch.setenv(
            "AIRFLOW_CONN_MARKETO_DEFAULT",
            json.dumps(
                {
                    "conn_type": "marketo",
                    "host": marketo.base_url,
                    "login": m_cred.client_id,
                    "password": m_cred.client_secret,
                    "extra": {"ca_bundle": str(marketo.ca_file), "timeout": 30, "limiter_url": limiter},
                }
            ),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_DYNAMICS_DEFAULT",
            json.dumps(
                {
                    "conn_type": "dynamics",
                    "host": dynamics.base_url,
                    "login": d_cred.client_id,
                    "password": d_cred.client_secret,
                    "extra": {
                        "ca_bundle": str(dynamics.ca_file),
                        "tenant_id": d_cred.tenant_id,
                        "authority_host": dynamics.base_url,
                        "api_version": "9.2",
                        "timeout": 30,
                        "limiter_url": limiter,
                    },
                }
            ),
        )
        state_url = f"sqlite:///{tmp_path / 'state.db'}"
        staging = tmp_path / "staging"
        monkeypatch.setenv("AIRFLOW_VAR_MDS_STATE_DB_URL", state_url)
        monkeypatch.setenv("AIRFLOW_VAR_MDS_STAGING_PATH", f"file://{staging}")
        entities = tmp_path / "entities"
        adapt_entities(ENTITIES_DIR, entities, _known_fields(marketo))
        monkeypatch.setenv("MDS_ENTITIES_DIR", str(entities))
        yield SyncEnv(marketo, dynamics, state_url, staging, entities)
    finally:
        _clear_hook_caches()
        marketo.stop()
        dynamics.stop()


def write_calls(stats: dict[str, Any]) -> dict[str, int]:
    """API calls that can write, from an emulator's stats (token endpoints excluded).

    Marketo reads by id list go through ``POST …?_method=GET`` too, which the stats do not tell
    apart from writes, so for ``leads.json`` the records written are counted instead.
    """
    calls: dict[str, int] = dict(stats.get("calls", {}))  # type: ignore[arg-type]
    records: dict[str, int] = dict(stats.get("records", {}))  # type: ignore[arg-type]
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
    """API calls that only read (token and metadata discovery excluded)."""
    calls: dict[str, int] = dict(stats.get("calls", {}))  # type: ignore[arg-type]
    return sum(
        n
        for route, n in calls.items()
        if route.startswith("GET ")
        and "oauth" not in route
        and "openid-configuration" not in route
        and "/identity/" not in route
    )


@pytest.fixture
def new_guid() -> Callable[[], str]:
    import uuid

    return lambda: str(uuid.uuid4())
