"""State-store fixtures: every test runs on SQLite and, when it answers, on local PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

# Tables defined outside models.py register on Base.metadata when their module is imported.
import crm_sync.reconcile.store
import crm_sync.state.backlog
import crm_sync.state.guards
import crm_sync.state.membership  # noqa: F401
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


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    """Create a throwaway PostgreSQL database (skip when the server does not answer); drop it after."""
    reason = _pg_reachable()
    if reason:
        pytest.skip(reason)
    name = f"crm_sync_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session, migrated once, dropped at the end."""
    with _pg_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of an empty state store, not migrated yet, on each backend (PostgreSQL: its own database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        with _pg_database() as url:
            yield url


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
