"""The ``airflow_api`` connection (pauses the sync DAGs on a sandbox refresh) is https unless it
says ``allow_http`` (issue 17, point 3): it carries the admin password with every call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crm_sync.rebaseline import _airflow_api
from crm_sync_hooks.errors import ConfigurationError


def _define(monkeypatch: pytest.MonkeyPatch, **fields: object) -> None:
    conn = {"conn_type": "http", "login": "admin", "password": "pw", **fields}
    monkeypatch.setenv("AIRFLOW_CONN_AIRFLOW_API", json.dumps(conn))


def test_plain_http_is_refused_without_allow_http(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(monkeypatch, host="http://airflow.example.com:8080")
    with pytest.raises(ConfigurationError, match="https is required"):
        _airflow_api("airflow_api")


def test_a_bare_host_means_https_and_allow_http_admits_a_local_server(
    monkeypatch: pytest.MonkeyPatch, requests_mock: Any
) -> None:
    for base in ("https://airflow.example.com:8443", "http://127.0.0.1:8080"):
        requests_mock.post(f"{base}/auth/token", json={"access_token": "jwt"})
    _define(monkeypatch, host="airflow.example.com", port=8443)
    assert _airflow_api("airflow_api").base_url == "https://airflow.example.com:8443"
    _define(monkeypatch, host="http://127.0.0.1:8080", extra=json.dumps({"allow_http": True}))
    assert _airflow_api("airflow_api").base_url == "http://127.0.0.1:8080"
