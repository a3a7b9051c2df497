"""What one task of a run works with: the run's settings, and the staging area and state store.

:class:`RunSettings` is what a task is given (from Airflow's Variables, or a CLI's options);
:class:`RunContext` is what the stages use once the task has opened the state store and the
staging root. The stages hand each other references to staged files, never the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crm_sync.config import ENTITIES_DIR

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from crm_sync.engine.staging import StagingArea


@dataclass(frozen=True)
class RunSettings:
    """Everything a task needs besides the entity: where state and staging live, which connections.

    Attributes:
        run_id: The Airflow run id.
        state_url: SQLAlchemy URL of the state store (Variable ``mds_state_db_url``).
        staging_url: Staging root (Variable ``mds_staging_path``), e.g. ``file:///srv/staging``.
        entities_dir: Folder of the entity YAML files.
        marketo_conn_id: Airflow connection of Marketo.
        dynamics_conn_id: Airflow connection of Dataverse.
        dynamics_window_reserve: Share of the Dataverse request window (per user and 5 minutes)
            the sync leaves to other integrations: its hooks' shared limiter allows only the rest.
    """

    run_id: str
    state_url: str
    staging_url: str
    entities_dir: str = str(ENTITIES_DIR)
    marketo_conn_id: str = "marketo_default"
    dynamics_conn_id: str = "dynamics_default"
    dynamics_window_reserve: float = 0.0

    def __repr__(self) -> str:
        # URLs may carry a password (PostgreSQL); never show them in logs.
        return f"RunSettings(run_id={self.run_id!r}, entities_dir={self.entities_dir!r})"


@dataclass(frozen=True)
class RunContext:
    """Where one run stages its files and keeps its state.

    Attributes:
        run_id: The Airflow run id (names the staging folder and the ledger row).
        staging: The staging area.
        state: SQLAlchemy engine of the state store.
    """

    run_id: str
    staging: StagingArea
    state: Engine
