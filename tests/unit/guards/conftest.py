"""Guard unit tests: the project's entity files and a migrated SQLite state store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

import crm_sync.state.guards  # noqa: F401 - registers the guard tables on the shared metadata
from crm_sync.config import EntityConfig, load_entities
from crm_sync.state import make_engine, upgrade


@pytest.fixture(scope="module")
def entities() -> dict[str, EntityConfig]:
    return load_entities()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()
