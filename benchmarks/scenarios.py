"""Sync scenarios on one pair of emulators: full copy, incremental runs, a run with conflicts.

One :class:`benchmarks.harness.BenchEnv` per limit mode; the scenarios follow each other on it:

1. full copy of a seeded Dataverse org (the ``full_copy`` DAG when the checkout has it, else the
   first runs of ``sync_user``, ``sync_team``, ``sync_account``, ``sync_contact``, ``sync_lead``);
2. one settling run per person/account entity (the sync reads its own writes back once);
3. runs with 0 changes, then N changes on each side (leads: ``jobtitle`` in Dataverse, ``title``
   on other persons in Marketo), each followed by a settling run;
4. a bidirectional run where the same leads changed on both sides (Marketo wins for leads).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text

from benchmarks.harness import DAG_FILES, BenchEnv, DagRunMeasure, LimitMode
from benchmarks.minimum import dynamics_minimum, marketo_minimum, ratio

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

FULL_COPY_ORDER = ["sync_user", "sync_team", "sync_account", "sync_contact", "sync_lead"]
SETTLE = ["sync_account", "sync_contact", "sync_lead"]


WRITE_KINDS = (".write", ".imported")


def side_summary(runs: Sequence[dict[str, Any]], side: str) -> dict[str, Any]:
    """Calls, minimum and records of one side over the runs (``DagRunMeasure.as_dict()`` forms)."""
    routes: dict[str, int] = {}
    records: dict[str, int] = {}
    api = auth = minimum = 0
    for run in runs:
        s = run[side]
        api += s["api_calls"]
        auth += s["auth_calls"]
        if side == "dynamics":
            # A sync_<entity> run reads its own table from the delta link the copy stored.
            dag_id = str(run.get("dag_id", ""))
            delta = [dag_id.removeprefix("sync_")] if dag_id.startswith("sync_") else []
            minimum += dynamics_minimum(s, delta_reads=delta)
        else:
            minimum += marketo_minimum(s)
        for k, v in s["routes"].items():
            routes[k] = routes.get(k, 0) + v
        for k, v in s["records"].items():
            records[k] = records.get(k, 0) + int(v)
    return {
        "api_calls": api,
        "auth_calls": auth,
        "min_api_calls": minimum,
        "min_auth_calls": len(runs),
        "ratio": ratio(api, minimum),
        "records": records,
        "routes": routes,
    }


def refresh(item: dict[str, Any], mode: LimitMode) -> None:
    """(Re)compute a scenario's summary figures from its stored runs (also for older results)."""
    runs = item["runs"]
    marketo = side_summary(runs, "marketo")
    dynamics = side_summary(runs, "dynamics")
    wall = sum(r["wall_s"] for r in runs)
    bound = mode.bound_seconds(marketo["min_api_calls"] + 1, dynamics["min_api_calls"] + 1)
    written = sum(
        v for k, v in {**marketo["records"], **dynamics["records"]}.items() if k.endswith(WRITE_KINDS)
    )
    tasks = [
        {"dag_id": r["dag_id"], **t} for r in runs for t in r["tasks"] if t.get("peak_rss_mb") is not None
    ]
    item.update(
        dags=[r["dag_id"] for r in runs],
        wall_s=round(wall, 2),
        records_written=written,
        records_per_s=round(written / wall, 1) if wall else None,
        limit_bound_s=round(bound, 2),
        bound_over_wall=round(bound / wall, 3) if bound and wall else None,
        marketo=marketo,
        dynamics=dynamics,
        peak_rss_mb=max((t["peak_rss_mb"] for t in tasks), default=None),
        baseline_rss_mb=min((r["baseline_rss_mb"] for r in runs if r["baseline_rss_mb"]), default=None),
        cpu=_cpu(runs),
        tasks=tasks,
    )


def _cpu(runs: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """The runs' CPU split (:func:`benchmarks.harness.cpu_split`) added up; None for runs measured
    before it was recorded."""
    splits = [r["cpu"] for r in runs if r.get("cpu")]
    if not splits:
        return None
    return {key: round(sum(split.get(key, 0.0) for split in splits), 2) for key in splits[0]}


def summarize(name: str, env: BenchEnv, measures: Sequence[DagRunMeasure], **extra: Any) -> dict[str, Any]:
    """One scenario's figures from its DAG runs (summed when a scenario runs several DAGs)."""
    item: dict[str, Any] = {
        "scenario": name,
        "limits": env.mode.name,
        "runs": [m.as_dict() for m in measures],
        **extra,
    }
    refresh(item, env.mode)
    return item


# --- changes -------------------------------------------------------------------------------
def linked_leads(env: BenchEnv, limit: int) -> list[tuple[str, int]]:
    """``limit`` (Dataverse lead id, Marketo person id) pairs the sync has linked, in a stable order.

    A bulk-imported person has no Marketo id in the id map (imports return none), so those are
    looked up in Marketo by ``externalPersonId`` (the lead's GUID).
    """
    from crm_sync_hooks.marketo import MarketoHook

    engine = create_engine(env.state_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT dynamics_id, marketo_id FROM id_map WHERE entity = 'lead' AND state = 'active' "
                    "ORDER BY dynamics_id LIMIT :n"
                ),
                {"n": limit},
            ).all()
    finally:
        engine.dispose()
    known = {str(d).lower(): int(m) for d, m in rows if m is not None}
    missing = [str(d) for d, m in rows if m is None]
    if missing:
        hook = MarketoHook("marketo_default")
        try:
            for page in hook.get_leads("externalPersonId", missing, ["id", "externalPersonId"]):
                known.update({str(p["externalPersonId"]).lower(): int(p["id"]) for p in page})
        finally:
            hook.close()
    return [(str(d).lower(), known[str(d).lower()]) for d, _ in rows if str(d).lower() in known]


def change_dynamics(leads: Sequence[tuple[str, int]], tag: str) -> float:
    """Set ``jobtitle`` of these Dataverse leads; returns the epoch time the writes completed."""
    from crm_sync_hooks.dynamics import DynamicsHook

    if not leads:
        return time.time()
    hook = DynamicsHook("dynamics_default")
    try:
        rows = [{"leadid": d, "jobtitle": f"D {tag} {i}"} for i, (d, _) in enumerate(leads)]
        results = hook.upsert_records("leads", rows, ["leadid"], id_column="leadid", batch_size=1000)
        failed = [r for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"{len(failed)} Dataverse changes failed, first: {failed[0]}")
    finally:
        hook.close()
    return time.time()


def change_marketo(leads: Sequence[tuple[str, int]], tag: str) -> float:
    """Set ``title`` of these Marketo persons; returns the epoch time the writes completed."""
    from crm_sync_hooks.marketo import MarketoHook

    if not leads:
        return time.time()
    hook = MarketoHook("marketo_default")
    try:
        rows = [{"id": m, "title": f"M {tag} {i}"} for i, (_, m) in enumerate(leads)]
        results = hook.sync_leads(rows, action="updateOnly", lookup_field="id")
        failed = [r for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"{len(failed)} Marketo changes failed, first: {failed[0]}")
    finally:
        hook.close()
    return time.time()


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC).timestamp()


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def arrived_in_marketo(leads: Sequence[tuple[str, int]], tag: str, changed_at: float) -> dict[str, Any]:
    """How many Dataverse changes reached Marketo, and the latency from change to Marketo ``updatedAt``."""
    from crm_sync_hooks.marketo import MarketoHook

    if not leads:
        return {"changed": 0, "arrived": 0}
    expected = {m: f"D {tag} {i}" for i, (_, m) in enumerate(leads)}
    hook = MarketoHook("marketo_default")
    try:
        pages = hook.get_leads("id", list(expected), ["id", "title", "updatedAt"])
        rows = [r for page in pages for r in page]
    finally:
        hook.close()
    hits = [r for r in rows if expected.get(int(r["id"])) == r.get("title")]
    lat = [t - changed_at for r in hits if (t := _parse_time(r.get("updatedAt"))) is not None]
    return _latency(len(leads), len(hits), lat)


def arrived_in_dynamics(leads: Sequence[tuple[str, int]], tag: str, changed_at: float) -> dict[str, Any]:
    """How many Marketo changes reached Dataverse, and the latency from change to ``modifiedon``."""
    from crm_sync_hooks.dynamics import DynamicsHook

    if not leads:
        return {"changed": 0, "arrived": 0}
    expected = {d: f"M {tag} {i}" for i, (d, _) in enumerate(leads)}
    hook = DynamicsHook("dynamics_default")
    try:
        hits = [
            row
            for page in hook.query("leads", select=["leadid", "jobtitle", "modifiedon"])
            for row in page
            if expected.get(str(row["leadid"]).lower()) == row.get("jobtitle")
        ]
    finally:
        hook.close()
    lat = [t - changed_at for r in hits if (t := _parse_time(r.get("modifiedon"))) is not None]
    return _latency(len(leads), len(hits), lat)


def _latency(changed: int, arrived: int, lat: Sequence[float]) -> dict[str, Any]:
    return {
        "changed": changed,
        "arrived": arrived,
        "latency_p50_s": _percentile(lat, 0.5),
        "latency_max_s": round(max(lat), 2) if lat else None,
    }


# --- the scenarios -------------------------------------------------------------------------
def full_copy(
    env: BenchEnv, volume: int, dags: Sequence[str] | None = None, *, in_workers: bool = True
) -> dict[str, Any]:
    """Copy the seeded org to the empty Marketo emulator (with the first runs of ``dags`` if given).

    ``in_workers``: run ``full_copy`` under airflow standalone, each task in its own process as
    on a worker (per-task memory), rather than in one ``dag.test()`` process.
    """
    if dags:
        measures = [env.run_dag(d) for d in dags]
        how = "first runs of " + ", ".join(dags)
    elif DAG_FILES["full_copy"].exists() and in_workers:
        measures = [env.run_dag_in_workers("full_copy")]
        how = "full_copy DAG under airflow standalone (LocalExecutor, a process per task)"
    elif DAG_FILES["full_copy"].exists():
        measures = [env.run_dag("full_copy", dag_file="full_copy")]
        how = "full_copy DAG in dag.test() (one process)"
    else:
        measures = [env.run_dag(d) for d in FULL_COPY_ORDER]
        how = "first runs of " + ", ".join(FULL_COPY_ORDER) + " (no full_copy DAG in this checkout)"
    return summarize(f"full copy {volume:,} leads", env, measures, volume=volume, how=how)


def settle(env: BenchEnv) -> dict[str, Any]:
    """Runs that read back the sync's own last writes (echoes) and change nothing."""
    return summarize("echo runs after writes", env, [env.run_dag(d) for d in SETTLE])


def empty_runs(env: BenchEnv) -> dict[str, Any]:
    """One run per entity with nothing changed anywhere: read calls per entity per side."""
    measures = [env.run_dag(d) for d in SETTLE]
    per_entity = {
        m.dag_id: {
            "marketo_read_calls": m.marketo["api_calls"],
            "dynamics_read_calls": m.dynamics["api_calls"],
        }
        for m in measures
    }
    worst = max(max(v.values()) for v in per_entity.values())
    return summarize(
        "incremental, 0 changes", env, measures, changes=0, per_entity=per_entity, max_reads=worst
    )


def incremental(env: BenchEnv, changes: int) -> dict[str, Any]:
    """``changes`` leads changed in Dataverse and ``changes`` other leads changed in Marketo, one run."""
    pairs = linked_leads(env, 2 * changes)
    if len(pairs) < 2 * changes:
        raise RuntimeError(f"need {2 * changes} linked leads, the full copy linked {len(pairs)}")
    d_side, m_side = pairs[:changes], pairs[changes:]
    tag = uuid.uuid4().hex[:6]
    d_at = change_dynamics(d_side, tag)
    m_at = change_marketo(m_side, tag)
    run = env.run_dag("sync_lead")
    to_marketo = arrived_in_marketo(d_side, tag, d_at)
    to_dynamics = arrived_in_dynamics(m_side, tag, m_at)
    echo = summarize("echo", env, [env.run_dag("sync_lead")])
    return summarize(
        f"incremental, {changes:,} changes per side",
        env,
        [run],
        changes=changes,
        d2m=to_marketo,
        m2d=to_dynamics,
        echo_run={
            "marketo_api_calls": echo["marketo"]["api_calls"],
            "dynamics_api_calls": echo["dynamics"]["api_calls"],
        },
    )


def conflicts(env: BenchEnv, count: int) -> dict[str, Any]:
    """``count`` leads changed on both sides in the same field; Marketo must win on both sides."""
    pairs = linked_leads(env, count)
    tag = uuid.uuid4().hex[:6]
    change_dynamics(pairs, tag)
    m_at = change_marketo(pairs, tag)
    run = env.run_dag("sync_lead")
    # Marketo wins for leads: the Marketo value ("M ...") ends up in Dataverse too.
    to_dynamics = arrived_in_dynamics(pairs, tag, m_at)
    engine = create_engine(env.state_url)
    try:
        with engine.connect() as conn:
            logged = conn.execute(
                text("SELECT count(*), sum(winner = 'marketo') FROM conflict_log WHERE run_id IN "
                     "(SELECT run_id FROM run_ledger WHERE entity = 'lead' ORDER BY id DESC LIMIT 1)")
            ).one()  # fmt: skip
    finally:
        engine.dispose()
    env.run_dag("sync_lead")  # settle the echoes for whatever runs next
    return summarize(
        f"bidirectional, {count:,} conflicts",
        env,
        [run],
        changes=count,
        m2d=to_dynamics,
        conflicts_logged=int(logged[0] or 0),
        marketo_won=int(logged[1] or 0),
    )
