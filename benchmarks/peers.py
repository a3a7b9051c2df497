"""Extract the same leads from the same Marketo emulator with our hook and with peer connectors.

* ours: ``MarketoHook.bulk_extract_leads`` (``benchmarks.extract_child``), in ``.venv``;
* ``airbyte-source-marketo`` 2.1.3 in ``.venv-airbyte`` through the repository's wrapper
  ``tests/emulators/marketo/run_airbyte_marketo.py`` (CA trust, 1 s poll instead of 60 s);
* ``tap-marketo`` 2.9.4 in ``.venv-tap-marketo`` through ``benchmarks/peers/run_tap_marketo.py``
  (base URL and CA trust; ``poll_interval`` 1 s from its own config).

Each runs as a subprocess whose memory is sampled; the emulator's counters are reset before
each, so the calls are that client's alone. Every client reads all describe fields of every lead
updated between :data:`START` and now, in windows of 30-31 days (their own default windowing).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from benchmarks.harness import MB, LimitMode, RssSampler, split_calls
from crm_sync.localenv import airflow_env
from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import PROJECT_DIR, RunningEmulator, start_emulator

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

log = logging.getLogger(__name__)

START = datetime(2024, 1, 1, tzinfo=UTC)  # the seed's persons were created from 2024-01-01 on
AIRBYTE_PYTHON = PROJECT_DIR / ".venv-airbyte" / "bin" / "python"
AIRBYTE_WRAPPER = PROJECT_DIR / "tests" / "emulators" / "marketo" / "run_airbyte_marketo.py"
TAP_PYTHON = PROJECT_DIR / ".venv-tap-marketo" / "bin" / "python"
TAP_WRAPPER = PROJECT_DIR / "benchmarks" / "peers" / "run_tap_marketo.py"
DATAVERSE_PEER_PYTHON = PROJECT_DIR / ".venv-airbyte-dataverse" / "bin" / "python"
DATAVERSE_WRAPPER = PROJECT_DIR / "benchmarks" / "peers" / "run_dataverse_source.py"


def _peer_env(emu: RunningEmulator) -> dict[str, str]:
    """A clean environment for a peer venv: no project PYTHONPATH, the emulator's CA trusted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "AIRFLOW"))}
    env["REQUESTS_CA_BUNDLE"] = str(emu.ca_file)
    env["MARKETO_BASE_URL"] = emu.base_url
    return env


def _run_sampled(
    argv: Sequence[str], env: dict[str, str], cwd: Path, stdout: Path, timeout: float
) -> dict[str, Any]:
    """Run ``argv``, sample its RSS, return wall seconds, exit code and peak RSS."""
    started = time.monotonic()
    with stdout.open("wb") as out, stdout.with_suffix(".err").open("wb") as err:
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=err)
        with RssSampler(proc.pid) as sampler:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    seconds = time.monotonic() - started
    peak = max((rss for _, rss in sampler.samples), default=0)
    return {"seconds": seconds, "returncode": proc.returncode, "peak_rss_mb": round(peak / MB, 1)}


def _count_records(path: Path, airbyte: bool, stream: str = "leads") -> int:
    rows = 0
    with path.open("rb") as handle:
        for line in handle:
            if not line.startswith(b"{"):
                continue
            msg = json.loads(line)
            name = msg["record"]["stream"] if airbyte and msg.get("type") == "RECORD" else msg.get("stream")
            if msg.get("type") == "RECORD" and name == stream:
                rows += 1
    return rows


def run_ours(
    emu: RunningEmulator, mode: LimitMode, workdir: Path, start: datetime, end: datetime
) -> dict[str, Any]:
    """Our hook's bulk extract of every lead."""
    cred = default_credentials("marketo_default")
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(airflow_env(workdir / "airflow-home", parallelism=2))
    extra = {
        "ca_bundle": str(emu.ca_file),
        "timeout": 120,
        "limiter_url": f"sqlite:///{workdir / 'limiter.sqlite'}",
        "rate_limit_calls": mode.marketo_calls,
        "rate_limit_window_seconds": mode.marketo_window_s,
    }
    env["AIRFLOW_CONN_MARKETO_DEFAULT"] = json.dumps(
        {"conn_type": "marketo", "host": emu.base_url, "login": cred.client_id,
         "password": cred.client_secret, "extra": extra}
    )  # fmt: skip
    out = workdir / "ours.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.extract_child",
        "marketo",
        start.isoformat(),
        end.isoformat(),
        str(out),
    ]
    run = _run_sampled(argv, env, PROJECT_DIR, workdir / "ours.out", timeout=3600)
    if run["returncode"] != 0:
        return {"error": (workdir / "ours.err").read_text(errors="replace")[-2000:], **run}
    report = json.loads(out.read_text())
    return {
        **run,
        "rows": report["rows"],
        "fields": report["fields"],
        "how": "MarketoHook.bulk_extract_leads",
    }


def _airbyte_config(emu: RunningEmulator, workdir: Path, start: datetime, end: datetime) -> Path:
    cred = default_credentials("marketo_default")
    config = {
        "domain_url": emu.base_url,
        "client_id": cred.client_id,
        "client_secret": cred.client_secret,
        "start_date": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_date": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_in_days": 30,
    }
    path = workdir / "airbyte-config.json"
    path.write_text(json.dumps(config))
    return path


def run_airbyte(emu: RunningEmulator, workdir: Path, start: datetime, end: datetime) -> dict[str, Any]:
    """airbyte-source-marketo ``read`` of the ``leads`` stream (discover is set-up, not measured)."""
    if not AIRBYTE_PYTHON.exists():
        return {"error": "no .venv-airbyte (make install-test-clients)"}
    env = _peer_env(emu)
    config = _airbyte_config(emu, workdir, start, end)
    disc = subprocess.run(
        [str(AIRBYTE_PYTHON), str(AIRBYTE_WRAPPER), "discover", "--config", str(config)],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    catalog = next(
        (json.loads(line)["catalog"] for line in disc.stdout.splitlines()
         if line.startswith("{") and json.loads(line).get("type") == "CATALOG"),
        None,
    )  # fmt: skip
    if catalog is None:
        return {"error": f"discover failed: {disc.stderr[-1500:]}"}
    leads = next(s for s in catalog["streams"] if s["name"] == "leads")
    configured = {"streams": [{"stream": leads, "sync_mode": "incremental", "cursor_field": ["updatedAt"],
                               "destination_sync_mode": "append"}]}  # fmt: skip
    (workdir / "airbyte-catalog.json").write_text(json.dumps(configured))
    emu.admin("POST", "stats/reset")
    argv = [str(AIRBYTE_PYTHON), str(AIRBYTE_WRAPPER), "read", "--config", str(config),
            "--catalog", str(workdir / "airbyte-catalog.json")]  # fmt: skip
    run = _run_sampled(argv, env, workdir, workdir / "airbyte.out", timeout=3600)
    if run["returncode"] != 0:
        return {"error": (workdir / "airbyte.err").read_text(errors="replace")[-2000:], **run}
    fields = len(leads["json_schema"].get("properties", {}))
    return {**run, "rows": _count_records(workdir / "airbyte.out", airbyte=True), "fields": fields,
            "how": "airbyte-source-marketo 2.1.3 read (bulk extract), poll 1 s"}  # fmt: skip


def run_tap(emu: RunningEmulator, workdir: Path, start: datetime) -> dict[str, Any]:
    """tap-marketo sync of the ``leads`` stream with every field selected."""
    if not TAP_PYTHON.exists():
        return {"error": "no .venv-tap-marketo (benchmarks/peers/tap_marketo_venv.sh)"}
    cred = default_credentials("marketo_default")
    config = {
        "endpoint": "https://123-ABC-456.mktorest.com/rest",  # shape required; the wrapper redirects
        "client_id": cred.client_id,
        "client_secret": cred.client_secret,
        "start_date": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "poll_interval": 1,
        "max_export_days": 30,
    }
    cfg = workdir / "tap-config.json"
    cfg.write_text(json.dumps(config))
    env = _peer_env(emu)
    disc = subprocess.run(
        [str(TAP_PYTHON), str(TAP_WRAPPER), "--config", str(cfg), "--discover"],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if disc.returncode != 0:
        return {"error": f"discover failed: {disc.stderr[-1500:]}"}
    catalog = json.loads(disc.stdout)
    streams = [s for s in catalog["streams"] if s["tap_stream_id"] == "leads"]
    for stream in streams:
        for entry in stream["metadata"]:
            entry["metadata"]["selected"] = True
    (workdir / "tap-catalog.json").write_text(json.dumps({"streams": streams}))
    emu.admin("POST", "stats/reset")
    argv = [
        str(TAP_PYTHON),
        str(TAP_WRAPPER),
        "--config",
        str(cfg),
        "--properties",
        str(workdir / "tap-catalog.json"),
    ]
    run = _run_sampled(argv, env, workdir, workdir / "tap.out", timeout=3600)
    if run["returncode"] != 0:
        return {"error": (workdir / "tap.err").read_text(errors="replace")[-2000:], **run}
    fields = len(streams[0]["schema"].get("properties", {})) if streams else 0
    return {**run, "rows": _count_records(workdir / "tap.out", airbyte=False), "fields": fields,
            "how": "tap-marketo 2.9.4 sync (bulk extract), poll_interval 1 s"}  # fmt: skip


def minimum_bulk_calls(start: datetime, end: datetime, window_days: int = 31) -> int:
    """Create, enqueue, one status and one file call per export window of at most 31 days."""
    return 4 * math.ceil((end - start) / timedelta(days=window_days))


def compare(workdir: Path, mode: LimitMode, leads: int, start: datetime = START) -> dict[str, Any]:
    """Seed one Marketo emulator with ``leads`` persons and extract them with each client in turn."""
    emu = start_emulator(
        "marketo", workdir / "marketo", mode.marketo_args(), seed_scale=leads, ready_timeout=300
    )
    results: dict[str, Any] = {}
    try:
        end = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
        for name, runner in (
            ("ours", lambda d: run_ours(emu, mode, d, start, end)),
            ("airbyte-source-marketo", lambda d: run_airbyte(emu, d, start, end)),
            ("tap-marketo", lambda d: run_tap(emu, d, start)),
        ):
            peer_dir = workdir / name
            peer_dir.mkdir(parents=True, exist_ok=True)
            emu.admin("POST", "stats/reset")
            log.info("extract with %s (%s, %d leads)", name, mode.name, leads)
            result = runner(peer_dir)
            result.update(split_calls(emu.stats()))
            if result.get("rows") and result.get("seconds"):
                result["rows_per_s"] = round(result["rows"] / result["seconds"], 1)
            results[name] = result
    finally:
        emu.stop()
    minimum = minimum_bulk_calls(start, end)
    for result in results.values():
        result["min_api_calls"] = minimum
        result["ratio"] = round(result["api_calls"] / minimum, 3) if result.get("api_calls") else None
    best_peer = max(
        (r.get("rows_per_s") or 0.0 for n, r in results.items() if n != "ours" and not r.get("error")),
        default=0.0,
    )
    ours = results["ours"].get("rows_per_s") or 0.0
    return {
        "scenario": f"Marketo lead extract, {leads:,} leads",
        "limits": mode.name,
        "leads": leads,
        "window": [start.isoformat(), end.isoformat()],
        "minimum_definition": "4 calls (create, enqueue, status, file) per export window of 31 days, 1 token",
        "clients": results,
        "ours_over_best_peer": round(ours / best_peer, 3) if best_peer else None,
    }


def run_ours_dataverse(emu: RunningEmulator, mode: LimitMode, workdir: Path) -> dict[str, Any]:
    """Our hook's initial change-tracking read of every Dataverse lead (the lead mapping's columns)."""
    cred = default_credentials("dynamics_default")
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(airflow_env(workdir / "airflow-home", parallelism=2))
    extra = {
        "ca_bundle": str(emu.ca_file),
        "tenant_id": cred.tenant_id,
        "authority_host": emu.base_url,
        "api_version": "9.2",
        "timeout": 120,
        "limiter_url": f"sqlite:///{workdir / 'limiter.sqlite'}",
        "rate_limit_calls": mode.dynamics_calls,
        "rate_limit_window_seconds": mode.dynamics_window_s,
    }
    env["AIRFLOW_CONN_DYNAMICS_DEFAULT"] = json.dumps(
        {"conn_type": "dynamics", "host": emu.base_url, "login": cred.client_id,
         "password": cred.client_secret, "extra": extra}
    )  # fmt: skip
    out = workdir / "ours.json"
    argv = [sys.executable, "-m", "benchmarks.extract_child", "dynamics", str(out)]
    run = _run_sampled(argv, env, PROJECT_DIR, workdir / "ours.out", timeout=3600)
    if run["returncode"] != 0:
        return {"error": (workdir / "ours.err").read_text(errors="replace")[-2000:], **run}
    report = json.loads(out.read_text())
    how = "DynamicsHook.track_changes, pages of 5,000, mapped columns"
    read = round(report["seconds"], 2)
    return {**run, "rows": report["rows"], "fields": report["fields"], "read_seconds": read, "how": how}


def run_airbyte_dataverse(emu: RunningEmulator, workdir: Path) -> dict[str, Any]:
    """airbyte-source-microsoft-dataverse ``read`` of the ``lead`` stream (incremental, first sync)."""
    if not DATAVERSE_PEER_PYTHON.exists():
        return {"error": "no .venv-airbyte-dataverse (benchmarks/peers/dataverse_venv.sh)"}
    cred = default_credentials("dynamics_default")
    config = {
        "url": emu.base_url,
        "tenant_id": cred.tenant_id,
        "client_id": cred.client_id,
        "client_secret_value": cred.client_secret,
        "odata_maxpagesize": 5000,
    }
    cfg = workdir / "config.json"
    cfg.write_text(json.dumps(config))
    env = _peer_env(emu)
    env["DATAVERSE_TOKEN_URL"] = emu.base_url + "/{tenant_id}/oauth2/v2.0/token"
    disc = subprocess.run(
        [str(DATAVERSE_PEER_PYTHON), str(DATAVERSE_WRAPPER), "discover", "--config", str(cfg)],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    catalog = next(
        (json.loads(line)["catalog"] for line in disc.stdout.splitlines()
         if line.startswith("{") and json.loads(line).get("type") == "CATALOG"),
        None,
    )  # fmt: skip
    if catalog is None:
        return {"error": f"discover failed: {(disc.stdout + disc.stderr)[-1500:]}"}
    lead = next((s for s in catalog["streams"] if s["name"] == "lead"), None)
    if lead is None:
        return {"error": f"discover found no lead stream: {[s['name'] for s in catalog['streams']]}"}
    modes = lead.get("supported_sync_modes", ["full_refresh"])
    sync_mode = "incremental" if "incremental" in modes else "full_refresh"
    configured = {"streams": [{"stream": lead, "sync_mode": sync_mode, "destination_sync_mode": "append",
                               **({"cursor_field": lead.get("default_cursor_field") or []}
                                  if sync_mode == "incremental" else {})}]}  # fmt: skip
    (workdir / "catalog.json").write_text(json.dumps(configured))
    emu.admin("POST", "stats/reset")
    argv = [str(DATAVERSE_PEER_PYTHON), str(DATAVERSE_WRAPPER), "read", "--config", str(cfg),
            "--catalog", str(workdir / "catalog.json")]  # fmt: skip
    run = _run_sampled(argv, env, workdir, workdir / "peer.out", timeout=3600)
    if run["returncode"] != 0:
        return {"error": (workdir / "peer.err").read_text(errors="replace")[-2000:], **run}
    rows = _count_records(workdir / "peer.out", airbyte=True, stream="lead")
    fields = len(lead["json_schema"].get("properties", {}))
    how = f"airbyte-source-microsoft-dataverse 1.0.2 read ({sync_mode}), pages of 5,000, all columns"
    return {**run, "rows": rows, "fields": fields, "how": how}


def compare_dataverse(workdir: Path, mode: LimitMode, leads: int) -> dict[str, Any]:
    """Seed one Dataverse emulator with ``leads`` leads and read the ``lead`` table with each client."""
    emu = start_emulator(
        "dynamics", workdir / "dynamics", mode.dynamics_args(), seed_scale=leads, ready_timeout=300
    )
    results: dict[str, Any] = {}
    try:
        for name, runner in (
            ("ours", lambda d: run_ours_dataverse(emu, mode, d)),
            ("airbyte-source-microsoft-dataverse", lambda d: run_airbyte_dataverse(emu, d)),
        ):
            peer_dir = workdir / name
            peer_dir.mkdir(parents=True, exist_ok=True)
            emu.admin("POST", "stats/reset")
            log.info("Dataverse read with %s (%s, %d leads)", name, mode.name, leads)
            result = runner(peer_dir)
            result.update(split_calls(emu.stats()))
            if result.get("rows") and result.get("seconds"):
                result["rows_per_s"] = round(result["rows"] / result["seconds"], 1)
            results[name] = result
    finally:
        emu.stop()
    minimum = max(math.ceil(leads / 5000), 1)
    for result in results.values():
        result["min_api_calls"] = minimum
        result["ratio"] = round(result["api_calls"] / minimum, 3) if result.get("api_calls") else None
    peer = results["airbyte-source-microsoft-dataverse"].get("rows_per_s") or 0.0
    ours = results["ours"].get("rows_per_s") or 0.0
    return {
        "scenario": f"Dataverse lead read, {leads:,} leads",
        "limits": mode.name,
        "leads": leads,
        "minimum_definition": "ceil(rows/5000) pages (change tracking, maximum page size), 1 token",
        "clients": results,
        "ours_over_best_peer": round(ours / peer, 3) if peer else None,
    }
