"""``full_copy`` leaves Marketo exactly as the incremental ``sync_*`` DAGs do, field by field.

The same seeded Dataverse org is copied twice: by ``full_copy`` (bulk import forced for persons,
so the CSV round trip is covered) into one Marketo emulator, and by the incremental DAGs, in
dependency order, into a second Marketo emulator with its own state store. Every record of every
synced object must be equal in both (system ids and timestamps aside). A dry run before writes
nothing and reports what the copy would do.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from crm_sync.config import Direction, EntityConfig, MarketoObject, load_entities
from crm_sync.engine.full_copy.scope import copy_order
from crm_sync.engine.load import marketo_object_path
from tests.e2e.conftest import SyncEnv, _clear_hook_caches, write_calls
from tests.e2e.full_copy_support import dynamics_rows, full_copy_dag, marketo_objects, run_full_copy
from tests.support.emulator_procs import start_emulator

pytestmark = pytest.mark.e2e

SYSTEM_FIELDS = {"id", "marketoGUID", "createdAt", "updatedAt", "seq"}
# Links to a person by its Marketo id, which differs between two Marketo instances: compared
# through the person's Dataverse key instead.
PERSON_ID_FIELDS = ("leadId", "leadID")


def _person_keys(env: SyncEnv, ids: set[str]) -> dict[str, str]:
    hook = env.mkto()
    try:
        pages = hook.get_leads("id", sorted(ids), ["id", "externalPersonId"]) if ids else iter(())
        return {str(p["id"]): str(p.get("externalPersonId")).lower() for page in pages for p in page}
    finally:
        hook.close()


def _by_person_key(env: SyncEnv, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = {str(r[f]) for r in records for f in PERSON_ID_FIELDS if r.get(f) is not None}
    keys = _person_keys(env, ids)
    return [
        {
            k: (keys.get(str(v), f"unknown person {v}") if k in PERSON_ID_FIELDS and v is not None else v)
            for k, v in r.items()
        }
        for r in records
    ]


def _fields(entity: EntityConfig) -> list[str]:
    m = entity.marketo
    names = [m.key, *(f for f in (m.type_field, m.deleted_field, m.email_field) if f)]
    names += [f.marketo for f in entity.fields if f.direction in (Direction.D2M, Direction.BOTH)]
    names += [lk.marketo for lk in entity.lookups]
    return [n for n in dict.fromkeys(names) if n not in SYSTEM_FIELDS]


def _snapshot(env: SyncEnv, entities: dict[str, EntityConfig]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every Marketo record keyed by its Dataverse GUID, per entity (roles by opportunity)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, entity in entities.items():
        ids = [
            str(r[entity.dynamics.key])
            for r in dynamics_rows(env, entity.dynamics.entity_set, [entity.dynamics.key])
        ]
        records = _by_person_key(
            env, marketo_objects(env, marketo_object_path(entity), entity.marketo.key, ids, _fields(entity))
        )
        if entity.marketo.object is MarketoObject.LEAD and entity.marketo.person_type:
            records = [
                r for r in records if r.get(entity.marketo.type_field or "") == entity.marketo.person_type
            ]
        keyed: dict[str, dict[str, Any]] = {}
        for record in records:
            key = str(record[entity.marketo.key]).lower()
            assert key not in keyed, f"{name}: two Marketo records for {key}"
            keyed[key] = {k: v for k, v in record.items() if k not in SYSTEM_FIELDS}
        out[name] = keyed
        if entity.roles is not None:
            roles = _by_person_key(
                env,
                marketo_objects(
                    env,
                    "opportunities/roles",
                    "externalOpportunityId",
                    ids,
                    ["externalOpportunityId", "leadId", "role", "isPrimary"],
                ),
            )
            out[f"{name}.roles"] = {
                f"{r['externalOpportunityId']}|{r.get('leadId')}|{r.get('role')}": {
                    k: v for k, v in r.items() if k not in SYSTEM_FIELDS
                }
                for r in roles
            }
    return out


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": 800}], indirect=True)
def test_full_copy_equals_the_incremental_sync_field_by_field(
    sync_env: SyncEnv, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    entities = load_entities(sync_env.entities_dir)
    monkeypatch.setenv("AIRFLOW_VAR_MDS_FULL_COPY_BULK_THRESHOLD", "100")

    # A dry run writes nothing and reports creates per entity.
    run = full_copy_dag().test(run_conf={"dry_run": True, "entities": ["account", "lead"]})
    assert run.state == "success"
    assert write_calls(sync_env.marketo.stats()) == {}
    assert sync_env.marketo.stats().get("records", {}).get("lead.imported", 0) == 0

    run_full_copy()
    copied = _snapshot(sync_env, entities)
    stats = sync_env.marketo.stats()
    assert stats["records"].get("lead.imported", 0) > 0, "persons went through bulk import"

    # The incremental DAGs into a second Marketo with its own state store and staging.
    second = start_emulator("marketo", tmp_path / "marketo-b")
    try:
        conn = json.loads(os.environ["AIRFLOW_CONN_MARKETO_DEFAULT"])
        conn["host"] = second.base_url
        conn["extra"]["ca_bundle"] = str(second.ca_file)
        monkeypatch.setenv("AIRFLOW_CONN_MARKETO_DEFAULT", json.dumps(conn))
        monkeypatch.setenv("AIRFLOW_VAR_MDS_STATE_DB_URL", f"sqlite:///{tmp_path / 'state-b.db'}")
        monkeypatch.setenv("AIRFLOW_VAR_MDS_STAGING_PATH", f"file://{tmp_path / 'staging-b'}")
        _clear_hook_caches()
        for tier in copy_order(entities):
            for name in tier:
                sync_env.run(entities[name].dag_id)
        synced = _snapshot(sync_env, entities)
    finally:
        _clear_hook_caches()
        second.stop()

    assert set(copied) == set(synced)
    for name in copied:
        assert copied[name], f"{name}: nothing was copied"
        assert set(copied[name]) == set(synced[name]), f"{name}: other records"
        differing = [k for k in copied[name] if copied[name][k] != synced[name][k]]
        assert not differing, (name, copied[name][differing[0]], synced[name][differing[0]])
