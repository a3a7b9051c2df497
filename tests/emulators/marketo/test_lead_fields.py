"""Bare mode, Create Lead Fields, Get Lead Fields and the native-sync switch, over real HTTP.

The module's emulator starts with ``--bare`` on a seeded database: every ``msd…`` person field
is hidden (and emptied) until a test creates it through ``POST /rest/v1/leads/schema/fields.json``.
Each test works on fields no other test of the module creates, so their order does not matter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from marketorestpython.client import MarketoClient

from tests.emulators.marketo.conftest import Api, error_code, wait_for
from tests.emulators.marketo.test_marketorestpython import local_client
from tests.support.emulator_procs import RunningEmulator, start_emulator

FIELDS_PATH = "/rest/v1/leads/schema/fields.json"
CREATED_HERE = {"msdType", "msdCreatedDate", "msdIsDeleted", "msdTopic"}  # by the tests below


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """A bare emulator over a seeded database (the seed fills msd fields, bare mode empties them)."""
    emu = start_emulator(
        "marketo", tmp_path_factory.mktemp("marketo-bare"), ["--limits", "off", "--bare"], seed_scale=40
    )
    yield emu
    emu.stop()


def _email() -> str:
    return f"lf-{uuid.uuid4().hex[:10]}@example.com"


def _create(api: Api, *fields: dict[str, Any]) -> list[dict[str, Any]]:
    body = api.post(FIELDS_PATH, {"input": list(fields)})
    assert body["success"], body
    return list(body["result"])


def _field(name: str, data_type: str, display: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "displayName": display or f"Test {name}", "dataType": data_type, **extra}


def _describe2(api: Api) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in api.get("/rest/v1/leads/describe2.json")["result"][0]["fields"]}


def _schema_names(api: Api, batch: int) -> list[str]:
    names: list[str] = []
    params: dict[str, Any] = {"batchSize": batch}
    while True:
        body = api.get(FIELDS_PATH, **params)
        names += [f["name"] for f in body["result"]]
        if not body["moreResult"]:
            return names
        params["nextPageToken"] = body["nextPageToken"]


def _lead(api: Api, email: str, fields: str) -> dict[str, Any]:
    (found,) = api.get("/rest/v1/leads.json", filterType="email", filterValues=email, fields=fields)["result"]
    return dict(found)


def test_bare_start_hides_the_sync_fields_from_every_describe(api: Api) -> None:
    describe = {f["rest"]["name"] for f in api.get("/rest/v1/leads/describe.json")["result"]}
    describe2 = set(_describe2(api))
    schema = _schema_names(api, batch=7)  # paged: several pages, each field once

    assert len(schema) == len(set(schema))
    for names in (describe, describe2, set(schema)):
        assert {"email", "externalPersonId", "firstName"} <= names
        assert {n for n in names if n.startswith("msd")} <= CREATED_HERE
        assert not {"msdRecordId", "msdSyncToDynamics"} & names


def test_non_lead_objects_keep_their_msd_fields(api: Api) -> None:
    company = api.get("/rest/v1/companies/describe.json")["result"][0]
    assert "msdCreatedDate" in {f["name"] for f in company["fields"]}


def test_a_write_naming_a_hidden_field_skips_that_record_with_1006(api: Api) -> None:
    first, second = _email(), _email()
    body = api.post(
        "/rest/v1/leads.json",
        {"input": [{"email": first, "msdRecordId": str(uuid.uuid4())}, {"email": second}]},
    )
    assert body["success"]
    skipped, created = body["result"]
    assert skipped == {
        "status": "skipped",
        "reasons": [{"code": "1006", "message": "Field 'msdRecordId' not found"}],
    }
    assert created["status"] == "created"


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (
            "/rest/v1/leads.json",
            {"filterType": "email", "filterValues": "x@example.com", "fields": "msdRecordId"},
        ),
        ("/rest/v1/leads.json", {"filterType": "msdRecordId", "filterValues": "abc"}),
        ("/rest/v1/activities/leadchanges.json", {"fields": "msdRecordId", "nextPageToken": "x"}),
        ("/rest/v1/leads/schema/fields/msdRecordId.json", {}),
    ],
)
def test_a_read_asking_for_a_hidden_field_is_refused_with_1006(
    api: Api, path: str, params: dict[str, str]
) -> None:
    body = api.get(path, **params)
    assert error_code(body) == "1006"
    assert "msdRecordId" in body["errors"][0]["message"]


def test_a_bulk_export_of_a_hidden_field_is_refused_with_1006(api: Api) -> None:
    window = {"startAt": "2025-01-01T00:00:00Z", "endAt": "2025-01-20T00:00:00Z"}
    body = api.post(
        "/bulk/v1/leads/export/create.json",
        {"fields": ["id", "msdRecordId"], "filter": {"createdAt": window}},
    )
    assert error_code(body) == "1006"


def test_a_bulk_import_row_with_a_hidden_column_fails_with_1006(api: Api) -> None:
    content = f"email,firstName,msdRecordId\n{_email()},Imp,{uuid.uuid4()}\n"
    resp = api.call(
        "POST",
        "/bulk/v1/leads.json",
        params={"format": "csv"},
        files={"file": ("l.csv", content.encode(), "text/csv")},
    )
    batch = resp.json()["result"][0]["batchId"]
    done = wait_for(
        lambda: (
            (s := api.get(f"/bulk/v1/leads/batch/{batch}.json")["result"][0])["status"] == "Complete" and s
        )
    )
    assert (done["numOfLeadsProcessed"], done["numOfRowsFailed"]) == (0, 1)
    failures = api.call("GET", f"/bulk/v1/leads/batch/{batch}/failures.json").text.splitlines()
    assert "1006: Field 'msdRecordId' not found" in failures[1]


def test_a_created_field_appears_with_its_type_and_takes_values(api: Api) -> None:
    writes_before = api.stats()["records"].get("leadfield.write", 0)
    result = _create(
        api, _field("msdType", "string", "Microsoft Type", description="Lead or Contact", isHidden=False)
    )
    assert result == [{"name": "msdType", "status": "created"}]
    assert api.stats()["records"]["leadfield.write"] == writes_before + 1

    assert _describe2(api)["msdType"] | {"length": 255} == {
        "name": "msdType",
        "displayName": "Microsoft Type",
        "dataType": "string",
        "length": 255,
        "updateable": True,
        "crmManaged": False,
    }
    (entry,) = api.get("/rest/v1/leads/schema/fields/msdType.json")["result"]
    assert (entry["dataType"], entry["description"], entry["isCustom"]) == ("string", "Lead or Contact", True)
    # bare mode emptied the seeded values; a written one is stored and searchable (string)
    assert api.get("/rest/v1/leads.json", filterType="msdType", filterValues="Lead,Contact")["result"] == []
    email = _email()
    api.post("/rest/v1/leads.json", {"input": [{"email": email, "msdType": "Contact"}]})
    assert _lead(api, email, "email,msdType")["msdType"] == "Contact"


def test_creating_an_existing_field_is_skipped_and_changes_nothing(api: Api) -> None:
    assert (
        _create(api, _field("msdCreatedDate", "datetime", "Microsoft Created Date"))[0]["status"] == "created"
    )
    before = (_describe2(api)["msdCreatedDate"], api.stats()["records"].get("leadfield.write", 0))

    again = _create(
        api,
        _field("msdCreatedDate", "string", "Something Else"),
        _field("email", "email", "Another Email"),
        _field("fresh", "string", "Email Address"),  # display name in use
    )

    assert [(r["name"], r["status"], r["reasons"][0]["code"]) for r in again] == [
        ("msdCreatedDate", "skipped", "1017"),
        ("email", "skipped", "1017"),
        ("fresh", "skipped", "1017"),
    ]
    assert (_describe2(api)["msdCreatedDate"], api.stats()["records"].get("leadfield.write", 0)) == before


def test_a_field_created_with_another_type_behaves_with_that_type(api: Api) -> None:
    assert _create(api, _field("msdIsDeleted", "string", "Microsoft is Deleted"))[0]["status"] == "created"

    assert _describe2(api)["msdIsDeleted"]["dataType"] == "string"
    described = {f["rest"]["name"]: f for f in api.get("/rest/v1/leads/describe.json")["result"]}
    assert described["msdIsDeleted"]["dataType"] == "string"
    words, digits = _email(), _email()
    body = api.post(
        "/rest/v1/leads.json",
        {"input": [{"email": words, "msdIsDeleted": "maybe"}, {"email": digits, "msdIsDeleted": "1"}]},
    )
    assert [r["status"] for r in body["result"]] == ["created", "created"]
    assert _lead(api, words, "msdIsDeleted")["msdIsDeleted"] == "maybe"
    assert (
        _lead(api, digits, "msdIsDeleted")["msdIsDeleted"] == "1"
    )  # a string, though the column held integers


def test_a_new_custom_field_gets_a_column_an_id_and_its_type(api: Api) -> None:
    assert _create(api, _field("acmeVisits", "integer", "Acme Visits"))[0]["status"] == "created"
    described = {f["rest"]["name"]: f for f in api.get("/rest/v1/leads/describe.json")["result"]}
    assert described["acmeVisits"]["dataType"] == "integer"
    assert described["acmeVisits"]["id"] > max(f["id"] for n, f in described.items() if n != "acmeVisits")
    email = _email()
    bad = api.post("/rest/v1/leads.json", {"input": [{"email": email, "acmeVisits": "many"}]})["result"][0]
    assert bad["reasons"][0]["code"] == "1001"
    api.post("/rest/v1/leads.json", {"input": [{"email": email, "acmeVisits": "12"}]})
    assert _lead(api, email, "acmeVisits")["acmeVisits"] == 12


@pytest.mark.parametrize(
    ("field", "code"),
    [
        ({"name": "noType", "displayName": "No Type"}, "1002"),
        ({"name": "noDisplay", "dataType": "string"}, "1002"),
        (_field("badType", "picklist"), "1003"),
        (_field("1startsWithDigit", "string"), "1003"),
        (_field("has-dash", "string"), "1003"),
        (_field("badFlag", "string", isHidden="yes"), "1003"),
        (_field("MSDTYPE", "string", "Shouted Type"), "1017"),  # msdType in another case
    ],
)
def test_an_invalid_field_is_skipped_with_its_reason(api: Api, field: dict[str, Any], code: str) -> None:
    _create(api, _field("msdType", "string", "Microsoft Type"))  # created here or already
    (result,) = _create(api, field)
    assert (result["status"], result["reasons"][0]["code"]) == ("skipped", code)


def test_more_than_100_fields_is_refused_as_a_whole(api: Api) -> None:
    body = api.post(FIELDS_PATH, {"input": [_field(f"many{i}", "string") for i in range(101)]})
    assert error_code(body) == "1003"
    assert "many0" not in _describe2(api)


def test_create_is_counted_as_a_write_call_and_listing_as_a_read(api: Api) -> None:
    api.emu.admin("POST", "stats/reset")
    api.get(FIELDS_PATH)
    _create(api, _field("msdCreatedDate", "datetime", "Microsoft Created Date"))
    calls = api.stats()["calls"]
    assert calls[f"POST {FIELDS_PATH}"] == 1
    assert calls[f"GET {FIELDS_PATH}"] == 1


def test_native_sync_marks_crm_fields_and_refuses_crm_object_writes(api: Api) -> None:
    _create(api, _field("msdType", "string", "Microsoft Type"))
    api.emu.admin("POST", "native_sync", json={"enabled": True})
    try:
        managed = {n: f["crmManaged"] for n, f in _describe2(api).items()}
        probed = ("msdType", "email", "lastName", "leadScore", "id", "externalPersonId")
        assert [n for n in probed if managed[n]] == ["msdType", "email", "lastName"]

        company = {"externalCompanyId": str(uuid.uuid4()), "company": "Native"}
        for path, body in [
            ("/rest/v1/companies.json", {"input": [company, company]}),
            ("/rest/v1/companies/delete.json", {"input": [company]}),
            ("/rest/v1/salespersons.json", {"input": [{"externalSalesPersonId": "sp-native"}]}),
            ("/rest/v1/opportunities.json", {"input": [{"externalOpportunityId": "o-native", "name": "N"}]}),
        ]:
            result = api.post(path, body)["result"]
            assert [(r["seq"], r["reasons"][0]["code"]) for r in result] == [
                (i, "1018") for i in range(len(body["input"]))
            ]
        # persons and custom objects stay writable; reads of companies too
        assert (
            api.post("/rest/v1/leads.json", {"input": [{"email": _email()}]})["result"][0]["status"]
            == "created"
        )
        assert api.get("/rest/v1/companies.json", filterType="externalCompanyId", filterValues="x")["success"]
    finally:
        api.emu.admin("POST", "native_sync", json={"enabled": False})
    assert not _describe2(api)["email"]["crmManaged"]
    assert api.post("/rest/v1/companies.json", {"input": [company]})["result"][0]["status"] == "created"


def test_native_sync_switch_needs_a_boolean(api: Api) -> None:
    resp = api.session.post(f"{api.emu.base_url}/_emulator/native_sync", json={"enabled": "yes"})
    assert resp.status_code == 400


def test_marketorestpython_describe2_sees_a_created_field(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(api.emu.ca_file))
    mc: MarketoClient = local_client(api.emu)

    def topic() -> dict[str, Any] | None:
        fields = mc.execute(method="describe2")[0]["fields"]
        return next((f for f in fields if f["name"] == "msdTopic"), None)

    assert topic() is None
    _create(api, _field("msdTopic", "text", "Microsoft Topic"))
    assert topic() == {
        "name": "msdTopic",
        "displayName": "Microsoft Topic",
        "dataType": "text",
        "updateable": True,
        "crmManaged": False,
    }


def test_bare_mode_is_applied_once_per_database(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("marketo-once")
    plain = start_emulator("marketo", workdir, ["--limits", "off"])
    try:
        api = Api(plain)
        assert "msdRecordId" in _describe2(api)
        hidden = plain.admin("POST", "bare").json()
        assert hidden["applied"]
        assert {"msdRecordId", "msdType"} <= set(hidden["absent"])
        assert "msdRecordId" not in _describe2(api)
        _create(api, _field("msdRecordId", "string", "Microsoft Record Id"))
    finally:
        plain.stop()

    again = start_emulator("marketo", workdir, ["--limits", "off", "--bare", "--native-sync"])
    try:
        api = Api(again)
        fields = _describe2(api)
        assert "msdRecordId" in fields
        assert "msdType" not in fields
        assert fields["msdRecordId"]["crmManaged"]  # --native-sync
        assert again.admin("POST", "bare").json()["applied"] is False
        assert again.admin("POST", "bare", json={"force": True}).json()["applied"] is True
        assert "msdRecordId" not in _describe2(api)
    finally:
        again.stop()
