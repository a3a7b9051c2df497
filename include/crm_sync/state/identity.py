"""Guard against syncing a state store into the wrong systems (sync-semantics §6.6).

The id map only makes sense for the Dataverse organization and Marketo instance it was built
with. The first run records both identities; every later run compares and refuses to go on
when one differs (a refreshed sandbox, a changed connection). Re-baselining clears the map
and the identities explicitly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from crm_sync.state.db import upsert, utcnow
from crm_sync.state.models import IdMap, SyncIdentity, Watermark

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


class IdentityMismatchError(RuntimeError):
    """The connected system is not the one this state store was built for."""


def check_identity(session: Session, system: str, identity: str) -> bool:
    """Record ``identity`` for ``system`` on first use; afterwards require it to be unchanged.

    Args:
        session: Open session (the caller commits).
        system: ``dynamics`` (organization id from WhoAmI) or ``marketo`` (munchkin id).
        identity: The identity reported by the connected system.

    Returns:
        True when the identity was recorded now (first run), False when it matched.

    Raises:
        IdentityMismatchError: A different identity is stored; the message names both.
    """
    stored = session.execute(select(SyncIdentity.identity).where(SyncIdentity.system == system)).scalar()
    if stored is None:
        row = {"system": system, "identity": identity, "recorded_at": utcnow()}
        upsert(session, SyncIdentity, [row], keys=("system",))
        log.info("state store bound to %s identity %s", system, identity)
        return True
    if stored != identity:
        raise IdentityMismatchError(
            f"{system} identity is {identity!r} but this state store belongs to {stored!r}; "
            "refusing to sync (re-baseline to start over)"
        )
    return False


def rebaseline(session: Session) -> None:
    """Forget links, watermarks and identities so the next run performs a fresh initial sync."""
    for model in (IdMap, Watermark, SyncIdentity):
        session.execute(delete(model))
    log.warning("state store re-baselined: id map, watermarks and identities cleared")
