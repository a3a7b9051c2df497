"""The airflow_settings.yaml loader: parsing, and loading into a real Airflow metadata DB."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from crm_sync.settings_loader import SettingsError, load_into_airflow, parse_settings

PROJECT_SETTINGS = Path(__file__).resolve().parents[2] / "airflow_settings.yaml"


def test_project_settings_hold_both_connections_pools_and_variables() -> None:
    settings = parse_settings(PROJECT_SETTINGS, env={"MDS_PROJECT_DIR": "/srv/mds"})
    assert settings.connections["marketo_default"]["conn_type"] == "marketo"
    assert settings.connections["dynamics_default"]["conn_type"] == "dynamics"
    extra = json.loads(settings.connections["dynamics_default"]["extra"])
    assert extra["ca_bundle"] == "/srv/mds/var/emulators/ca/ca.pem"
    assert extra["tenant_id"]
    assert set(settings.pools) == {"marketo_api", "dynamics_api"}
    assert settings.variables["mds_state_db_url"] == "sqlite:////srv/mds/var/state.db"


def test_connections_point_at_local_emulators_only() -> None:
    settings = parse_settings(PROJECT_SETTINGS, env={})
    for conn_id, conn in settings.connections.items():
        assert conn["host"].startswith("https://127.0.0.1:"), conn_id


def test_astro_fields_are_mapped_and_empty_values_dropped(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text(
        "airflow:\n"
        "  connections:\n"
        "    - {conn_id: c1, conn_type: http, conn_host: h, conn_port: 8443,\n"
        "       conn_login: '', conn_extra: {a: 1}}\n"
        "  pools:\n"
        "    - {pool_name: p1, pool_slot: 3}\n"
        "  variables:\n"
        "    - {variable_name: v1, variable_value: 5}\n"
        "    - {variable_name: v2, variable_value: null}\n"
    )
    settings = parse_settings(file, env={})
    assert settings.connections == {
        "c1": {"conn_type": "http", "host": "h", "port": 8443, "extra": '{"a": 1}'}
    }
    assert settings.pools == {"p1": {"slots": 3, "description": "", "include_deferred": False}}
    assert settings.variables == {"v1": "5", "v2": ""}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("airflow:\n  connections:\n    - {conn_type: http}\n", "connections[0] has no conn_id"),
        ("airflow:\n  connections:\n    - {conn_id: x, conn_type: http, conn_hots: h}\n", "unknown keys"),
        ("airflow:\n  connections:\n    - {conn_id: x}\n", "'x' has no conn_type"),
        ("airflow:\n  pools:\n    - {pool_name: p}\n", "pools[0] needs pool_name and pool_slot"),
        ("airflow:\n  variables:\n    - {variable_value: 1}\n", "variables[0] has no variable_name"),
    ],
)
def test_malformed_entries_name_the_file_and_entry(tmp_path: Path, body: str, message: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(body)
    with pytest.raises(SettingsError, match=re.escape(message)) as err:
        parse_settings(file, env={})
    assert str(file) in str(err.value)


def _read_back() -> tuple[dict[str, Any], dict[Any, int], dict[str, Any]]:
    # Reading the metadata DB directly is what this test is about; task code never does this.
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        conns = {
            c.conn_id: {"type": c.conn_type, "host": c.host, "login": c.login, "extra": c.extra_dejson}
            for c in session.query(Connection).all()
        }
        pools = {p.pool: p.slots for p in session.query(Pool).all()}
        variables = {v.key: v.val for v in session.query(Variable).all()}
    return conns, pools, variables


def test_loading_twice_into_airflow_is_idempotent(airflow_db: str) -> None:
    settings = parse_settings(PROJECT_SETTINGS)
    load_into_airflow(settings)
    first = _read_back()
    load_into_airflow(settings)
    second = _read_back()
    assert first == second

    conns, pools, variables = second
    assert conns["marketo_default"]["type"] == "marketo"
    assert conns["marketo_default"]["host"] == "https://127.0.0.1:8081"
    assert conns["dynamics_default"]["extra"]["api_version"] == "9.2"
    assert pools["marketo_api"] == 8
    assert pools["dynamics_api"] == 8
    assert variables["mds_quota_reserve_share"] == "0.2"
    assert variables["mds_marketo_daily_quota"] == "50000"
    assert set(variables) == set(settings.variables)
    assert sum(1 for c in conns if c in settings.connections) == len(settings.connections)
