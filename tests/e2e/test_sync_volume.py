"""Throughput of a first ``sync_lead`` run over a few thousand Dataverse leads (about 20 s)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

N_LEADS = 3000


def test_initial_lead_sync_of_thousands_of_records(sync_env: SyncEnv, new_guid: Callable[[], str]) -> None:
    guids = [new_guid() for _ in range(N_LEADS)]
    dyn = sync_env.dyn()
    try:
        rows = [
            {
                "leadid": g,
                "lastname": f"Lead {i}",
                "emailaddress1": f"lead{i}@example.com",
                "jobtitle": "Buyer",
            }
            for i, g in enumerate(guids)
        ]
        results = dyn.upsert_records("leads", rows, ["leadid"], id_column="leadid", batch_size=500)
        assert all(r.ok for r in results)
    finally:
        dyn.close()

    sync_env.run("sync_lead")

    with sync_env.state().connect() as conn:
        started, ended, loaded = conn.execute(
            text("SELECT started_at, ended_at, loaded FROM run_ledger WHERE entity = 'lead'")
        ).one()
        links = conn.execute(text("SELECT count(*) FROM id_map WHERE entity = 'lead'")).scalar()
    assert loaded == N_LEADS
    assert links == N_LEADS
    stats = sync_env.marketo.stats()
    assert stats["records"]["lead.write"] == N_LEADS
    seconds = (datetime.fromisoformat(str(ended)) - datetime.fromisoformat(str(started))).total_seconds()
    log.info("initial sync_lead: %d leads in %.1f s = %.0f records/s", loaded, seconds, loaded / seconds)
