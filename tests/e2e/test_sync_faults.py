"""Injected API faults on 10% of calls change nothing in the end: no record lost, none duplicated."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import SyncEnv

pytestmark = pytest.mark.e2e

N_LEADS = 40


def test_lead_sync_under_faults_ends_like_a_fault_free_sync(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    guids = [new_guid() for _ in range(N_LEADS)]
    dyn = sync_env.dyn()
    try:
        rows = [{"leadid": g, "lastname": f"Lead {i}", "jobtitle": "Start"} for i, g in enumerate(guids)]
        assert all(r.ok for r in dyn.upsert_records("leads", rows, ["leadid"], id_column="leadid"))
    finally:
        dyn.close()
    faults = {"error_rate": 0.1, "drop_rate": 0.02, "seed": 7}
    sync_env.marketo.admin("PUT", "faults", json={**faults, "error_codes": ["606", "615", "503"]})
    sync_env.dynamics.admin("PUT", "faults", json={**faults, "error_codes": ["429", "503"]})

    sync_env.run("sync_lead")
    mkto = sync_env.mkto()
    try:
        # Marketo -> Dynamics under faults as well: a marketer edits every fourth person.
        edits = [{"externalPersonId": g, "title": f"Edited {i}"} for i, g in enumerate(guids) if i % 4 == 0]
        for _ in range(5):  # the test's own writes go through the faults too; upserts are idempotent
            results = mkto.sync_leads(edits, action="updateOnly", lookup_field="externalPersonId")
            if all(r.ok for r in results):
                break
        sync_env.run("sync_lead")
        sync_env.run("sync_lead")  # a further run must not change anything either
        stats = {side.side: side.stats()["faults_injected"] for side in (sync_env.marketo, sync_env.dynamics)}
        for emu in (sync_env.marketo, sync_env.dynamics):
            emu.admin("DELETE", "faults")
        pages = mkto.get_leads("externalPersonId", guids, ["id", "externalPersonId", "lastName", "title"])
        persons = [p for page in pages for p in page]
    finally:
        mkto.close()

    assert all(stats.values()), f"faults were injected on both sides: {stats}"
    assert sorted(p["externalPersonId"] for p in persons) == sorted(guids), "none lost, none duplicated"
    dyn = sync_env.dyn()
    try:
        leads = {r["leadid"]: r for page in dyn.query("leads", select=["leadid", "jobtitle"]) for r in page}
    finally:
        dyn.close()
    expected = {g: (f"Edited {i}" if i % 4 == 0 else "Start") for i, g in enumerate(guids)}
    assert {g: leads[g]["jobtitle"] for g in guids} == expected
    assert {p["externalPersonId"]: p["title"] for p in persons} == expected
