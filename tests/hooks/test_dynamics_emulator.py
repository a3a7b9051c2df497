"""DynamicsHook end to end against a real Dataverse emulator process over HTTPS (project CA)."""

from __future__ import annotations

import gc
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_sync_hooks import dynamics
from crm_sync_hooks.caches import clear_process_caches
from crm_sync_hooks.dynamics import DeltaTokenExpired, DynamicsHook
from crm_sync_hooks.results import ROW_EXISTS, ROW_MISSING, WriteStatus
from crm_sync_hooks.retry import RetryPolicy
from emulators.common.credentials import default_credentials
from tests.hooks.conftest import hammer_from_two_processes
from tests.support.emulator_procs import RunningEmulator, start_emulator

pytestmark = pytest.mark.e2e

FAST = RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05, honour_retry_after=False)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Iterator[RunningEmulator]:
    emu = start_emulator("dynamics", tmp_path_factory.mktemp("dynamics"))
    yield emu
    clear_process_caches()
    gc.collect()  # close idle keep-alive connections so the server shuts down at once
    emu.stop()


@pytest.fixture(autouse=True)
def _clean_emulator(emulator) -> None:
    emulator.admin("DELETE", "faults")
    emulator.admin("POST", "stats/reset")


def connect(
    monkeypatch, emulator: RunningEmulator, tmp_path: Path, conn_id: str = "dyn_e2e", **extra: Any
) -> str:
    cred = default_credentials("dynamics_default")
    password = extra.pop("password", None) or cred.client_secret
    extras = {
        "tenant_id": cred.tenant_id,
        "authority_host": emulator.base_url,
        "api_version": "9.2",
        "ca_bundle": str(emulator.ca_file),
        "limiter_url": f"sqlite:///{tmp_path}/limiter.sqlite",
        "timeout": 30,
        **extra,
    }
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "dynamics",
                "host": emulator.base_url,
                "login": cred.client_id,
                "password": password,
                "extra": extras,
            }
        ),
    )
    return conn_id


@pytest.fixture
def hook(monkeypatch, emulator, tmp_path) -> Iterator[DynamicsHook]:
    hook = DynamicsHook(connect(monkeypatch, emulator, tmp_path), retry_policy=FAST)
    yield hook
    hook.close()


def stats_of(emulator: RunningEmulator) -> dict[str, Any]:
    return dict(emulator.stats())


def calls(emulator: RunningEmulator) -> dict[str, int]:
    return dict(stats_of(emulator)["calls"])


def new_contacts(count: int, tag: str) -> list[dict[str, Any]]:
    return [{"emailaddress1": f"{tag}{i}@e2e.test", "lastname": f"{tag.title()} {i}"} for i in range(count)]


def test_test_connection_succeeds_and_fails_on_wrong_secret(monkeypatch, emulator, tmp_path):
    good = DynamicsHook(connect(monkeypatch, emulator, tmp_path), retry_policy=FAST)
    ok, message = good.test_connection()
    assert ok, message
    bad = DynamicsHook(
        connect(monkeypatch, emulator, tmp_path, "dyn_bad", password="wrong-secret-456"), retry_policy=FAST
    )
    ok, message = bad.test_connection()
    assert not ok
    assert "token request refused (invalid_client" in message
    assert "wrong-secret-456" not in message


def test_metadata_and_who_am_i(hook):
    definition = hook.entity_definition("contact")
    assert (definition["EntitySetName"], definition["PrimaryIdAttribute"]) == ("contacts", "contactid")
    columns = {a["LogicalName"]: a for a in hook.entity_attributes("contact")}
    assert columns["emailaddress1"]["AttributeType"] == "String"
    assert columns["contactid"]["IsPrimaryId"] is True
    assert uuid.UUID(hook.organization_id())


def test_query_pages_through_next_links(hook, emulator):
    hook.upsert_records("contacts", new_contacts(12, "page"), ["emailaddress1"], id_column="contactid")
    emulator.admin("POST", "stats/reset")
    filter_ = "startswith(emailaddress1,'page')"
    pages = list(
        hook.query(
            "contacts", select=["emailaddress1"], filter=filter_, orderby="emailaddress1 asc", page_size=5
        )
    )
    assert [len(p) for p in pages] == [5, 5, 2]
    assert sorted(r["emailaddress1"] for p in pages for r in p) == sorted(
        f"page{i}@e2e.test" for i in range(12)
    )
    assert calls(emulator)["GET /api/data/v9.2/contacts"] == 3


def test_upserts_by_alternate_key_and_id_report_each_record(hook):
    first = hook.upsert_records("contacts", new_contacts(2, "alt"), ["emailaddress1"], id_column="contactid")
    assert [r.status for r in first] == [WriteStatus.CREATED, WriteStatus.CREATED]
    again = hook.upsert_records(
        "contacts",
        [
            {"emailaddress1": "alt0@e2e.test", "jobtitle": "CTO"},
            {"emailaddress1": "x@e2e.test", "nosuchcolumn": 1},
            {"jobtitle": "no key"},
        ],
        ["emailaddress1"],
        id_column="contactid",
    )
    assert [r.status for r in again] == [WriteStatus.UPDATED, WriteStatus.FAILED, WriteStatus.FAILED]
    assert again[0].id == first[0].id
    assert "nosuchcolumn" in again[1].reason
    lead_id = str(uuid.uuid4())
    by_id = hook.upsert_records(
        "leads", [{"leadid": lead_id, "lastname": "Id", "subject": "s"}], ["leadid"], id_column="leadid"
    )
    assert (by_id[0].status, by_id[0].id) == (WriteStatus.CREATED, lead_id)
    rows = [
        r
        for p in hook.query("contacts", select=["jobtitle"], filter="emailaddress1 eq 'alt0@e2e.test'")
        for r in p
    ]
    assert [r["jobtitle"] for r in rows] == ["CTO"]


def test_conditional_upserts_never_recreate_nor_overwrite(hook):
    here, gone = str(uuid.uuid4()), str(uuid.uuid4())
    hook.upsert_records("leads", [{"leadid": here, "lastname": "Here"}], ["leadid"], id_column="leadid")

    updates = hook.upsert_records(
        "leads",
        [{"leadid": here, "jobtitle": "Buyer"}, {"leadid": gone, "jobtitle": "Ghost"}],
        ["leadid"],
        id_column="leadid",
        only="existing",
    )
    assert [(r.status, r.code) for r in updates] == [
        (WriteStatus.UPDATED, None),
        (WriteStatus.FAILED, ROW_MISSING),
    ]
    assert "Does Not Exist" in (updates[1].reason or "")

    creates = hook.upsert_records(
        "leads",
        [{"leadid": here, "lastname": "Overwritten"}, {"leadid": gone, "lastname": "New"}],
        ["leadid"],
        id_column="leadid",
        only="new",
    )
    assert [(r.status, r.code) for r in creates] == [
        (WriteStatus.SKIPPED, ROW_EXISTS),
        (WriteStatus.CREATED, None),
    ]
    rows = {
        r["leadid"]: r
        for p in hook.query(
            "leads", select=["leadid", "lastname", "jobtitle"], filter=f"leadid eq {here} or leadid eq {gone}"
        )
        for r in p
    }
    assert (rows[here]["lastname"], rows[here]["jobtitle"]) == ("Here", "Buyer")
    assert (rows[gone]["lastname"], rows[gone]["jobtitle"]) == ("New", None), "the update made no row"


def test_change_set_failure_rolls_back_its_records(hook):
    ids = [str(uuid.uuid4()) for _ in range(4)]
    records = [
        {"leadid": ids[0], "lastname": "A"},
        {"leadid": ids[1], "nosuchcolumn": 1},
        {"leadid": ids[2], "lastname": "C"},
        {"leadid": ids[3], "lastname": "D"},
    ]
    results = hook.upsert_records("leads", records, ["leadid"], id_column="leadid", change_set_size=2)
    assert [r.status for r in results] == [
        WriteStatus.FAILED,
        WriteStatus.FAILED,
        WriteStatus.CREATED,
        WriteStatus.CREATED,
    ]
    assert results[0].reason.startswith("change set rolled back")
    found = {
        r["leadid"] for p in hook.query("leads", select=["leadid"], filter=f"leadid eq {ids[0]}") for r in p
    }
    assert found == set()  # the valid record of the failed change set was rolled back


def test_many_records_go_in_batches_of_the_given_size(hook, emulator):
    results = hook.upsert_records(
        "contacts", new_contacts(250, "bulk"), ["emailaddress1"], id_column="contactid", batch_size=100
    )
    assert [r.index for r in results] == list(range(250))
    assert all(r.status is WriteStatus.CREATED for r in results)
    assert calls(emulator)["POST /api/data/v9.2/$batch"] == 3


def test_change_tracking_sees_upserts_and_deletes_then_expiry(hook, emulator):
    initial = list(hook.track_changes("accounts", ["name"], page_size=50))
    delta = initial[-1].delta_link
    assert delta
    assert all(p.delta_link is None for p in initial[:-1])
    created = hook.upsert_records(
        "accounts",
        [{"accountnumber": f"CT-{i}", "name": f"Tracked {i}"} for i in range(3)],
        ["accountnumber"],
        id_column="accountid",
    )
    deleted = hook.delete_records("accounts", [created[0].id, {"accountnumber": "CT-1"}, str(uuid.uuid4())])
    assert [r.status for r in deleted] == [WriteStatus.DELETED, WriteStatus.DELETED, WriteStatus.SKIPPED]
    changes = list(hook.track_changes("accounts", ["name"], delta_link=delta))
    upserted = {r["accountid"] for p in changes for r in p.records}
    removed = {i for p in changes for i in p.deleted_ids}
    assert created[2].id in upserted
    assert {created[0].id, created[1].id} <= removed
    assert changes[-1].delta_link
    assert changes[-1].delta_link != delta
    emulator.admin("POST", "expire-delta-tokens")
    with pytest.raises(DeltaTokenExpired, match="0x80044352"):
        list(hook.track_changes("accounts", ["name"], delta_link=changes[-1].delta_link))


def test_token_is_renewed_after_forced_expiry(hook, emulator):
    hook.who_am_i()
    emulator.admin("POST", "expire-tokens")
    hook.who_am_i()
    stats = calls(emulator)
    assert stats["POST /{id}/oauth2/v2.0/token"] == 2
    assert stats["GET /api/data/v9.2/WhoAmI"] == 3  # one answered 401, repeated once with a new token


def test_injected_server_errors_and_dropped_connections_are_retried(hook, emulator):
    hook.who_am_i()
    emulator.admin(
        "PUT",
        "faults",
        json={
            "error_rate": 0.3,
            "drop_rate": 0.2,
            "error_codes": ["503", "502", "429"],
            "endpoints": ["/api/data/v9.2/"],
            "seed": 11,
        },
    )
    results = [hook.who_am_i()["OrganizationId"] for _ in range(20)]
    assert len(set(results)) == 1
    injected = stats_of(emulator)["faults_injected"]
    assert sum(injected.values()) >= 5
    assert "drop" in injected


def test_secrets_and_tokens_are_absent_from_logs(hook, emulator, caplog):
    caplog.set_level(logging.DEBUG)
    emulator.admin("PUT", "faults", json={"error_rate": 0.5, "error_codes": ["503"], "seed": 5})
    hook.who_am_i()
    emulator.admin("POST", "expire-tokens")
    hook.who_am_i()
    app = next(iter(dynamics._MSAL_APPS.values()))
    tokens = [t["secret"] for t in app.token_cache.search(app.token_cache.CredentialType.ACCESS_TOKEN)]
    assert tokens
    assert "retrying" in caplog.text
    for value in [default_credentials("dynamics_default").client_secret, *tokens]:
        assert value not in caplog.text


def _hammer(conn_id: str, env: dict[str, str], count: int) -> int:
    """Run in a separate process: make ``count`` calls through a fresh hook."""
    os.environ.update(env)
    hook = DynamicsHook(conn_id, retry_policy=RetryPolicy(max_attempts=1))  # any 429 would surface
    for _ in range(count):
        hook.who_am_i()
    return count


def test_limiter_keeps_two_processes_under_the_service_limits(monkeypatch, tmp_path):
    # A separate emulator whose 300 s window lasts 1 s and holds 10 requests, with 3 concurrent.
    emu = start_emulator(
        "dynamics",
        tmp_path / "emu",
        ["--time-scale", "300", "--limit-requests", "10", "--limit-concurrency", "3"],
    )
    try:
        emu.admin("PUT", "faults", json={"latency_ms": 50})
        conn_id = connect(
            monkeypatch,
            emu,
            tmp_path,
            "dyn_limits",
            rate_limit_calls=10,
            rate_limit_window_seconds=1.0,
            max_concurrent_calls=3,
        )
        done, elapsed = hammer_from_two_processes(_hammer, conn_id, 12)
        stats = stats_of(emu)
        assert done == [12, 12]
        assert stats["limit_hits"] == {}
        assert "429" not in stats["statuses"]
        assert stats["calls"]["GET /api/data/v9.2/WhoAmI"] == 24
        assert elapsed >= 2.0  # 24 calls at 10 per second need at least two full windows
    finally:
        gc.collect()
        emu.stop()
