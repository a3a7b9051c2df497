"""Change-driven runs: watchers in Airflow's triggerer peek at each source and fire asset events.

- :mod:`~crm_sync.watch.policy`: how long to wait before the next peek (fast while changes
  flow, slower when idle, within a share of the Marketo daily quota and the Dataverse window);
- :mod:`~crm_sync.watch.peeker`: one peek (a Dataverse delta link or the Marketo person feed,
  from the committed watermark, never moving it), stored as the change backlog;
- :mod:`~crm_sync.watch.triggers`: the ``BaseEventTrigger`` the triggerer runs;
- :mod:`~crm_sync.watch.assets`: the asset a ``sync_<entity>`` DAG is scheduled on.
"""
