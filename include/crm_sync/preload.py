"""Import what the sync's tasks need once, in the Airflow process that forks the task processes.

Airflow 3 runs every task in a process of its own, forked from the executor's worker: the
LocalExecutor's workers are forked from the scheduler, a Celery worker's pool processes from the
Celery worker. Each task then imports pandas, pyarrow, SQLAlchemy, Alembic, the hooks and the
engine afresh: about 1.2 s of CPU per task on the 2-core machine we measure on (parsing the DAG
file takes 0.25 s), paid by every task of every run, empty runs included. Imported once in the
process that forks, every task finds them already in memory, shared copy-on-write.

:func:`warm` does that import, and only in the processes that fork tasks (``airflow scheduler``,
``airflow celery worker``), so CLI commands and the other components start as before. It is
called from ``airflow_local_settings.py``, which Airflow imports at start-up in every process:
this project's stacks use ``include/airflow_config/airflow_local_settings.py``
(:func:`crm_sync.localenv.python_path`); a deployment calls it from its own local settings file
(docs/deployment.md). ``MDS_PRELOAD_TASK_MODULES=0`` turns it off.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

# Packages whose every module a task may import (the task entry points, the engine, state store,
# guards, transforms, reconcile and the hooks), and single modules besides.
TASK_PACKAGES = (
    "crm_sync.tasks",
    "crm_sync.engine",
    "crm_sync.state",
    "crm_sync.guards",
    "crm_sync.transforms",
    "crm_sync.reconcile",
    "crm_sync_hooks",
)
TASK_MODULES = ("crm_sync.rebaseline", "crm_sync.alerting", "pandas", "pyarrow.parquet")
SWITCH = "MDS_PRELOAD_TASK_MODULES"


def forks_tasks(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is an Airflow command whose process forks task processes.

    ``airflow scheduler`` (the LocalExecutor forks its workers from it) and ``airflow celery
    worker``; options are skipped, so ``airflow celery worker --concurrency 2`` counts too.
    """
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    return words[:1] == ["scheduler"] or words[:2] == ["celery", "worker"]


def task_module_names() -> list[str]:
    """Every module :func:`warm` imports, packages walked (``__main__`` modules left out)."""
    names: list[str] = []
    for package_name in TASK_PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if not info.name.endswith(".__main__") and ".migrations" not in info.name:
                names.append(info.name)
    return names + list(TASK_MODULES)


def warm(argv: Sequence[str] | None = None) -> list[str]:
    """Import the task modules when this process forks tasks; returns the modules imported.

    Importing starts no thread and opens no connection, so forking afterwards is safe.
    """
    if os.environ.get(SWITCH, "1") == "0" or not forks_tasks(sys.argv if argv is None else argv):
        return []
    names = task_module_names()
    for name in names:
        importlib.import_module(name)
    return names
