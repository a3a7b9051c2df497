"""The state store refuses to sync into a different Dataverse org or Marketo instance."""

from __future__ import annotations

import pytest

from crm_sync.state import (
    IdentityMismatchError,
    check_identity,
    get_watermark,
    lookup_links,
    rebaseline,
    session_scope,
    set_watermark,
    upsert_links,
)


def test_first_run_records_then_matches(engine):
    with session_scope(engine) as s:
        assert check_identity(s, "dynamics", "org-1") is True
        assert check_identity(s, "marketo", "123-ABC-456") is True
    with session_scope(engine) as s:
        assert check_identity(s, "dynamics", "org-1") is False


def test_changed_org_is_refused(engine):
    with session_scope(engine) as s:
        check_identity(s, "dynamics", "org-1")
    with session_scope(engine) as s, pytest.raises(IdentityMismatchError, match=r"'org-2'.*'org-1'"):
        check_identity(s, "dynamics", "org-2")


def test_rebaseline_clears_links_watermarks_and_identities(engine):
    with session_scope(engine) as s:
        check_identity(s, "dynamics", "org-1")
        upsert_links(s, "lead", [{"dynamics_id": "a", "marketo_id": "1"}])
        set_watermark(s, "lead", "d2m", "delta")
    with session_scope(engine) as s:
        rebaseline(s)
    with session_scope(engine) as s:
        assert lookup_links(s, "lead").empty
        assert get_watermark(s, "lead", "d2m") is None
        assert check_identity(s, "dynamics", "org-2") is True
