"""The hooks as Airflow sees them: provider registration, UI fields, and the connection Test button path."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_sync_hooks import get_provider_info
from crm_sync_hooks.dynamics import DynamicsHook
from crm_sync_hooks.marketo import MarketoHook
from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import RunningEmulator, start_emulator

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def test_providers_manager_lists_both_connection_types_with_their_ui_fields():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hooks = ProvidersManagerTaskRuntime().hooks  # what a task uses to turn a conn_type into a hook
    marketo_info, dynamics_info = hooks["marketo"], hooks["dynamics"]
    assert marketo_info is not None
    assert dynamics_info is not None
    assert marketo_info.hook_class_name == "crm_sync_hooks.marketo.MarketoHook"
    assert dynamics_info.hook_class_name == "crm_sync_hooks.dynamics.DynamicsHook"
    manager = ProvidersManager()  # what the API server uses to build the connection form
    behaviours = manager.field_behaviours
    assert behaviours["marketo"]["relabeling"] == {
        "host": "REST base URL",
        "login": "Client ID",
        "password": "Client secret",
    }
    assert behaviours["dynamics"]["relabeling"]["host"] == "Organization URL"
    assert behaviours["dynamics"]["placeholders"]["extra__dynamics__tenant_id"].count("-") == 4
    widgets = manager.connection_form_widgets
    labels = {
        name: info.field["schema"]["title"]
        for name, info in widgets.items()
        if "__marketo__" in name or "__dynamics__" in name
    }
    assert labels["extra__marketo__daily_call_budget"] == "Daily call budget"
    assert labels["extra__marketo__ca_bundle"] == "CA bundle"
    assert labels["extra__marketo__timeout"] == "Timeout (seconds)"
    for field, label in [
        ("tenant_id", "Tenant ID"),
        ("authority_host", "Authority host"),
        ("api_version", "API version"),
        ("ca_bundle", "CA bundle"),
    ]:
        assert labels[f"extra__dynamics__{field}"] == label


def test_hook_ui_methods_match_the_provider_info():
    by_type = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    for hook_class in (MarketoHook, DynamicsHook):
        behaviour = hook_class.get_ui_field_behaviour()
        declared = by_type[hook_class.conn_type]["ui-field-behaviour"]
        assert behaviour["hidden_fields"] == declared["hidden-fields"]
        assert behaviour["relabeling"] == declared["relabeling"]
        assert behaviour["placeholders"] == declared["placeholders"]


@pytest.fixture(scope="module")
def emulators(tmp_path_factory) -> Iterator[dict[str, RunningEmulator]]:
    running = {side: start_emulator(side, tmp_path_factory.mktemp(side)) for side in ("marketo", "dynamics")}
    yield running
    gc.collect()
    for emu in running.values():
        emu.stop()


def connection_json(emulators: dict[str, RunningEmulator], workdir: Path) -> dict[str, dict]:
    mk, dy = default_credentials("marketo_default"), default_credentials("dynamics_default")
    limiter = f"sqlite:///{workdir}/limiter.sqlite"
    marketo = {
        "conn_type": "marketo",
        "host": emulators["marketo"].base_url,
        "login": mk.client_id,
        "extra": {"ca_bundle": str(emulators["marketo"].ca_file), "limiter_url": limiter, "timeout": 20},
    }
    dynamics = {
        "conn_type": "dynamics",
        "host": emulators["dynamics"].base_url,
        "login": dy.client_id,
        "extra": {
            "tenant_id": dy.tenant_id,
            "authority_host": emulators["dynamics"].base_url,
            "api_version": "9.2",
            "ca_bundle": str(emulators["dynamics"].ca_file),
            "limiter_url": limiter,
            "timeout": 20,
        },
    }
    return {
        "mkto_cli_good": {**marketo, "password": mk.client_secret},
        "mkto_cli_bad": {**marketo, "password": "not-the-marketo-secret"},
        "dyn_cli_good": {**dynamics, "password": dy.client_secret},
        "dyn_cli_bad": {**dynamics, "password": "not-the-dynamics-secret"},
    }


def airflow_env() -> dict[str, str]:
    # The UI's Test button and `airflow connections test` are off unless this is enabled.
    return {**os.environ, "AIRFLOW__CORE__TEST_CONNECTION": "Enabled"}


def airflow_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIRFLOW, *args], capture_output=True, text=True, env=airflow_env(), timeout=120, check=False
    )


def run_connection_tests(conn_ids: list[str]) -> dict[str, str]:
    """Run `airflow connections test` for each id in parallel (a CLI start costs seconds); return outputs."""
    procs = {
        conn_id: subprocess.Popen(
            [AIRFLOW, "connections", "test", conn_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=airflow_env(),
        )
        for conn_id in conn_ids
    }
    return {conn_id: proc.communicate(timeout=120)[0] for conn_id, proc in procs.items()}


def test_connections_created_through_airflow_test_ok_and_fail_clearly(airflow_db, emulators, tmp_path):
    conns = connection_json(emulators, tmp_path)
    mk, dy = conns["mkto_cli_good"], conns["dyn_cli_good"]
    for conn_id, conn in (("mkto_cli_good", mk), ("dyn_cli_good", dy)):
        added = airflow_cli(
            "connections",
            "add",
            conn_id,
            "--conn-type",
            conn["conn_type"],
            "--conn-host",
            conn["host"],
            "--conn-login",
            conn["login"],
            "--conn-password",
            conn["password"],
            "--conn-extra",
            json.dumps(conn["extra"]),
        )
        assert added.returncode == 0, added.stderr
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps({k: v for k, v in conns.items() if k.endswith("_bad")}))
    imported = airflow_cli("connections", "import", str(bad_file))
    assert imported.returncode == 0, imported.stderr

    out = run_connection_tests(list(conns))
    assert "Connection success!" in out["mkto_cli_good"]
    assert "Connection success!" in out["dyn_cli_good"]
    assert "Connection failed!" in out["mkto_cli_bad"]
    assert (
        "client id or client secret refused by the identity service (HTTP 401, invalid_client)"
        in out["mkto_cli_bad"]
    )
    assert "Connection failed!" in out["dyn_cli_bad"]
    assert "token request refused (invalid_client" in out["dyn_cli_bad"]
    everything = "".join(out.values())
    for secret in ("not-the-marketo-secret", "not-the-dynamics-secret", mk["password"], dy["password"]):
        assert secret not in everything
