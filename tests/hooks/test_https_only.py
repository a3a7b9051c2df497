"""https only (issue 17, point 3): neither hook sends a secret or a token over plain http unless the
connection says ``allow_http`` (a local test server), and a next link may not switch to http."""

from __future__ import annotations

import logging

import pytest

from crm_sync_hooks.dynamics import DynamicsHook
from crm_sync_hooks.errors import FatalApiError
from crm_sync_hooks.marketo import MarketoHook
from crm_sync_hooks.retry import RetryPolicy

from .conftest import DYNAMICS_SECRET, MARKETO_SECRET, TENANT
from .test_dynamics_unit import API, openid_document


def _marketo(set_connection, host: str, **extra) -> MarketoHook:
    conn = set_connection(
        "mkto_http", conn_type="marketo", host=host, login="c", password=MARKETO_SECRET, extra=extra
    )
    return MarketoHook(conn, retry_policy=RetryPolicy.no_wait())


def _dynamics(set_connection, host: str, authority: str, **extra) -> DynamicsHook:
    extras = {"tenant_id": TENANT, "authority_host": authority, **extra}
    conn = set_connection(
        "dyn_http", conn_type="dynamics", host=host, login="c", password=DYNAMICS_SECRET, extra=extras
    )
    return DynamicsHook(conn, retry_policy=RetryPolicy.no_wait())


def test_marketo_refuses_an_http_host_at_once(set_connection, requests_mock):
    ok, message = _marketo(set_connection, "http://mkto.unit.test").test_connection()
    assert not ok
    assert "https is required" in message
    assert "'http://mkto.unit.test'" in message
    assert requests_mock.call_count == 0, "nothing was sent, the secret least of all"


def test_dynamics_refuses_an_http_org_or_token_endpoint_at_once(set_connection, requests_mock):
    ok, message = _dynamics(
        set_connection, "http://org.unit.test", "https://login.unit.test"
    ).test_connection()
    assert (ok, "https is required" in message) == (False, True)
    ok, message = _dynamics(
        set_connection, "https://org.unit.test", "http://login.unit.test"
    ).test_connection()
    assert (ok, "authority_host" in message, "https is required" in message) == (False, True, True)
    assert requests_mock.call_count == 0


def test_allow_http_is_the_explicit_way_for_a_local_server(set_connection, requests_mock, caplog):
    requests_mock.post(
        "http://127.0.0.1:9/identity/oauth/token", json={"access_token": "t", "expires_in": 3600}
    )
    requests_mock.get("http://127.0.0.1:9/rest/v1/leads/describe.json", json={"success": True, "result": []})
    caplog.set_level(logging.WARNING, logger="crm_sync_hooks.base")
    ok, message = _marketo(set_connection, "http://127.0.0.1:9", allow_http=True).test_connection()
    assert ok, message
    assert any("plain http (allow_http is set)" in r.getMessage() for r in caplog.records)


def test_a_next_link_that_drops_to_http_on_the_same_host_is_refused(set_connection, requests_mock):
    requests_mock.get(
        "https://login.unit.test/" + TENANT + "/v2.0/.well-known/openid-configuration", json=openid_document()
    )
    requests_mock.post(
        f"https://login.unit.test/{TENANT}/oauth2/v2.0/token",
        json={"token_type": "Bearer", "expires_in": 3599, "access_token": "tok"},
    )
    downgrade = API.replace("https://", "http://") + "contacts?$skiptoken=2"
    requests_mock.get(f"{API}contacts", json={"value": [{"a": 1}], "@odata.nextLink": downgrade})
    hook = _dynamics(set_connection, "https://org.unit.test", "https://login.unit.test")
    with pytest.raises(FatalApiError, match=r"another host: http://org\.unit\.test"):
        list(hook.query("contacts"))
    assert not any(r.url.startswith("http://") for r in requests_mock.request_history)
