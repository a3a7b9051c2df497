"""Watermarks: where the next extract of an entity in one direction starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from crm_sync.state.db import upsert, utcnow
from crm_sync.state.models import Watermark

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.orm import Session


def get_watermark(session: Session, entity: str, direction: str) -> str | None:
    """Return the stored token (delta link, timestamp or paging token), or None before the first run."""
    row = session.execute(
        select(Watermark.token).where(Watermark.entity == entity, Watermark.direction == direction)
    ).scalar_one_or_none()
    return row


def set_watermark(
    session: Session, entity: str, direction: str, token: str, now: datetime | None = None
) -> None:
    """Store the token the next run starts from; idempotent.

    Call it inside the transaction that also records the batch outcomes, and commit only after
    the load succeeded: the watermark must never move past changes that were not written.

    Raises:
        RuntimeError: ``session`` has no open transaction (the caller must own the commit).
    """
    if not session.in_transaction():
        raise RuntimeError("set_watermark needs an open transaction that the caller commits after load")
    row = {"entity": entity, "direction": direction, "token": token, "updated_at": now or utcnow()}
    upsert(session, Watermark, [row], keys=("entity", "direction"), update=("token", "updated_at"))
