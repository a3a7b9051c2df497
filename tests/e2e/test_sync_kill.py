"""A ``sync_lead`` run SIGKILLed mid-load and run again ends like a run that was never killed.

The first run is a real ``airflow dags test`` process; latency on Marketo's person write endpoint
stretches its load over several calls, and the whole process group is killed at a moment the
emulator shows: some person writes have landed and another person call is held open by the
latency fault (sent, not yet applied), so the kill always falls inside the load. The re-run
must then bring both systems to the fault-free state: every lead exactly once in Marketo, one
id-map row per lead, no duplicate persons, the watermark stored; and a further run writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv, write_calls
from tests.support.emulator_procs import held_calls
from tests.support.killed_run import kill_dag_test_when

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

N_LEADS = 1500  # five load batches of 300: the load spans several write calls
WRITE_LATENCY_MS = 700
LEADS_PATH = "/rest/v1/leads.json"


def _seed_leads(env: SyncEnv, guids: list[str]) -> None:
    """Dataverse leads; every tenth is excluded by the sync filter (explicit No)."""
    rows = [
        {
            "leadid": g,
            "lastname": f"Kill {i}",
            "emailaddress1": f"kill{i}@example.com",
            **({"new_synctomkto": False} if i % 10 == 9 else {}),
        }
        for i, g in enumerate(guids)
    ]
    dyn = env.dyn()
    try:
        results = dyn.upsert_records("leads", rows, ["leadid"], id_column="leadid", batch_size=500)
        assert all(r.ok for r in results)
    finally:
        dyn.close()


def _lead_writes(env: SyncEnv) -> int:
    records: dict[str, int] = env.marketo.stats().get("records", {})
    return int(records.get("lead.write", 0))


def _mid_load(env: SyncEnv) -> bool:
    """Some person writes landed and a person call is held open by the latency fault now."""
    stats = env.marketo.stats()
    written = int(stats.get("records", {}).get("lead.write", 0))
    return written > 0 and held_calls(stats, f"POST {LEADS_PATH}") > 0


def _kill_mid_load(env: SyncEnv, dag_id: str, total: int, deadline_s: float = 180.0) -> int:
    """Run ``dag_id`` in an ``airflow dags test`` process and SIGKILL it mid-load (:func:`_mid_load`).

    Returns:
        The person writes the emulator had counted when the process group was killed.
    """
    kill_dag_test_when(
        dag_id,
        lambda: _mid_load(env),
        env.staging.parent / f"{dag_id}-killed.log",
        deadline_s,
        waiting_for="some person writes landed and another person call held open by the emulator",
    )
    written = _lead_writes(env)
    assert 0 < written < total, f"killed mid-load: {written} of {total} persons written"
    return written


def _persons(env: SyncEnv, guids: list[str]) -> list[dict[str, Any]]:
    hook = env.mkto()
    try:
        pages = hook.get_leads("externalPersonId", guids, ["id", "externalPersonId", "email"])
        return [p for page in pages for p in page]
    finally:
        hook.close()


def test_lead_run_killed_mid_load_then_rerun_ends_like_a_clean_run(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    guids = [new_guid() for _ in range(N_LEADS)]
    _seed_leads(sync_env, guids)
    synced = sorted(g for i, g in enumerate(guids) if i % 10 != 9)
    sync_env.marketo.admin(
        "PUT", "faults", json={"latency_ms": WRITE_LATENCY_MS, "endpoints": [LEADS_PATH]}
    ).raise_for_status()

    killed_at = _kill_mid_load(sync_env, "sync_lead", len(synced))
    log.info("sync_lead killed after %d of %d person writes", killed_at, len(synced))

    sync_env.marketo.admin("DELETE", "faults").raise_for_status()
    with sync_env.state().connect() as conn:
        before = conn.execute(
            text("SELECT count(*) FROM watermark WHERE entity = 'lead' AND direction = 'd2m'")
        ).scalar()
    assert before == 0, "the killed run stored no watermark"

    sync_env.run("sync_lead")

    persons = _persons(sync_env, guids)
    assert sorted(p["externalPersonId"] for p in persons) == synced, "each lead exactly once"
    emails = [str(p["email"]).lower() for p in persons]
    assert len(set(emails)) == len(emails) == len(synced), "no duplicate persons by email"
    with sync_env.state().connect() as conn:
        links = conn.execute(
            text("SELECT dynamics_id, count(*) FROM id_map WHERE entity = 'lead' GROUP BY dynamics_id")
        ).all()
        watermark = conn.execute(
            text("SELECT count(*) FROM watermark WHERE entity = 'lead' AND direction = 'd2m'")
        ).scalar()
    assert sorted(str(d).lower() for d, _ in links) == synced, "one id-map row per synced lead"
    assert {n for _, n in links} == {1}
    assert watermark == 1, "the re-run stored the watermark"
    by_key = {p["externalPersonId"]: p["id"] for p in persons}
    with sync_env.state().connect() as conn:
        rows = conn.execute(text("SELECT dynamics_id, marketo_id FROM id_map WHERE entity = 'lead'")).all()
    mapped: dict[str, str] = {str(d).lower(): str(m) for d, m in rows}
    assert mapped == {k: str(v) for k, v in by_key.items()}, "the id map holds the Marketo ids"

    sync_env.reset_stats()
    sync_env.run("sync_lead")
    assert write_calls(sync_env.marketo.stats()) == {}, "a further run writes nothing to Marketo"
    assert write_calls(sync_env.dynamics.stats()) == {}, "nor to Dynamics"
