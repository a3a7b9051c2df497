"""The demo's activity generator against real emulator processes (HTTPS, their own CA)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo.activity import (
    ActivityConfig,
    ActivityGenerator,
    DataverseClient,
    MarketoClient,
    endpoints_from_settings,
)
from tests.support.emulator_procs import RunningEmulator, start_emulator

PROJECT_DIR = Path(__file__).resolve().parents[3]
SETTINGS = PROJECT_DIR / "airflow_settings.yaml"


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[tuple[RunningEmulator, RunningEmulator]]:
    marketo = start_emulator("marketo", tmp_path / "marketo")
    dynamics = start_emulator("dynamics", tmp_path / "dynamics", seed_scale=200)
    try:
        yield marketo, dynamics
    finally:
        marketo.stop()
        dynamics.stop()


@pytest.fixture
def make_generator(
    emulators: tuple[RunningEmulator, RunningEmulator],
) -> Iterator[Callable[[ActivityConfig], ActivityGenerator]]:
    """Build generators aimed at the test emulators; their connections are closed afterwards."""
    marketo, dynamics = emulators
    made: list[ActivityGenerator] = []

    def make(config: ActivityConfig) -> ActivityGenerator:
        m_end, d_end = endpoints_from_settings(SETTINGS, marketo.base_url, dynamics.base_url, marketo.verify)
        d_end = dataclasses.replace(d_end, verify=dynamics.verify)  # each test emulator has its own CA
        made.append(ActivityGenerator(MarketoClient(m_end), DataverseClient(d_end), config, seed=7))
        return made[-1]

    yield make
    for gen in made:
        gen.close()


def _marketo_persons(gen: ActivityGenerator, emails: list[str]) -> dict[str, dict[str, object]]:
    client = gen.marketo
    token = client._token or client._authenticate()
    resp = client.session.get(
        f"{client.endpoint.base_url}/rest/v1/leads.json",
        params={
            "filterType": "email",
            "filterValues": ",".join(emails),
            "fields": "email,firstName,lastName,company,leadSource,msdSyncToDynamics",
        },
        headers={"Authorization": f"Bearer {token}"},
        verify=client.endpoint.verify,
        timeout=30,
    )
    body = resp.json()
    assert body["success"], body
    return {str(r["email"]): r for r in body["result"]}


def test_one_round_creates_marketo_persons_updates_contacts_and_opens_opportunities(
    make_generator: Callable[[ActivityConfig], ActivityGenerator],
) -> None:
    config = ActivityConfig(interval_s=0, new_leads=6, contact_updates=3, new_opportunities=2, sync_share=0.5)
    gen = make_generator(config)
    report = gen.run_round()
    assert report.errors == []
    assert len(report.created_leads) == 6
    assert 0 < len(report.flagged_leads) < 6  # seed 7 flags some, not all

    persons = _marketo_persons(gen, report.created_leads)
    assert set(persons) == set(report.created_leads)
    for email, person in persons.items():
        assert person["lastName"]
        assert person["company"]
        assert person["leadSource"]
        assert bool(person.get("msdSyncToDynamics")) is (email in report.flagged_leads)

    dv = gen.dataverse
    assert len(report.updated_contacts) == 3
    for contact_id, change in report.updated_contacts.items():
        row = dv._call("GET", f"contacts({contact_id})?$select={','.join(change)},new_synctomkto")
        assert {k: row[k] for k in change} == change
        assert row["new_synctomkto"] is not False  # only rows the sync carries are touched
    assert len(report.created_opportunities) == 2
    for opp_id, opp in report.created_opportunities.items():
        row = dv._call("GET", f"opportunities({opp_id})?$select=name,estimatedvalue,_customerid_value")
        assert row["name"] == opp["name"]
        assert row["estimatedvalue"] == opp["estimatedvalue"]
        assert f"/accounts({row['_customerid_value']})" == opp["customerid_account@odata.bind"]


def test_an_api_failure_is_reported_and_the_rest_of_the_round_goes_on(
    emulators: tuple[RunningEmulator, RunningEmulator],
    make_generator: Callable[[ActivityConfig], ActivityGenerator],
) -> None:
    _marketo, dynamics = emulators
    gen = make_generator(ActivityConfig(0, new_leads=2, contact_updates=2, new_opportunities=1))
    gen.run_round()  # reads the contact and account ids while Dataverse answers
    dynamics.admin(
        "PUT", "faults", json={"error_rate": 1.0, "error_codes": ["503"], "endpoints": ["/api/data"]}
    )
    report = gen.run_round()
    assert len(report.created_leads) == 2
    assert report.updated_contacts == {}
    assert report.created_opportunities == {}
    assert len(report.errors) == 3
    assert all("HTTP 503" in e for e in report.errors), report.errors


def test_the_process_runs_rounds_logs_them_and_never_logs_a_secret(
    emulators: tuple[RunningEmulator, RunningEmulator], tmp_path: Path
) -> None:
    marketo, dynamics = emulators
    # Each emulator has its own CA in tests; the demo shares one. Trust both through one bundle.
    bundle = tmp_path / "bundle.pem"
    assert marketo.ca_file is not None
    assert dynamics.ca_file is not None
    bundle.write_text(marketo.ca_file.read_text() + dynamics.ca_file.read_text())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_DIR / "include"), str(PROJECT_DIR)]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo.activity",
            "--marketo-url",
            marketo.base_url,
            "--dynamics-url",
            dynamics.base_url,
            "--ca-file",
            str(bundle),
            "--interval",
            "0.5",
            "--leads",
            "2",
            "--contacts",
            "1",
            "--opportunities",
            "1",
            "--rounds",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "round 2: 2 new Marketo persons" in output
    assert "1 Dataverse contacts updated, 1 Dataverse opportunities created" in output
    assert "activity stopped after 2 rounds" in output
    m_end, d_end = endpoints_from_settings(SETTINGS, marketo.base_url, dynamics.base_url, True)
    for secret in (m_end.client_secret, d_end.client_secret):
        assert secret not in output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MDS_ACTIVITY_INTERVAL": "soon"}, "MDS_ACTIVITY_INTERVAL='soon' is not a number"),
        ({"MDS_ACTIVITY_LEADS": "-1"}, "MDS_ACTIVITY_LEADS='-1' must not be negative"),
    ],
)
def test_bad_rate_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ActivityConfig.from_env(env)


def test_rate_settings_come_from_the_environment() -> None:
    cfg = ActivityConfig.from_env({"MDS_ACTIVITY_INTERVAL": "5", "MDS_ACTIVITY_LEADS": "10"})
    assert (cfg.interval_s, cfg.new_leads, cfg.contact_updates) == (5.0, 10, ActivityConfig().contact_updates)
