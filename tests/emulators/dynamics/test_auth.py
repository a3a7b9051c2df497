"""Entra ID token endpoint with msal over HTTPS, and the Web API's 401s."""

from __future__ import annotations

import requests

from tests.emulators.dynamics.conftest import CREDS, close_msal, msal_app, wait_until


def test_msal_gets_a_token_from_the_local_authority_and_caches_it(dataverse):
    app = msal_app(dataverse.emu)
    scope = [f"{dataverse.emu.base_url}/.default"]
    first = app.acquire_token_for_client(scopes=scope)
    assert first["token_type"] == "Bearer"
    assert first["token_source"] == "identity_provider"
    assert first["expires_in"] >= 600
    second = app.acquire_token_for_client(scopes=scope)
    close_msal(app)
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    whoami = requests.get(
        f"{dataverse.api}/WhoAmI",
        headers={"Authorization": f"Bearer {first['access_token']}"},
        verify=str(dataverse.emu.ca_file),
        timeout=30,
    )
    assert whoami.status_code == 200
    assert set(whoami.json()) >= {"UserId", "BusinessUnitId", "OrganizationId"}


def test_wrong_secret_gives_the_aadsts_error_msal_expects(dataverse):
    result = msal_app(dataverse.emu, secret="not-the-secret").acquire_token_for_client(
        scopes=[f"{dataverse.emu.base_url}/.default"]
    )
    assert "access_token" not in result
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215:")
    assert "not-the-secret" not in result["error_description"]


def _raw_token(dataverse, **overrides):
    form = {
        "client_id": CREDS.client_id,
        "client_secret": CREDS.client_secret,
        "grant_type": "client_credentials",
        "scope": f"{dataverse.emu.base_url}/.default",
        "client_info": "1",
        **overrides,
    }
    return requests.post(
        f"{dataverse.emu.base_url}/{CREDS.tenant_id}/oauth2/v2.0/token",
        data=form,
        verify=str(dataverse.emu.ca_file),
        timeout=30,
    )


def test_token_endpoint_rejects_unknown_client_scope_and_grant(dataverse):
    unknown = _raw_token(dataverse, client_id="00000000-0000-0000-0000-000000000000")
    assert (unknown.status_code, unknown.json()["error"]) == (400, "unauthorized_client")
    bad_scope = _raw_token(dataverse, scope="openid")
    assert (bad_scope.status_code, bad_scope.json()["error"]) == (400, "invalid_scope")
    bad_grant = _raw_token(dataverse, grant_type="password")
    assert (bad_grant.status_code, bad_grant.json()["error"]) == (400, "unsupported_grant_type")


def test_web_api_rejects_missing_malformed_and_wrong_audience_tokens(dataverse):
    url = f"{dataverse.api}/leads?$select=lastname&$top=1"
    verify = str(dataverse.emu.ca_file)
    missing = requests.get(url, verify=verify, timeout=30)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    forged = requests.get(
        url, headers={"Authorization": f"Bearer {dataverse.token[:-4]}AAAA"}, verify=verify, timeout=30
    )
    assert forged.status_code == 401
    other = _raw_token(dataverse, scope="https://other-org.crm.dynamics.com/.default")
    assert other.status_code == 200  # Entra issues it; the audience is another organization
    wrong = requests.get(
        url, headers={"Authorization": f"Bearer {other.json()['access_token']}"}, verify=verify, timeout=30
    )
    assert wrong.status_code == 401
    assert "wrong audience" in wrong.headers["WWW-Authenticate"]
    assert dataverse.get("leads?$select=lastname&$top=1").status_code == 200


def test_expire_tokens_admin_action_makes_issued_tokens_fail(fresh_emulator):
    dv = fresh_emulator("--limits", "off")
    assert dv.get("WhoAmI").status_code == 200
    dv.emu.admin("POST", "expire-tokens")
    assert dv.get("WhoAmI").status_code == 401
    app = msal_app(dv.emu)
    app.remove_tokens_for_client()
    fresh = app.acquire_token_for_client(scopes=[f"{dv.emu.base_url}/.default"])["access_token"]
    close_msal(app)
    dv.token = fresh
    assert dv.get("WhoAmI").status_code == 200


def test_tokens_expire_after_their_lifetime(fresh_emulator):
    dv = fresh_emulator("--limits", "off", "--token-lifetime", "2")
    token = _raw_token(dv).json()
    assert token["expires_in"] == 2
    dv.token = token["access_token"]
    assert dv.get("WhoAmI").status_code == 200
    wait_until(lambda: dv.get("WhoAmI").status_code == 401, timeout=10)
