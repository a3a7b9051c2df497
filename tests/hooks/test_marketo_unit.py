"""MarketoHook against mocked HTTP (requests_mock): auth, error handling, retries, paging, writes."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
import requests
import requests_mock as rm

from crm_sync_hooks.errors import (
    AuthenticationError,
    FatalApiError,
    QuotaExceeded,
    RetriesExhausted,
)
from crm_sync_hooks.marketo import MarketoHook
from crm_sync_hooks.results import WriteStatus
from crm_sync_hooks.retry import RetryPolicy

from .conftest import MARKETO_SECRET, MARKETO_URL

TOKEN_URL = f"{MARKETO_URL}/identity/oauth/token"
LEADS_URL = f"{MARKETO_URL}/rest/v1/leads.json"


def token_body(token: str = "tok-aaaa-1111:int", expires_in: int = 3600) -> dict:
    return {"access_token": token, "token_type": "bearer", "expires_in": expires_in, "scope": "api@x"}


def failure(code: str, message: str = "error") -> dict:
    return {"requestId": "r#1", "success": False, "errors": [{"code": code, "message": message}]}


def ok(result: list, **extra: object) -> dict:
    return {"requestId": "r#1", "success": True, "result": result, **extra}


@pytest.fixture
def hook(marketo_conn) -> MarketoHook:
    return MarketoHook(marketo_conn(), retry_policy=RetryPolicy.no_wait())


def test_token_is_requested_with_secret_in_body_and_reused(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(f"{MARKETO_URL}/rest/v1/leads/describe.json", json=ok([{"id": 1}]))
    hook.describe()
    hook.describe()
    token_calls = [r for r in requests_mock.request_history if r.url.startswith(TOKEN_URL)]
    assert len(token_calls) == 1
    assert MARKETO_SECRET not in token_calls[0].url
    assert parse_qs(token_calls[0].text)["client_secret"] == [MARKETO_SECRET]
    api_call = requests_mock.request_history[-1]
    assert api_call.headers["Authorization"] == "Bearer tok-aaaa-1111:int"


def test_token_close_to_expiry_is_renewed_before_use(hook, requests_mock):
    requests_mock.post(TOKEN_URL, [{"json": token_body("old", expires_in=30)}, {"json": token_body("new")}])
    requests_mock.get(f"{MARKETO_URL}/rest/v1/leads/describe.json", json=ok([]))
    hook.describe()
    hook.describe()
    auths = [r.headers.get("Authorization") for r in requests_mock.request_history if "describe" in r.url]
    assert auths == ["Bearer old", "Bearer new"]


@pytest.mark.parametrize("code", ["601", "602"])
def test_rejected_token_is_renewed_and_call_repeated_once(hook, requests_mock, code):
    requests_mock.post(TOKEN_URL, [{"json": token_body("t1")}, {"json": token_body("t2")}])
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/leads/describe.json",
        [{"json": failure(code, "Access token expired")}, {"json": ok([{"id": 7}])}],
    )
    assert hook.describe() == [{"id": 7}]
    auths = [r.headers.get("Authorization") for r in requests_mock.request_history if "describe" in r.url]
    assert auths == ["Bearer t1", "Bearer t2"]


def test_token_rejected_twice_is_an_authentication_error(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/leads/describe.json", json=failure("601", "Access token invalid")
    )
    with pytest.raises(AuthenticationError, match=r"GET /rest/v1/leads/describe.json code 601"):
        hook.describe()


@pytest.mark.parametrize("code", ["604", "606", "608", "611", "615", "713"])
def test_retriable_codes_are_retried(hook, requests_mock, code):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/leads/describe.json",
        [{"json": failure(code)}, {"json": failure(code)}, {"json": ok([{"id": 1}])}],
    )
    assert hook.describe() == [{"id": 1}]
    assert requests_mock.call_count == 4


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_http_errors_5xx_and_429_are_retried(hook, requests_mock, status):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/leads/describe.json",
        [{"status_code": status, "text": "busy"}, {"json": ok([])}],
    )
    assert hook.describe() == []


def test_dropped_connection_and_timeout_are_retried(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/leads/describe.json",
        [
            {"exc": requests.exceptions.ConnectionError("reset")},
            {"exc": requests.exceptions.ReadTimeout("slow")},
            {"exc": requests.exceptions.ChunkedEncodingError("cut")},
            {"json": ok([{"id": 3}])},
        ],
    )
    assert hook.describe() == [{"id": 3}]


def test_retries_give_up_with_clear_error(marketo_conn, requests_mock):
    delays: list[float] = []
    hook = MarketoHook(
        marketo_conn(),
        retry_policy=RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=1, sleep=delays.append),
    )
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/leads/describe.json", json=failure("615", "Concurrent access limit")
    )
    with pytest.raises(RetriesExhausted, match=r"GET /rest/v1/leads/describe.json code 615: gave up after 3"):
        hook.describe()
    assert len(delays) == 2
    assert all(0 <= d <= 1 for d in delays)


@pytest.mark.parametrize(
    ("code", "error"), [("603", FatalApiError), ("607", QuotaExceeded), ("1003", FatalApiError)]
)
def test_fatal_codes_are_not_retried(hook, requests_mock, code, error):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(f"{MARKETO_URL}/rest/v1/leads/describe.json", json=failure(code, "nope"))
    with pytest.raises(error, match=f"code {code}"):
        hook.describe()
    assert requests_mock.call_count == 2


def test_wrong_secret_fails_test_connection_with_clear_message(hook, requests_mock):
    requests_mock.post(
        TOKEN_URL, status_code=401, json={"error": "invalid_client", "error_description": "Bad"}
    )
    ok_, message = hook.test_connection()
    assert not ok_
    assert "AuthenticationError" in message
    assert "client secret refused" in message
    assert MARKETO_SECRET not in message


def test_get_leads_chunks_values_and_follows_pages(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    calls: list[dict] = []

    def answer(request, context):
        form = parse_qs(request.text)
        calls.append(form)
        if "nextPageToken" not in form and form["filterValues"][0].startswith("v0,"):
            return ok([{"id": 1}], moreResult=True, nextPageToken="P2")
        return ok([{"id": 2}], moreResult=False)

    requests_mock.post(LEADS_URL, json=answer)
    pages = list(hook.get_leads("email", [f"v{i}" for i in range(450)], fields=["id", "email"]))
    assert pages == [[{"id": 1}], [{"id": 2}], [{"id": 2}]]
    assert [len(c["filterValues"][0].split(",")) for c in calls] == [300, 300, 150]
    assert calls[1]["nextPageToken"] == ["P2"]
    assert all(r.qs.get("_method") == ["get"] for r in requests_mock.request_history if "leads.json" in r.url)


def test_filter_value_with_comma_is_refused(hook):
    with pytest.raises(ValueError, match=r"filter value 1 .*comma"):
        list(hook.get_leads("email", ["a@x.com", "b,c@x.com"]))


def test_lead_changes_yield_every_page_with_its_token(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/activities/leadchanges.json",
        [
            {"json": ok([], moreResult=True, nextPageToken="T2")},
            {"json": ok([{"leadId": 5}], moreResult=False, nextPageToken="T3")},
        ],
    )
    pages = list(hook.get_lead_changes("T1", ["email", "firstName"]))
    assert [(p.records, p.next_page_token, p.more) for p in pages] == [
        ([], "T2", True),
        ([{"leadId": 5}], "T3", False),
    ]
    first, second = [r for r in requests_mock.request_history if "leadchanges" in r.url]
    assert first.qs["nextpagetoken"] == ["t1"]
    assert second.qs["nextpagetoken"] == ["t2"]
    assert first.qs["fields"] == ["email,firstname"]


def test_paging_token_requires_aware_datetime(hook):
    with pytest.raises(ValueError, match="timezone-aware"):
        hook.get_paging_token(datetime(2026, 1, 1))


def test_paging_token_sends_offset_datetime(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/activities/pagingtoken.json", json={"success": True, "nextPageToken": "TOK"}
    )
    assert hook.get_paging_token(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "TOK"
    assert "sinceDatetime=2026-01-02T03%3A04%3A05%2B00%3A00" in requests_mock.last_request.url


def test_sync_leads_gives_one_result_per_record_in_calls_of_300(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    bodies: list[dict] = []

    def answer(request, context):
        body = request.json()
        bodies.append(body)
        result: list[dict] = []
        for rec in body["input"]:
            if rec["email"].endswith("@dup.test"):
                result.append(
                    {"status": "skipped", "reasons": [{"code": "1007", "message": "Multiple leads"}]}
                )
            else:
                result.append({"id": int(rec["email"].split("@")[0][1:]), "status": "created"})
        return ok(result)

    requests_mock.post(LEADS_URL, json=answer)
    records = [{"email": f"l{i}@x.test"} for i in range(650)]
    records[10] = {"email": "l10@dup.test"}
    records[400] = {"firstName": "no email"}
    results = hook.sync_leads(records)
    assert [len(b["input"]) for b in bodies] == [300, 299, 50]
    assert bodies[0]["action"] == "createOrUpdate"
    assert bodies[0]["lookupField"] == "email"
    assert len(results) == 650
    assert [r.index for r in results] == list(range(650))
    assert results[0].status is WriteStatus.CREATED
    assert results[0].id == "0"
    assert results[649].id == "649"
    assert results[10].status is WriteStatus.SKIPPED
    assert results[10].code == "1007"
    assert results[400].status is WriteStatus.SKIPPED
    assert "record 400" in results[400].reason
    assert "email" in results[400].reason


def test_sync_leads_rejects_unserialisable_value_naming_record_and_field(hook):
    with pytest.raises(ValueError, match=r"record 1 field 'score' holds a object"):
        hook.sync_leads([{"email": "a@x.test"}, {"email": "b@x.test", "score": object()}])


def test_sync_objects_maps_results_by_seq(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.post(
        f"{MARKETO_URL}/rest/v1/opportunities.json",
        json=ok(
            [
                {"seq": 1, "status": "created", "marketoGUID": "g-1"},
                {
                    "seq": 0,
                    "status": "skipped",
                    "reasons": [{"code": "718", "message": "ExternalSalesPersonID not found"}],
                },
            ]
        ),
    )
    results = hook.sync_opportunities(
        [{"externalOpportunityId": "o0", "name": "A"}, {"externalOpportunityId": "o1", "name": "B"}]
    )
    assert (results[0].status, results[0].code) == (WriteStatus.SKIPPED, "718")
    assert (results[1].status, results[1].id) == (WriteStatus.CREATED, "g-1")
    assert requests_mock.last_request.json()["dedupeBy"] == "dedupeFields"


def test_oversized_batches_are_split_under_one_megabyte(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    sizes: list[int] = []

    def answer(request, context):
        sizes.append(len(request.body))
        return ok([{"id": i, "status": "updated"} for i, _ in enumerate(request.json()["input"])])

    requests_mock.post(LEADS_URL, json=answer)
    records = [{"email": f"{i}@x.test", "notes": "x" * 10_000} for i in range(200)]
    results = hook.sync_leads(records)
    assert len(sizes) > 1
    assert max(sizes) < 1_000_000
    assert all(r.status is WriteStatus.UPDATED for r in results)


def test_daily_budget_stops_before_the_quota(marketo_conn, requests_mock):
    hook = MarketoHook(marketo_conn(daily_call_budget=3), retry_policy=RetryPolicy.no_wait())
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(f"{MARKETO_URL}/rest/v1/leads/describe.json", json=ok([]))
    from crm_sync_hooks.errors import CallBudgetExhausted

    for _ in range(3):
        hook.describe()
    with pytest.raises(CallBudgetExhausted, match="daily call budget of 3"):
        hook.describe()
    # the identity call is not counted; three API calls were made, the fourth never sent
    assert len([r for r in requests_mock.request_history if "describe" in r.url]) == 3


def test_connection_ca_bundle_wins_over_environment(marketo_conn, requests_mock, monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("unused")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/env-bundle.pem")
    hook = MarketoHook(marketo_conn(ca_bundle=str(bundle)), retry_policy=RetryPolicy.no_wait())
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.get(f"{MARKETO_URL}/rest/v1/leads/describe.json", json=ok([]))
    hook.describe()
    assert {r.verify for r in requests_mock.request_history} == {str(bundle)}
    assert {r.timeout for r in requests_mock.request_history} == {5.0}


def test_secrets_never_reach_logs_or_errors(hook, requests_mock, caplog):
    caplog.set_level(logging.DEBUG)
    requests_mock.post(TOKEN_URL, json=token_body("secret-token-value-123"))
    requests_mock.get(
        f"{MARKETO_URL}/rest/v1/leads/describe.json",
        [{"json": failure("602")}, {"json": failure("611")}, {"json": ok([])}],
    )
    hook.describe()
    requests_mock.get(f"{MARKETO_URL}/rest/v1/leads/describe.json", json=failure("603", "Access denied"))
    with pytest.raises(FatalApiError) as info:
        hook.describe()
    text = caplog.text + str(info.value) + repr(hook) + json.dumps(hook.settings.extra)
    assert caplog.records, "the calls should have been logged"
    assert MARKETO_SECRET not in text
    assert "secret-token-value-123" not in text
    assert re.search(r"retrying", caplog.text)


def test_base_url_accepts_rest_suffix(set_connection):
    conn = set_connection(
        "mkto_suffix",
        conn_type="marketo",
        host="https://1-a.mktorest.com/rest/",
        login="c",
        password="secret-xyz",
    )
    assert MarketoHook(conn).base_url == "https://1-a.mktorest.com"


def test_requests_mock_is_strict(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    with pytest.raises(rm.exceptions.NoMockAddress):
        hook.describe("unknown")


def test_bulk_queue_full_is_retried_but_already_queued_is_treated_as_queued(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    enqueue = f"{MARKETO_URL}/bulk/v1/leads/export/e1/enqueue.json"
    requests_mock.post(
        enqueue,
        [
            {"json": failure("1029", "Too many jobs (10) in queue")},
            {"json": failure("1029", "Job already queued")},
        ],
    )
    requests_mock.get(
        f"{MARKETO_URL}/bulk/v1/leads/export/e1/status.json",
        json=ok([{"exportId": "e1", "status": "Queued"}]),
    )
    assert hook.enqueue_lead_export("e1")["status"] == "Queued"
    assert len([r for r in requests_mock.request_history if r.url.startswith(enqueue)]) == 2


def test_export_daily_quota_stops_with_quota_error(hook, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    requests_mock.post(
        f"{MARKETO_URL}/bulk/v1/leads/export/create.json",
        json=failure("1029", "Export daily quota 500MB exceeded"),
    )
    with pytest.raises(QuotaExceeded, match="resume after midnight US Central"):
        hook.create_lead_export(
            ["id"], {"createdAt": {"startAt": "2026-01-01T00:00:00Z", "endAt": "2026-01-02T00:00:00Z"}}
        )
