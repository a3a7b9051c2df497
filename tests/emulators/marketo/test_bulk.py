"""Bulk lead extract and import: state machines, files, ranges, queue and volume limits."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import uuid
from typing import Any

from tests.emulators.marketo.conftest import Api, error_code, wait_for

EXPORT = "/bulk/v1/leads/export"


def _window(days: float = 1.0) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = now - dt.timedelta(hours=1), now - dt.timedelta(hours=1) + dt.timedelta(days=days)
    return {
        "startAt": start.isoformat().replace("+00:00", "Z"),
        "endAt": end.isoformat().replace("+00:00", "Z"),
    }


def _create(api: Api, fields: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body = {"fields": fields or ["id", "email"], "format": "CSV", "filter": {"createdAt": _window()}, **extra}
    return api.post(f"{EXPORT}/create.json", body)


def _status(api: Api, export_id: str) -> dict[str, Any]:
    return dict(api.get(f"{EXPORT}/{export_id}/status.json")["result"][0])


def test_extract_round_trip_with_ranges_and_checksum(api: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    records = [{"email": f"bulk-{tag}-{i}@example.com", "firstName": f"F{i}"} for i in range(25)]
    records[0]["msdType"] = "Lead"
    ids = [r["id"] for r in api.post("/rest/v1/leads.json", {"input": records})["result"]]

    created = _create(
        api, ["id", "email", "firstName", "msdType"], columnHeaderNames={"firstName": "First Name"}
    )
    job = created["result"][0]
    assert job["status"] == "Created"
    assert job["format"] == "CSV"
    early = api.call("GET", f"{EXPORT}/{job['exportId']}/file.json")
    assert early.status_code == 404
    assert not early.text.startswith("{")

    assert api.post(f"{EXPORT}/{job['exportId']}/enqueue.json")["result"][0]["status"] == "Queued"
    assert error_code(api.post(f"{EXPORT}/{job['exportId']}/enqueue.json")) == "1029"
    done = wait_for(lambda: (s := _status(api, job["exportId"]))["status"] == "Completed" and s)
    assert done["numberOfRecords"] == len(ids)
    assert done["queuedAt"]
    assert done["startedAt"]
    assert done["finishedAt"]

    whole = api.call("GET", f"{EXPORT}/{job['exportId']}/file.json")
    assert whole.status_code == 200
    assert len(whole.content) == done["fileSize"]
    assert done["fileChecksum"] == "sha256:" + hashlib.sha256(whole.content).hexdigest()
    rows = list(csv.DictReader(io.StringIO(whole.text)))
    assert [int(r["id"]) for r in rows] == ids
    assert rows[0]["msdType"] == "Lead"
    assert rows[1]["msdType"] == "null"
    assert rows[1]["First Name"] == "F1"

    head = api.call("GET", f"{EXPORT}/{job['exportId']}/file.json", headers={"Range": "bytes=0-99"})
    assert head.status_code == 206
    assert head.headers["Content-Range"] == f"bytes 0-99/{done['fileSize']}"
    tail = api.call("GET", f"{EXPORT}/{job['exportId']}/file.json", headers={"Range": "bytes=100-"})
    assert tail.status_code == 206
    assert head.content + tail.content == whole.content

    listed = api.get(f"{EXPORT}.json", status="completed")["result"]
    assert job["exportId"] in {j["exportId"] for j in listed}


def test_create_validation_31_day_rule_and_filters(api: Api) -> None:
    too_long = {"fields": ["id"], "filter": {"updatedAt": _window(days=31.5)}}
    body = api.post(f"{EXPORT}/create.json", too_long)
    assert error_code(body) == "1003"
    assert "31 days" in body["errors"][0]["message"]
    assert api.post(f"{EXPORT}/create.json", {"fields": ["id"], "filter": {"updatedAt": _window(days=31)}})[
        "success"
    ]
    assert (
        error_code(api.post(f"{EXPORT}/create.json", {"fields": ["id"], "filter": {"staticListId": 5}}))
        == "1035"
    )
    assert error_code(_create(api, ["id", "nope"])) == "1006"
    assert error_code(api.post(f"{EXPORT}/create.json", {"filter": {"createdAt": _window()}})) == "701"


def test_two_processing_ten_queued_then_1029(api: Api) -> None:
    api.emu.admin(
        "PUT", "limits", json={"enabled": True, "bulk_job_s": 200, "time_scale": 0.05, "rate_limit": 10_000}
    )
    jobs = [_create(api)["result"][0]["exportId"] for _ in range(11)]
    try:
        for export_id in jobs[:10]:
            assert api.post(f"{EXPORT}/{export_id}/enqueue.json")["success"]
        body = api.post(f"{EXPORT}/{jobs[10]}/enqueue.json")
        assert error_code(body) == "1029"
        assert body["errors"][0]["message"] == "Too many jobs in queue"

        def counts() -> dict[str, int] | None:
            states = [_status(api, j)["status"] for j in jobs[:10]]
            tally = {s: states.count(s) for s in set(states)}
            return tally if tally.get("Processing") == 2 else None

        assert wait_for(counts) == {"Processing": 2, "Queued": 8}
    finally:
        for export_id in jobs:
            api.post(f"{EXPORT}/{export_id}/cancel.json")
    assert {_status(api, j)["status"] for j in jobs} == {"Cancelled"}


def test_daily_export_volume_1029(api: Api) -> None:
    api.post("/rest/v1/leads.json", {"input": [{"email": f"vol-{uuid.uuid4().hex[:8]}@example.com"}]})
    export_id = _create(api)["result"][0]["exportId"]
    api.post(f"{EXPORT}/{export_id}/enqueue.json")
    wait_for(lambda: _status(api, export_id)["status"] == "Completed")
    api.emu.admin("PUT", "limits", json={"enabled": True, "export_daily_mb": 0.000001, "rate_limit": 10_000})
    body = _create(api)
    assert error_code(body) == "1029"
    assert "Export daily quota" in body["errors"][0]["message"]


def _upload(api: Api, content: str, **params: str) -> dict[str, Any]:
    resp = api.call(
        "POST",
        "/bulk/v1/leads.json",
        params={"format": "csv", **params},
        files={"file": ("leads.csv", content.encode(), "text/csv")},
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_import_round_trip_with_failures_and_warnings(api: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    existing = f"imp-old-{tag}@example.com"
    api.post("/rest/v1/leads.json", {"input": [{"email": existing, "firstName": "Before"}]})
    content = (
        "email,firstName,lastName,favouriteColour\n"
        f"imp-new-{tag}@example.com,New,Person,blue\n"
        f"{existing},After,Person,red\n"
        "broken-email,Bad,Row,green\n"
        "too,few\n"
    )
    job = _upload(api, content)["result"][0]
    assert job["status"] == "Queued"
    assert job["importId"] == str(job["batchId"])
    done = wait_for(
        lambda: (
            (s := api.get(f"/bulk/v1/leads/batch/{job['batchId']}.json")["result"][0])["status"] == "Complete"
            and s
        )
    )
    assert (done["numOfLeadsProcessed"], done["numOfRowsFailed"], done["numOfRowsWithWarning"]) == (2, 2, 2)
    assert "2 failed" in done["message"]

    failures = api.call("GET", f"/bulk/v1/leads/batch/{job['batchId']}/failures.json").text.splitlines()
    assert failures[0] == "email,firstName,lastName,favouriteColour,Import Failure Reason"
    assert failures[1].startswith("broken-email,")
    assert "1001" in failures[1]
    assert failures[2].startswith("too,few,")
    assert "expected 4 columns" in failures[2]
    warnings = api.call("GET", f"/bulk/v1/leads/batch/{job['batchId']}/warnings.json").text.splitlines()
    assert len(warnings) == 3
    assert "favouriteColour" in warnings[1]

    got = api.get(
        "/rest/v1/leads.json",
        filterType="email",
        filterValues=f"{existing},imp-new-{tag}@example.com",
        fields="email,firstName",
    )["result"]
    assert sorted(r["firstName"] for r in got) == ["After", "New"]


def test_import_queue_limit_1016(api: Api) -> None:
    api.emu.admin(
        "PUT",
        "limits",
        json={
            "enabled": True,
            "bulk_job_s": 200,
            "time_scale": 0.05,
            "rate_limit": 10_000,
            "import_queued": 3,
        },
    )
    results = [_upload(api, "email\nq@example.com\n") for _ in range(4)]
    assert [error_code(r) for r in results] == [None, None, None, "1016"]
    api.emu.admin("PUT", "limits", json={"bulk_job_s": 0})
    for r in results[:3]:
        url = f"/bulk/v1/leads/batch/{r['result'][0]['batchId']}.json"
        wait_for(lambda url=url: api.get(url)["result"][0]["status"] == "Complete")  # type: ignore[misc]
    assert error_code(_upload(api, "email\nq@example.com\n")) is None


def test_import_requires_multipart(api: Api) -> None:
    assert error_code(api.post("/bulk/v1/leads.json", {"file": "x"}, format="csv")) == "613"
