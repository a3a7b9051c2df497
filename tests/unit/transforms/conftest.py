"""Shared fixtures: the shipped entity configuration and a small Dataverse lead batch."""

from __future__ import annotations

import pandas as pd
import pytest

from crm_sync.config import Direction, EntityConfig, load_entities

OWNER_TYPE = "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"


@pytest.fixture(scope="session")
def entities() -> dict[str, EntityConfig]:
    return load_entities()


@pytest.fixture
def lead(entities) -> EntityConfig:
    return entities["lead"]


@pytest.fixture
def contact(entities) -> EntityConfig:
    return entities["contact"]


def dataverse_rows(entity: EntityConfig, **columns: list) -> pd.DataFrame:
    """Rows with every mapped D→M column (empty unless given) plus the given columns."""
    n = len(next(iter(columns.values())))
    frame = pd.DataFrame({f.dynamics: [None] * n for f in entity.fields_for(Direction.D2M)})
    for name, values in columns.items():
        frame[name] = values
    return frame


@pytest.fixture
def id_map() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity": ["user", "team", "account", "lead", "contact"],
            "dynamics_id": ["u1", "t1", "a1", "l1", "c1"],
            "marketo_id": ["11", "12", "13", "500", "600"],
        }
    )
