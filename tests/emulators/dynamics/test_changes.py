"""Change tracking: delta links return exactly what changed, deletes as $deletedEntity."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tests.emulators.dynamics.conftest import wait_until

TRACK = "odata.track-changes"


def _create(dv, entity_set, body):
    resp = dv.call("POST", entity_set, json=body)
    assert resp.status_code == 204, resp.text
    return resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def _initial_delta_link(dv, entity_set="accounts"):
    rows, last = dv.read_all(f"{entity_set}?$select=name,accountnumber", page=11, prefer=TRACK)
    assert "@odata.deltaLink" in last
    return rows, last["@odata.deltaLink"]


def _split(rows):
    upserts = {r["accountid"]: r for r in rows if "accountid" in r}
    deleted = {r["id"] for r in rows if r.get("reason") == "deleted"}
    return upserts, deleted


def test_delta_link_returns_exactly_the_changes_since_the_token(dataverse):
    initial, link = _initial_delta_link(dataverse)
    assert len(initial) == len({r["accountid"] for r in initial}) > 0
    assert "$deltatoken" in parse_qs(urlsplit(link).query)
    kept, updated, removed = initial[0]["accountid"], initial[1]["accountid"], initial[2]["accountid"]
    new_a = _create(dataverse, "accounts", {"name": "Delta New A", "accountnumber": "DELTA-A"})
    new_b = _create(dataverse, "accounts", {"name": "Delta New B"})
    ghost = _create(dataverse, "accounts", {"name": "Created then deleted"})
    assert (
        dataverse.call(
            "PATCH", f"accounts({updated})", json={"name": "Renamed"}, headers={"If-Match": "*"}
        ).status_code
        == 204
    )
    assert dataverse.call("DELETE", f"accounts({removed})").status_code == 204
    assert dataverse.call("DELETE", f"accounts({ghost})").status_code == 204

    changes, last = dataverse.read_all(link, page=2)  # small pages: the delta itself pages too
    upserts, deleted = _split(changes)
    assert set(upserts) == {new_a, new_b, updated}
    assert upserts[updated]["name"] == "Renamed"
    assert upserts[new_a]["accountnumber"] == "DELTA-A"
    assert deleted == {removed, ghost}
    assert kept not in upserts
    tomb = next(r for r in changes if r.get("reason") == "deleted")
    assert tomb["@odata.context"].endswith("$metadata#accounts/$deletedEntity")

    quiet, end = dataverse.read_all(last["@odata.deltaLink"], page=50)
    assert quiet == []
    assert "@odata.deltaLink" in end


def test_track_changes_rejects_filter_and_orderby(dataverse):
    resp = dataverse.get("accounts?$select=name&$filter=statecode eq 0", headers={"Prefer": TRACK})
    assert resp.status_code == 400
    assert "$filter" in resp.json()["error"]["message"]
    resp = dataverse.get("accounts?$select=name&$orderby=name", headers={"Prefer": TRACK})
    assert resp.status_code == 400


def test_expired_delta_token_is_rejected_and_a_full_sync_recovers(dataverse):
    _, link = _initial_delta_link(dataverse)
    dataverse.emu.admin("POST", "expire-delta-tokens")
    resp = dataverse.get(link)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "0x80044352"
    assert "full sync" in resp.json()["error"]["message"]
    _, fresh = _initial_delta_link(dataverse)
    assert dataverse.get(fresh).status_code == 200


def test_delta_tokens_expire_after_disuse_with_time_scale(fresh_emulator):
    # 7 days of disuse at time scale 604,800 is one real second. Each successful use renews the
    # token, so the poll interval must exceed that second for disuse to be observable.
    dv = fresh_emulator("--limits", "off", "--time-scale", "604800")
    _create(dv, "accounts", {"name": "x"})
    _, link = _initial_delta_link(dv)
    assert dv.get(link).status_code == 200
    wait_until(lambda: dv.get(link).status_code == 400, timeout=15, interval=1.5)
    assert dv.get(link).json()["error"]["code"] == "0x80044352"


def test_two_tables_tracked_in_the_same_second_keep_their_own_delta_tokens(dataverse):
    _, accounts_link = _initial_delta_link(dataverse, "accounts")
    _, contacts_last = dataverse.read_all("contacts?$select=lastname", page=50, prefer=TRACK)
    contacts_link = contacts_last["@odata.deltaLink"]
    tokens = [parse_qs(urlsplit(link).query)["$deltatoken"][0] for link in (accounts_link, contacts_link)]
    # Both links stay valid for their own table, whatever their token texts are.
    assert dataverse.get(accounts_link).status_code == 200, tokens
    assert dataverse.get(contacts_link).status_code == 200, tokens
