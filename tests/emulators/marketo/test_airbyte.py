"""airbyte-source-marketo 2.1.3 (own virtualenv, run as a subprocess): ``check``, then ``read`` of
the ``leads`` stream, which the connector fetches with a bulk extract round trip.

The venv comes from ``tests/emulators/marketo/airbyte_venv.sh``; without it these tests skip.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators.common.credentials import default_credentials
from tests.emulators.marketo.conftest import Api
from tests.support.emulator_procs import PROJECT_DIR, RunningEmulator, start_emulator

AIRBYTE_PYTHON = PROJECT_DIR / ".venv-airbyte" / "bin" / "python"
WRAPPER = Path(__file__).with_name("run_airbyte_marketo.py")

# `make test` sets MDS_REQUIRE_TEST_CLIENTS and creates the venv, so there a missing venv fails.
pytestmark = pytest.mark.skipif(
    not AIRBYTE_PYTHON.exists() and not os.environ.get("MDS_REQUIRE_TEST_CLIENTS"),
    reason="no .venv-airbyte: create it with tests/emulators/marketo/airbyte_venv.sh",
)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """Limits on (the defaults), bulk jobs quick: the connector must cope with the real rules."""
    emu = start_emulator(
        "marketo", tmp_path_factory.mktemp("airbyte"), ["--time-scale", "0.05"], seed_scale=100
    )
    yield emu
    emu.stop()


def _airbyte(emu: RunningEmulator, workdir: Path, *args: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["REQUESTS_CA_BUNDLE"] = str(emu.ca_file)
    proc = subprocess.run(
        [str(AIRBYTE_PYTHON), str(WRAPPER), *args],
        capture_output=True, text=True, timeout=180, env=env, cwd=workdir, check=False,
    )  # fmt: skip
    messages = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return messages


def _config(emu: RunningEmulator, workdir: Path) -> Path:
    creds = default_credentials("marketo_default")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    config = {
        "domain_url": emu.base_url,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "start_date": (now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_date": (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_in_days": 30,
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_check_succeeds(emulator: RunningEmulator, tmp_path: Path) -> None:
    messages = _airbyte(emulator, tmp_path, "check", "--config", str(_config(emulator, tmp_path)))
    status = [m["connectionStatus"] for m in messages if m["type"] == "CONNECTION_STATUS"]
    assert status == [{"status": "SUCCEEDED"}]


def test_read_leads_through_a_bulk_extract(emulator: RunningEmulator, tmp_path: Path) -> None:
    api = Api(emulator)
    tag = uuid.uuid4().hex[:8]
    written = api.post("/rest/v1/leads.json", {"input": [
        {"email": f"ab-{tag}-{i}@example.com", "firstName": f"A{i}", "msdType": "Lead"} for i in range(40)
    ]})["result"]  # fmt: skip
    api.session.close()
    expected = {r["id"] for r in written}
    config = _config(emulator, tmp_path)

    catalog = next(m["catalog"] for m in _airbyte(emulator, tmp_path, "discover", "--config", str(config))
                   if m["type"] == "CATALOG")  # fmt: skip
    leads = next(s for s in catalog["streams"] if s["name"] == "leads")
    configured = {"streams": [{"stream": leads, "sync_mode": "incremental", "cursor_field": ["updatedAt"],
                               "destination_sync_mode": "append"}]}  # fmt: skip
    (tmp_path / "catalog.json").write_text(json.dumps(configured))
    emulator.admin("POST", "stats/reset")

    messages = _airbyte(
        emulator, tmp_path, "read", "--config", str(config), "--catalog", str(tmp_path / "catalog.json")
    )
    records = [
        m["record"]["data"] for m in messages if m["type"] == "RECORD" and m["record"]["stream"] == "leads"
    ]
    assert {int(r["id"]) for r in records} == expected
    assert {r["email"] for r in records} == {f"ab-{tag}-{i}@example.com" for i in range(40)}
    calls = emulator.admin("GET", "stats").json()["calls"]
    assert calls["POST /bulk/v1/leads/export/create.json"] == 1
    assert calls["POST /bulk/v1/leads/export/{id}/enqueue.json"] == 1
    assert calls["GET /bulk/v1/leads/export/{id}/file.json"] == 1
