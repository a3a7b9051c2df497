"""A ``full_copy`` killed mid-load continues where it stopped; changes made meanwhile follow.

The first run is a real ``airflow dags test`` process, SIGKILLed (its whole process group) once
some of the lead load units have a staged outcome and before all have. While it is down, leads
and contacts are edited in Dataverse. The second run must finish the copy without reading
Dataverse again or re-importing a finished unit, leave every lead exactly once in Marketo with
one id-map row each; then one incremental run of ``sync_lead`` and ``sync_contact`` carries the
edits (and only them: the hand-over token was taken before the copy started).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv
from tests.e2e.full_copy_support import dynamics_rows, marketo_objects, run_full_copy
from tests.support.emulator_procs import held_calls
from tests.support.killed_run import kill_dag_test_when

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
log = logging.getLogger(__name__)

BULK_IMPORT_PATH = "/bulk/v1/leads.json"


def _attempt(env: SyncEnv, entity: str) -> Path | None:
    runs = list((env.staging / "runs" / entity).glob("full_copy__all__*__a1-*"))
    return runs[0] if runs else None


def _lead_units(env: SyncEnv) -> tuple[int, int]:
    """(units with an outcome, units planned) of the lead copy so far."""
    folder = _attempt(env, "lead")
    if folder is None:
        return 0, 0
    manifest = folder / "transform.json"
    planned = len(json.loads(manifest.read_text())["batches"]) if manifest.exists() else 0
    return len(list(folder.glob("plans/unit-*/outcome.json"))), planned


def _finished_units(env: SyncEnv, entity: str) -> set[str]:
    folder = _attempt(env, entity)
    return {p.parent.name for p in folder.glob("plans/unit-*/outcome.json")} if folder else set()


def _unit_records(env: SyncEnv, entity: str) -> dict[str, int]:
    folder = _attempt(env, entity)
    assert folder is not None
    units = json.loads((folder / "transform.json").read_text())["batches"]
    assert {u["mode"] for u in units} == {"bulk"}
    return {u["name"]: int(u["records"]) for u in units}


def _kill_mid_load(env: SyncEnv, deadline_s: float = 240.0) -> tuple[int, int]:
    def mid_load() -> bool:
        # A unit's import call held open by the emulator's latency fault cannot finish before
        # the kill, so the kill surely falls between the first finished unit and the last.
        held = held_calls(env.marketo.stats(), f"POST {BULK_IMPORT_PATH}")
        done, planned = _lead_units(env)
        return held > 0 and bool(planned) and 0 < done < planned

    kill_dag_test_when(
        "full_copy",
        mid_load,
        env.staging.parent / "full_copy-killed.log",
        deadline_s,
        waiting_for="a lead unit loaded and another's import call held open by the emulator",
    )
    return _lead_units(env)


def _edit(env: SyncEnv, entity_set: str, key: str, ids: list[str], title: str) -> None:
    hook = env.dyn()
    try:
        rows = [{key: i, "jobtitle": title} for i in ids]
        assert all(r.ok for r in hook.upsert_records(entity_set, rows, [key], id_column=key))
    finally:
        hook.close()


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": 1500}], indirect=True)
def test_killed_full_copy_resumes_without_rereading_or_rewriting_and_hands_over(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small bulk units (about 280 leads each), so the lead load spans several units.
    monkeypatch.setenv("AIRFLOW_VAR_MDS_FULL_COPY_BULK_THRESHOLD", "100")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_FULL_COPY_BULK_FILE_BYTES", "100000")
    sync_env.marketo.admin(
        "PUT", "faults", json={"latency_ms": 400, "endpoints": [BULK_IMPORT_PATH]}
    ).raise_for_status()

    done, planned = _kill_mid_load(sync_env)
    log.info("killed with %d of %d lead units loaded", done, planned)
    assert 0 < done < planned
    sync_env.marketo.admin("DELETE", "faults").raise_for_status()
    finished = {entity: _finished_units(sync_env, entity) for entity in ("lead", "contact")}

    leads = dynamics_rows(sync_env, "leads", ["leadid", "new_synctomkto"])
    contacts = dynamics_rows(sync_env, "contacts", ["contactid", "new_synctomkto"])
    synced_leads = sorted(r["leadid"].lower() for r in leads if r["new_synctomkto"] is not False)
    synced_contacts = sorted(r["contactid"].lower() for r in contacts if r["new_synctomkto"] is not False)
    edited_leads, edited_contacts = synced_leads[:7], synced_contacts[:5]
    _edit(sync_env, "leads", "leadid", edited_leads, "Edited while the copy was down")
    _edit(sync_env, "contacts", "contactid", edited_contacts, "Edited while the copy was down")

    sync_env.dynamics.admin("POST", "stats/reset").raise_for_status()
    sync_env.marketo.admin("POST", "stats/reset").raise_for_status()
    run_full_copy()
    dyn_stats, mkto_stats = sync_env.dynamics.stats(), sync_env.marketo.stats()
    # Finished pages were not read again: the lead extract had finished before the kill.
    assert int(dyn_stats.get("records", {}).get("lead.read", 0)) == 0
    # Finished units were not imported again: exactly the rows of the units without an outcome
    # at the kill (the one in flight included) were imported by the second run.
    unfinished = sum(
        rows
        for entity in ("lead", "contact")
        for name, rows in _unit_records(sync_env, entity).items()
        if name not in finished[entity]
    )
    assert int(mkto_stats.get("records", {}).get("lead.imported", 0)) == unfinished

    persons = marketo_objects(
        sync_env, "leads", "externalPersonId", synced_leads, ["id", "externalPersonId", "msdType", "title"]
    )
    keys = sorted(str(p["externalPersonId"]).lower() for p in persons if p.get("msdType") == "Lead")
    assert keys == synced_leads, "every synced lead exactly once"
    with sync_env.state().connect() as conn:
        links = conn.execute(
            text("SELECT dynamics_id, count(*) FROM id_map WHERE entity = 'lead' GROUP BY dynamics_id")
        ).all()
    assert sorted(str(d).lower() for d, _ in links) == synced_leads
    assert {n for _, n in links} == {1}
    titles = {str(p["externalPersonId"]).lower(): p.get("title") for p in persons}
    # The copy had staged the old values before the edits.
    assert all(titles[i] != "Edited while the copy was down" for i in edited_leads)

    sync_env.marketo.admin("POST", "stats/reset").raise_for_status()
    sync_env.run("sync_lead")
    sync_env.run("sync_contact")
    written = int(sync_env.marketo.stats().get("records", {}).get("lead.write", 0))
    assert written == len(edited_leads) + len(edited_contacts), "only the edits were synced"
    after: list[dict[str, Any]] = marketo_objects(
        sync_env, "leads", "externalPersonId", edited_leads + edited_contacts, ["externalPersonId", "title"]
    )
    assert {p["title"] for p in after} == {"Edited while the copy was down"}
    assert len(after) == len(edited_leads) + len(edited_contacts)
