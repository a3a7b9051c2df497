"""The status plugin inside Airflow's real API app: mounted, listed in the UI, guarded by Airflow auth.

Builds Airflow's own FastAPI app (``airflow.api_fastapi.app.create_app``) with this project's
plugins folder, so the plugin is discovered the way the API server discovers it, and calls it
over ASGI with JWTs minted by the configured (simple) auth manager.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from crm_sync.state import (
    RunCounts,
    make_engine,
    parked_errors,
    record_errors,
    session_scope,
    set_watermark,
    upgrade,
    utcnow,
    write_ledger,
)
from crm_sync.state.guards import add_api_calls
from crm_sync.state.models import RecordError

PREFIX = "/crm-sync-status"


@pytest.fixture(scope="module")
def api(airflow_db: str) -> Iterator[TestClient]:
    from airflow import plugins_manager
    from airflow.api_fastapi.app import create_app, purge_cached_app

    _, import_errors = plugins_manager._get_plugins()
    assert not [k for k in import_errors if "crm_sync_status" in k], import_errors
    with pytest.MonkeyPatch.context() as mp:
        # The API server signs JWTs and forms with these; `airflow standalone` writes them to airflow.cfg.
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))
        mp.setenv("AIRFLOW__API__SECRET_KEY", secrets.token_urlsafe(64))
        app = create_app()
        with TestClient(app, base_url="http://127.0.0.1:8080") as client:
            yield client
        purge_cached_app()


def _token(role: str) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return str(get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=f"{role}-user", role=role)))


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("AIRFLOW_VAR_MDS_STATE_DB_URL", url)
    monkeypatch.setenv("AIRFLOW_VAR_MDS_MARKETO_DAILY_QUOTA", "2000")
    return url


def _seed(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    now = utcnow()
    with session_scope(engine) as s:
        write_ledger(
            s,
            RunCounts(
                run_id="manual__1",
                entity="lead",
                direction="both",
                status="success",
                loaded=42,
                api_calls=300,
                started_at=now - timedelta(minutes=3),
                ended_at=now - timedelta(minutes=2),
            ),
        )
        set_watermark(s, "lead", "d2m", "delta", now=now - timedelta(minutes=2))
        add_api_calls(
            s, run_id="manual__1", entity="lead", stage="load", calls={"marketo": 300, "dynamics": 7}
        )
        errors = pd.DataFrame(
            [
                {
                    "entity": "lead",
                    "direction": "d2m",
                    "record_id": rid,
                    "field": "emailaddress1",
                    "code": "invalid_email",
                    "reason": reason,
                }
                for rid, reason in (("r-1", "<script>alert(1)</script> is not an email"), ("r-2", "no @"))
            ]
        )
        record_errors(s, errors, run_id="manual__1")
        s.execute(update(RecordError).values(parked=True, next_attempt_at=None))
    engine.dispose()


def _form_token(html: str) -> str:
    found = re.search(r'name="token" value="([0-9a-f]{64})"', html)
    assert found, "the page has no re-queue form"
    return found.group(1)


def test_listed_as_a_ui_view_and_mounted(api: TestClient) -> None:
    plugins = api.get("/api/v2/plugins", headers={"Authorization": f"Bearer {_token('admin')}"}).json()
    ours = next(p for p in plugins["plugins"] if p["name"] == "crm_sync_status")
    assert ours["external_views"][0]["href"] == f"{PREFIX}/"
    assert ours["external_views"][0]["url_route"] == "crm-sync-status"
    assert ours["fastapi_apps"][0]["url_prefix"] == PREFIX


def test_refused_without_a_session_and_with_a_bad_token(api: TestClient, state: str) -> None:
    assert api.get(f"{PREFIX}/").status_code == 401
    # A browser is sent to Airflow's login page, which returns it here afterwards.
    to_login = api.get(f"{PREFIX}/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert to_login.status_code == 303
    assert to_login.headers["location"].startswith("/auth/login?next=")
    assert "crm-sync-status" in to_login.headers["location"]
    assert api.get(f"{PREFIX}/status.json", headers={"Accept": "text/html"}).status_code == 401
    assert api.get(f"{PREFIX}/status.json").status_code == 401
    assert api.post(f"{PREFIX}/requeue", data={"token": "0" * 64}).status_code == 401
    assert api.get(f"{PREFIX}/", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403


def test_page_shows_figures_escaped_and_requeue_works_from_the_session_cookie(
    api: TestClient, state: str
) -> None:
    _seed(state)
    api.cookies.set("_token", _token("admin"))
    try:
        page = api.get(f"{PREFIX}/")
        assert page.status_code == 200, page.text
        html = page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; is not an email" in html
        assert "<script>" not in html
        row = re.search(r'data-testid="entity-lead-both">(.*?)</tr>', html, re.S)
        assert row, html
        assert re.search(r'data-testid="synced-day">42<', row.group(1))
        assert re.search(r'data-testid="quota-used">300<', html)
        assert "of 2,000 calls used" in html
        assert "400 kept for other integrations" in html  # reserve share 0.2 by default

        data = api.get(f"{PREFIX}/status.json").json()
        assert data["ready"] is True
        assert (data["quota"]["used_today"], data["quota"]["daily_quota"], data["quota"]["left"]) == (
            300,
            2000,
            1300,
        )
        lead = next(r for r in data["entities"] if (r["entity"], r["direction"]) == ("lead", "both"))
        assert (lead["synced_last_hour"], lead["errors_parked"], lead["last_success_run_id"]) == (
            42,
            2,
            "manual__1",
        )
        assert "password" not in page.text.lower()

        token = _form_token(html)
        forged = api.post(f"{PREFIX}/requeue", data={"token": "f" * 64}, follow_redirects=False)
        assert forged.status_code == 403
        cross_site = api.post(
            f"{PREFIX}/requeue",
            data={"token": token},
            headers={"Origin": "http://127.0.0.1:9999"},
            follow_redirects=False,
        )
        assert cross_site.status_code == 403
        bad_entity = api.post(
            f"{PREFIX}/requeue", data={"token": token, "entity": "nope"}, follow_redirects=False
        )
        assert bad_entity.status_code == 400
        assert "entity 'nope' is not a configured entity" in bad_entity.text

        one = api.post(
            f"{PREFIX}/requeue",
            data={"token": token, "entity": "lead", "direction": "d2m", "source_id": "r-1"},
            headers={"Origin": "http://127.0.0.1:8080"},
            follow_redirects=False,
        )
        assert one.status_code == 303
        assert one.headers["location"] == "./?requeued=1"
        engine = make_engine(state)
        with session_scope(engine) as s:
            assert list(parked_errors(s)["source_id"]) == ["r-2"]
        after = api.get(f"{PREFIX}/?requeued=1").text
        assert "Re-queued 1 parked record error(s)" in after
    finally:
        api.cookies.clear()


def test_viewer_sees_the_page_but_cannot_requeue(api: TestClient, state: str) -> None:
    _seed(state)
    headers: dict[str, Any] = {"Authorization": f"Bearer {_token('viewer')}"}
    page = api.get(f"{PREFIX}/", headers=headers)
    assert page.status_code == 200
    assert 'name="token"' not in page.text  # no re-queue buttons for a viewer
    admin_token = _form_token(
        api.get(f"{PREFIX}/", headers={"Authorization": f"Bearer {_token('admin')}"}).text
    )
    refused = api.post(
        f"{PREFIX}/requeue", data={"token": admin_token}, headers=headers, follow_redirects=False
    )
    assert refused.status_code == 403
    with session_scope(make_engine(state)) as s:
        assert len(parked_errors(s)) == 2


def test_empty_state_store_says_no_sync_has_run(api: TestClient, state: str) -> None:
    page = api.get(f"{PREFIX}/", headers={"Authorization": f"Bearer {_token('admin')}"})
    assert page.status_code == 200
    assert "no sync has run against it" in page.text
    assert 'data-testid="entity-lead-both"' in page.text


def test_a_bad_quota_variable_is_named_on_the_page(
    api: TestClient, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(state)
    monkeypatch.setenv("AIRFLOW_VAR_MDS_MARKETO_DAILY_QUOTA", "lots")
    page = api.get(f"{PREFIX}/", headers={"Authorization": f"Bearer {_token('admin')}"})
    assert page.status_code == 200
    assert "Variable mds_marketo_daily_quota must be a number (int), not &#39;lots&#39;" in page.text
    assert 'data-testid="entity-lead-both"' in page.text  # the rest of the page still shows
