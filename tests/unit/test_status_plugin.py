"""The status plugin inside Airflow's real API app: mounted, listed in the UI, guarded by Airflow auth.

Builds Airflow's own FastAPI app (``airflow.api_fastapi.app.create_app``) with this project's
plugins folder, so the plugin is discovered the way the API server discovers it, and calls it
over ASGI with JWTs minted by the configured (simple) auth manager.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

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
        assert one.headers["location"] == "./?requeued=1&retried=0"
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


def _seed_errors(url: str, rows: list[tuple[str, str, str, str, str]]) -> None:
    """Record errors ``(entity, direction, record id, code, reason)`` as a run records them."""
    engine = make_engine(url)
    upgrade(engine)
    frame = pd.DataFrame(
        [
            {"entity": e, "direction": d, "record_id": rid, "field": "emailaddress1", "code": c, "reason": r}
            for e, d, rid, c, r in rows
        ]
    )
    with session_scope(engine) as s:
        record_errors(s, frame, run_id="manual__2")
    engine.dispose()


def _shown_ids(html: str) -> list[str]:
    return re.findall(r'<code data-testid="error-source">([^<]*)</code>', html)


def _csv_rows(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body)))


def test_filter_csv_export_and_requeue_share_one_set(api: TestClient, state: str) -> None:
    _seed(state)  # r-1 and r-2: parked invalid_email errors of lead d2m
    _seed_errors(
        state,
        [
            ("lead", "d2m", "r-3", "invalid_email", "x@ is not an email"),
            ("lead", "d2m", "r-4", "FIELD_LENGTH", "too long"),
            ("contact", "d2m", "c-1", "invalid_email", "no @"),
        ],
    )
    headers = {"Authorization": f"Bearer {_token('admin')}"}
    query = {"entity": "lead", "code": "invalid_email"}
    page = api.get(f"{PREFIX}/", params=query, headers=headers)
    assert page.status_code == 200, page.text
    shown = sorted(_shown_ids(page.text))
    assert shown == ["r-1", "r-2", "r-3"]
    assert "3 matching" in page.text
    export_link = re.search(r'href="(errors\.csv\?[^"]*)"[^>]*data-testid="export-csv"', page.text)
    assert export_link, page.text
    assert export_link.group(1).replace("&amp;", "&") == "errors.csv?entity=lead&code=invalid_email"

    exported = api.get(f"{PREFIX}/errors.csv", params=query, headers=headers)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(
        r'attachment; filename="record-errors-\d{8}T\d{6}Z\.csv"', exported.headers["content-disposition"]
    )
    rows = _csv_rows(exported.text)
    assert sorted(r["source_id"] for r in rows) == shown
    assert {(r["entity"], r["code"], r["state"]) for r in rows} == {
        ("lead", "invalid_email", "parked"),
        ("lead", "invalid_email", "retrying"),
    }

    token = _form_token(page.text)
    before = _error_states(state)
    done = api.post(
        f"{PREFIX}/requeue",
        data={"token": token, **query},
        headers={**headers, "Origin": "http://127.0.0.1:8080"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "./?requeued=2&retried=1&entity=lead&code=invalid_email"
    after = _error_states(state)
    assert {k for k in before if before[k] != after[k]} == {"r-1", "r-2", "r-3"}
    assert all(after[k][0] is False for k in ("r-1", "r-2", "r-3"))  # none parked any more
    flash = api.get(f"{PREFIX}/?requeued=2&retried=1", headers=headers).text
    assert "Re-queued 2 parked and 1 retrying record error(s)" in flash


def _error_states(url: str) -> dict[str, tuple[Any, ...]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                RecordError.source_id, RecordError.parked, RecordError.attempts, RecordError.next_attempt_at
            )
        ).all()
    engine.dispose()
    return {r[0]: (bool(r[1]), r[2], r[3]) for r in rows}


def test_csv_export_neutralises_spreadsheet_formulas(api: TestClient, state: str) -> None:
    _seed_errors(
        state,
        [
            ("lead", "d2m", "=1+1", "invalid_email", '=HYPERLINK("http://evil.example","x")'),
            ("lead", "d2m", "+r", "invalid_email", "-2 is not an email"),
            ("lead", "d2m", "@r", "invalid_email", "@SUM(A1)"),
            ("lead", "d2m", "plain", "invalid_email", 'a, b and "c"'),
        ],
    )
    body = api.get(f"{PREFIX}/errors.csv", headers={"Authorization": f"Bearer {_token('viewer')}"}).text
    rows = {r["source_id"]: r["message"] for r in _csv_rows(body)}
    assert rows == {
        "'=1+1": '\'=HYPERLINK("http://evil.example","x")',
        "'+r": "'-2 is not an email",
        "'@r": "'@SUM(A1)",
        "plain": 'a, b and "c"',
    }


def test_csv_export_needs_a_session_and_a_valid_filter(api: TestClient, state: str) -> None:
    _seed(state)
    assert api.get(f"{PREFIX}/errors.csv").status_code == 401
    bad = api.get(
        f"{PREFIX}/errors.csv",
        params={"state": "stuck"},
        headers={"Authorization": f"Bearer {_token('admin')}"},
    )
    assert bad.status_code == 400
    assert "state 'stuck' is not one of" in bad.text


def test_page_embeds_chart_data_and_serves_the_chart_script(api: TestClient, state: str) -> None:
    _seed(state)
    headers = {"Authorization": f"Bearer {_token('viewer')}"}
    html = api.get(f"{PREFIX}/", headers=headers).text
    block = re.search(r'<script type="application/json" id="console-data">(.*?)</script>', html, re.S)
    assert block, html
    charts = json.loads(block.group(1))
    assert set(charts["ranges"]) == {"24h", "7d"}
    assert sum(p["loaded"] for p in charts["ranges"]["24h"]["synced"]) == 42
    assert sum(p["calls"] for p in charts["ranges"]["24h"]["marketo"]) == 300
    assert sum(p["calls"] for p in charts["ranges"]["24h"]["dynamics"]) == 7
    assert charts["marketo_usable"] == 1600  # 2,000 minus the 20 % reserve
    assert '<script src="static/charts.js"' in html
    assert 'data-testid="entity-activity-m2d"' in html  # the marketing syncs beside the entities
    assert 'data-testid="entity-program_membership-both"' in html
    assert "Watchers' peeks today: 0 Marketo and 0 Dataverse calls" in html
    script = api.get(f"{PREFIX}/static/charts.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "createElementNS" in script.text
