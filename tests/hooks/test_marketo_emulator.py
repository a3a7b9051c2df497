"""MarketoHook end to end against a real Marketo emulator process over HTTPS (project CA)."""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crm_sync_hooks import marketo
from crm_sync_hooks.errors import BulkImportMismatch, CallBudgetExhausted
from crm_sync_hooks.marketo import MarketoHook
from crm_sync_hooks.results import WriteStatus
from crm_sync_hooks.retry import RetryPolicy
from emulators.common.credentials import default_credentials
from tests.hooks.conftest import hammer_from_two_processes
from tests.support.emulator_procs import RunningEmulator, start_emulator

pytestmark = pytest.mark.e2e

FAST = RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Iterator[RunningEmulator]:
    # time scale 0.01: the 20 s window is 0.2 s and bulk jobs finish in a few hundredths of a second
    emu = start_emulator(
        "marketo", tmp_path_factory.mktemp("marketo"), ["--time-scale", "0.01"], seed_scale=60
    )
    yield emu
    gc.collect()  # close idle keep-alive connections so the server shuts down at once
    emu.stop()


@pytest.fixture(scope="module")
def lead_ids(emulator, tmp_path_factory) -> list[int]:
    """Create 60 leads through the API (independent of the emulator's seed data) and return their ids."""
    with pytest.MonkeyPatch.context() as mp:
        hook = MarketoHook(
            connect(mp, emulator, tmp_path_factory.mktemp("seed"), "mkto_seed"), retry_policy=FAST
        )
        results = hook.sync_leads([{"email": f"lead{i}@seed.test", "firstName": f"F{i}"} for i in range(60)])
        hook.close()
    assert all(r.status is WriteStatus.CREATED for r in results)
    return sorted(int(r.id) for r in results if r.id)


@pytest.fixture(autouse=True)
def _clean_emulator(emulator) -> None:
    emulator.admin("DELETE", "faults")
    emulator.admin("POST", "stats/reset")


def connect(
    monkeypatch, emulator: RunningEmulator, tmp_path: Path, conn_id: str = "mkto_e2e", **extra
) -> str:
    cred = default_credentials("marketo_default")
    extras = {
        "ca_bundle": str(emulator.ca_file),
        "limiter_url": f"sqlite:///{tmp_path}/limiter.sqlite",
        "timeout": 30,
        "bulk_poll_seconds": 0.05,
        **extra,
    }
    password = extra.pop("password", None) or cred.client_secret
    extras.pop("password", None)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "marketo",
                "host": emulator.base_url,
                "login": cred.client_id,
                "password": password,
                "extra": extras,
            }
        ),
    )
    return conn_id


@pytest.fixture
def hook(monkeypatch, emulator, tmp_path) -> Iterator[MarketoHook]:
    hook = MarketoHook(connect(monkeypatch, emulator, tmp_path), retry_policy=FAST)
    yield hook
    hook.close()


def stats_of(emulator: RunningEmulator) -> dict[str, Any]:
    """The emulator's admin statistics (calls per endpoint, limit hits, faults injected...)."""
    return dict(emulator.stats())


def calls(emulator: RunningEmulator) -> dict[str, int]:
    return dict(stats_of(emulator)["calls"])


def test_test_connection_succeeds_and_fails_on_wrong_secret(monkeypatch, emulator, tmp_path):
    good = MarketoHook(connect(monkeypatch, emulator, tmp_path), retry_policy=FAST)
    assert good.test_connection()[0] is True
    bad = MarketoHook(
        connect(monkeypatch, emulator, tmp_path, "mkto_bad", password="wrong-secret-123"), retry_policy=FAST
    )
    ok, message = bad.test_connection()
    assert ok is False
    assert "client id or client secret refused" in message
    assert "wrong-secret-123" not in message


def test_leads_by_filter_are_paged(hook, lead_ids):
    pages = list(hook.get_leads("id", lead_ids, fields=["id", "email"], batch_size=25))
    assert [len(p) for p in pages] == [25, 25, 10]
    assert sorted(lead["id"] for page in pages for lead in page) == lead_ids


def test_sync_leads_then_changes_and_deletions_since_a_token(hook, lead_ids):
    token = hook.get_paging_token(datetime.now(UTC) - timedelta(seconds=5))
    existing = next(hook.get_leads("id", lead_ids[:1], fields=["id", "email"]))[0]
    results = hook.sync_leads(
        [
            {"email": "fresh.e2e@example.test", "firstName": "Fresh"},
            {"email": existing["email"], "firstName": "Renamed"},
            {"firstName": "no email"},
        ]
    )
    assert [r.status for r in results] == [WriteStatus.CREATED, WriteStatus.UPDATED, WriteStatus.SKIPPED]
    assert results[1].id == str(existing["id"])
    pages = list(hook.get_lead_changes(token, ["firstName"]))
    changed = {(a["leadId"], a["activityTypeId"]) for p in pages for a in p.records}
    assert (int(results[0].id), 12) in changed
    assert (existing["id"], 13) in changed
    new_token = pages[-1].next_page_token
    deleted = hook.delete_leads([int(results[0].id), 987654])
    assert [r.status for r in deleted] == [WriteStatus.DELETED, WriteStatus.SKIPPED]
    assert deleted[1].code == "1004"
    gone = [a["leadId"] for p in hook.get_deleted_leads(new_token) for a in p.records]
    assert gone == [int(results[0].id)]


def test_merge_leads_keeps_the_winner_and_reports_a_missing_lead(hook):
    made = hook.sync_leads(
        [
            {"email": "winner.merge@example.test", "firstName": "Win"},
            {"email": "loser.merge@example.test", "firstName": "Lose", "title": "Taken over"},
        ]
    )
    winner, loser = (int(r.id) for r in made)
    token = hook.get_paging_token(datetime.now(UTC) - timedelta(minutes=1))

    result = hook.merge_leads(winner, [loser])

    assert (result.status, result.id) == (WriteStatus.UPDATED, str(winner))
    (page,) = list(hook.get_leads("id", [winner, loser], ["id", "firstName", "title"]))
    assert page == [{"id": winner, "firstName": "Win", "title": "Taken over"}]
    merges = [a for p in hook.get_activities(token, [32]) for a in p.records]
    assert [a["leadId"] for a in merges] == [winner]
    again = hook.merge_leads(winner, [loser])  # the loser is gone now
    assert (again.ok, again.code) == (False, "1004")
    assert hook.delete_leads([winner])[0].ok  # the module's emulator is shared: leave no lead behind


def test_companies_sales_persons_opportunities_roles_and_custom_objects(hook, lead_ids):
    assert (
        hook.sync_companies([{"externalCompanyId": "e2e-co", "company": "E2E Co"}])[0].status
        is WriteStatus.CREATED
    )
    assert (
        hook.sync_companies([{"externalCompanyId": "e2e-co", "company": "E2E Co 2"}])[0].status
        is WriteStatus.UPDATED
    )
    assert hook.sync_sales_persons([{"externalSalesPersonId": "e2e-sp", "email": "sp@e2e.test"}])[0].ok
    opp = hook.sync_opportunities([{"externalOpportunityId": "e2e-op", "name": "Deal"}, {"name": "no key"}])
    assert [r.status for r in opp] == [WriteStatus.CREATED, WriteStatus.SKIPPED]
    role = hook.sync_opportunity_roles(
        [{"externalOpportunityId": "e2e-op", "leadId": lead_ids[1], "role": "Buyer"}]
    )
    assert role[0].status is WriteStatus.CREATED
    assert role[0].id
    types = hook.call_json("GET", "/rest/v1/customobjects.json")["result"]
    co = types[0]
    dedupe = co["dedupeFields"][0]
    created = hook.sync_custom_objects(co["name"], [{dedupe: "e2e-w1", "projectName": "W"}])
    assert created[0].status is WriteStatus.CREATED
    found = list(hook.query_objects(f"customobjects/{co['name']}", dedupe, ["e2e-w1"]))
    assert found[0][0]["marketoGUID"] == created[0].id
    removed = hook.delete_objects("companies", [{"externalCompanyId": "e2e-co"}])
    assert removed[0].status is WriteStatus.DELETED


def test_bulk_extract_yields_every_lead_in_windows_of_31_days(hook, emulator, lead_ids):
    created = hook.sync_leads([{"email": f"bulk{i}@e2e.test"} for i in range(8)])
    end = datetime.now(UTC) + timedelta(days=1)
    start = end - timedelta(days=80)  # three windows: 31 + 31 + 18 days
    leads = [
        lead
        for page in hook.get_leads(
            "id", [*lead_ids, *(int(r.id) for r in created)], fields=["id", "createdAt"]
        )
        for lead in page
    ]
    expected = {lead["id"] for lead in leads if start <= datetime.fromisoformat(lead["createdAt"]) < end}
    assert {int(r.id) for r in created} <= expected
    batches = list(
        hook.bulk_extract_leads(["id", "email", "createdAt"], start, end, batch_size=3, poll_seconds=0.05)
    )
    ids = [int(row["id"]) for batch in batches for row in batch]
    assert set(ids) == expected
    assert len(ids) == len(set(ids))
    assert max(len(b) for b in batches) <= 3
    assert calls(emulator)["POST /bulk/v1/leads/export/create.json"] == 3


def test_bulk_extract_queues_the_next_window_and_cancels_unread_jobs_when_stopped(hook, emulator, lead_ids):
    start = datetime.now(UTC) - timedelta(hours=1)
    end = start + timedelta(days=80)  # three windows; the leads are all in the first
    before = {j["exportId"] for j in hook.call_json("GET", "/bulk/v1/leads/export.json").get("result", [])}
    pages = hook.bulk_extract_leads(["id"], start, end, batch_size=1, poll_seconds=0.05, parallel_jobs=2)
    next(pages)
    # Windows 1 and 2 were queued at once; window 3 was queued when window 1 finished.
    assert calls(emulator)["POST /bulk/v1/leads/export/create.json"] == 3
    assert calls(emulator)["POST /bulk/v1/leads/export/{id}/enqueue.json"] == 3
    pages.close()  # the caller stops while windows 2 and 3 are unread
    listed = hook.call_json("GET", "/bulk/v1/leads/export.json")["result"]
    jobs = [j for j in listed if j["exportId"] not in before]
    # The hook cancelled both unread jobs. Whether a job was still queued or processing when the
    # cancel came is the emulator's pace against this machine's load (either may have finished
    # first, and then cancelling it is refused): the emulator's own tests show a cancel stops
    # a queued or processing job (tests/emulators/marketo/test_bulk.py).
    assert calls(emulator)["POST /bulk/v1/leads/export/{id}/cancel.json"] == 2
    assert {j["status"] for j in jobs} <= {"Cancelled", "Completed"}, jobs
    with pytest.raises(ValueError, match="parallel_jobs"):
        next(hook.bulk_extract_leads(["id"], start, end, parallel_jobs=11))


def test_export_file_is_downloaded_in_range_chunks(hook, emulator, tmp_path):
    now = datetime.now(UTC)
    export_id = hook.create_lead_export(
        ["id", "email"],
        {
            "createdAt": {
                "startAt": (now - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "endAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        },
    )
    hook.enqueue_lead_export(export_id)
    status = hook.wait_for_lead_export(export_id, 0.05, 60)
    whole = hook.download_lead_export(export_id, tmp_path / "whole.csv", status).read_bytes()
    emulator.admin("POST", "stats/reset")
    chunked = hook.download_lead_export(
        export_id, tmp_path / "chunked.csv", status, chunk_bytes=64
    ).read_bytes()
    assert chunked == whole
    assert calls(emulator)["GET /bulk/v1/leads/export/{id}/file.json"] == -(-len(whole) // 64)


def test_bulk_import_reports_failed_rows(hook):
    rows = [{"email": f"import{i}@e2e.test", "firstName": f"I{i}"} for i in range(30)]
    rows.insert(5, {"email": "not-an-email", "firstName": "Bad"})
    rows.append({"firstName": "no email"})
    jobs = hook.bulk_import_leads(rows, ["email", "firstName"], poll_seconds=0.05, max_file_bytes=400)
    assert len(jobs) > 1  # small files force several import jobs
    failures = [f for job in jobs for f in job.failures]
    assert sorted(f.index for f in failures) == [5, 31]
    assert all(f.status in (WriteStatus.FAILED, WriteStatus.SKIPPED) for f in failures)
    assert sum(job.rows_processed for job in jobs) == 30
    found = list(hook.get_leads("email", ["import29@e2e.test"], fields=["firstName"]))
    assert found[0][0]["firstName"] == "I29"


@pytest.mark.parametrize(
    ("fault", "figure"),
    [
        ("drop-row", "Marketo counted 1 failed rows, its failures file lists 0"),
        ("blank-key", "1 report rows match no submitted row: failures row 1 (email '')"),
    ],
)
def test_bulk_import_whose_reports_miss_a_row_fails(hook, emulator, fault, figure):
    rows = [{"email": f"recon{i}@e2e.test", "firstName": f"R{i}"} for i in range(4)]
    rows.insert(2, {"email": "not-an-email", "firstName": "Bad"})
    emulator.admin("POST", "import-report-fault", json={"mode": fault})
    try:
        with pytest.raises(BulkImportMismatch) as caught:
            hook.bulk_import_leads(rows, ["email", "firstName"], poll_seconds=0.05)
    finally:
        emulator.admin("POST", "import-report-fault", json={"mode": None})
    message = str(caught.value)
    assert "does not account for every row" in message
    assert figure in message
    assert "/bulk/v1/leads/batch/{id}.json" in message
    # Without the fault the same rows are accounted for: four imported, the bad one failed.
    (job,) = hook.bulk_import_leads(rows, ["email", "firstName"], poll_seconds=0.05)
    assert (job.rows_processed, [f.index for f in job.failures]) == (4, [2])


def test_bulk_import_matches_failures_of_rows_sharing_a_key_in_order(hook):
    rows = [
        {"email": "fine@e2e.test", "firstName": "Fine"},
        {"email": "not-an-email", "firstName": "Bad once"},
        {"email": "also@e2e.test", "firstName": "Also"},
        {"email": "not-an-email", "firstName": "Bad twice"},
    ]
    (job,) = hook.bulk_import_leads(rows, ["email", "firstName"], poll_seconds=0.05)
    assert sorted(f.index for f in job.failures) == [1, 3], "each failure names its own row"
    assert job.rows_processed == 2


def test_token_is_renewed_after_forced_expiry(hook, emulator):
    hook.describe()
    emulator.admin("POST", "expire-tokens")
    hook.describe()
    stats = calls(emulator)
    assert stats["POST /identity/oauth/token"] == 2
    assert stats["GET /rest/v1/leads/describe.json"] == 3  # one rejected with 601/602, repeated once


def test_injected_server_errors_and_dropped_connections_are_retried(hook, emulator, lead_ids):
    hook.describe()
    emulator.admin(
        "PUT",
        "faults",
        json={
            "error_rate": 0.3,
            "drop_rate": 0.2,
            "error_codes": ["503", "611", "604"],
            "endpoints": ["/rest/v1/leads"],
            "seed": 7,
        },
    )
    found = [
        lead["id"]
        for i in lead_ids[:20]
        for page in hook.get_leads("id", [i], fields=["id"])
        for lead in page
    ]
    assert found == lead_ids[:20]
    injected = stats_of(emulator)["faults_injected"]
    assert sum(injected.values()) >= 5
    assert "drop" in injected


def test_daily_budget_stops_before_the_quota(monkeypatch, emulator, tmp_path):
    emulator.admin("POST", "reset-counters")
    hook = MarketoHook(
        connect(monkeypatch, emulator, tmp_path, "mkto_budget", daily_call_budget=4), retry_policy=FAST
    )
    for _ in range(4):
        hook.describe()
    with pytest.raises(CallBudgetExhausted, match="daily call budget of 4"):
        hook.describe()
    assert calls(emulator)["GET /rest/v1/leads/describe.json"] == 4
    assert "607" not in stats_of(emulator)["limit_hits"]


def test_secrets_and_tokens_are_absent_from_logs(hook, emulator, caplog):
    caplog.set_level(logging.DEBUG)
    emulator.admin("PUT", "faults", json={"error_rate": 0.5, "error_codes": ["503"], "seed": 3})
    hook.describe()
    emulator.admin("POST", "expire-tokens")
    hook.describe()
    tokens = [token for token, _ in marketo._TOKENS.values()]
    secret = default_credentials("marketo_default").client_secret
    assert tokens
    assert "POST /identity/oauth/token" in caplog.text or "identity" in caplog.text
    for value in [secret, *tokens]:
        assert value not in caplog.text


def _hammer(conn_id: str, env: dict[str, str], count: int) -> int:
    """Run in a separate process: make ``count`` calls through a fresh hook."""
    os.environ.update(env)
    hook = MarketoHook(conn_id, retry_policy=RetryPolicy(max_attempts=1))  # any 606/615 would surface
    for i in range(count):
        list(hook.get_leads("id", [1 + i % 20], fields=["id"]))
    return count


def test_limiter_keeps_two_processes_under_the_instance_limits(monkeypatch, tmp_path):
    # A separate emulator with a 1 s window of 10 calls and 3 concurrent calls of 50 ms each.
    emu = start_emulator(
        "marketo",
        tmp_path / "emu",
        ["--time-scale", "0.05", "--rate-limit", "10", "--max-concurrent", "3"],
    )
    try:
        emu.admin("PUT", "limits", json={"hold_ms": 50})
        conn_id = connect(
            monkeypatch,
            emu,
            tmp_path,
            "mkto_limits",
            rate_limit_calls=10,
            rate_limit_window_seconds=1.0,
            max_concurrent_calls=3,
        )
        done, elapsed = hammer_from_two_processes(_hammer, conn_id, 12)
        stats = stats_of(emu)
        assert done == [12, 12]
        assert stats["limit_hits"] == {}
        assert stats["calls"]["POST /rest/v1/leads.json"] == 24
        assert stats["max_in_flight"] <= 3
        assert elapsed >= 2.0  # 24 calls at 10 per second need at least two full windows
    finally:
        emu.stop()


def test_bulk_import_of_a_prepared_file_reads_keys_only_for_a_report(hook):
    keys_read = []

    def keys(emails):
        def read():
            keys_read.append(len(emails))
            return emails

        return read

    emails = ["prepared0@e2e.test", "not-an-email", "prepared2@e2e.test"]
    data = ("email,firstName\n" + "".join(f"{e},P{i}\n" for i, e in enumerate(emails))).encode()
    job = hook.bulk_import_file(data, 3, keys(emails), lookup_field="email", poll_seconds=0.05)
    assert (job.rows_processed, [(f.index, f.status) for f in job.failures]) == (2, [(1, WriteStatus.FAILED)])
    assert keys_read == [3]  # read once, for the failures file
    clean = ["prepared3@e2e.test"]
    job = hook.bulk_import_file(
        b"email\nprepared3@e2e.test\n", 1, keys(clean), lookup_field="email", poll_seconds=0.05
    )
    assert (job.rows_processed, job.failures, keys_read) == (1, [], [3])  # nothing to match: not read
    found = list(hook.get_leads("email", ["prepared2@e2e.test"], fields=["firstName"]))
    assert found[0][0]["firstName"] == "P2"
    with pytest.raises(ValueError, match="lookup field 'email'"):
        hook.bulk_import_file(b"firstName\nX\n", 1, keys(["x"]), lookup_field="email")


@pytest.mark.parametrize("staged_lines", [True, False])
def test_a_bulk_units_files_come_from_its_staged_lines(hook, monkeypatch, staged_lines):
    from crm_sync.engine.full_copy import load as full_copy_load
    from crm_sync.engine.full_copy.import_sizes import import_cells
    from crm_sync.engine.json_records import ImportLines, JsonRecords, to_json_texts

    records = [{"email": f"lines{i}@e2e.test", "firstName": f"L{i}, {i}"} for i in range(30)]
    records[25] = {"email": "not-an-email", "firstName": "Bad"}
    texts = to_json_texts(records)
    header = ["email", "firstName"]
    lines = ImportLines(import_cells(texts).lines(header), np.full(len(records), len(header)))
    monkeypatch.setattr(full_copy_load, "_FILE_BYTES", 400)  # several files: results keep their records
    client = full_copy_load.BulkAwareMarketo(hook, mode="bulk", lookup="email", columns=header)
    payloads = JsonRecords(texts, lines if staged_lines else None)
    results = client.sync_leads(payloads, action="createOrUpdate")
    assert [i for i, r in enumerate(results) if not r.ok] == [25]
    assert results[25].status is WriteStatus.FAILED
    assert len(client.imports) > 1
    assert client.files_from_lines == (len(client.imports) if staged_lines else 0)
    found = list(hook.get_leads("email", ["lines29@e2e.test"], fields=["firstName"]))
    assert found[0][0]["firstName"] == "L29, 29"
