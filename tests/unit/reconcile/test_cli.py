"""The ``python -m crm_sync.reconcile`` CLI: entity selection and connection re-pointing."""

from __future__ import annotations

import json
import os

import pytest

from crm_sync.config import ENTITIES_DIR, load_entities
from crm_sync.reconcile.__main__ import _point_connection, main, select_entities


def test_entities_in_dependency_order_and_unknown_names_refused() -> None:
    everything = load_entities(ENTITIES_DIR)
    assert [e.name for e in select_entities(everything, "lead, user,contact")] == ["user", "contact", "lead"]
    assert [e.name for e in select_entities(everything, "")][:3] == ["user", "team", "account"]
    with pytest.raises(SystemExit, match="unknown entities \\['leads'\\]"):
        select_entities(everything, "leads")


def test_url_override_keeps_the_connection_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    original = {
        "conn_type": "dynamics",
        "host": "https://127.0.0.1:1111",
        "login": "client",
        "password": "not-a-real-secret",
        "extra": {"tenant_id": "t", "authority_host": "https://127.0.0.1:1111", "timeout": 5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS_DEFAULT", json.dumps(original))
    monkeypatch.delenv("AIRFLOW_CONN_MDS_RECONCILE_DYNAMICS", raising=False)
    try:
        name = _point_connection("dynamics_default", "https://127.0.0.1:2222/", "mds_reconcile_dynamics")
        copied = json.loads(os.environ["AIRFLOW_CONN_MDS_RECONCILE_DYNAMICS"])
    finally:
        os.environ.pop("AIRFLOW_CONN_MDS_RECONCILE_DYNAMICS", None)
    assert name == "mds_reconcile_dynamics"
    assert copied["host"] == "https://127.0.0.1:2222"
    assert copied["extra"]["authority_host"] == "https://127.0.0.1:2222"
    assert (copied["login"], copied["password"], copied["extra"]["tenant_id"]) == (
        "client",
        "not-a-real-secret",
        "t",
    )


def test_a_connection_failure_is_one_line_and_exit_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    status = main(["check", "--entities", "user", "--dynamics-conn", "nope", "--state-url", "sqlite://"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("reconcile check failed: ")
    assert "nope" in err
