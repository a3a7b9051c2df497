"""Guard unit tests: the project's entity files and a migrated state store on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

import crm_sync.state.guards  # noqa: F401 - registers the guard tables on the shared metadata
from crm_sync.config import EntityConfig, load_entities
from crm_sync.state import make_engine, upgrade
from tests.unit.state.conftest import pg_url  # noqa: F401 - the session's throwaway PostgreSQL database


@pytest.fixture(scope="module")
def entities() -> dict[str, EntityConfig]:
    return load_entities()


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated state store whose guard and id-map tables are empty."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        upgrade(engine)
    else:
        engine = make_engine(request.getfixturevalue("pg_url"))
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE api_call_log, schema_snapshot, id_map RESTART IDENTITY"))
    yield engine
    engine.dispose()
