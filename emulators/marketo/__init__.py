"""Local emulator of the Adobe Marketo Engage REST API (identity, lead database, bulk).

Run: ``python -m emulators marketo --db var/marketo.db`` (HTTPS on 127.0.0.1:8081 by default;
``--limits off``, ``--time-scale 0.05`` and the other options are listed by ``--help``).
Seed: ``python -m emulators seed marketo --db var/marketo.db --scale 100000``.
Benchmark: ``python -m emulators.marketo.bench``.

Served (reference: marketo-rest-api.md): ``/identity/oauth/token``; leads (``leads.json`` get,
sync, ``_method=GET``, DELETE; ``lead/{id}.json``; ``leads/delete.json``; describe, describe2,
partitions); the lead field schema (``leads/schema/fields.json`` GET paged and POST = Create
Lead Fields, ``leads/schema/fields/{name}.json``); activities (types, pagingtoken,
``activities.json``, leadchanges, deletedleads);
companies, opportunities, opportunities/roles, salespersons and the custom object ``project_c``
(describe, get/query, sync, delete; ``customobjects.json``); bulk lead extract (create, enqueue,
status, file with Range, cancel, list) and bulk lead import (upload, status, failures, warnings);
``stats/usage.json``, ``stats/errors.json``; ``/rest/asset/v1/programs.json`` (one program, for
connector health checks).

Instance set-up: ``--bare`` (or ``POST /_emulator/bare``, ``{"force": true}`` to hide again)
hides every ``msd…`` person field until it is created through the API, as on an instance
without the native Dynamics sync; it is applied once per database. ``--native-sync`` (or
``POST /_emulator/native_sync {"enabled": bool}``) acts as an instance with the native sync on:
describe2 marks the CRM's fields ``crmManaged`` and writes to companies, opportunities, roles and
sales persons answer 1018 per record.

Admin (never under API paths): ``GET/PUT /_emulator/limits`` (partial updates), ``POST /_emulator/reset``
(delete all data; ids keep counting; the lead field schema stays), ``POST
/_emulator/expire-tokens``, ``POST /_emulator/reset-counters``, plus the shared stats and faults.
Stats record counts: ``lead.read|write|delete|exported|imported``, ``<kind>.read|write|delete``
for ``company``, ``opportunity``, ``opportunityrole``, ``salesperson``, ``co.project_c``,
``leadfield.write`` (fields created), and ``activity.read``, ``leadchange.read``, ``deletedlead.read``.
"""
