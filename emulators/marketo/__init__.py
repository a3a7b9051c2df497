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
(describe, get/query, sync, delete; ``customobjects.json``); bulk extract of leads, activities
and program members (create, enqueue, status, file with Range, cancel, list; one queue and one
daily volume for all) and bulk lead import (upload, status, failures, warnings);
``stats/usage.json``, ``stats/errors.json``; programs and channels of the asset API (browse, by
id, by name, create) and program membership (members get, status, delete; Change Lead Program
Status; leads by program; a lead's programs), whose changes write "Change Status in Progression"
activities (``program_routes``).

Instance set-up: ``--bare`` (or ``POST /_emulator/bare``, ``{"force": true}`` to hide again)
hides every ``msd…`` person field until it is created through the API, as on an instance
without the native Dynamics sync; it is applied once per database. ``--native-sync`` (or
``POST /_emulator/native_sync {"enabled": bool}``) acts as an instance with the native sync on:
describe2 marks the CRM's fields ``crmManaged`` and writes to companies, opportunities, roles and
sales persons answer 1018 per record.

Admin (never under API paths): ``GET/PUT /_emulator/limits`` (partial updates), ``POST /_emulator/reset``
(delete all data; ids keep counting; the lead field schema and the programs stay), ``POST
/_emulator/expire-tokens``, ``POST /_emulator/reset-counters``, ``POST /_emulator/programs``,
``/_emulator/program-members`` and ``/_emulator/activities`` (programs, memberships and activities
at past dates, ``history``), plus the shared stats and faults.
Stats record counts: ``lead.read|write|delete|exported|imported``, ``<kind>.read|write|delete``
for ``company``, ``opportunity``, ``opportunityrole``, ``salesperson``, ``co.project_c``,
``leadfield.write`` (fields created), ``activity.read``, ``leadchange.read``, ``deletedlead.read``,
``programmember.read|write|delete`` and ``activity.exported``, ``programmember.exported``.
"""
