"""Entity file check: a broken entity YAML becomes an Airflow import error naming the file and key.

``sync_entities.py`` and ``full_copy.py`` skip an entity file that does not load, so one bad file
never takes every sync DAG down with it; this file makes the bad one visible where Airflow shows
broken DAG files (the import errors on the DAGs page, ``airflow dags list-import-errors``): it
loads every entity file strictly and fails with each bad file's error, one per line. With every
file valid it defines no DAG (a DAG file that defines none is not an error for Airflow).
"""

from __future__ import annotations

from pathlib import Path

from crm_sync.config import load_entities
from crm_sync.tasks.common import entities_dir

load_entities(Path(entities_dir()))
