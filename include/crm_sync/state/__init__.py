"""The sync's state store: watermarks, id map, run ledger, record errors, conflict log.

SQLAlchemy 2 models, Alembic migrations kept in this package (``migrations/``; the Alembic
config is built in code), SQLite by default and PostgreSQL in production. Every repository
function takes an open :class:`~sqlalchemy.orm.Session`, works on whole batches and leaves the
commit to the caller, so a batch's outcomes and its watermark commit together.

    engine = make_engine(url)          # or default_url(): $CRM_SYNC_STATE_URL / var/state.db
    upgrade(engine)                    # CLI: python -m crm_sync.state upgrade --url URL
    with session_scope(engine) as s:   # commits on success, rolls back on error
        token = get_watermark(s, "lead", "d2m")
"""

from __future__ import annotations

from crm_sync.state.db import (
    current_revision,
    default_url,
    make_engine,
    read_scope,
    session_scope,
    upgrade,
    utcnow,
)
from crm_sync.state.errors import (
    RetryPolicy,
    due_errors,
    open_errors,
    park_errors,
    parked_errors,
    record_errors,
    requeue_errors,
    resolve_errors,
    retry_now,
)
from crm_sync.state.identity import IdentityMismatchError, check_identity, rebaseline
from crm_sync.state.idmap import LINK_COLUMNS, links_by_email, lookup_links, set_link_state, upsert_links
from crm_sync.state.ledger import (
    RunCounts,
    conflict_rows,
    ledger_rows,
    log_conflicts,
    log_consents,
    write_ledger,
)
from crm_sync.state.watermarks import get_watermark, set_watermark

__all__ = [
    "LINK_COLUMNS",
    "IdentityMismatchError",
    "RetryPolicy",
    "RunCounts",
    "check_identity",
    "conflict_rows",
    "current_revision",
    "default_url",
    "due_errors",
    "get_watermark",
    "ledger_rows",
    "links_by_email",
    "log_conflicts",
    "log_consents",
    "lookup_links",
    "make_engine",
    "open_errors",
    "park_errors",
    "parked_errors",
    "read_scope",
    "rebaseline",
    "record_errors",
    "requeue_errors",
    "resolve_errors",
    "retry_now",
    "session_scope",
    "set_link_state",
    "set_watermark",
    "upgrade",
    "upsert_links",
    "utcnow",
    "write_ledger",
]
