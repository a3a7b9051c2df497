"""Passwords inside the state store and limiter URLs are masked in logs (issue 17, point 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk._shared.secrets_masker.secrets_masker import redact

from crm_sync.tasks.common import settings_from_airflow


def test_the_state_store_url_password_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://sync:St4te-Pw%2Fx@db.example.com/mds"
    monkeypatch.setenv("AIRFLOW_VAR_MDS_STATE_DB_URL", url)
    settings = settings_from_airflow("manual__1")
    assert settings.state_url == url
    shown = redact(f"connecting to {url}; password St4te-Pw/x")
    assert "St4te-Pw" not in shown
    assert "sync:***@db.example.com" in shown


def test_the_limiter_url_password_is_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from crm_sync_hooks.marketo import MarketoHook

    limiter = "redis://:R3dis-Pw@127.0.0.1:6399/3"
    conn = {"conn_type": "marketo", "host": "https://mkto.unit.test", "login": "c", "password": "p"}
    conn["extra"] = json.dumps({"limiter_url": limiter})
    monkeypatch.setenv("AIRFLOW_CONN_MKTO_MASK", json.dumps(conn))
    hook = MarketoHook("mkto_mask")
    hook.limiter_for("marketo:mask", hook.limits)  # reads the extra (no connection is opened yet)
    assert "R3dis-Pw" not in redact(f"limiter at {limiter}")
