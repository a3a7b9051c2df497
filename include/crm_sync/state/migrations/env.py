"""Alembic environment for the state store; the config is built in code by ``crm_sync.state.db``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from crm_sync.state.db import make_engine
from crm_sync.state.models import Base

config = context.config
target_metadata = Base.metadata
# Any fixed 64-bit number; serialises concurrent upgrades on PostgreSQL.
_PG_LOCK_ID = 0x63726D73796E63


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on the engine handed over in ``config.attributes`` (or the URL option)."""
    engine = config.attributes.get("engine") or make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            # One transaction for the whole upgrade, version read included. Alembic treats SQLite
            # DDL as non-transactional and commits step by step, so two processes could both
            # read revision N and both run N+1 ("table already exists"). SQLite's DDL is
            # transactional, and this engine begins IMMEDIATE: the second process now waits for
            # the first and finds the head.
            transactional_ddl=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
