"""DynamicsHook against mocked HTTP (requests_mock): msal auth, paging, change tracking, $batch writes."""

from __future__ import annotations

import logging
import re

import pytest

from crm_sync_hooks.dynamics import DeltaTokenExpired, DynamicsHook
from crm_sync_hooks.errors import FatalApiError, RetriesExhausted
from crm_sync_hooks.odata_batch import parse_batch
from crm_sync_hooks.results import WriteStatus
from crm_sync_hooks.retry import RetryPolicy

from .conftest import AUTHORITY, DYNAMICS_SECRET, DYNAMICS_URL, TENANT

API = f"{DYNAMICS_URL}/api/data/v9.2/"
TOKEN_ENDPOINT = f"{AUTHORITY}/{TENANT}/oauth2/v2.0/token"
GUID_A = "11111111-1111-1111-1111-111111111111"
GUID_B = "22222222-2222-2222-2222-222222222222"


def openid_document() -> dict:
    return {
        "issuer": f"{AUTHORITY}/{TENANT}/v2.0",
        "token_endpoint": TOKEN_ENDPOINT,
        "authorization_endpoint": f"{AUTHORITY}/{TENANT}/oauth2/v2.0/authorize",
    }


@pytest.fixture
def entra(requests_mock):
    """Mock the Entra ID side: OpenID document and a token endpoint issuing tok-1, tok-2, ..."""
    requests_mock.get(f"{AUTHORITY}/{TENANT}/v2.0/.well-known/openid-configuration", json=openid_document())
    issued = []

    def token(request, context):
        issued.append(request.text)
        return {"token_type": "Bearer", "expires_in": 3599, "access_token": f"tok-{len(issued)}-abcdef"}

    requests_mock.post(TOKEN_ENDPOINT, json=token)
    return issued


@pytest.fixture
def hook(dynamics_conn) -> DynamicsHook:
    return DynamicsHook(dynamics_conn(), retry_policy=RetryPolicy.no_wait())


def batch_answer(
    parts: list[tuple[int, str, dict[str, str]]], change_set: list[int] | None = None
) -> tuple[str, str]:
    """Build a multipart $batch answer from (status, body, headers) parts, in order.

    Parts whose index is in ``change_set`` are each wrapped in a change set of their own.
    """

    def http(status: int, body: str, headers: dict[str, str]) -> str:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (
            f"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"HTTP/1.1 {status} X\r\n{head}\r\n{body}\r\n"
        )

    lines = []
    for i, part in enumerate(parts):
        if change_set and i in change_set:
            inner = f"--changeset_{i}\r\n" + http(*part) + f"--changeset_{i}--\r\n"
            lines.append(
                f"--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changeset_{i}\r\n\r\n{inner}"
            )
        else:
            lines.append("--batchresponse_1\r\n" + http(*part))
    return "multipart/mixed; boundary=batchresponse_1", "".join(lines) + "--batchresponse_1--\r\n"


def test_who_am_i_uses_msal_client_credentials(hook, entra, requests_mock):
    requests_mock.get(f"{API}WhoAmI", json={"UserId": "u", "OrganizationId": "org-1", "BusinessUnitId": "b"})
    assert hook.organization_id() == "org-1"
    assert hook.organization_id() == "org-1"
    assert len(entra) == 1  # the second call used msal's cached token
    assert f"client_secret={DYNAMICS_SECRET}" in entra[0]
    assert "scope=https%3A%2F%2Forg.unit.test%2F.default" in entra[0]
    call = requests_mock.last_request
    assert call.headers["Authorization"] == "Bearer tok-1-abcdef"
    assert call.headers["OData-Version"] == "4.0"


def test_unknown_authority_host_skips_instance_discovery(hook, entra, requests_mock):
    requests_mock.get(f"{API}WhoAmI", json={"UserId": "u", "OrganizationId": "o"})
    hook.who_am_i()
    assert not any("login.microsoftonline.com" in r.url for r in requests_mock.request_history)


def test_rejected_token_is_renewed_once(hook, entra, requests_mock):
    requests_mock.get(f"{API}WhoAmI", [{"status_code": 401, "text": ""}, {"json": {"OrganizationId": "o"}}])
    assert hook.who_am_i() == {"OrganizationId": "o"}
    auths = [r.headers["Authorization"] for r in requests_mock.request_history if "WhoAmI" in r.url]
    assert auths == ["Bearer tok-1-abcdef", "Bearer tok-2-abcdef"]


def test_query_follows_next_links_verbatim(hook, entra, requests_mock):
    next_link = f"{API}contacts?$select=fullname&$skiptoken=abc%20def"
    requests_mock.get(
        f"{API}contacts",
        [
            {"json": {"value": [{"contactid": GUID_A}], "@odata.nextLink": next_link}},
            {"json": {"value": [{"contactid": GUID_B}]}},
        ],
    )
    pages = list(hook.query("contacts", select=["fullname"], filter="statecode eq 0", page_size=1))
    assert pages == [[{"contactid": GUID_A}], [{"contactid": GUID_B}]]
    first, second = [r for r in requests_mock.request_history if "/contacts" in r.url]
    assert first.qs["$filter"] == ["statecode eq 0"]
    assert first.headers["Prefer"] == "odata.maxpagesize=1"
    assert second.url == next_link
    assert second.headers["Prefer"] == "odata.maxpagesize=1"


def test_next_link_to_another_host_is_refused(hook, entra, requests_mock):
    requests_mock.get(f"{API}contacts", json={"value": [{"a": 1}], "@odata.nextLink": "https://evil.test/x"})
    with pytest.raises(FatalApiError, match=r"another host: evil\.test"):
        list(hook.query("contacts"))


def test_page_size_over_5000_is_refused(hook):
    with pytest.raises(ValueError, match=r"page_size must be 1\.\.5000"):
        list(hook.query("contacts", page_size=5001))


def test_track_changes_returns_rows_deletions_and_delta_link(hook, entra, requests_mock):
    delta = f"{API}leads?$select=firstname&$deltatoken=919058%2108"
    requests_mock.get(
        f"{API}leads",
        [
            {"json": {"value": [{"leadid": GUID_A}], "@odata.nextLink": f"{API}leads?$skiptoken=p2"}},
            {
                "json": {
                    "value": [
                        {"leadid": GUID_B, "firstname": "Ada"},
                        {
                            "@odata.context": f"{API}$metadata#leads/$deletedEntity",
                            "id": GUID_A,
                            "reason": "deleted",
                        },
                    ],
                    "@odata.deltaLink": delta,
                }
            },
        ],
    )
    pages = list(hook.track_changes("leads", ["firstname"]))
    assert [p.delta_link for p in pages] == [None, delta]
    assert pages[1].records == [{"leadid": GUID_B, "firstname": "Ada"}]
    assert pages[1].deleted_ids == [GUID_A]
    first = requests_mock.request_history[-2]
    assert first.headers["Prefer"] == "odata.track-changes,odata.maxpagesize=5000"
    assert first.qs["$select"] == ["firstname"]


def test_expired_delta_link_asks_for_a_full_sync(hook, entra, requests_mock):
    requests_mock.get(
        f"{API}leads",
        status_code=400,
        json={
            "error": {
                "code": "0x80044352",
                "message": "Version stamp associated with the client has expired.",
            }
        },
    )
    with pytest.raises(DeltaTokenExpired, match="code 0x80044352"):
        list(hook.track_changes("leads", ["firstname"], delta_link=f"{API}leads?$deltatoken=old"))


def test_429_honours_retry_after_and_pauses_the_scope(dynamics_conn, entra, requests_mock):
    delays: list[float] = []
    hook = DynamicsHook(
        dynamics_conn(), retry_policy=RetryPolicy(base_delay=0, max_delay=0, sleep=delays.append)
    )
    requests_mock.get(
        f"{API}WhoAmI",
        [
            {
                "status_code": 429,
                "headers": {"Retry-After": "0.3"},
                "json": {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit"}},
            },
            {"json": {"OrganizationId": "o"}},
        ],
    )
    hook.who_am_i()
    assert delays == [0.3]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried(hook, entra, requests_mock, status):
    requests_mock.get(f"{API}WhoAmI", [{"status_code": status}, {"json": {"OrganizationId": "o"}}])
    assert hook.who_am_i()["OrganizationId"] == "o"


def test_server_errors_give_up_after_the_policy(hook, entra, requests_mock):
    requests_mock.get(f"{API}WhoAmI", status_code=503)
    with pytest.raises(
        RetriesExhausted, match=r"GET /api/data/v9\.2/WhoAmI code 503: gave up after 5 attempts"
    ):
        hook.who_am_i()


def test_bad_request_is_fatal_with_the_odata_message(hook, entra, requests_mock):
    requests_mock.get(
        f"{API}contacts",
        status_code=400,
        json={"error": {"code": "0x80060888", "message": "Could not find a property named 'foo'"}},
    )
    with pytest.raises(FatalApiError, match="code 0x80060888: Could not find a property named 'foo'"):
        list(hook.query("contacts", select=["foo"]))
    assert len([r for r in requests_mock.request_history if "contacts" in r.url]) == 1


def test_upsert_by_alternate_key_gives_one_result_per_record(hook, entra, requests_mock):
    content_type, body = batch_answer(
        [
            (201, f'{{"contactid": "{GUID_A}"}}', {"Content-Type": "application/json"}),
            (200, f'{{"contactid": "{GUID_B}"}}', {"Content-Type": "application/json"}),
            (400, '{"error": {"code": "0x80044331", "message": "A validation error occurred."}}', {}),
        ]
    )
    requests_mock.post(f"{API}$batch", text=body, headers={"Content-Type": content_type})
    records = [
        {"emailaddress1": "a@x.test", "lastname": "A"},
        {"emailaddress1": "o'b@x.test", "lastname": "B"},
        {"emailaddress1": "c@x.test", "lastname": "C" * 300},
        {"lastname": "no key"},
    ]
    results = hook.upsert_records("contacts", records, ["emailaddress1"], id_column="contactid")
    assert [r.status for r in results] == [
        WriteStatus.CREATED,
        WriteStatus.UPDATED,
        WriteStatus.FAILED,
        WriteStatus.FAILED,
    ]
    assert [r.id for r in results[:2]] == [GUID_A, GUID_B]
    assert "0x80044331" in results[2].reason
    assert "record 3 has no value for emailaddress1" in results[3].reason
    sent = requests_mock.last_request
    assert sent.headers["Prefer"] == "odata.continue-on-error"
    text = sent.body.decode()
    assert "PATCH /api/data/v9.2/contacts(emailaddress1='a@x.test')?$select=contactid HTTP/1.1" in text
    assert "contacts(emailaddress1='o''b@x.test')" in text
    assert '{"lastname":"A"}' in text  # key columns are not sent in the body
    assert text.count("Content-ID:") == 3


def test_upsert_by_id_without_representation_is_upserted_with_entity_id(hook, entra, requests_mock):
    content_type, body = batch_answer([(204, "", {"OData-EntityId": f"{API}leads({GUID_A})"})])
    requests_mock.post(f"{API}$batch", text=body, headers={"Content-Type": content_type})
    results = hook.upsert_records(
        "leads", [{"leadid": GUID_A, "subject": "a"}], ["leadid"], id_column="leadid"
    )
    assert (results[0].status, results[0].id) == (WriteStatus.UPSERTED, GUID_A)
    assert f"PATCH /api/data/v9.2/leads({GUID_A})?$select=leadid" in requests_mock.last_request.body.decode()


@pytest.mark.parametrize("nested", [True, False], ids=["error-in-change-set", "error-at-top-level"])
def test_failed_change_set_rolls_back_every_record_in_it(hook, entra, requests_mock, nested):
    content_type, body = batch_answer(
        [(412, '{"error": {"code": "0x80040237", "message": "duplicate"}}', {})],
        change_set=[0] if nested else None,
    )
    requests_mock.post(f"{API}$batch", text=body, headers={"Content-Type": content_type})
    records = [
        {"leadid": GUID_A, "subject": "a"},
        {"leadid": GUID_B, "subject": "b"},
        {"leadid": "not-a-guid", "subject": "c"},
    ]
    results = hook.upsert_records("leads", records, ["leadid"], id_column="leadid", change_set_size=2)
    assert [r.status for r in results] == [WriteStatus.FAILED] * 3
    assert results[0].reason == results[1].reason == "change set rolled back: HTTP 412 0x80040237: duplicate"
    assert "'leadid' is not a GUID" in results[2].reason
    assert requests_mock.last_request.body.decode().count('boundary="changeset_') == 1


def test_delete_reports_missing_rows_as_skipped(hook, entra, requests_mock):
    content_type, body = batch_answer(
        [(204, "", {}), (404, '{"error": {"code": "0x80040217", "message": "gone"}}', {})]
    )
    requests_mock.post(f"{API}$batch", text=body, headers={"Content-Type": content_type})
    results = hook.delete_records("accounts", [GUID_A, {"accountnumber": "A-2"}])
    assert [r.status for r in results] == [WriteStatus.DELETED, WriteStatus.SKIPPED]
    assert (
        "DELETE /api/data/v9.2/accounts(accountnumber='A-2') HTTP/1.1"
        in requests_mock.last_request.body.decode()
    )


def test_batch_over_1000_operations_is_refused(hook):
    with pytest.raises(ValueError, match=r"batch_size must be 1\.\.1000"):
        hook.upsert_records("leads", [{"leadid": GUID_A}], ["leadid"], id_column="leadid", batch_size=1001)


def test_parse_batch_reads_nested_change_sets():
    content_type, body = batch_answer([(204, "", {"Location": "x"}), (201, '{"a": 1}', {})], change_set=[1])
    answers = parse_batch(content_type, body)
    assert [(a.status, a.change_set) for a in answers] == [(204, None), (201, 1)]
    assert answers[0].headers["location"] == "x"
    assert answers[1].json() == {"a": 1}


def test_wrong_secret_fails_test_connection_clearly(dynamics_conn, requests_mock, caplog):
    caplog.set_level(logging.DEBUG)
    requests_mock.get(f"{AUTHORITY}/{TENANT}/v2.0/.well-known/openid-configuration", json=openid_document())
    requests_mock.post(
        TOKEN_ENDPOINT,
        status_code=401,
        json={
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace",
        },
    )
    ok, message = DynamicsHook(dynamics_conn(), retry_policy=RetryPolicy.no_wait()).test_connection()
    assert not ok
    assert re.search(r"AuthenticationError: .*token request refused \(invalid_client: AADSTS7000215", message)
    assert DYNAMICS_SECRET not in message
    assert DYNAMICS_SECRET not in caplog.text


def test_secrets_and_tokens_stay_out_of_logs(hook, entra, requests_mock, caplog):
    caplog.set_level(logging.DEBUG)
    requests_mock.get(
        f"{API}WhoAmI", [{"status_code": 401}, {"status_code": 503}, {"json": {"OrganizationId": "o"}}]
    )
    hook.who_am_i()
    assert "retrying" in caplog.text
    for secret in (DYNAMICS_SECRET, "tok-1-abcdef", "tok-2-abcdef"):
        assert secret not in caplog.text


def test_connection_ca_bundle_wins_for_msal_and_api_calls(
    dynamics_conn, entra, requests_mock, monkeypatch, tmp_path
):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("unused")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/env-bundle.pem")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/nonexistent/curl-bundle.pem")
    hook = DynamicsHook(dynamics_conn(ca_bundle=str(bundle)), retry_policy=RetryPolicy.no_wait())
    requests_mock.get(f"{API}WhoAmI", json={"OrganizationId": "o"})
    hook.who_am_i()
    hosts = {r.hostname for r in requests_mock.request_history}
    assert hosts == {"login.unit.test", "org.unit.test"}  # the token service and the Web API
    assert {r.verify for r in requests_mock.request_history} == {str(bundle)}
    assert {r.timeout for r in requests_mock.request_history} == {5.0}


def test_missing_tenant_is_a_configuration_error(dynamics_conn):
    ok_, message = DynamicsHook(dynamics_conn(tenant_id="")).test_connection()
    assert not ok_
    assert message == "ConfigurationError: connection 'dyn_unit': extra 'tenant_id' is empty"


# --- answers that are not what the protocol says (issue 17, point 9) ----------------------------

PROXY_PAGE = {
    "status_code": 200,
    "text": "<html>gateway busy</html>",
    "headers": {"Content-Type": "text/html"},
}


def test_a_200_answer_that_is_not_json_is_retried_inside_the_hook(hook, entra, requests_mock):
    requests_mock.get(f"{API}WhoAmI", [PROXY_PAGE, {"json": {"OrganizationId": "o"}}])
    assert hook.who_am_i()["OrganizationId"] == "o"
    assert len([r for r in requests_mock.request_history if r.url.endswith("/WhoAmI")]) == 2


def test_a_batch_answer_that_is_not_multipart_is_retried_then_named_by_endpoint(hook, entra, requests_mock):
    requests_mock.post(f"{API}$batch", [PROXY_PAGE])
    with pytest.raises(
        RetriesExhausted, match=r"POST /api/data/v9\.2/\$batch code not-multipart: gave up after 5 attempts"
    ):
        hook.upsert_records(
            "contacts", [{"contactid": GUID_A, "lastname": "A"}], ["contactid"], id_column="contactid"
        )


def test_a_malformed_batch_answer_is_an_api_error_naming_the_endpoint(hook, entra, requests_mock):
    requests_mock.post(
        f"{API}$batch",
        text="--b\r\nContent-Type: application/http\r\n\r\nnot a status line\r\n--b--",
        headers={"Content-Type": "multipart/mixed; boundary=b"},
    )
    with pytest.raises(FatalApiError, match=r"POST /api/data/v9\.2/\$batch.*malformed \$batch answer"):
        hook.upsert_records(
            "contacts", [{"contactid": GUID_A, "lastname": "A"}], ["contactid"], id_column="contactid"
        )
