"""Local emulator of the Dynamics 365 (Dataverse) Web API v9.2 and the Entra ID token endpoint.

Run it::

    python -m emulators seed dynamics --db var/emulators/dynamics.db --scale 10000
    python -m emulators dynamics --port 8082 --db var/emulators/dynamics.db

One process serves, over HTTPS with the project's local CA:

- ``/{tenant}/v2.0/.well-known/openid-configuration`` and ``/{tenant}/oauth2/v2.0/token``
  (client credentials; see :mod:`emulators.dynamics.auth` for the msal constructor options);
- ``/api/data/v9.2/``: leads, contacts, accounts, opportunities, systemusers, teams (with
  ``teammembership_association``), businessunits, connections and connectionroles (opportunity
  roles), the custom table ``new_project``, and campaigns, marketing lists, list members,
  campaign items, campaign responses, the custom activity ``new_marketoactivity``, activity
  pointers and activity parties with the list actions ``AddMemberList``, ``AddListMembersList``,
  ``RemoveMemberList`` and ``AddItemCampaign`` (:mod:`~emulators.dynamics.marketing`,
  :mod:`~emulators.dynamics.activities`); queries, paging, change tracking, writes,
  upserts, ``$batch``, ``$expand`` of lookups (``customerid_contact($select=...)``) and of team
  memberships, ``EntityDefinitions`` (read, plus creating columns and alternate keys and turning
  change tracking on: :mod:`~emulators.dynamics.customize`), ``WhoAmI``, ``$metadata``, and the
  application user's rights (``systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()``
  and ``RetrievePrincipalAttributePrivileges()``; writes the role lacks are refused with 403:
  :mod:`~emulators.dynamics.security`);
- ``/_emulator/``: health, stats, faults (shared admin area) and the actions ``expire-tokens``,
  ``expire-delta-tokens``, ``limits`` (body: any of ``enabled``, ``requests``, ``execution_ms``,
  ``concurrency``, ``window_s``, ``time_scale``), ``sandbox-refresh``, ``reset``, ``schema``
  (body: ``{"entity": "lead", "drop": "col"}``, ``{"entity": ..., "rename": {"from": ..., "to":
  ...}}``, ``{"entity": ..., "add": {"name": ..., "type": "String"}}``, ``{"entity": ...,
  "drop_key": [...]}`` or ``{"entity": ..., "change_tracking": false}``), ``bare`` (apply bare
  mode now) and ``role`` (body: ``{"deny": [{"table": ..., "privilege": "Write"}], "secured":
  [{"table": ..., "column": ..., "read": true, "create": false, "update": false}]}`` or
  ``{"reset": true}``).

Options (``python -m emulators dynamics --help``): ``--limits on|off``, ``--limit-requests``,
``--limit-execution-ms``, ``--limit-concurrency``, ``--time-scale`` (windows and delta-token expiry
run that many times faster; token lifetime stays in real seconds), ``--delta-token-expiry-days``,
``--token-lifetime``, ``--client-id/--client-secret/--tenant-id`` (default: the
``dynamics_default`` connection of ``airflow_settings.yaml``) and ``--bare`` (an organization the
sync was never set up in: no ``new_synctomkto`` column, change tracking off on the custom
tables ``new_project`` and ``new_marketoactivity``; applied once per database).

Module map: :mod:`~emulators.dynamics.schema` and :mod:`~emulators.dynamics.marketing_schema`
(tables), :mod:`~emulators.dynamics.store`
(SQLite), :mod:`~emulators.dynamics.service` (resources), :mod:`~emulators.dynamics.query` and
:mod:`~emulators.dynamics.odata` (query options), :mod:`~emulators.dynamics.records` (JSON in and
out), :mod:`~emulators.dynamics.batch`, :mod:`~emulators.dynamics.metadata`,
:mod:`~emulators.dynamics.customize`, :mod:`~emulators.dynamics.security`,
:mod:`~emulators.dynamics.limits`, :mod:`~emulators.dynamics.auth`, :mod:`~emulators.dynamics.app`,
:mod:`~emulators.dynamics.seed`, :mod:`~emulators.dynamics.bench`.
"""
