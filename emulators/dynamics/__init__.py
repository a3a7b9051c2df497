"""Local emulator of the Dynamics 365 (Dataverse) Web API v9.2 and the Entra ID token endpoint.

Run it::

    python -m emulators seed dynamics --db var/emulators/dynamics.db --scale 10000
    python -m emulators dynamics --port 8082 --db var/emulators/dynamics.db

One process serves, over HTTPS with the project's local CA:

- ``/{tenant}/v2.0/.well-known/openid-configuration`` and ``/{tenant}/oauth2/v2.0/token``
  (client credentials; see :mod:`emulators.dynamics.auth` for the msal constructor options);
- ``/api/data/v9.2/``: leads, contacts, accounts, opportunities, systemusers, teams (with
  ``teammembership_association``), businessunits, connections and connectionroles (opportunity
  roles), and the custom table ``new_project``; queries, paging, change tracking, writes,
  upserts, ``$batch``, ``$expand`` of lookups (``customerid_contact($select=...)``) and of team
  memberships, ``EntityDefinitions``, ``WhoAmI`` and ``$metadata``;
- ``/_emulator/``: health, stats, faults (shared admin area) and the actions ``expire-tokens``,
  ``expire-delta-tokens``, ``limits`` (body: any of ``enabled``, ``requests``, ``execution_ms``,
  ``concurrency``, ``window_s``, ``time_scale``), ``sandbox-refresh``, ``reset`` and ``schema``
  (body: ``{"entity": "lead", "drop": "col"}``, ``{"entity": ..., "rename": {"from": ..., "to":
  ...}}`` or ``{"entity": ..., "add": {"name": ..., "type": "String"}}``).

Options (``python -m emulators dynamics --help``): ``--limits on|off``, ``--limit-requests``,
``--limit-execution-ms``, ``--limit-concurrency``, ``--time-scale`` (windows and delta-token expiry
run that many times faster; token lifetime stays in real seconds), ``--delta-token-expiry-days``,
``--token-lifetime`` and ``--client-id/--client-secret/--tenant-id`` (default: the
``dynamics_default`` connection of ``airflow_settings.yaml``).

Module map: :mod:`~emulators.dynamics.schema` (tables), :mod:`~emulators.dynamics.store`
(SQLite), :mod:`~emulators.dynamics.service` (resources), :mod:`~emulators.dynamics.query` and
:mod:`~emulators.dynamics.odata` (query options), :mod:`~emulators.dynamics.records` (JSON in and
out), :mod:`~emulators.dynamics.batch`, :mod:`~emulators.dynamics.metadata`,
:mod:`~emulators.dynamics.limits`, :mod:`~emulators.dynamics.auth`, :mod:`~emulators.dynamics.app`,
:mod:`~emulators.dynamics.seed`, :mod:`~emulators.dynamics.bench`.
"""
