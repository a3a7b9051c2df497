"""Full copy: every Dynamics record of an entity (or those created in one stretch) into Marketo.

The same engine as the incremental sync with its own extract and load shape:

* **Scope.** A run copies one *partition*: the records created in ``[start, end)`` (the run's data
  interval for scheduled and backfill runs, the ``from_date``/``to_date`` Params of a manual run)
  or every record. Each partition of each entity is staged under its own folder, keyed by the
  scope and the entity's mapping, in numbered *attempts*: a run that finds an unfinished attempt
  continues it (whatever its Airflow run id), a run that finds a finished one starts a new one.
* **Extract** reads Dataverse pages of 5,000 rows with only the mapped columns (derived columns
  through ``$expand``) and stages every page as it arrives, with the page's next link as the
  checkpoint: a killed extract continues at the first page it had not staged.
* **Hand-over.** Copying everything of an entity that has no incremental watermark yet first
  takes a change-tracking token (a key-only read); the commit stores it as the incremental
  watermark, so the changes made while the copy runs reach the next incremental run.
* **Plan** reuses the incremental transform (mapping, sync filter, lookups, echo check against
  the id map, record errors), then regroups the operations into *load units*: Marketo persons
  above the bulk threshold go to bulk import files sized just under 10 MB, everything else to
  sync calls of 300 records, all the operations of one record in the same unit.
* **Matching.** A person already linked in the id map is written by its Dataverse key; an
  unlinked one with an email no other record of the copy or of the id map holds is written with
  email as the lookup field, so an existing Marketo person with that email is updated (and gets
  the key), not duplicated.
* **Load** writes one unit per task; a unit with a staged outcome is never written again.
* **Commit** writes the ledger and the hand-over watermark and marks the attempt finished.
"""
