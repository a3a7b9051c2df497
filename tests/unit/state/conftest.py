"""State-store fixtures: every test runs on SQLite and, when it answers, on local PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from crm_sync.state import make_engine, upgrade
from crm_sync.state.models import Base

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _pg_reachable() -> str | None:
    """Return why PostgreSQL cannot be used, or None when it answers."""
    try:
        import psycopg2

        psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2
        ).close()
    except Exception as exc:  # any failure means "not available here", reported as the skip reason
        return f"PostgreSQL at 127.0.0.1:5432 not reachable: {type(exc).__name__}"
    return None


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session, migrated once, dropped at the end."""
    reason = _pg_reachable()
    if reason:
        pytest.skip(reason)
    name = f"crm_sync_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:
    """A migrated, empty state store on each backend."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        upgrade(eng)
    else:
        eng = make_engine(request.getfixturevalue("pg_url"))
        with eng.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    yield eng
    eng.dispose()
