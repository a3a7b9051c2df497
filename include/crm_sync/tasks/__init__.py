"""The Airflow side: one function per DAG task, above the engine and the maintenance modules.

``dags/`` call these; they build the hooks and the run context, call the engine, the reconcile
or the rebaseline, and decide what a typed error means (pause, alert, fail without retries).
"""
