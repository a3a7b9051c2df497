"""Deterministic demo data for the Marketo emulator.

Faker makes pools of names, titles, cities and companies once; rows are then assembled from
the pools with a seeded ``random.Random`` and written with ``executemany`` in large chunks, so a
million leads take seconds, not the hours that one Faker call per value would.

Proportions per ``scale`` leads: 1/20 companies and opportunities (one role each), 1/10
custom-object projects (``project_c``, each linked to a synced contact's lead id), 1/2000 sales
persons (at least 3). About 60 % of the persons carry the
sync-owned fields (``msdType`` Lead or Contact, ``msdRecordId``...), as after an initial sync.
Five programs (one per channel family) get 1/20 of the leads each as members, with statuses of
their channels, from a random stream of their own so the rest of the data is as before. Seeded
leads and members get no activities: the change feeds start with the first API write.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import uuid
from typing import TYPE_CHECKING, Any

from faker import Faker

from emulators.marketo import programs
from emulators.marketo.fields import format_datetime
from emulators.marketo.objects import dedupe_key
from emulators.marketo.store import Store, leads

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger(__name__)

ANCHOR = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # fixed, so the same seed gives the same data
CHUNK = 50_000
SOURCES = ["Website", "Trade Show", "Webinar", "Partner", "Advertisement", "Employee Referral"]
STATUSES = ["Open", "Qualified", "Disqualified"]
RATINGS = ["Hot", "Warm", "Cold"]
INDUSTRIES = ["Retail", "Manufacturing", "Finance", "Healthcare", "Education", "Technology", "Energy"]
STAGES = [
    ("Prospecting", 10, False, False),
    ("Proposal", 50, False, False),
    ("Closed Won", 100, True, True),
    ("Closed Lost", 0, True, False),
]
ROLES = ["Decision Maker", "Influencer", "Evaluator", "Economic Buyer"]
PROJECT_STATUSES = ["Planned", "Active", "Done"]  # the labels of new_project.yaml's option set
SEED_PROGRAMS = [
    ("Product Webinar 2025", "Event with Webinar", "Webinar"),
    ("Monthly Newsletter", "Email", "Email Send"),
    ("Onboarding Nurture", "Engagement", "Nurture"),
    ("Spring Trade Show", "Event", "Tradeshow"),
    ("Paid Search", "Default", "Online Advertising"),
]


class _Pools:
    """Faker value pools, built once per seed."""

    def __init__(self, seed: int) -> None:
        fake = Faker("en_US")
        fake.seed_instance(seed)
        self.first = [_ascii(fake.first_name()) for _ in range(800)]
        self.last = [_ascii(fake.last_name()) for _ in range(800)]
        self.titles = [fake.job() for _ in range(200)]
        self.cities = [(fake.city(), fake.state_abbr(), fake.postcode()) for _ in range(400)]
        self.streets = [fake.street_address() for _ in range(2000)]
        self.companies = [fake.company() for _ in range(1000)]
        self.domains = [fake.domain_name() for _ in range(300)]
        self.phones = [fake.numerify("+1-###-###-####") for _ in range(3000)]


def _ascii(text: str) -> str:
    return text.encode("ascii", "ignore").decode() or "X"


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _stamp(rng: random.Random, max_days: int = 730) -> tuple[str, str]:
    created = ANCHOR - dt.timedelta(seconds=rng.randrange(max_days * 86400))
    updated = created + dt.timedelta(seconds=rng.randrange(int((ANCHOR - created).total_seconds()) + 1))
    return format_datetime(created), format_datetime(updated)


class _Clock:
    """Fast ``...T..Z`` text for seconds before ``ANCHOR``: one strftime per day, not one per row."""

    def __init__(self, max_days: int) -> None:
        self.days = [(ANCHOR - dt.timedelta(days=d + 1)).strftime("%Y-%m-%d") for d in range(max_days)]
        self.span = max_days * 86400

    def text(self, before_anchor: int) -> str:
        day, rest = divmod(self.span - before_anchor, 86400)
        hours, rest = divmod(rest, 3600)
        return f"{self.days[len(self.days) - 1 - day]}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


# Column order of the tuples ``_lead_rows`` yields; the INSERT names the same columns.
LEAD_SEED_COLUMNS = (
    "id", "email", "salutation", "firstName", "lastName", "title", "phone", "mobilePhone", "address", "city",
    "state", "country", "postalCode", "company", "annualRevenue", "leadSource", "leadStatus", "rating",
    "doNotCall", "unsubscribed", "leadScore", "relativeScore", "priority", "urgency", "leadPartitionId",
    "externalCompanyId", "externalSalesPersonId", "externalPersonId", "msdType", "msdRecordId",
    "msdCreatedDate", "msdIsDeleted", "createdAt", "updatedAt",
)  # fmt: skip


def _lead_rows(
    rng: random.Random, pools: _Pools, first_id: int, count: int, companies: list[str], salespeople: list[str]
) -> Iterator[tuple[Any, ...]]:
    # Indexing pools with random() is several times faster than rng.choice(), which matters at 1M rows.
    r = rng.random
    clock = _Clock(730)
    first_names, last_names, cities, domains = pools.first, pools.last, pools.cities, pools.domains
    titles, phones, streets, names = pools.titles, pools.phones, pools.streets, pools.companies
    salutations = ["Mr.", "Ms.", "Dr.", None]

    def pick(seq: list[Any]) -> Any:
        return seq[int(r() * len(seq))]

    for lead_id in range(first_id, first_id + count):
        first, last = pick(first_names), pick(last_names)
        city, state, postcode = pick(cities)
        age = int(r() * clock.span)  # seconds before the anchor
        created, updated = clock.text(age), clock.text(int(age * r()))
        kind = r()
        synced = kind < 0.6
        msd_type = ("Contact" if kind < 0.3 else "Lead") if synced else None
        record_id = _guid(rng) if synced else None
        yield (
            lead_id, f"{first}.{last}.{lead_id}@{pick(domains)}".lower(), pick(salutations), first, last,
            pick(titles), pick(phones), pick(phones), pick(streets), city, state, "United States", postcode,
            pick(names), float(int(r() * 500 + 1) * 100_000), pick(SOURCES), pick(STATUSES), pick(RATINGS),
            int(r() < 0.1), int(r() < 0.05), int(r() * 200), int(r() * 4) + 1, int(r() * 99) + 1,
            round(r() * 10, 2), 1,
            pick(companies) if msd_type == "Contact" and companies else None,
            pick(salespeople) if synced else None,
            record_id, msd_type, record_id, created if synced else None, 0 if synced else None,
            created, updated,
        )  # fmt: skip


def _object_row(
    store: Store, kind: str, guid: str | None, key: list[Any], data: dict[str, Any], rng: random.Random
) -> dict[str, Any]:
    pk = store.take_object_pks(1)
    created, updated = _stamp(rng)
    return {
        "pk": pk,
        "kind": kind,
        "guid": guid or str(pk),
        "dedupeKey": dedupe_key(key),
        "data": json.dumps(data),
        "createdAt": created,
        "updatedAt": updated,
    }


def seed(db_path: Path, seed: int = 42, scale: int = 1000) -> None:
    """Fill ``db_path`` with ``scale`` leads and related objects, deterministically from ``seed``."""
    rng = random.Random(seed)
    pools = _Pools(seed)
    store = Store(db_path)
    quoted = ",".join(f'"{c}"' for c in LEAD_SEED_COLUMNS)
    lead_sql = f"INSERT INTO leads ({quoted}) VALUES ({','.join('?' * len(LEAD_SEED_COLUMNS))})"
    obj_sql = (
        "INSERT INTO objects (pk, kind, guid, dedupeKey, data, createdAt, updatedAt) VALUES (?,?,?,?,?,?,?)"
    )

    salespeople = []
    objs: list[dict[str, Any]] = []
    for _ in range(max(3, scale // 2000)):
        ext = _guid(rng)
        first, last = rng.choice(pools.first), rng.choice(pools.last)
        salespeople.append(ext)
        objs.append(
            _object_row(
                store,
                "salesperson",
                None,
                [ext],
                {
                    "externalSalesPersonId": ext,
                    "email": f"{first}.{last}@seller.example".lower(),
                    "firstName": first,
                    "lastName": last,
                    "phone": rng.choice(pools.phones),
                    "title": rng.choice(pools.titles),
                },
                rng,
            )
        )
    companies = []
    for _ in range(max(5, scale // 20)):
        ext = _guid(rng)
        city, state, postcode = rng.choice(pools.cities)
        companies.append(ext)
        objs.append(
            _object_row(
                store,
                "company",
                None,
                [ext],
                {
                    "externalCompanyId": ext,
                    "company": rng.choice(pools.companies),
                    "billingStreet": rng.choice(pools.streets),
                    "billingCity": city,
                    "billingState": state,
                    "billingCountry": "United States",
                    "billingPostalCode": postcode,
                    "mainPhone": rng.choice(pools.phones),
                    "industry": rng.choice(INDUSTRIES),
                    "annualRevenue": float(rng.randrange(1, 900) * 1_000_000),
                    "numberOfEmployees": rng.randrange(5, 50_000),
                    "msdCreatedDate": _stamp(rng)[0],
                    "externalSalesPersonId": rng.choice(salespeople),
                },
                rng,
            )
        )

    first_lead = store.take_lead_ids(scale)
    synced_people: list[tuple[int, str]] = []
    with store.engine.begin() as conn:
        batch: list[tuple[Any, ...]] = []
        # Building the lead indexes once after the load is much faster than maintaining them per row.
        for index in leads.indexes:
            index.drop(conn)
        type_at, person_at = LEAD_SEED_COLUMNS.index("msdType"), LEAD_SEED_COLUMNS.index("externalPersonId")
        for row in _lead_rows(rng, pools, first_lead, scale, companies, salespeople):
            batch.append(row)
            if row[type_at] == "Contact" and len(synced_people) < scale // 5 + 5:
                synced_people.append((row[0], row[person_at]))
            if len(batch) >= CHUNK:
                conn.exec_driver_sql(lead_sql, batch)
                batch.clear()
        if batch:
            conn.exec_driver_sql(lead_sql, batch)
        for index in leads.indexes:
            index.create(conn)

        for _ in range(max(5, scale // 20)):
            ext = _guid(rng)
            stage, prob, closed, won = rng.choice(STAGES)
            objs.append(
                _object_row(
                    store,
                    "opportunity",
                    _guid(rng),
                    [ext],
                    {
                        "externalOpportunityId": ext,
                        "name": f"{rng.choice(pools.companies)} - {rng.choice(INDUSTRIES)} deal",
                        "stage": stage,
                        "probability": prob,
                        "isClosed": int(closed),
                        "isWon": int(won),
                        "amount": float(rng.randrange(1, 1000) * 1000),
                        "closeDate": (ANCHOR.date() - dt.timedelta(days=rng.randrange(400))).isoformat(),
                        "externalCreatedDate": _stamp(rng)[0],
                        "externalCompanyId": rng.choice(companies),
                        "externalSalesPersonId": rng.choice(salespeople),
                    },
                    rng,
                )
            )
            if synced_people:
                lead_id, _ext_person = rng.choice(synced_people)
                role = rng.choice(ROLES)
                objs.append(
                    _object_row(
                        store,
                        "opportunityrole",
                        _guid(rng),
                        [ext, lead_id, role],
                        {
                            "externalOpportunityId": ext,
                            "leadId": lead_id,
                            "role": role,
                            "isPrimary": int(rng.random() < 0.5),
                        },
                        rng,
                    )
                )
        for _ in range(max(5, scale // 10)):
            ext = _guid(rng)
            linked = rng.choice(synced_people)[0] if synced_people else None
            objs.append(
                _object_row(
                    store,
                    "co.project_c",
                    _guid(rng),
                    [ext],
                    {
                        "externalProjectId": ext,
                        "projectName": f"Project {rng.choice(pools.last)} {rng.randrange(10_000)}",
                        "budget": float(rng.randrange(10, 1800) * 500),
                        "startDate": (ANCHOR.date() - dt.timedelta(days=rng.randrange(700))).isoformat(),
                        "projectStatus": rng.choice(PROJECT_STATUSES),
                        "leadID": linked,
                    },
                    rng,
                )
            )
        for start in range(0, len(objs), CHUNK):
            conn.exec_driver_sql(obj_sql, [tuple(o.values()) for o in objs[start : start + CHUNK]])
        members = _seed_programs(conn, store, seed, first_lead, scale)
    store.engine.dispose()
    log.info(
        "seeded %s leads, %s other objects and %s program members into %s", scale, len(objs), members, db_path
    )


def _seed_programs(conn: Any, store: Store, seed: int, first_lead: int, scale: int) -> int:
    """Create the seed programs and give each 1/20 of the leads as members; return the member count."""
    rng = random.Random(f"programs:{seed}")  # its own stream: the leads and objects stay as before
    programs.ensure_default(conn, store)
    rows: list[tuple[Any, ...]] = []
    for name, ptype, channel_name in SEED_PROGRAMS:
        created = ANCHOR - dt.timedelta(days=rng.randrange(200, 400))
        spec = {"name": name, "type": ptype, "channel": channel_name, "createdAt": format_datetime(created)}
        program_id = programs.create(conn, store, spec)["id"]
        statuses = programs.CHANNELS[channel_name].statuses[1:]
        for lead_id in sorted(rng.sample(range(first_lead, first_lead + scale), max(1, scale // 20))):
            status = rng.choice(statuses)
            since = format_datetime(ANCHOR - dt.timedelta(seconds=rng.randrange(180 * 86400)))
            rows.append(
                (program_id, lead_id, store.take_member_ids(1), status.name, int(rng.random() < 0.1),
                 int(status.success), since if status.success else None, since, since, since)
            )  # fmt: skip
    conn.exec_driver_sql(
        "INSERT INTO program_members (programId, leadId, memberId, statusName, acquiredBy, reachedSuccess, "
        "reachedSuccessDate, membershipDate, createdAt, updatedAt) VALUES (?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    return len(rows)
