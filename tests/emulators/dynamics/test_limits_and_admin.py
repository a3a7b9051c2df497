"""Service protection limits (429 + Retry-After at the right moment), faults, refresh, schema drift."""

from __future__ import annotations

import threading

from tests.emulators.dynamics.conftest import wait_until


def _error_code(resp):
    return resp.json()["error"]["code"]


def test_request_count_limit_refuses_the_request_over_the_window(fresh_emulator):
    # A 300 s window at time scale 60 lasts 5 real seconds.
    dv = fresh_emulator("--limit-requests", "5", "--time-scale", "60")
    left = []
    for _ in range(5):
        resp = dv.get("WhoAmI")
        assert resp.status_code == 200
        left.append(int(resp.headers["x-ms-ratelimit-burst-remaining-xrm-requests"]))
    assert left == [4, 3, 2, 1, 0]
    refused = dv.get("WhoAmI")
    assert refused.status_code == 429
    assert _error_code(refused) == "0x80072322"
    assert "limit of 5 over time window of 300 seconds" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) in range(1, 6)
    assert dv.emu.stats()["limit_hits"] == {"0x80072322": 1}
    wait_until(lambda: dv.get("WhoAmI").status_code == 200, timeout=15, interval=0.5)


def test_execution_time_limit(fresh_emulator):
    dv = fresh_emulator("--limit-execution-ms", "1000", "--time-scale", "30")
    dv.emu.admin("PUT", "faults", json={"latency_ms": 600, "endpoints": ["/api/data/"]})
    assert dv.get("WhoAmI").status_code == 200
    assert dv.get("WhoAmI").status_code == 200  # 1.2 s used: the window is now over its budget
    refused = dv.get("WhoAmI")
    assert refused.status_code == 429
    assert _error_code(refused) == "0x80072321"
    assert int(refused.headers["Retry-After"]) in range(1, 11)


def test_concurrency_limit_refuses_at_once(fresh_emulator):
    dv = fresh_emulator("--limit-concurrency", "2")
    dv.emu.admin("PUT", "faults", json={"latency_ms": 2500, "endpoints": ["/api/data/v9.2/WhoAmI"]})
    results: list[int] = []
    slow = [threading.Thread(target=lambda: results.append(dv.get("WhoAmI").status_code)) for _ in range(2)]
    for thread in slow:
        thread.start()
    wait_until(lambda: dv.emu.stats()["in_flight"] == 2, timeout=10, interval=0.05)
    refused = dv.get("leads?$top=1")
    assert refused.status_code == 429
    assert _error_code(refused) == "0x80072326"
    assert refused.headers["Retry-After"] == "1"
    for thread in slow:
        thread.join(timeout=30)
    assert results == [200, 200]
    assert dv.get("leads?$top=1").status_code == 200


def test_limits_change_at_run_time(fresh_emulator):
    dv = fresh_emulator("--limits", "off")
    for _ in range(5):
        assert dv.get("WhoAmI").status_code == 200
    settings = dv.emu.admin("POST", "limits", json={"enabled": True, "requests": 2}).json()
    assert (settings["enabled"], settings["requests"]) == (True, 2)
    assert [dv.get("WhoAmI").status_code for _ in range(3)] == [200, 200, 429]
    dv.emu.admin("POST", "limits", json={"enabled": False})
    assert dv.get("WhoAmI").status_code == 200
    bad = dv.call("POST", f"{dv.emu.base_url}/_emulator/limits", json={"bogus": 1})
    assert bad.status_code == 400


def test_fault_injection_answers_like_dataverse_and_is_counted(dataverse):
    dv = dataverse
    dv.emu.admin("POST", "stats/reset")
    dv.emu.admin(
        "PUT",
        "faults",
        json={"error_rate": 1.0, "error_codes": ["503"], "endpoints": ["/api/data/v9.2/leads"]},
    )
    try:
        failed = dv.get("leads?$select=lastname&$top=2")
        assert failed.status_code == 503
        assert "error" in failed.json()
        assert dv.get("WhoAmI").status_code == 200
        dv.emu.admin(
            "PUT",
            "faults",
            json={"error_rate": 1.0, "error_codes": ["429"], "endpoints": ["/api/data/v9.2/leads"]},
        )
        throttled = dv.get("leads?$top=1")
        assert throttled.status_code == 429
        assert throttled.headers["Retry-After"] == "1"
        assert _error_code(throttled) == "0x80072322"
    finally:
        dv.emu.admin("DELETE", "faults")
    assert dv.get("leads?$select=lastname&$top=3").status_code == 200
    stats = dv.emu.stats()
    assert stats["faults_injected"] == {"503": 1, "429": 1}
    assert stats["calls"]["GET /api/data/v9.2/leads"] == 3
    assert stats["records"]["lead.read"] == 3


def test_sandbox_refresh_reissues_every_id_and_the_organization(fresh_emulator, tmp_path):
    dv = fresh_emulator("--limits", "off")
    account = dv.call("POST", "accounts", json={"name": "Before refresh"}).headers["OData-EntityId"]
    account_id = account.rsplit("(", 1)[1].rstrip(")")
    dv.call(
        "POST",
        "contacts",
        json={"lastname": "Linked", "parentcustomerid_account@odata.bind": f"/accounts({account_id})"},
    )
    _, last = dv.read_all("contacts?$select=lastname", page=100, prefer="odata.track-changes")
    before = dv.get("WhoAmI").json()
    result = dv.emu.admin("POST", "sandbox-refresh").json()
    assert result["records_reissued"] >= 4
    after = dv.get("WhoAmI").json()
    assert after["OrganizationId"] != before["OrganizationId"]
    assert after["UserId"] != before["UserId"]
    assert dv.get(f"accounts({account_id})").status_code == 404
    new_account = dv.get("accounts?$select=name").json()["value"][0]
    contact = dv.get("contacts?$select=_parentcustomerid_value").json()["value"][0]
    assert contact["_parentcustomerid_value"] == new_account["accountid"] != account_id
    assert dv.get(last["@odata.deltaLink"]).status_code == 400


def test_schema_drift_drop_and_rename_column(fresh_emulator):
    dv = fresh_emulator("--limits", "off")
    dv.emu.admin("POST", "schema", json={"entity": "lead", "drop": "jobtitle"})
    assert dv.get("leads?$select=jobtitle").status_code == 400
    attrs = dv.get("EntityDefinitions(LogicalName='lead')/Attributes?$select=LogicalName").json()["value"]
    assert "jobtitle" not in {a["LogicalName"] for a in attrs}
    dv.emu.admin("POST", "schema", json={"entity": "lead", "rename": {"from": "subject", "to": "new_topic"}})
    created = dv.call("POST", "leads", json={"lastname": "Drift", "new_topic": "renamed column"})
    assert created.status_code == 204, created.text
    assert dv.call("POST", "leads", json={"lastname": "Drift", "subject": "old name"}).status_code == 400
    bad = dv.call("POST", f"{dv.emu.base_url}/_emulator/schema", json={"entity": "lead", "drop": "nosuch"})
    assert bad.status_code == 400


def test_an_alternate_key_can_be_dropped(fresh_emulator):
    dv = fresh_emulator("--limits", "off")
    first = dv.call("POST", "contacts", json={"lastname": "One", "emailaddress1": "same@keys.test"})
    assert first.status_code == 204, first.text
    assert (
        dv.call("POST", "contacts", json={"lastname": "Two", "emailaddress1": "same@keys.test"}).status_code
        != 204
    )

    dv.emu.admin("POST", "schema", json={"entity": "contact", "drop_key": ["emailaddress1"]})

    keys = dv.get("EntityDefinitions(LogicalName='contact')/Keys").json()["value"]
    assert [k["KeyAttributes"] for k in keys] == []
    again = dv.call("POST", "contacts", json={"lastname": "Two", "emailaddress1": "same@keys.test"})
    assert again.status_code == 204, again.text
    bad = dv.call(
        "POST", f"{dv.emu.base_url}/_emulator/schema", json={"entity": "contact", "drop_key": ["x"]}
    )
    assert bad.status_code == 400


def test_reset_empties_the_organization(fresh_emulator):
    dv = fresh_emulator("--limits", "off")
    dv.call("POST", "accounts", json={"name": "to be wiped"})
    dv.emu.admin("POST", "reset")
    assert dv.get("accounts").json()["value"] == []
