"""Activities on the Dynamics timeline (issue 20): activities/s and API calls per 1,000 activities.

Usage: ``python -m benchmarks.activities_bench [--activities 20000] [--persons 500] [--json]``

Starts both emulators (limits off, Marketo bulk jobs without their minimum processing time),
creates ``--persons`` Dataverse leads linked in the id map to Marketo lead ids, lays down
``--activities`` activities of the mapped types (and a tenth as many of an unmapped type) at
past dates within one month, then runs the task entry points of ``sync_activities_history``
(one data interval: the bulk export) and of ``sync_activities`` (the same number laid down
again, dated now: the activity feed), as their DAG tasks do: extract (budget check, read, map,
stage) → load of every staged batch → commit. Prints, for each path, the activities written per
second of wall time and the API calls per 1,000 activities against the minimum
(:func:`benchmarks.minimum.activities_minimum`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.minimum import activities_minimum

MAPPED = (1, 2, 7, 10, 11, 46)  # the shipped activities.yaml's types, as the emulator numbers them
UNMAPPED = 6  # Send Email


def _connections(marketo: Any, dynamics: Any) -> None:
    # Limits off means the hooks' own limiter too (as benchmarks.harness.LimitMode.off): with
    # Marketo's 100 calls / 20 s still paced client-side, a 100,000-activity feed (336 calls)
    # waited about a minute for a limit the emulator did not enforce.
    wide = {"rate_limit_calls": 1_000_000, "rate_limit_window_seconds": 20}
    os.environ["AIRFLOW_CONN_MARKETO_DEFAULT"] = marketo.connection(
        timeout=120, bulk_poll_seconds=0.2, **wide
    )
    os.environ["AIRFLOW_CONN_DYNAMICS_DEFAULT"] = dynamics.connection(timeout=120, **wide)


def _persons(settings: Any, persons: int) -> list[int]:
    """``persons`` Dataverse leads, linked to Marketo ids 1..persons in the id map."""
    from crm_sync.state import make_engine, session_scope, upgrade, upsert_links
    from crm_sync_hooks.dynamics import DynamicsHook

    guids = [str(uuid.uuid4()) for _ in range(persons)]
    hook = DynamicsHook("dynamics_default")
    try:
        rows = [{"leadid": g, "lastname": f"Bench {i}"} for i, g in enumerate(guids)]
        results = hook.upsert_records("leads", rows, ["leadid"], id_column="leadid", batch_size=1000)
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    finally:
        hook.close()
    engine = make_engine(settings.state_url)
    upgrade(engine)
    with session_scope(engine) as session:
        links = [{"dynamics_id": g, "marketo_id": str(i + 1), "state": "active"} for i, g in enumerate(guids)]
        upsert_links(session, "lead", links)
    engine.dispose()
    return list(range(1, persons + 1))


def _lay_down(marketo: Any, lead_ids: list[int], count: int, start: datetime, span: timedelta) -> None:
    """``count`` mapped activities (and ``count // 10`` unmapped) spread over ``[start, start+span)``."""
    items = []
    total = count + count // 10
    for i in range(total):
        kind = MAPPED[i % len(MAPPED)] if i < count else UNMAPPED
        when = start + span * (i / total)
        items.append(
            {
                "leadId": lead_ids[i % len(lead_ids)],
                "activityTypeId": kind,
                "activityDate": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "primaryAttributeValue": f"Asset {i % 97}",
                "primaryAttributeValueId": i % 97,
                "attributes": {"Device": "Laptop", "Webpage URL": f"https://x.test/{i % 31}"},
            }
        )
    for part in range(0, len(items), 50_000):
        marketo.admin("POST", "activities", json={"activities": items[part : part + 50_000]})


_WAITED: list[float] = []


def _time_answers() -> None:
    """Sum the time every HTTP answer took to arrive (``Response.elapsed``: the emulators' share)."""
    import requests

    if getattr(requests.Session.send, "_timed", False):
        return
    send = requests.Session.send

    def timed(self: requests.Session, request: Any, **kwargs: Any) -> requests.Response:
        response = send(self, request, **kwargs)
        _WAITED.append(response.elapsed.total_seconds())
        return response

    timed._timed = True  # type: ignore[attr-defined]
    requests.Session.send = timed  # type: ignore[method-assign]


def _one_run(settings: Any, window: tuple[datetime, datetime] | None) -> dict[str, Any]:
    from crm_sync.guards import GuardSettings
    from crm_sync.tasks.activities import run_commit, run_extract, run_load

    _time_answers()
    _WAITED.clear()
    started = time.perf_counter()
    job = {"poll_seconds": 1.0, "first_poll_seconds": 1.0}  # each status poll is a call
    extracted = run_extract(settings, GuardSettings(), window=window, export_job=job)
    for batch in extracted["batches"]:
        run_load(settings, batch)
    counts = run_commit(settings)
    return {"seconds": time.perf_counter() - started, "api_wait": sum(_WAITED), **counts}


def _calls(emulator: Any) -> tuple[int, dict[str, int], dict[str, int]]:
    stats = emulator.stats()
    routes = {
        k: int(v)
        for k, v in stats["calls"].items()
        if "oauth" not in k and "/identity/" not in k and "openid-configuration" not in k
    }
    return sum(routes.values()), routes, {k: int(v) for k, v in stats.get("records", {}).items()}


def _measure(name: str, settings: Any, emulators: tuple[Any, Any], window: Any, count: int) -> dict[str, Any]:
    marketo, dynamics = emulators
    for emu in emulators:
        emu.admin("POST", "stats/reset")
    run = _one_run(settings, window)
    m_calls, m_routes, _ = _calls(marketo)
    d_calls, d_routes, _ = _calls(dynamics)
    minimum = activities_minimum(int(run["loaded"]), m_routes, history=window is not None)
    calls = m_calls + d_calls
    return {
        "path": name,
        "activities": count,
        "loaded": int(run["loaded"]),
        "seconds": round(run["seconds"], 2),
        "activities_per_s": round(int(run["loaded"]) / run["seconds"]),
        # Wall time not spent waiting for an API answer: the sync's own share (read, map, stage).
        "api_wait_s": round(run["api_wait"], 2),
        "sync_side_activities_per_s": round(int(run["loaded"]) / max(run["seconds"] - run["api_wait"], 1e-6)),
        "marketo_calls": m_calls,
        "dynamics_calls": d_calls,
        "calls": calls,
        "min_calls": minimum,
        "ratio": round(calls / minimum, 3) if minimum else None,
        "calls_per_1000": round(1000 * calls / max(count, 1), 2),
        "min_calls_per_1000": round(1000 * minimum / max(count, 1), 2),
        "routes": {**m_routes, **d_routes},
    }


def run(activities: int, persons: int) -> list[dict[str, Any]]:
    """Both paths on fresh emulators; one figures dict per path."""
    from crm_sync.engine.context import RunSettings
    from tests.support.emulator_procs import start_emulator

    with tempfile.TemporaryDirectory(prefix="mds-activities-bench-") as tmp:
        root = Path(tmp)
        marketo = start_emulator("marketo", root / "marketo", ["--limits", "off", "--bulk-job-seconds", "0"])
        dynamics = start_emulator("dynamics", root / "dynamics", ["--limits", "off"])
        try:
            _connections(marketo, dynamics)
            state_url = f"sqlite:///{root / 'state.db'}"
            staging = f"file://{root / 'staging'}"

            def settings(run_id: str) -> RunSettings:
                return RunSettings(run_id=run_id, state_url=state_url, staging_url=staging)

            lead_ids = _persons(settings("bench-setup"), persons)
            month = (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))
            _lay_down(marketo, lead_ids, activities, month[0], month[1] - month[0])
            pair = (marketo, dynamics)
            history = _measure("history (bulk export)", settings("bench-history"), pair, month, activities)
            recent = datetime.now(UTC) - timedelta(hours=2)
            _lay_down(marketo, lead_ids, activities, recent, timedelta(hours=1))
            feed = _measure("incremental (activity feed)", settings("bench-feed"), pair, None, activities)
        finally:
            marketo.stop()
            dynamics.stop()
    return [history, feed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activities", type=int, default=20_000)
    parser.add_argument("--persons", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON lines")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the sync's own log lines are not the figure
    for figures in run(args.activities, args.persons):
        if args.json:
            sys.stdout.write(json.dumps(figures) + "\n")
            continue
        f = figures
        sys.stdout.write(
            f"activities, {f['path']}: {f['loaded']:,} of {f['activities']:,} written "
            f"in {f['seconds']:.2f} s, "
            f"{f['activities_per_s']:,} activities/s; {f['calls']} API calls ({f['marketo_calls']} Marketo, "
            f"{f['dynamics_calls']} Dataverse) = {f['calls_per_1000']} per 1,000 activities, minimum "
            f"{f['min_calls']} = {f['min_calls_per_1000']} per 1,000 (x{f['ratio']}); "
            f"{f['api_wait_s']:.2f} s of it waiting for API answers, the rest "
            f"{f['sync_side_activities_per_s']:,} activities/s\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
