"""The sync engine: extract → stage → transform → load → commit, one entity at a time.

Plain Python with no Airflow context: hooks (or fakes with the same methods, see
:mod:`crm_sync.engine.clients`), the state store and the staging area are passed in.
:mod:`crm_sync.tasks.sync` wires them up for the DAG tasks in ``dags/sync_entities.py``.
"""
