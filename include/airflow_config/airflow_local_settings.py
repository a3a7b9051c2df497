"""Airflow's local settings for this project's own stacks (``make demo``, ``make prod-local``, tests).

Airflow imports ``airflow_local_settings`` at start-up in every process; this folder is on the
``PYTHONPATH`` that :func:`crm_sync.localenv.airflow_env` gives those stacks. The only setting:
the scheduler and the Celery workers import the sync's task modules once, before they fork task
processes (:mod:`crm_sync.preload`). A deployment with local settings of its own calls
``crm_sync.preload.warm()`` there instead (docs/deployment.md).
"""

from crm_sync.preload import warm

# Airflow copies every public name of this module into airflow.settings: expose none.
__all__: list[str] = []

warm()
