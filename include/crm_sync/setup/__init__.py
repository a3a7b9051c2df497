"""Prepare a real Marketo instance and Dataverse org for the sync: ``python -m crm_sync.setup``.

* ``check``: reads both systems' metadata against every entity file and prints each missing
  field, column, change-tracking switch, privilege or conflicting setting with its exact fix.
* ``apply``: creates what the APIs allow (Marketo custom lead fields, the Dataverse sync-filter
  column, change tracking) and lists what must be done by hand.

The same check runs as the first task of the ``check_connections`` DAG.
"""
