"""Watermarks advance only inside a committed transaction."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from crm_sync.state import get_watermark, session_scope, set_watermark


def test_missing_watermark_is_none(engine):
    with session_scope(engine) as s:
        assert get_watermark(s, "lead", "d2m") is None


def test_set_then_get_and_overwrite(engine):
    with session_scope(engine) as s:
        set_watermark(s, "lead", "d2m", "delta-1")
    with session_scope(engine) as s:
        set_watermark(s, "lead", "d2m", "delta-2")
        set_watermark(s, "lead", "m2d", "token-a")
    with session_scope(engine) as s:
        assert get_watermark(s, "lead", "d2m") == "delta-2"
        assert get_watermark(s, "lead", "m2d") == "token-a"
        assert get_watermark(s, "contact", "d2m") is None


def test_failed_load_leaves_watermark_unchanged(engine):
    with session_scope(engine) as s:
        set_watermark(s, "lead", "d2m", "before")

    def failing_load() -> None:
        with session_scope(engine) as s:
            set_watermark(s, "lead", "d2m", "after")
            raise RuntimeError("load failed")

    with pytest.raises(RuntimeError, match="load failed"):
        failing_load()
    with session_scope(engine) as s:
        assert get_watermark(s, "lead", "d2m") == "before"


def test_set_outside_transaction_is_refused(engine):
    with Session(engine) as s, pytest.raises(RuntimeError, match="open transaction"):
        set_watermark(s, "lead", "d2m", "x")
