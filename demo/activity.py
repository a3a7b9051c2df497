"""The demo's activity: keeps changing both CRMs through their public APIs so the syncs have work.

Every ``interval`` seconds one round does what people would do in the two systems:

* **Marketo**: a few new persons arrive (a form fill, a list import) through the REST API
  (``POST /rest/v1/leads.json``, ``createOnly`` by email); about half are flagged "Sync Person to
  Microsoft" (``msdSyncToDynamics``), so the sync creates them as Dynamics leads;
* **Dataverse**: sales updates a few contacts (title, phone, city) with ``PATCH`` and opens a new
  opportunity on an account with ``POST`` through the Web API.

It uses its own minimal clients (``requests``, client-credentials tokens), not the sync's
hooks, because it plays the part of the other users of both systems. Credentials come from the
connections in ``airflow_settings.yaml`` (never from the command line, where ``ps`` shows them),
and nothing secret is logged. Only rows whose sync filter is not an explicit No are touched in
Dataverse, so every change is one the sync should carry to Marketo.

Usage: ``python -m demo.activity --marketo-url https://127.0.0.1:8081
--dynamics-url https://127.0.0.1:8082 --ca-file var/emulators/ca/ca.pem [--interval 20]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from faker import Faker

from crm_sync.settings_loader import parse_settings

log = logging.getLogger("demo.activity")

API_VERSION = "9.2"
FILTER_COLUMN = "new_synctomkto"
#: Labels of the Marketo picklists that the lead mapping turns into Dataverse option sets.
LEAD_SOURCES = ("Web", "Trade Show", "Seminar", "Advertisement", "Partner", "Word of Mouth")
RATINGS = ("Hot", "Warm", "Cold")
STEPS = ("Qualify", "Develop", "Propose")
DEAL_KINDS = ("renewal", "expansion", "new business", "pilot")


class ActivityError(RuntimeError):
    """An API refused an activity call; the message names the call and the API's code."""


@dataclass(frozen=True)
class Endpoint:
    """Where one API is and the client credentials it accepts."""

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    verify: str | bool = True
    tenant_id: str | None = None


@dataclass(frozen=True)
class ActivityConfig:
    """How much happens per round and how often.

    Attributes:
        interval_s: Seconds between the starts of two rounds.
        new_leads: New Marketo persons per round.
        contact_updates: Dataverse contacts updated per round.
        new_opportunities: Dataverse opportunities created per round.
        sync_share: Share of the new Marketo persons flagged for creation in Dynamics.
    """

    interval_s: float = 20.0
    new_leads: int = 3
    contact_updates: int = 3
    new_opportunities: int = 1
    sync_share: float = 0.5

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ActivityConfig:
        """Read ``MDS_ACTIVITY_INTERVAL``, ``_LEADS``, ``_CONTACTS``, ``_OPPORTUNITIES`` (defaults above).

        Raises:
            ValueError: A variable is not a number, or is negative, naming the variable.
        """
        env = dict(os.environ) if env is None else env
        defaults = cls()

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw in (None, ""):
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
            if value < 0:
                raise ValueError(f"{name}={raw!r} must not be negative")
            return value

        return cls(
            interval_s=number("MDS_ACTIVITY_INTERVAL", defaults.interval_s),
            new_leads=int(number("MDS_ACTIVITY_LEADS", defaults.new_leads)),
            contact_updates=int(number("MDS_ACTIVITY_CONTACTS", defaults.contact_updates)),
            new_opportunities=int(number("MDS_ACTIVITY_OPPORTUNITIES", defaults.new_opportunities)),
        )


@dataclass
class RoundReport:
    """What one round changed (ids and emails of fake demo records, nothing secret)."""

    created_leads: list[str] = field(default_factory=list)
    flagged_leads: list[str] = field(default_factory=list)
    updated_contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_opportunities: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One log line."""
        parts = [
            f"{len(self.created_leads)} new Marketo persons ({len(self.flagged_leads)} flagged for Dynamics)",
            f"{len(self.updated_contacts)} Dataverse contacts updated",
            f"{len(self.created_opportunities)} Dataverse opportunities created",
        ]
        if self.errors:
            parts.append(f"{len(self.errors)} errors: {'; '.join(self.errors)}")
        return ", ".join(parts)


class MarketoClient:
    """Just enough of the Marketo REST API: an identity token and lead creation."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.session = requests.Session()
        self._token: str | None = None

    def _authenticate(self) -> str:
        resp = self.session.post(
            f"{self.endpoint.base_url}/identity/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.endpoint.client_id,
                "client_secret": self.endpoint.client_secret,
            },
            verify=self.endpoint.verify,
            timeout=self.timeout,
        )
        if resp.status_code != 200:
            raise ActivityError(f"Marketo identity token: HTTP {resp.status_code}")
        self._token = str(resp.json()["access_token"])
        return self._token

    def create_leads(self, persons: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create persons (``createOnly``, deduplicated by email); return Marketo's per-record results.

        Raises:
            ActivityError: The call failed as a whole (rate limit, quota, server error).
        """
        body = {"action": "createOnly", "lookupField": "email", "input": persons}
        for attempt in range(2):
            token = self._token or self._authenticate()
            resp = self.session.post(
                f"{self.endpoint.base_url}/rest/v1/leads.json",
                data=json.dumps(body),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                verify=self.endpoint.verify,
                timeout=self.timeout,
            )
            if resp.status_code != 200:
                raise ActivityError(f"POST /rest/v1/leads.json: HTTP {resp.status_code}")
            payload = resp.json()
            if payload.get("success"):
                return list(payload.get("result") or [])
            codes = [str(e.get("code")) for e in payload.get("errors") or []]
            if attempt == 0 and set(codes) & {"601", "602"}:  # token expired or invalid: renew once
                self._token = None
                continue
            raise ActivityError(f"POST /rest/v1/leads.json: code {','.join(codes) or '?'}")
        raise ActivityError("POST /rest/v1/leads.json: token refused twice")


class DataverseClient:
    """Just enough of the Dataverse Web API: a client-credentials token, reads, PATCH and POST."""

    def __init__(self, endpoint: Endpoint, timeout: float = 60.0) -> None:
        if not endpoint.tenant_id:
            raise ValueError("the Dataverse endpoint needs a tenant_id")
        self.endpoint = endpoint
        self.timeout = timeout
        self.session = requests.Session()
        self._token: str | None = None
        self.api = f"{endpoint.base_url}/api/data/v{API_VERSION}"

    def _authenticate(self) -> str:
        resp = self.session.post(
            f"{self.endpoint.base_url}/{self.endpoint.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.endpoint.client_id,
                "client_secret": self.endpoint.client_secret,
                "scope": f"{self.endpoint.base_url}/.default",
            },
            verify=self.endpoint.verify,
            timeout=self.timeout,
        )
        if resp.status_code != 200:
            raise ActivityError(f"Entra ID token: HTTP {resp.status_code}")
        self._token = str(resp.json()["access_token"])
        return self._token

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **headers: str) -> Any:
        for attempt in range(2):
            token = self._token or self._authenticate()
            resp = self.session.request(
                method,
                f"{self.api}/{path}",
                data=None if body is None else json.dumps(body),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "OData-Version": "4.0",
                    "Accept": "application/json",
                    **headers,
                },
                verify=self.endpoint.verify,
                timeout=self.timeout,
            )
            if resp.status_code == 401 and attempt == 0:
                self._token = None
                continue
            if resp.status_code >= 400:
                code = ""
                with contextlib.suppress(ValueError):
                    code = str(resp.json().get("error", {}).get("code", ""))
                raise ActivityError(f"{method} {path.split('?')[0]}: HTTP {resp.status_code} {code}".strip())
            return resp.json() if resp.content else None
        raise ActivityError(f"{method} {path.split('?')[0]}: token refused twice")

    def synced_ids(self, entity_set: str, key: str, limit: int = 500) -> list[str]:
        """Ids of up to ``limit`` rows whose sync filter is not an explicit No (first page only)."""
        page = self._call(
            "GET",
            f"{entity_set}?$select={key},{FILTER_COLUMN}",
            Prefer=f"odata.maxpagesize={limit}",
        )
        return [str(row[key]) for row in page.get("value", []) if row.get(FILTER_COLUMN) is not False]

    def update(self, entity_set: str, record_id: str, values: dict[str, Any]) -> None:
        """PATCH one existing row (``If-Match: *``: never creates one)."""
        self._call("PATCH", f"{entity_set}({record_id})", values, **{"If-Match": "*"})

    def create(self, entity_set: str, values: dict[str, Any]) -> None:
        """POST one new row (its primary key is in ``values``)."""
        self._call("POST", entity_set, values)


class ActivityGenerator:
    """Makes one round of realistic changes at a time in both systems.

    Args:
        marketo: Marketo client.
        dataverse: Dataverse client.
        config: How much to do per round.
        seed: Seed of the fake values (None: different every start).
    """

    def __init__(
        self,
        marketo: MarketoClient,
        dataverse: DataverseClient,
        config: ActivityConfig,
        seed: int | None = None,
    ) -> None:
        self.marketo = marketo
        self.dataverse = dataverse
        self.config = config
        self.rng = random.Random(seed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(self.rng.getrandbits(32))
        self._contacts: list[str] = []
        self._accounts: list[str] = []
        self.rounds = 0

    def close(self) -> None:
        """Close both clients' keep-alive connections."""
        self.marketo.session.close()
        self.dataverse.session.close()

    def _refresh_targets(self) -> None:
        # Re-read now and then, so contacts and accounts created meanwhile get their turn too.
        if not self._contacts or self.rounds % 30 == 0:
            self._contacts = self.dataverse.synced_ids("contacts", "contactid")
            self._accounts = self.dataverse.synced_ids("accounts", "accountid")

    def new_person(self) -> dict[str, Any]:
        """A realistic new Marketo person with a unique email."""
        fake, rng = self.fake, self.rng
        first, last = fake.first_name(), fake.last_name()
        token = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
        person: dict[str, Any] = {
            "firstName": first,
            "lastName": last,
            "email": f"{first}.{last}.{token}@{fake.domain_name()}".lower().replace(" ", ""),
            "company": fake.company()[:100],
            "title": fake.job()[:100],
            "phone": fake.numerify("+1-###-###-####"),
            "city": fake.city(),
            "state": fake.state_abbr(),
            "country": "United States",
            "leadSource": rng.choice(LEAD_SOURCES),
            "rating": rng.choice(RATINGS),
        }
        if rng.random() < self.config.sync_share:
            person["msdSyncToDynamics"] = True
        return person

    def contact_change(self) -> dict[str, Any]:
        """One or two realistic edits a salesperson makes to a contact."""
        fake = self.fake
        options: dict[str, Any] = {
            "jobtitle": fake.job()[:100],
            "telephone1": fake.numerify("+1-###-###-####"),
            "address1_city": fake.city(),
            "mobilephone": fake.numerify("+1-###-###-####"),
        }
        chosen = self.rng.sample(sorted(options), self.rng.randint(1, 2))
        return {name: options[name] for name in chosen}

    def new_opportunity(self, account_id: str) -> dict[str, Any]:
        """A new open opportunity on ``account_id``."""
        fake, rng = self.fake, self.rng
        close = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=rng.randint(14, 180))
        return {
            "opportunityid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "name": f"{fake.company()[:60]} - {rng.choice(DEAL_KINDS)}",
            "estimatedvalue": float(rng.randrange(5_000, 750_000, 500)),
            "estimatedclosedate": close.isoformat(),
            "closeprobability": rng.randint(10, 90),
            "stepname": rng.choice(STEPS),
            "description": fake.sentence(nb_words=12),
            "customerid_account@odata.bind": f"/accounts({account_id})",
            "parentaccountid@odata.bind": f"/accounts({account_id})",
        }

    def run_round(self) -> RoundReport:
        """Make one round of changes; an API error is reported, and the rest of the round goes on."""
        report = RoundReport()
        cfg = self.config
        if cfg.new_leads:
            persons = [self.new_person() for _ in range(cfg.new_leads)]
            try:
                results = self.marketo.create_leads(persons)
                for person, result in zip(persons, results, strict=False):
                    if result.get("status") == "created":
                        report.created_leads.append(person["email"])
                        if person.get("msdSyncToDynamics"):
                            report.flagged_leads.append(person["email"])
                    else:
                        report.errors.append(f"Marketo person {person['email']}: {result.get('status')}")
            except (ActivityError, requests.RequestException) as err:
                report.errors.append(_describe(err))
        try:
            self._refresh_targets()
        except (ActivityError, requests.RequestException) as err:
            report.errors.append(_describe(err))
        contacts = self.rng.sample(self._contacts, min(cfg.contact_updates, len(self._contacts)))
        for contact_id in contacts:
            change = self.contact_change()
            try:
                self.dataverse.update("contacts", contact_id, change)
                report.updated_contacts[contact_id] = change
            except (ActivityError, requests.RequestException) as err:
                report.errors.append(_describe(err))
        for _ in range(cfg.new_opportunities if self._accounts else 0):
            opportunity = self.new_opportunity(self.rng.choice(self._accounts))
            try:
                self.dataverse.create("opportunities", opportunity)
                report.created_opportunities[opportunity["opportunityid"]] = opportunity
            except (ActivityError, requests.RequestException) as err:
                report.errors.append(_describe(err))
        self.rounds += 1
        return report

    def run(self, stop: threading.Event, max_rounds: int = 0) -> int:
        """Run rounds every ``interval_s`` until ``stop`` is set (or ``max_rounds`` when > 0)."""
        while not stop.is_set():
            started = time.monotonic()
            report = self.run_round()
            log.info("round %d: %s", self.rounds, report.summary())
            for email in report.created_leads:
                log.info(
                    "  Marketo: new person %s%s",
                    email,
                    " (sync to Dynamics)" * (email in report.flagged_leads),
                )
            for contact_id, change in report.updated_contacts.items():
                log.info("  Dataverse: contact %s updated: %s", contact_id, ", ".join(sorted(change)))
            for opp_id, opp in report.created_opportunities.items():
                log.info("  Dataverse: opportunity %s created: %s", opp_id, opp["name"])
            if max_rounds and self.rounds >= max_rounds:
                break
            stop.wait(max(0.0, self.config.interval_s - (time.monotonic() - started)))
        return self.rounds


def _describe(err: Exception) -> str:
    # requests' messages can include the URL; ours never carry query-string secrets, but keep
    # the message short and typed.
    return f"{type(err).__name__}: {str(err)[:200]}"


def endpoints_from_settings(
    settings_file: Path,
    marketo_url: str,
    dynamics_url: str,
    verify: str | bool,
    marketo_conn_id: str = "marketo_default",
    dynamics_conn_id: str = "dynamics_default",
) -> tuple[Endpoint, Endpoint]:
    """Client credentials of both connections in ``settings_file``, aimed at the given URLs.

    Raises:
        KeyError: A connection is missing or has no login/password (naming file and connection).
    """
    settings = parse_settings(settings_file, env={})
    found: list[Endpoint] = []
    for conn_id, url in ((marketo_conn_id, marketo_url), (dynamics_conn_id, dynamics_url)):
        conn = settings.connections.get(conn_id)
        if not conn or not conn.get("login") or not conn.get("password"):
            raise KeyError(f"{settings_file}: connection {conn_id!r} needs conn_login and conn_password")
        extra = json.loads(conn.get("extra") or "{}")
        found.append(
            Endpoint(
                base_url=url.rstrip("/"),
                client_id=str(conn["login"]),
                client_secret=str(conn["password"]),
                verify=verify,
                tenant_id=extra.get("tenant_id"),
            )
        )
    return found[0], found[1]


def main(argv: list[str] | None = None) -> int:
    """Run the activity until SIGTERM or Ctrl-C."""
    from crm_sync.localenv import DYNAMICS_EMULATOR_PORT, MARKETO_EMULATOR_PORT, PROJECT_DIR

    env_cfg = ActivityConfig.from_env()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--marketo-url", default=f"https://127.0.0.1:{MARKETO_EMULATOR_PORT}")
    parser.add_argument("--dynamics-url", default=f"https://127.0.0.1:{DYNAMICS_EMULATOR_PORT}")
    parser.add_argument("--ca-file", type=Path, default=PROJECT_DIR / "var" / "emulators" / "ca" / "ca.pem")
    parser.add_argument("--settings", type=Path, default=PROJECT_DIR / "airflow_settings.yaml")
    parser.add_argument("--interval", type=float, default=env_cfg.interval_s, help="seconds between rounds")
    parser.add_argument("--leads", type=int, default=env_cfg.new_leads, help="new Marketo persons per round")
    parser.add_argument(
        "--contacts", type=int, default=env_cfg.contact_updates, help="contact updates per round"
    )
    parser.add_argument(
        "--opportunities", type=int, default=env_cfg.new_opportunities, help="new opportunities per round"
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="stop after this many rounds (0: run until stopped)"
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ActivityConfig(args.interval, args.leads, args.contacts, args.opportunities)
    marketo, dynamics = endpoints_from_settings(
        args.settings, args.marketo_url, args.dynamics_url, str(args.ca_file)
    )
    generator = ActivityGenerator(MarketoClient(marketo), DataverseClient(dynamics), config, args.seed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    log.info(
        "activity: every %.0f s %d new Marketo persons, %d contact updates, %d new opportunities",
        config.interval_s,
        config.new_leads,
        config.contact_updates,
        config.new_opportunities,
    )
    try:
        rounds = generator.run(stop, args.rounds)
    except KeyboardInterrupt:
        rounds = generator.rounds
    finally:
        generator.close()
    log.info("activity stopped after %d rounds", rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
