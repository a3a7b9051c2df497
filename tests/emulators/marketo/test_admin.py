"""Admin actions specific to the Marketo emulator: data reset, limits read-back, mapped fields."""

from __future__ import annotations

from tests.emulators.marketo.conftest import Api, error_code


def test_limits_read_back_and_validation(api: Api) -> None:
    limits = api.emu.admin("GET", "limits").json()
    assert (limits["rate_limit"], limits["max_concurrent"], limits["export_running"]) == (100, 10, 2)
    changed = api.emu.admin("PUT", "limits", json={"daily_quota": 5}).json()
    assert changed["daily_quota"] == 5
    assert changed["rate_limit"] == 100  # a partial update keeps the rest


def test_describe2_carries_the_mapping_display_names(api: Api) -> None:
    fields = {f["displayName"]: f for f in api.get("/rest/v1/leads/describe2.json")["result"][0]["fields"]}
    for name in ("Microsoft Address 2", "Microsoft Topic", "Status Reason", "Person Notes", "Microsoft Type"):
        assert name in fields
    assert fields["Last Interesting Moment Date"]["updateable"] is False
    company = {f["displayName"] for f in api.get("/rest/v1/companies/describe.json")["result"][0]["fields"]}
    assert {"Microsoft Billing Address 2", "Business Type", "Company Notes"} <= company


def test_reset_deletes_all_data_but_never_reuses_ids(api: Api) -> None:
    before = api.post("/rest/v1/leads.json", {"input": [{"email": "reset-me@example.com"}]})["result"][0][
        "id"
    ]
    assert api.get("/rest/v1/leads.json", filterType="id", filterValues="1")["result"]  # seeded lead
    api.emu.admin("POST", "reset")
    assert api.get("/rest/v1/leads.json", filterType="id", filterValues=f"1,{before}")["result"] == []
    after = api.post("/rest/v1/leads.json", {"input": [{"email": "reset-me@example.com"}]})["result"][0]
    assert after["status"] == "created"
    assert after["id"] > before
    assert error_code(api.get("/rest/v1/leads.json", filterType="id", filterValues=str(after["id"]))) is None
