"""``full_copy`` of a seeded org of over 25,000 records: exact counts, equal fields, few calls.

One ``dag.test()`` run copies every entity of a Dataverse emulator seeded with 15,000 leads (and
in proportion users, teams, accounts, contacts, opportunities and custom rows) into an empty
Marketo emulator, except for a few Marketo persons created beforehand with the emails of
Dynamics leads: those must be matched by email and updated, not duplicated. The bulk files are
cut at a quarter of Marketo's 10 MB, so this quarter of a 60,000-lead org goes in as many import
files as the whole one would: the file splitting and the call count are what this test proves;
the volume itself (100,000 and 1,000,000 leads) is measured by ``make bench``. Then:

* every entity's Marketo records are exactly the Dynamics rows that pass the sync filter, each
  once, and hold exactly what the copy's staged load units say (the mapping's output);
* every Marketo call but the bulk jobs' status polls is one the volume needs, and those polls
  stay within three per job (the ratio to the minimum is printed);
* a second run reads everything again and writes nothing.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from crm_sync.config import MarketoObject, load_entities
from crm_sync.engine.full_copy.import_sizes import import_cells
from crm_sync.engine.full_copy.units import BULK_FILE_BYTES
from crm_sync.engine.load import marketo_object_path
from crm_sync.engine.staging import BatchRef
from crm_sync.ops import MARKETO_ROLE_UPSERT, MARKETO_UPSERT
from tests.e2e.conftest import SyncEnv, write_calls
from tests.e2e.full_copy_support import dynamics_rows, ledger, marketo_objects, run_full_copy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
log = logging.getLogger(__name__)

SCALE_DOWN = 4
SEED_LEADS = 60_000 // SCALE_DOWN
PRE_EXISTING = 40
# Marketo's 10 MB bulk file (read as decimal bytes like the hook), cut by the same factor.
MARKETO_FILE_LIMIT = 10_000_000 // SCALE_DOWN
SYNC_BATCH = 300
STATUS_ROUTES = ("GET /bulk/v1/leads/batch/{id}.json", "GET /bulk/v1/leads/export/{id}/status.json")


def _same(expected: Any, actual: Any) -> bool:
    """Marketo stores empty strings as null and answers numbers and booleans in its own types."""
    if expected in (None, "") or actual in (None, ""):
        return expected in (None, "") and actual in (None, "")
    if isinstance(expected, bool) or isinstance(actual, bool):
        return str(expected).lower() == str(actual).lower()
    if isinstance(expected, int | float) or isinstance(actual, int | float):
        return math.isclose(float(expected), float(actual))
    return str(expected) == str(actual)


def _units(env: SyncEnv, entity: str) -> list[dict[str, Any]]:
    """The load units of the entity's finished attempt (from its transform manifest)."""
    manifests = list((env.staging / "runs" / entity).glob("full_copy__all__*__a1-*/transform.json"))
    assert len(manifests) == 1, manifests
    return list(json.loads(manifests[0].read_text())["batches"])


def _folder(unit: dict[str, Any]) -> Path:
    """Where the load stages the unit's outcome: ``plans/<unit>`` of the run's folder, which
    holds the unit's files under ``units/<unit>/``."""
    ops = Path(BatchRef.from_dict(unit["ops"]).path.removeprefix("file://"))
    return ops.parent.parent.parent / "plans" / unit["name"]


def _read(ref: dict[str, Any]) -> Any:
    import pandas as pd

    batch = BatchRef.from_dict(ref)
    return pd.read_parquet(batch.path.removeprefix("file://"))


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": SEED_LEADS}], indirect=True)
def test_full_copy_of_a_seeded_org_counts_fields_calls_and_a_quiet_second_run(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_FULL_COPY_BULK_FILE_BYTES", str(BULK_FILE_BYTES // SCALE_DOWN))
    entities = load_entities(sync_env.entities_dir)
    tables = {
        name: dynamics_rows(sync_env, e.dynamics.entity_set, [e.dynamics.key, "new_synctomkto"])
        for name, e in entities.items()
        if e.dynamics.filter_column == "new_synctomkto"
    } | {
        name: dynamics_rows(sync_env, e.dynamics.entity_set, [e.dynamics.key])
        for name, e in entities.items()
        if e.dynamics.filter_column != "new_synctomkto"
    }
    total = sum(len(rows) for rows in tables.values())
    assert total >= 100_000 // SCALE_DOWN, f"seeded org has {total} records"

    # Marketo persons that exist before the copy, with the emails of synced Dynamics leads.
    leads = dynamics_rows(sync_env, "leads", ["leadid", "emailaddress1", "new_synctomkto"])
    contacts = dynamics_rows(sync_env, "contacts", ["emailaddress1"])
    counts: dict[str, int] = {}
    for row in leads + contacts:
        email = str(row.get("emailaddress1") or "").lower()
        counts[email] = counts.get(email, 0) + 1
    chosen = [
        r
        for r in leads
        if r["new_synctomkto"] is not False and r["emailaddress1"] and counts[r["emailaddress1"].lower()] == 1
    ][:PRE_EXISTING]
    hook = sync_env.mkto()
    try:
        made = hook.sync_leads(
            [{"email": r["emailaddress1"], "firstName": "Existing", "lastName": "Person"} for r in chosen],
            action="createOnly",
        )
        assert all(r.ok for r in made)
        existing_ids = {r["emailaddress1"].lower(): str(m.id) for r, m in zip(chosen, made, strict=True)}
    finally:
        hook.close()
    sync_env.reset_stats()

    run_full_copy()

    stats = sync_env.marketo.stats()
    copied = ledger(sync_env)
    with sync_env.state().connect() as conn:
        errors = {
            (e, str(i).lower())
            for e, i in conn.execute(
                text("SELECT entity, source_id FROM record_error WHERE resolved_at IS NULL")
            )
        }
        links = {
            e: {
                str(i).lower()
                for (i,) in conn.execute(text("SELECT dynamics_id FROM id_map WHERE entity = :e"), {"e": e})
            }
            for e in entities
        }
    minimum = 0  # token calls are not counted by the emulator's call stats
    any_bulk = False
    all_bulk_bytes: list[int] = []
    parts: dict[str, int] = {}
    for name, entity in entities.items():
        rows = tables[name]
        assert copied[name]["extracted"] == len(rows), name
        passing = {str(r[entity.dynamics.key]).lower() for r in rows if r.get("new_synctomkto") is not False}
        expected = passing - {i for e, i in errors if e == name}
        assert links[name] == expected, f"{name}: id map differs from the synced rows"
        assert copied[name]["loaded"] == len(expected), name

        # What Marketo holds is what the staged units said, record by record and field by field.
        units = _units(sync_env, name)
        payloads: dict[str, dict[str, Any]] = {}
        roles = 0
        bulk_texts: dict[str, list[str]] = {}
        bulk_widths: dict[str, list[int]] = {}
        for unit in units:
            ops = _read(unit["ops"])
            for op, payload in zip(ops["op"], ops["payload"], strict=True):
                data = json.loads(payload)
                if op == MARKETO_UPSERT:
                    payloads[str(data[entity.marketo.key]).lower()] = data
                    if unit["mode"] == "bulk":
                        bulk_texts.setdefault(unit["lookup"], []).append(payload)
                        bulk_widths.setdefault(unit["lookup"], []).append(len(data))
                roles += op == MARKETO_ROLE_UPSERT
        for unit in units:
            if unit["mode"] == "bulk":
                # Every import file was written from the lines the plan staged (no payload parsed).
                outcome = json.loads((_folder(unit) / "outcome.json").read_text())
                assert outcome["imports"] >= 1, unit["name"]
                assert outcome["import_files_from_lines"] == outcome["imports"], (unit["name"], outcome)
        # Each bulk record's line in a file of its own fields (the least the load can write).
        bulk_bytes = {
            lookup: int(import_cells(texts).line_bytes(np.array(bulk_widths[lookup])).sum())
            for lookup, texts in bulk_texts.items()
        }
        assert set(payloads) == expected, name
        fields = sorted({k for p in payloads.values() for k in p})
        found = marketo_objects(
            sync_env, marketo_object_path(entity), entity.marketo.key, sorted(expected), fields
        )
        by_key: dict[str, dict[str, Any]] = {}
        for record in found:
            key = str(record[entity.marketo.key]).lower()
            assert key not in by_key, f"{name}: {key} is in Marketo twice"
            by_key[key] = record
        assert set(by_key) == expected, name
        for key, payload in payloads.items():
            differing = {
                f: (v, by_key[key].get(f)) for f, v in payload.items() if not _same(v, by_key[key].get(f))
            }
            assert not differing, f"{name} {key}: {differing}"
        # The least calls this volume allows: bulk files of MARKETO_FILE_LIMIT (create + one status call each)
        # for persons written by bulk import, 300-record sync calls for everything else
        # (roles included).
        synced = sum(u["records"] for u in units if u["mode"] == "sync")
        part = sum(2 * math.ceil(b / MARKETO_FILE_LIMIT) for b in bulk_bytes.values())
        all_bulk_bytes.extend(bulk_bytes.values())
        part += math.ceil(synced / SYNC_BATCH) + math.ceil(roles / SYNC_BATCH)
        parts[name] = part
        any_bulk = any_bulk or bool(bulk_bytes)
        minimum += part

    # A bulk import answers no ids: one export (create, enqueue, status, file) reads them back.
    minimum += 4 if any_bulk else 0

    # The persons that existed were matched by email and updated, not duplicated.
    hook = sync_env.mkto()
    try:
        people = [
            r
            for page in hook.get_leads(
                "email", list(existing_ids), ["id", "email", "externalPersonId", "firstName"]
            )
            for r in page
        ]
    finally:
        hook.close()
    assert len(people) == PRE_EXISTING
    chosen_ids = {r["emailaddress1"].lower(): r["leadid"].lower() for r in chosen}
    for person in people:
        email = person["email"].lower()
        assert str(person["id"]) == existing_ids[email]
        assert str(person["externalPersonId"]).lower() == chosen_ids[email]

    # One call whatever the volume: the copy starts the Marketo person feed (a paging token).
    minimum += 1
    calls = sum(stats["calls"].values())  # token calls included, admin calls are never counted
    ratio = calls / minimum
    print(
        f"\nfull copy of {total:,} records: {calls} Marketo calls, "
        f"minimum for the volume {minimum}, ratio {ratio:.3f}"
    )
    print(f"minimum by entity (plus 4 for the id read-back export, 1 for the feed): {parts}")
    print(f"Marketo calls by endpoint: {dict(stats['calls'])}")
    # The minimum counts one status call per bulk job (each import file and the export). How many
    # a job really takes depends on how fast this machine processes it, so the status calls are
    # bounded apart; every other call must be one the volume needs.
    polls = sum(n for route, n in stats["calls"].items() if route in STATUS_ROUTES)
    jobs = sum(math.ceil(b / MARKETO_FILE_LIMIT) for b in all_bulk_bytes) + (1 if any_bulk else 0)
    needed = minimum - jobs
    assert calls - polls == needed, f"{calls - polls} calls besides status polls, {needed} needed"
    assert jobs <= polls <= 3 * jobs, f"{polls} status calls for {jobs} bulk jobs"
    assert stats.get("limit_hits", {}) in ({}, None) or not any(stats["limit_hits"].values())

    # A second run reads everything again and writes nothing.
    sync_env.reset_stats()
    run_full_copy()
    assert write_calls(sync_env.marketo.stats()) == {}
    assert sync_env.marketo.stats().get("records", {}).get("lead.imported", 0) == 0
    second = ledger(sync_env, "full_copy__all__%__a2")
    assert {name: row["loaded"] for name, row in second.items()} == dict.fromkeys(entities, 0)
    assert {name: row["extracted"] for name, row in second.items()} == {n: len(r) for n, r in tables.items()}
    for name, entity in entities.items():
        if entity.marketo.object is MarketoObject.LEAD:
            assert copied[name]["loaded"] > 10_000 // SCALE_DOWN
