"""Tokens (601/602), rate window (606), concurrency (615), daily quota (607), sizes, faults."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.emulators.marketo.conftest import Api, error_code, wait_for

LEADS = "/rest/v1/leads.json"
QUERY = {"filterType": "id", "filterValues": "1"}


def test_token_is_reused_until_expiry_and_bad_credentials_get_401(api: Api) -> None:
    first = api.authenticate()
    second = api.authenticate()
    assert first["access_token"] == second["access_token"]
    assert second["token_type"] == "bearer"
    assert second["scope"]
    assert second["expires_in"] <= 3600
    resp = requests.post(
        f"{api.emu.base_url}/identity/oauth/token",
        verify=api.emu.verify,
        timeout=10,
        data={"grant_type": "client_credentials", "client_id": api.client_id, "client_secret": "wrong"},
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert "wrong" not in resp.text


def test_invalid_missing_and_expired_tokens(api: Api) -> None:
    assert (
        error_code(api.call("GET", LEADS, params=QUERY, headers={"Authorization": "Bearer nope"}).json())
        == "601"
    )
    resp = requests.get(f"{api.emu.base_url}{LEADS}", params=QUERY, verify=api.emu.verify, timeout=10)
    assert resp.status_code == 200
    assert error_code(resp.json()) == "601"
    # The legacy query parameter still works.
    api.authenticate()
    legacy = requests.get(
        f"{api.emu.base_url}{LEADS}",
        params={**QUERY, "access_token": api.token},
        verify=api.emu.verify,
        timeout=10,
    )
    assert legacy.json()["success"] is True

    old = api.token
    api.emu.admin("POST", "expire-tokens")
    assert error_code(api.get(LEADS, **QUERY)) == "602"
    api.authenticate()
    assert api.token != old
    assert api.get(LEADS, **QUERY)["success"]


def test_short_lived_token_expires_by_itself(api: Api) -> None:
    api.emu.admin("POST", "expire-tokens")
    api.emu.admin("PUT", "limits", json={"token_ttl_s": 2})
    assert api.authenticate()["expires_in"] <= 2
    assert api.get(LEADS, **QUERY)["success"]
    wait_for(lambda: error_code(api.get(LEADS, **QUERY)) == "602", timeout=8)


def test_rate_window_606_then_recovers(api: Api) -> None:
    api.authenticate()
    api.emu.admin(
        "PUT", "limits", json={"enabled": True, "rate_limit": 5, "rate_window_s": 20, "time_scale": 0.1}
    )
    api.emu.admin("POST", "reset-counters")
    codes = [error_code(api.get(LEADS, **QUERY)) for _ in range(7)]
    assert codes == [None] * 5 + ["606", "606"]
    body = api.get(LEADS, **QUERY)
    assert body["errors"][0]["message"] == "Max rate limit '5' exceeded with in '2' secs"
    wait_for(lambda: error_code(api.get(LEADS, **QUERY)) is None, timeout=8)
    assert api.stats()["limit_hits"]["606"] >= 3


def test_concurrency_615(api: Api) -> None:
    api.authenticate()
    api.emu.admin(
        "PUT", "limits", json={"enabled": True, "max_concurrent": 2, "hold_ms": 2500, "rate_limit": 1000}
    )

    def one(_: int) -> str | None:
        with requests.Session() as s:
            resp = s.get(
                f"{api.emu.base_url}{LEADS}",
                params=QUERY,
                verify=api.emu.verify,
                timeout=30,
                headers={"Authorization": f"Bearer {api.token}"},
            )
            return error_code(resp.json())

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, range(4)))
    assert sorted(codes, key=str) == sorted([None, None, "615", "615"], key=str)


def test_daily_quota_607_and_auth_errors_are_not_counted(api: Api) -> None:
    api.authenticate()
    api.emu.admin("PUT", "limits", json={"enabled": True, "daily_quota": 3})
    api.emu.admin("POST", "reset-counters")
    for _ in range(3):
        assert (
            error_code(api.call("GET", LEADS, params=QUERY, headers={"Authorization": "Bearer bad"}).json())
            == "601"
        )
    assert [error_code(api.get(LEADS, **QUERY)) for _ in range(4)] == [None, None, None, "607"]
    usage = api.emu.admin("GET", "limits").json()["counters"]
    assert usage["day_calls"] == 3


def test_oversized_uri_414_and_body_413(api: Api) -> None:
    resp = api.call("GET", LEADS, params={"filterType": "id", "filterValues": ",".join(["1"] * 5000)})
    assert resp.status_code == 414
    resp = api.call(
        "POST",
        LEADS,
        data=b'{"input": [' + b" " * (1024 * 1024 + 10) + b"]}",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 413


@pytest.mark.parametrize(("code", "http_status"), [("606", 200), ("611", 200), ("503", 503)])
def test_fault_injection_through_admin(api: Api, code: str, http_status: int) -> None:
    api.emu.admin("PUT", "faults", json={"error_rate": 1.0, "error_codes": [code], "endpoints": [LEADS]})
    resp = api.call("GET", LEADS, params=QUERY)
    assert resp.status_code == http_status
    if http_status == 200:
        assert error_code(resp.json()) == code
    assert api.get("/rest/v1/leads/describe.json")["success"]  # other endpoints unaffected
    assert api.stats()["faults_injected"][code] >= 1


def test_dropped_connection_fault(api: Api) -> None:
    api.emu.admin("PUT", "faults", json={"drop_rate": 1.0, "endpoints": [LEADS]})
    with pytest.raises(requests.exceptions.RequestException):
        api.call("GET", LEADS, params=QUERY)


def test_stats_count_calls_and_records(api: Api) -> None:
    api.emu.admin("POST", "stats/reset")
    api.get(LEADS, filterType="id", filterValues="1,2,3")
    stats = api.stats()
    assert stats["calls"]["GET /rest/v1/leads.json"] == 1
    assert stats["records"]["lead.read"] == 3
