"""Deterministic fake data for the Dataverse emulator.

``--scale`` is the number of leads; the other tables follow in proportion (per 1,000 leads: 100
accounts, 500 contacts, 100 opportunities each with a stakeholder connection, 50 projects, and
a handful of users and teams). Every project links a contact whose sync filter is not an explicit
No, as the project mapping requires its person. The same ``--seed`` gives the same database.

Speed: Faker is slow per call, so it only fills small pools of names, companies, streets and
so on; rows are then drawn from those pools with one seeded ``random.Random`` and written with
one prepared ``INSERT`` per chunk (no ORM objects). A million leads take well under two minutes.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faker import Faker

from emulators.dynamics.store import Store, bulk_insert, drop_indexes, index_ddl, reset_data

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from sqlalchemy.engine import Connection

    from emulators.dynamics.schema import Table

log = logging.getLogger(__name__)
CHUNK = 20_000
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass
class Pools:
    """Small lists of Faker values that rows are drawn from."""

    first: list[str]
    last: list[str]
    companies: list[str]
    streets: list[str]
    cities: list[str]
    states: list[str]
    postcodes: list[str]
    countries: list[str]
    jobs: list[str]
    phones: list[str]
    domains: list[str]
    sentences: list[str]
    salutations: list[str]


def make_pools(seed: int, size: int = 600) -> Pools:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    return Pools(
        first=[fake.first_name() for _ in range(size)],
        last=[fake.last_name() for _ in range(size)],
        companies=[fake.company() for _ in range(size)],
        streets=[fake.street_address() for _ in range(size)],
        cities=[fake.city() for _ in range(size)],
        states=[fake.state_abbr() for _ in range(60)],
        postcodes=[fake.postcode() for _ in range(size)],
        countries=["United States", "Canada", "United Kingdom", "Germany", "France", "Australia"],
        jobs=[fake.job()[:100] for _ in range(size)],
        phones=[fake.numerify("+1-###-###-####") for _ in range(size)],
        domains=[fake.domain_name() for _ in range(200)],
        sentences=[fake.sentence(nb_words=10) for _ in range(size)],
        salutations=["Mr.", "Ms.", "Dr.", "Mrs.", ""],
    )


class Seeder:
    """Writes every table of one organization from one random generator."""

    def __init__(self, conn: Connection, tables: dict[str, Table], meta: dict[str, str], seed: int) -> None:
        self.conn = conn
        self.tables = tables
        self.rng = random.Random(seed)
        self.random = self.rng.random
        self.pools = make_pools(seed)
        # Timestamps come from a pool too: formatting a date per row costs more than the row.
        self.times = [self._stamp_pair() for _ in range(20_000)]
        self.version = 1000
        self.user = meta["app_user_id"]
        self.bu = meta["businessunit_id"]

    def pick(self, seq: Sequence[Any]) -> Any:
        """``rng.choice`` without its per-call overhead (the seeder's hottest call)."""
        return seq[int(self.random() * len(seq))]

    def rint(self, low: int, high: int) -> int:
        """``rng.randint`` (inclusive bounds), cheaper."""
        return low + int(self.random() * (high - low + 1))

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _stamp_pair(self) -> tuple[str, str]:
        created = EPOCH - dt.timedelta(seconds=self.rng.randrange(2 * 365 * 86400))
        modified = min(created + dt.timedelta(seconds=self.rng.randrange(90 * 86400)), EPOCH)
        return created.strftime("%Y-%m-%dT%H:%M:%SZ"), modified.strftime("%Y-%m-%dT%H:%M:%SZ")

    def stamps(self) -> tuple[str, str, int]:
        """Return createdon, modifiedon (at or after it) and a fresh version number."""
        created, modified = self.pick(self.times)
        self.version += 1
        return created, modified, self.version

    def sync_flag(self) -> int | None:
        roll = self.rng.random()  # mostly unset, some yes, a few explicit no (sync-semantics.md §4)
        return None if roll < 0.6 else (1 if roll < 0.9 else 0)

    def insert(self, name: str, rows: Iterator[dict[str, Any]]) -> list[str]:
        """Insert rows (dicts with the same keys) in chunks; return their primary keys."""
        table = self.tables[name]
        ids: list[str] = []
        chunk: list[tuple[Any, ...]] = []
        columns: list[str] = []
        for row in rows:
            if not columns:
                columns = list(row)
            chunk.append(tuple(row[c] for c in columns))
            ids.append(row[table.primary_id])
            if len(chunk) >= CHUNK:
                bulk_insert(self.conn, table, columns, chunk)
                chunk = []
        if chunk:
            bulk_insert(self.conn, table, columns, chunk)
        return ids

    def system(self, owners: Callable[[], tuple[str, str]] | None = None) -> dict[str, Any]:
        created, modified, version = self.stamps()
        row: dict[str, Any] = {
            "createdon": created,
            "modifiedon": modified,
            "versionnumber": version,
            "createdby": self.user,
            "modifiedby": self.user,
        }
        if owners is not None:
            row["ownerid"], row["owneridtype"] = owners()
        return row

    def address(self) -> dict[str, Any]:
        p, r = self.pools, self
        return {
            "address1_line1": r.pick(p.streets),
            "address1_city": r.pick(p.cities),
            "address1_stateorprovince": r.pick(p.states),
            "address1_postalcode": r.pick(p.postcodes),
            "address1_country": r.pick(p.countries),
        }

    def person(self, index: int, prefix: str) -> dict[str, Any]:
        p, r = self.pools, self
        first, last = r.pick(p.first), r.pick(p.last)
        email = f"{first}.{last}.{prefix}{index}@{r.pick(p.domains)}".lower()
        return {
            "salutation": r.pick(p.salutations) or None,
            "firstname": first,
            "lastname": last,
            "fullname": f"{first} {last}",
            "emailaddress1": email,
            "jobtitle": r.pick(p.jobs),
            "telephone1": r.pick(p.phones),
            "mobilephone": r.pick(p.phones) if r.random() < 0.5 else None,
            "donotemail": int(r.random() < 0.05),
            "donotphone": int(r.random() < 0.05),
            "donotbulkemail": int(r.random() < 0.1),
            "preferredcontactmethodcode": r.rint(1, 5),
            "new_synctomkto": self.sync_flag(),
            **self.address(),
        }


def seed_database(db_path: Path, seed: int, scale: int) -> None:
    """Replace the contents of ``db_path`` with a deterministic organization of ``scale`` leads."""
    started = time.monotonic()
    store = Store(db_path)
    id_rng = random.Random(seed ^ 0x5EED)
    with store.engine.connect() as conn:
        # No journal while seeding: the file is being rebuilt from scratch, so nothing needs to
        # survive a crash, and writing every page twice (WAL, then checkpoint) halves the speed.
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA journal_mode=OFF")  # type: ignore[union-attr]
        raw.execute("PRAGMA synchronous=OFF")  # type: ignore[union-attr]
        with conn.begin():
            reset_data(conn, store.tables, lambda: uuid.UUID(int=id_rng.getrandbits(128), version=4))
            store.reload(conn)
            for table in store.tables.values():  # bulk-load first, then build each index in one pass
                drop_indexes(conn, table)
            seeder = Seeder(conn, store.tables, store.meta, seed)
            counts = _seed_all(seeder, max(1, scale))
            for table in store.tables.values():
                for ddl in index_ddl(table):
                    conn.exec_driver_sql(ddl)
        raw.execute("PRAGMA journal_mode=WAL")  # type: ignore[union-attr]
    store.engine.dispose()
    log.info("seeded %s in %.1fs: %s", db_path, time.monotonic() - started, counts)


def _seed_all(s: Seeder, scale: int) -> dict[str, int]:
    r, p = s, s.pools
    n_users = max(5, min(500, scale // 200))
    n_accounts = max(2, scale // 10)
    n_contacts = max(2, scale // 2)
    n_opps = max(1, scale // 10)
    n_projects = max(1, scale // 20)

    def users() -> Iterator[dict[str, Any]]:
        for i in range(n_users):
            first, last = r.pick(p.first), r.pick(p.last)
            yield {
                "systemuserid": s.guid(),
                "firstname": first,
                "lastname": last,
                "fullname": f"{first} {last}",
                "internalemailaddress": f"{first}.{last}.u{i}@contoso.example".lower(),
                "domainname": f"{first}.{last}.u{i}@contoso.example".lower(),
                "title": r.pick(p.jobs),
                "mobilephone": r.pick(p.phones),
                "address1_telephone1": r.pick(p.phones),
                "isdisabled": int(r.random() < 0.05),
                "accessmode": 0,
                "businessunitid": s.bu,
                "azureactivedirectoryobjectid": s.guid(),
                **s.system(),
            }

    user_ids = s.insert("systemuser", users())

    def teams() -> Iterator[dict[str, Any]]:
        for i in range(max(2, n_users // 5)):
            yield {
                "teamid": s.guid(),
                "name": f"{r.pick(p.cities)} sales {i}",
                "teamtype": r.pick([0, 0, 1]),
                "isdefault": 0,
                "businessunitid": s.bu,
                "administratorid": r.pick(user_ids),
                "description": r.pick(p.sentences),
                **s.system(),
            }

    team_ids = s.insert("team", teams())
    members = {(t, u) for t in team_ids for u in r.rng.sample(user_ids, min(len(user_ids), r.rint(3, 8)))}
    s.conn.exec_driver_sql("INSERT INTO teammembership (teamid, systemuserid) VALUES (?, ?)", sorted(members))

    def owner() -> tuple[str, str]:
        return (r.pick(team_ids), "team") if r.random() < 0.15 else (r.pick(user_ids), "systemuser")

    def accounts() -> Iterator[dict[str, Any]]:
        for i in range(n_accounts):
            yield {
                "accountid": s.guid(),
                "name": r.pick(p.companies),
                "accountnumber": f"A{i:07d}",
                "websiteurl": f"https://www.{r.pick(p.domains)}",
                "telephone1": r.pick(p.phones),
                "industrycode": r.rint(1, 33),
                "revenue": float(r.rng.randrange(100_000, 500_000_000, 1000)),
                "numberofemployees": r.rint(1, 50_000),
                "statecode": 0,
                "statuscode": 1,
                "description": r.pick(p.sentences),
                "new_synctomkto": s.sync_flag(),
                **s.address(),
                **s.system(owner),
            }

    account_ids = s.insert("account", accounts())

    # Contacts whose sync filter is not an explicit No: they reach Marketo, so records that must
    # link to a person there (projects) pick one of these.
    synced_contact_ids: list[str] = []

    def contacts() -> Iterator[dict[str, Any]]:
        for i in range(n_contacts):
            has_account = r.random() < 0.9
            row = {
                "contactid": s.guid(),
                **s.person(i, "c"),
                "statecode": 0,
                "statuscode": 1,
                "parentcustomerid": r.pick(account_ids) if has_account else None,
                "parentcustomeridtype": "account" if has_account else None,
                "mkt_leadscore": r.rint(0, 100),
                **s.system(owner),
            }
            if row["new_synctomkto"] != 0:
                synced_contact_ids.append(row["contactid"])
            yield row

    contact_ids = s.insert("contact", contacts())
    project_contacts = synced_contact_ids or contact_ids

    def leads() -> Iterator[dict[str, Any]]:
        for i in range(scale):
            roll = r.random()
            state = 0 if roll < 0.85 else (1 if roll < 0.95 else 2)
            status = {0: r.pick([1, 2]), 1: 3, 2: r.pick([4, 5, 6, 7])}[state]
            person = s.person(i, "l")
            yield {
                "leadid": s.guid(),
                **person,
                "subject": f"Interest in {r.pick(p.companies)}",
                "companyname": r.pick(p.companies),
                "leadsourcecode": r.rint(1, 10),
                "leadqualitycode": r.rint(1, 3),
                "statecode": state,
                "statuscode": status,
                "parentaccountid": r.pick(account_ids) if r.random() < 0.2 else None,
                "mkt_leadscore": r.rint(0, 100),
                **s.system(owner),
            }

    s.insert("lead", leads())

    def opportunities() -> Iterator[tuple[dict[str, Any], str | None]]:
        for _ in range(n_opps):
            account = r.pick(account_ids)
            to_contact = r.random() < 0.3
            contact = r.pick(contact_ids)
            roll = r.random()
            state = 0 if roll < 0.7 else (1 if roll < 0.9 else 2)
            row = {
                "opportunityid": s.guid(),
                "name": f"{r.pick(p.companies)} deal",
                "estimatedvalue": float(r.rng.randrange(1000, 2_000_000, 100)),
                "estimatedclosedate": (EPOCH + dt.timedelta(days=r.rng.randrange(-200, 200)))
                .date()
                .isoformat(),
                "closeprobability": r.rint(0, 100),
                "stepname": r.pick(["Qualify", "Develop", "Propose"]),
                "statecode": state,
                "statuscode": {0: 1, 1: 3, 2: 4}[state],
                "customerid": contact if to_contact else account,
                "customeridtype": "contact" if to_contact else "account",
                "parentaccountid": account,
                "parentcontactid": contact if to_contact else None,
                "new_synctomkto": s.sync_flag(),
                **s.system(owner),
            }
            yield row, contact

    opp_rows = list(opportunities())
    opp_ids = s.insert("opportunity", iter(row for row, _ in opp_rows))
    role_names = ["Stakeholder", "Decision Maker", "Influencer", "Economic Buyer", "Technical Buyer"]
    role_ids = s.insert(
        "connectionrole",
        iter({"connectionroleid": s.guid(), "name": n, "category": 6, **s.system()} for n in role_names),
    )

    def connections() -> Iterator[dict[str, Any]]:
        for opp, (_, contact) in zip(opp_ids, opp_rows, strict=True):
            yield {
                "connectionid": s.guid(),
                "name": "opportunity role",
                "record1id": opp,
                "record1idtype": "opportunity",
                "record2id": contact,
                "record2idtype": "contact",
                "record2roleid": r.pick(role_ids),
                "ismaster": 1,
                "statecode": 0,
                **s.system(owner),
            }

    s.insert("connection", connections())

    def projects() -> Iterator[dict[str, Any]]:
        for i in range(n_projects):
            yield {
                "new_projectid": s.guid(),
                "new_name": f"Project {r.pick(p.last)} {i}",
                "new_code": f"P{i:07d}",
                "new_budget": float(r.rng.randrange(5000, 900_000, 500)),
                "new_startdate": (EPOCH - dt.timedelta(days=r.rng.randrange(700))).date().isoformat(),
                "new_status": r.pick([100000000, 100000001, 100000002]),
                "new_accountid": r.pick(account_ids),
                # The project mapping requires the contact lookup (a Marketo custom object
                # record must link to a person), so every seeded project has a synced contact.
                "new_contactid": r.pick(project_contacts),
                "statecode": 0,
                "statuscode": 1,
                "new_synctomkto": s.sync_flag(),
                **s.system(owner),
            }

    s.insert("new_project", projects())
    return {
        "leads": scale,
        "contacts": n_contacts,
        "accounts": n_accounts,
        "opportunities": n_opps,
        "systemusers": n_users,
        "teams": len(team_ids),
        "projects": n_projects,
    }
