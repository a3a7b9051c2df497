"""$batch: change sets are atomic, Content-ID references, continue-on-error, the 1,000 cap."""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import quote


def _part(method, url, body=None, content_id=None, headers=None):
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id:
        head += f"Content-ID: {content_id}\r\n"
    req = f"{method} /api/data/v9.2/{url} HTTP/1.1\r\n"
    req += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if body is not None:
        req += "Content-Type: application/json; type=entry\r\n\r\n" + json.dumps(body)
    else:
        req += "\r\n"
    return head + "\r\n" + req + "\r\n"


def _changeset(parts):
    boundary = f"changeset_{uuid.uuid4().hex}"
    inner = "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"
    return f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n{inner}"


def _batch(dv, items, prefer=None):
    boundary = f"batch_{uuid.uuid4().hex}"
    body = "".join(f"--{boundary}\r\n{item}" for item in items) + f"--{boundary}--\r\n"
    headers = {"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
    if prefer:
        headers["Prefer"] = prefer
    return dv.call("POST", "$batch", data=body.encode(), headers=headers)


def _statuses(resp):
    return [int(s) for s in re.findall(r"^HTTP/1\.1 (\d{3})", resp.text, re.MULTILINE)]


def _names(dv, prefix):
    rows = dv.get(f"accounts?$select=name&$filter=startswith(name,'{prefix}')").json()["value"]
    return sorted(r["name"] for r in rows)


def test_a_failing_request_rolls_its_change_set_back_as_a_whole(dataverse):
    tag = f"cs-{uuid.uuid4().hex[:8]}"
    changeset = _changeset(
        [
            _part("POST", "accounts", {"name": f"{tag}-1"}, "1"),
            _part("POST", "accounts", {"name": f"{tag}-2"}, "2"),
            _part("POST", "accounts", {"name": f"{tag}-3", "nosuchcolumn": 1}, "3"),
        ]
    )
    resp = _batch(dataverse, [changeset])
    assert resp.status_code == 400
    assert _statuses(resp) == [400]
    assert "nosuchcolumn" in resp.text
    assert _names(dataverse, tag) == []


def test_change_set_with_content_id_references_commits_together(dataverse):
    tag = f"ref-{uuid.uuid4().hex[:8]}"
    changeset = _changeset(
        [
            _part("POST", "accounts", {"name": f"{tag}-account"}, "1"),
            _part("POST", "contacts", {"lastname": tag, "parentcustomerid_account@odata.bind": "$1"}, "2"),
            _part("PATCH", "$1", {"telephone1": "555-0100"}, "3"),
        ]
    )
    resp = _batch(
        dataverse, [changeset, _part("GET", f"accounts?$select=name&$filter=name eq '{tag}-account'")]
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    assert _statuses(resp) == [204, 204, 204, 200]
    assert "changesetresponse_" in resp.text
    account = dataverse.get(f"accounts?$select=name,telephone1&$filter=name eq '{tag}-account'").json()[
        "value"
    ][0]
    assert account["telephone1"] == "555-0100"
    contact = dataverse.get(f"contacts?$select=_parentcustomerid_value&$filter=lastname eq '{tag}'").json()[
        "value"
    ]
    assert contact[0]["_parentcustomerid_value"] == account["accountid"]


def test_continue_on_error_runs_the_rest_and_reports_each_part(dataverse):
    tag = f"coe-{uuid.uuid4().hex[:8]}"
    items = [
        _part("POST", "accounts", {"name": f"{tag}-a", "revenue": "lots"}),
        _changeset(
            [
                _part("POST", "accounts", {"name": f"{tag}-b"}, "1"),
                _part("DELETE", "accounts(00000000-0000-0000-0000-00000000beef)", None, "2"),
            ]
        ),
        _part("POST", "accounts", {"name": f"{tag}-c"}),
    ]
    stopped = _batch(dataverse, items)
    assert stopped.status_code == 400
    assert _names(dataverse, tag) == []
    resp = _batch(dataverse, items, prefer="odata.continue-on-error")
    assert resp.status_code == 200
    assert _statuses(resp) == [400, 404, 204]
    assert _names(dataverse, tag) == [f"{tag}-c"]


def test_batch_limits(dataverse):
    too_many = _batch(dataverse, [_part("GET", "WhoAmI")] * 1001)
    assert too_many.status_code == 400
    assert "1000" in too_many.json()["error"]["message"]
    get_in_changeset = _batch(dataverse, [_changeset([_part("GET", "accounts?$top=1")])])
    assert get_in_changeset.status_code == 400
    ok = _batch(dataverse, [_part("GET", "WhoAmI")] * 1000)
    assert ok.status_code == 200
    assert _statuses(ok) == [200] * 1000


def test_metadata_discovery_as_airbyte_sends_it(dataverse):
    # independent-clients.md §4: one expanded EntityDefinitions query, then per-table DateTime
    # attribute casts inside a $batch whose response must carry a boundary.
    defs = dataverse.get(
        "EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute,"
        "CanChangeTrackingBeEnabled,ChangeTrackingEnabled"
        "&$expand=Attributes($select=LogicalName,AttributeType)"
    ).json()["value"]
    lead = next(d for d in defs if d["LogicalName"] == "lead")
    assert lead["ChangeTrackingEnabled"] is True
    assert lead["CanChangeTrackingBeEnabled"]["Value"] is True
    assert {"LogicalName": "modifiedon", "AttributeType": "DateTime"} in [
        {k: a[k] for k in ("LogicalName", "AttributeType")} for a in lead["Attributes"]
    ]
    part = _part(
        "GET",
        "EntityDefinitions(LogicalName='opportunity')/Attributes/"
        "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata?$select=LogicalName,DateTimeBehavior",
    )
    resp = _batch(dataverse, [part])
    assert resp.status_code == 200
    assert "boundary=" in resp.headers["Content-Type"]
    body = json.loads(resp.text.split("\r\n\r\n", 2)[2].rsplit("\r\n--", 1)[0])
    behaviours = {a["LogicalName"]: a["DateTimeBehavior"]["Value"] for a in body["value"]}
    assert behaviours["estimatedclosedate"] == "DateOnly"
    assert behaviours["modifiedon"] == "UserLocal"


def test_alternate_key_values_in_part_urls_are_percent_decoded(dataverse):
    # Values a client must percent-encode in a URL: space, '/', '&', '%', a quote, non-ASCII.
    tag = uuid.uuid4().hex[:6]
    numbers = [f"{tag} a b", f"{tag}/x/y", f"{tag}&k=v", f"{tag} 100%", f"{tag}-O'Brien", f"{tag}-Zürich-é"]
    for i, number in enumerate(numbers):
        created = dataverse.call("POST", "accounts", json={"name": f"{tag}-{i}", "accountnumber": number})
        assert created.status_code == 204, created.text
    # If-Match: * makes the PATCH update-only: a key that matches nothing answers 404, not an insert.
    parts = [
        _part(
            "PATCH",
            "accounts(accountnumber='{}')".format(quote(n.replace("'", "''"), safe="")),
            {"telephone1": f"555-{i:04d}"},
            str(i + 1),
            headers={"If-Match": "*"},
        )
        for i, n in enumerate(numbers)
    ]
    resp = _batch(dataverse, [_changeset(parts)])
    assert resp.status_code == 200, resp.text
    assert _statuses(resp) == [204] * len(numbers)
    gets = [
        _part("GET", "accounts(accountnumber='{}')?$select=telephone1".format(quote(n, safe="")))
        for n in numbers[:2]
    ]
    resp = _batch(dataverse, gets)
    assert _statuses(resp) == [200, 200]
    rows = dataverse.get(
        f"accounts?$select=accountnumber,telephone1&$filter=startswith(accountnumber,'{tag}')"
    )
    phones = {r["accountnumber"]: r["telephone1"] for r in rows.json()["value"]}
    assert phones == {n: f"555-{i:04d}" for i, n in enumerate(numbers)}
