"""Helpers of the person end-to-end tests: read and change persons in both emulators directly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pytest

    from tests.e2e.conftest import SyncEnv


def read_persons(env: SyncEnv, guids: Sequence[str], fields: Sequence[str]) -> list[dict[str, Any]]:
    """Every Marketo person whose ``externalPersonId`` is one of these GUIDs (duplicates too)."""
    hook = env.mkto()
    try:
        pages = hook.get_leads("externalPersonId", list(guids), list(fields))
        return [r for page in pages for r in page]
    finally:
        hook.close()


def mkto_update(env: SyncEnv, records: list[dict[str, Any]]) -> None:
    """Update existing persons by ``externalPersonId``; every record must succeed."""
    hook = env.mkto()
    try:
        results = hook.sync_leads(records, action="updateOnly", lookup_field="externalPersonId")
        assert all(r.ok for r in results), results
    finally:
        hook.close()


def dyn_upsert(env: SyncEnv, entity_set: str, key: str, rows: list[dict[str, Any]]) -> None:
    """Create or update Dataverse rows by primary key; every row must succeed."""
    hook = env.dyn()
    try:
        results = hook.upsert_records(entity_set, rows, [key], id_column=key)
        assert all(r.ok for r in results), results
    finally:
        hook.close()


def dyn_get(env: SyncEnv, entity_set: str, key: str, guid: str, columns: list[str]) -> dict[str, Any]:
    """The one Dataverse row with this GUID, with ``columns``."""
    hook = env.dyn()
    try:
        pages = hook.query(entity_set, select=[key, *columns], filter=f"{key} eq {guid}")
        (row,) = [r for page in pages for r in page]
        return row
    finally:
        hook.close()


def persons_with_email(env: SyncEnv, email: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Every Marketo person with this email that the sync has not flagged deleted."""
    hook = env.mkto()
    try:
        pages = hook.get_leads("email", [email], list(dict.fromkeys([*fields, "msdIsDeleted"])))
        return [p for page in pages for p in page if not p.get("msdIsDeleted")]
    finally:
        hook.close()


def assert_reconciled(capsys: pytest.CaptureFixture[str], entities: str = "contact,lead") -> None:
    """``python -m crm_sync.reconcile check`` over ``entities`` exits 0 and finds no difference."""
    from crm_sync.reconcile.__main__ import main as reconcile_cli

    capsys.readouterr()
    status = reconcile_cli(["check", "--entities", entities, "--poll-seconds", "0.5"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "no differences" in out, out
