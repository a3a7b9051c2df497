"""A linked row deleted in Dynamics after its change was read is not re-created (hardening 4).

Updates of linked Dataverse rows carry ``If-Match: *``: a row deleted between the extract and
the load (or while a Marketo change waits for a retry) becomes a parked record error
``deleted_in_dynamics`` and its Marketo person is flagged deleted, instead of the upsert
re-creating the row with the same GUID and only the changed fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import dyn_upsert, mkto_update, read_persons

pytestmark = pytest.mark.e2e


def _lead_rows(env: SyncEnv, guid: str) -> list[dict[str, Any]]:
    hook = env.dyn()
    try:
        pages = hook.query("leads", select=["leadid", "lastname", "jobtitle"], filter=f"leadid eq {guid}")
        return [r for page in pages for r in page]
    finally:
        hook.close()


def _delete_lead(env: SyncEnv, guid: str) -> None:
    hook = env.dyn()
    try:
        assert all(r.ok for r in hook.delete_records("leads", [guid]))
    finally:
        hook.close()


def test_a_row_deleted_between_extract_and_load_is_reported_not_recreated(
    sync_env: SyncEnv, new_guid: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crm_sync.engine import load

    ann = new_guid()
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": ann, "lastname": "Lee", "emailaddress1": "a@x.test"}])
    sync_env.run("sync_lead")
    mkto_update(sync_env, [{"externalPersonId": ann, "title": "CTO"}])

    real_load = load.load_batch

    def deleted_first(*args: Any, **kwargs: Any) -> Any:
        _delete_lead(sync_env, ann)  # someone deletes the lead while the run is under way
        return real_load(*args, **kwargs)

    monkeypatch.setattr(load, "load_batch", deleted_first)
    sync_env.run("sync_lead")
    monkeypatch.setattr(load, "load_batch", real_load)

    assert _lead_rows(sync_env, ann) == [], "the deleted lead was not re-created"
    (person,) = read_persons(sync_env, [ann], ["id", "msdIsDeleted", "title"])
    assert person["msdIsDeleted"] is True, "the Marketo person is flagged deleted"
    with sync_env.state().connect() as conn:
        errors = conn.execute(
            text("SELECT direction, source_id, code, message, parked FROM record_error WHERE entity='lead'")
        ).all()
        state = conn.execute(
            text("SELECT state FROM id_map WHERE entity='lead' AND dynamics_id=:g"), {"g": ann}
        ).scalar()
    ((direction, source, code, reason, parked),) = errors
    assert (direction, source, code, bool(parked)) == ("m2d", str(person["id"]), "deleted_in_dynamics", True)
    assert f"leads({ann}) was deleted in Dynamics" in reason
    assert state == "deleted"

    # The delete reaches the next run through the delta feed: nothing more is written, nothing
    # re-created, and a later Marketo edit of the flagged person does not bring the row back.
    mkto_update(sync_env, [{"externalPersonId": ann, "title": "CEO"}])
    sync_env.run("sync_lead")
    assert _lead_rows(sync_env, ann) == []
    with sync_env.state().connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM record_error WHERE entity='lead'")).scalar()
    assert count == 1
