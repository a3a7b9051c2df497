"""The ``trickle`` scenario (issue 19): a slow stream of single changes on a running stack.

It measures what a user of the running demo sees, whatever starts the sync runs (cron, asset
events from the watchers): on a real ``airflow standalone`` (scheduler, triggerer, LocalExecutor)
with both emulators' limits on,

1. Dataverse is seeded and copied once (``full_copy``, triggered as the demo does), then the DAGs
   the demo unpauses are unpaused and their first runs are let finish (the warm-up);
2. for ``minutes``, every ``interval_s`` one linked lead's ``jobtitle`` is set in Dataverse and
   another linked lead's ``title`` in Marketo, each to a value used once; the other side is
   polled (through the emulators' APIs, never the state store) until the value is there. A
   change's latency is the target record's modified time minus the moment the change was
   written; a change not seen by the end of the drain is a miss, counted, never dropped;
3. nothing changes for ``idle_settle_minutes`` (the watchers back off to their idle pace), then
   for ``idle_minutes``: the calls the emulators count in that span (the benchmark itself sends
   none then) give the idle cost, extrapolated to a day;
4. one change on each side after the idle span, and how long it takes to arrive.

Calls are the emulators' own counters (``/_emulator/stats``, token calls apart) less the calls
the benchmark's own hooks sent (counted on their sessions). Empty-run wall time is the start to
end of each sync DAG run (Airflow's REST API) whose run-ledger rows extracted nothing.
"""

from __future__ import annotations

import logging
import re
import shutil
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import requests
from sqlalchemy import create_engine, text

from benchmarks.harness import BenchEnv, LimitMode, split_calls
from benchmarks.scenarios import _parse_time, _percentile, linked_leads

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from benchmarks.standalone import Standalone
    from crm_sync.airflow_api import AirflowApi
    from crm_sync.guards.calls import CallCounter
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

log = logging.getLogger(__name__)

# Issue 19's targets.
LATENCY_P95_TARGET_S = 60.0
IDLE_CALLS_PER_DAY_TARGET = 1000  # 2 % of Marketo's default daily quota of 50,000
AFTER_IDLE_TARGET_S = 120.0
EMPTY_RUN_TARGET_S = 10.0
DAY_S = 86_400.0
HOUR_S = 3_600.0
FULL_COPY_DAG = "full_copy"
DIRECTIONS = ("d2m", "m2d")


@dataclass(frozen=True)
class TrickleSettings:
    """How long each phase lasts and how the stack is set up.

    Attributes:
        minutes: Length of the change phase (D).
        idle_minutes: Length of the idle phase (I) whose calls give the idle cost.
        idle_settle_minutes: Quiet minutes before it, not counted: the watchers' back-off from
            their fast pace to their idle ceiling (the steady state of a quiet day follows).
        leads: Dataverse leads seeded before the full copy.
        interval_s: Seconds between two changes on each side.
        drain_s: After the last change, wait at most this long for the rest to arrive.
        after_idle_wait_s: Wait at most this long for the change made after the idle span.
        warmup_s: Wait at most this long for the first runs after unpausing to end.
        poll_s: Seconds between two polls of the target systems.
        schedule: Cron of the entity DAGs instead of their files' (a smoke test's short cycle);
            None keeps the project's entity files as they are.
        dags: DAGs to unpause; None: the ones the demo unpauses (every entity sync DAG and the
            marketing DAGs).
    """

    minutes: float
    idle_minutes: float
    leads: int
    interval_s: float = 10.0
    drain_s: float = 420.0
    after_idle_wait_s: float = 420.0
    warmup_s: float = 420.0
    poll_s: float = 2.0
    schedule: str | None = None
    dags: tuple[str, ...] | None = None
    idle_settle_minutes: float = 0.0

    @property
    def changes_per_side(self) -> int:
        """Changes each side makes in the change phase."""
        return max(1, round(self.minutes * 60 / self.interval_s))


@dataclass
class Change:
    """One change: where it was made, the value written, when, and when it was seen arriving."""

    direction: str
    dynamics_id: str
    marketo_id: int
    value: str
    changed_at: float
    arrived_at: float | None = None
    seen_at: float | None = None
    late: bool = False  # seen only after the drain ended (a miss all the same)

    @property
    def latency_s(self) -> float | None:
        """Arrival minus change, seconds (None while it has not arrived)."""
        return None if self.arrived_at is None else max(0.0, self.arrived_at - self.changed_at)


@dataclass
class CallSpan:
    """API calls both emulators counted between two moments, less the benchmark's own."""

    seconds: float
    marketo: int
    dynamics: int
    marketo_auth: int
    dynamics_auth: int
    own_marketo: int
    own_dynamics: int
    marketo_quota_calls: int | None
    marketo_routes: dict[str, int] = field(default_factory=dict)
    dynamics_routes: dict[str, int] = field(default_factory=dict)

    def per(self, seconds: float, system: str) -> float | None:
        """The sync's calls of ``system`` scaled to ``seconds`` (a day, an hour)."""
        if self.seconds <= 0:
            return None
        return round(getattr(self, system) * seconds / self.seconds, 1)


# --- the systems -----------------------------------------------------------------------------
class Probe:
    """The benchmark's own hooks (one session each, for the whole scenario) and their call counter."""

    def __init__(self) -> None:
        from crm_sync.guards.calls import CallCounter
        from crm_sync_hooks.dynamics import DynamicsHook
        from crm_sync_hooks.marketo import MarketoHook

        self.marketo: MarketoHook = MarketoHook("marketo_default")
        self.dynamics: DynamicsHook = DynamicsHook("dynamics_default")
        self.counter: CallCounter = CallCounter()
        self.counter.attach(self.marketo, "marketo")
        self.counter.attach(self.dynamics, "dynamics")

    def close(self) -> None:
        """Close both hooks."""
        self.marketo.close()
        self.dynamics.close()

    def own_calls(self) -> dict[str, int]:
        """Calls the benchmark has sent so far, per system (token calls not included)."""
        return {s: int(self.counter.counts.get(s, 0)) for s in ("marketo", "dynamics")}

    def change(self, direction: str, pair: tuple[str, int], value: str) -> float:
        """Write ``value`` to one lead on the source side of ``direction``; epoch time it was written."""
        dynamics_id, marketo_id = pair
        if direction == "d2m":
            results = self.dynamics.upsert_records(
                "leads", [{"leadid": dynamics_id, "jobtitle": value}], ["leadid"], id_column="leadid"
            )
        else:
            results = self.marketo.sync_leads(
                [{"id": marketo_id, "title": value}], action="updateOnly", lookup_field="id"
            )
        failed = [r for r in results if not r.ok]
        if failed:
            raise RuntimeError(
                f"trickle change {value!r} ({direction}, lead {dynamics_id}) failed: {failed[0]}"
            )
        return time.time()

    def poll(self, pending: Sequence[Change]) -> None:
        """Mark the pending changes whose value the target side now holds as arrived."""
        now = time.time()
        d2m = {c.marketo_id: c for c in pending if c.direction == "d2m"}
        m2d = {c.dynamics_id: c for c in pending if c.direction == "m2d"}
        if d2m:
            for page in self.marketo.get_leads("id", list(d2m), ["id", "title", "updatedAt"]):
                for row in page:
                    change = d2m.get(int(row["id"]))
                    if change is not None and row.get("title") == change.value:
                        _arrived(change, _parse_time(row.get("updatedAt")), now)
        ids = list(m2d)
        for start in range(0, len(ids), 50):
            chunk = ids[start : start + 50]
            where = " or ".join(f"leadid eq {d}" for d in chunk)
            for page in self.dynamics.query(
                "leads", select=["leadid", "jobtitle", "modifiedon"], filter=where
            ):
                for row in page:
                    change = m2d.get(str(row["leadid"]).lower())
                    if change is not None and row.get("jobtitle") == change.value:
                        _arrived(change, _parse_time(row.get("modifiedon")), now)


def _arrived(change: Change, modified: float | None, seen: float) -> None:
    """Record an arrival at the target's modified time (the poll's time if that is missing or
    earlier than the change, which a clock step or a second-precision stamp could give)."""
    change.seen_at = seen
    change.arrived_at = modified if modified is not None and modified >= change.changed_at - 1 else seen


def _counted(env: BenchEnv) -> dict[str, Any]:
    """Both emulators' counters now (calls per route; Marketo's quota count of the day)."""
    assert env.marketo is not None
    assert env.dynamics is not None
    quota: int | None
    try:
        quota = int(env.marketo.admin("GET", "limits").json()["counters"]["day_calls"])
    except (KeyError, ValueError, requests.RequestException):
        quota = None
    return {
        "at": time.time(),
        "marketo": split_calls(env.marketo.stats()),
        "dynamics": split_calls(env.dynamics.stats()),
        "marketo_quota": quota,
    }


def _route_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {r: n - before.get(r, 0) for r, n in sorted(after.items()) if n - before.get(r, 0) > 0}


def call_span(before: dict[str, Any], after: dict[str, Any], own_before: dict[str, int],
              own_after: dict[str, int]) -> CallSpan:  # fmt: skip
    """The sync's calls between two :func:`_counted` snapshots (the benchmark's own taken off)."""
    own = {s: own_after[s] - own_before[s] for s in ("marketo", "dynamics")}
    counted = {s: after[s]["api_calls"] - before[s]["api_calls"] for s in ("marketo", "dynamics")}
    quota = None
    # The quota counter restarts at midnight US Central; a span across it is not comparable.
    if None not in (before["marketo_quota"], after["marketo_quota"]) and (
        after["marketo_quota"] >= before["marketo_quota"]
    ):
        quota = after["marketo_quota"] - before["marketo_quota"] - own["marketo"]
    return CallSpan(
        seconds=round(after["at"] - before["at"], 1),
        marketo=counted["marketo"] - own["marketo"],
        dynamics=counted["dynamics"] - own["dynamics"],
        marketo_auth=after["marketo"]["auth_calls"] - before["marketo"]["auth_calls"],
        dynamics_auth=after["dynamics"]["auth_calls"] - before["dynamics"]["auth_calls"],
        own_marketo=own["marketo"],
        own_dynamics=own["dynamics"],
        marketo_quota_calls=quota,
        marketo_routes=_route_diff(before["marketo"]["routes"], after["marketo"]["routes"]),
        dynamics_routes=_route_diff(before["dynamics"]["routes"], after["dynamics"]["routes"]),
    )


# --- the stack ---------------------------------------------------------------------------------
def demo_dags(entities_dir: Path) -> list[str]:
    """The DAGs ``make demo`` unpauses: every entity's sync DAG and the marketing DAGs that exist."""
    from crm_sync.config import load_entities
    from scripts.stack import MARKETING_DAGS
    from tests.support.emulator_procs import PROJECT_DIR

    ids = [entity.dag_id for entity in load_entities(entities_dir).values()]
    return ids + [d for d, file in MARKETING_DAGS.items() if (PROJECT_DIR / "dags" / file).exists()]


def entity_files(settings: TrickleSettings, folder: Path) -> Path:
    """The entity files the stack runs on: the project's, or a copy with ``settings.schedule``."""
    from crm_sync.config import ENTITIES_DIR

    if settings.schedule is None:
        return ENTITIES_DIR
    shutil.copytree(ENTITIES_DIR, folder, dirs_exist_ok=True)
    for path in folder.glob("*.yaml"):
        body = path.read_text()
        line = f'schedule: "{settings.schedule}"'
        body, n = re.subn(r"^schedule: .*$", line, body, flags=re.MULTILINE)
        path.write_text(body if n else body.rstrip("\n") + f"\n{line}\n")
    return folder


def dag_runs(api: AirflowApi, dag_id: str, since: float | None = None) -> list[dict[str, Any]]:
    """The DAG's runs, newest first, as the REST API lists them: the latest 100, or with ``since``
    (epoch seconds) every run up to the first one that started before it."""
    runs: list[dict[str, Any]] = []
    while True:
        page = _get(
            api,
            f"dags/{dag_id}/dagRuns",
            {"limit": "100", "offset": str(len(runs)), "order_by": "-run_after"},
        )
        runs += page["dag_runs"]
        oldest = _parse_time(runs[-1].get("start_date")) if runs else None
        if since is None or not page["dag_runs"] or len(runs) >= page["total_entries"]:
            return runs
        if oldest is not None and oldest < since:
            return runs


def _get(api: AirflowApi, path: str, params: dict[str, str], attempts: int = 5) -> dict[str, Any]:
    """One REST API read, repeated on a 5xx or a dropped connection (SQLite may be locked a moment)."""
    url = f"{api.base_url}/api/v2/{path}"
    for attempt in range(1, attempts):
        try:
            resp = api.session.get(url, params=params, timeout=api.timeout)
        except (requests.ConnectionError, requests.Timeout):
            resp = None
        if resp is not None and resp.status_code < 500:
            break
        time.sleep(2 * attempt)
    else:
        resp = api.session.get(url, params=params, timeout=api.timeout)
    resp.raise_for_status()
    return dict(resp.json())


def wait_idle_runs(api: AirflowApi, dags: Iterable[str], timeout_s: float, settle_s: float = 20.0) -> float:
    """Wait until none of ``dags`` has a queued or running run (checked from ``settle_s`` on, so the
    scheduler has made the runs an unpause starts); returns the seconds waited."""
    started = time.monotonic()
    dags = list(dags)
    while time.monotonic() - started < timeout_s:
        if time.monotonic() - started >= settle_s:
            active = [d for d in dags if any(r["state"] in ("queued", "running") for r in dag_runs(api, d))]
            if not active:
                break
        time.sleep(3)
    return round(time.monotonic() - started, 1)


def run_until(api: AirflowApi, dag_id: str, run_id: str, timeout_s: float) -> str:
    """Wait for one run to end; its final state (or the last one seen at the deadline)."""
    deadline = time.monotonic() + timeout_s
    state = api.run_state(dag_id, run_id)
    while state not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(3)
        state = api.run_state(dag_id, run_id)
    return state


def dag_entities(entities_dir: Path) -> dict[str, str]:
    """Entity sync DAG id → the entity name its run-ledger rows carry."""
    from crm_sync.config import load_entities

    return {entity.dag_id: entity.name for entity in load_entities(entities_dir).values()}


def empty_runs(api: AirflowApi, state_url: str, entities: dict[str, str], since: float) -> dict[str, Any]:
    """Wall time of the entity sync runs that started after ``since`` and found no change.

    Every DAG's scheduled runs share run ids, so a run is found in the run ledger by run id and
    entity (``entities``: DAG id → entity). A run is empty when it ended successfully and its
    ledger rows (one per direction) extracted nothing on either side, or it wrote no ledger row
    at all (a run the watchers' empty backlog let do nothing; counted in ``without_ledger``).
    Runs that extracted something but wrote nothing (a read-back of the sync's own writes,
    persons of another type) are counted apart as ``runs_writing_nothing``.
    """
    engine = create_engine(state_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT run_id, entity, sum(extracted), sum(loaded) FROM run_ledger "
                    "GROUP BY run_id, entity"
                )
            ).all()
    finally:
        engine.dispose()
    counts = {(str(run_id), str(entity)): (int(x or 0), int(w or 0)) for run_id, entity, x, w in rows}
    walls: list[float] = []
    runs = busy = quiet = unledgered = 0
    for dag_id, entity in entities.items():
        for run in dag_runs(api, dag_id, since):
            start, end = _parse_time(run.get("start_date")), _parse_time(run.get("end_date"))
            if start is None or end is None or start < since or run["state"] != "success":
                continue
            runs += 1
            extracted, loaded = counts.get((str(run["dag_run_id"]), entity), (-1, -1))
            if extracted <= 0:
                walls.append(end - start)
                unledgered += extracted < 0
            else:
                busy += 1
                quiet += loaded == 0
    return {
        "runs": runs,
        "empty_runs": len(walls),
        "runs_with_changes": busy,
        "runs_writing_nothing": quiet,
        "without_ledger": unledgered,
        "wall_median_s": round(statistics.median(walls), 2) if walls else None,
        "wall_max_s": round(max(walls), 2) if walls else None,
        "walls_s": [round(w, 2) for w in sorted(walls)],
    }


# --- the scenario ------------------------------------------------------------------------------
def direction_figures(changes: Sequence[Change], direction: str) -> dict[str, Any]:
    """Changes, arrivals, misses and latency percentiles of one direction."""
    mine = [c for c in changes if c.direction == direction]
    lat = [c.latency_s for c in mine if c.latency_s is not None and not c.late]
    late = [c.latency_s for c in mine if c.latency_s is not None and c.late]
    p95 = _percentile(lat, 0.95)
    return {
        "changes": len(mine),
        "arrived": len(lat),
        "missed": len(mine) - len(lat),
        "latency_p50_s": _percentile(lat, 0.5),
        "latency_p95_s": p95,
        "latency_max_s": round(max(lat), 2) if lat else None,
        "latencies_s": [round(x, 2) for x in lat],
        # Misses seen on one more look after the idle span: how late they were (still misses).
        "missed_seen_after_idle": len(late),
        "missed_latencies_s": [round(x, 2) for x in late],
        "latency_p95_with_late_s": _percentile(lat + late, 0.95),
        "target_p95_s": LATENCY_P95_TARGET_S,
        "met": bool(mine) and len(lat) == len(mine) and p95 is not None and p95 <= LATENCY_P95_TARGET_S,
    }


def wait_arrivals(probe: Probe, changes: Sequence[Change], until: float, poll_s: float) -> None:
    """Poll until every change arrived or ``until`` (epoch seconds) passed."""
    while True:
        pending = [c for c in changes if c.arrived_at is None]
        if not pending:
            return
        probe.poll(pending)
        if time.time() >= until:
            return
        time.sleep(poll_s)


def change_phase(probe: Probe, pairs: Sequence[tuple[str, int]], settings: TrickleSettings,
                 tag: str) -> list[Change]:  # fmt: skip
    """One change per side every ``interval_s``, polling for arrivals in between."""
    n = settings.changes_per_side
    changes: list[Change] = []
    began = time.time()
    for i in range(n):
        due = began + i * settings.interval_s
        while time.time() < due:
            pending = [c for c in changes if c.arrived_at is None]
            if pending:
                probe.poll(pending)
            time.sleep(max(0.0, min(settings.poll_s, due - time.time())))
        for direction, pair in (("d2m", pairs[i]), ("m2d", pairs[n + 1 + i])):
            value = f"T{tag} {direction} {i}"
            at = probe.change(direction, pair, value)
            changes.append(Change(direction, pair[0], pair[1], value, at))
    return changes


def run_trickle(workroot: Path, mode: LimitMode, settings: TrickleSettings) -> dict[str, Any]:
    """Set up a demo-like stack on fresh emulators and measure the trickle; the JSON-ready figures."""
    from benchmarks.standalone import Standalone

    workdir = workroot / f"trickle-{mode.name}"
    item: dict[str, Any] = {
        "scenario": "trickle",
        "limits": mode.name,
        "settings": asdict(settings) | {"changes_per_side": settings.changes_per_side},
        "phases_s": {},
    }
    with BenchEnv(workdir, mode, dynamics_seed=settings.leads) as env:
        entities = entity_files(settings, workdir / "entities")
        env.env["MDS_ENTITIES_DIR"] = str(entities)
        dags = list(settings.dags) if settings.dags is not None else demo_dags(entities)
        item["dags"] = dags
        began = time.monotonic()
        with Standalone(
            env.env, workdir / "standalone", parallelism=8, schedules=True, pool_slots=8
        ) as airflow:
            item["phases_s"]["stack_start"] = round(time.monotonic() - began, 1)
            api = airflow.api()
            try:
                item["phases_s"].update(start_syncing(api, airflow, dags, settings))
                since = time.time()
                item.update(measure(env, settings, item["phases_s"]))
                entity_dags = {d: e for d, e in dag_entities(entities).items() if d in dags}
                item["empty_runs"] = _empty_figures(empty_runs(api, env.state_url, entity_dags, since))
            finally:
                api.close()
    item["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return item


def start_syncing(
    api: AirflowApi, airflow: Standalone, dags: list[str], settings: TrickleSettings
) -> dict[str, float]:
    """Run ``full_copy`` once (as the demo does), unpause ``dags`` and let their first runs end."""
    phases: dict[str, float] = {}
    began = time.monotonic()
    missing = api.wait_for_dags({*dags, FULL_COPY_DAG}, 300)
    if missing:
        raise RuntimeError(f"DAGs not parsed within 300 s: {sorted(missing)}; see {airflow.log_path}")
    run_id = api.trigger(FULL_COPY_DAG)
    api.set_paused(FULL_COPY_DAG, False)  # a manual run waits while its DAG is paused
    state = run_until(api, FULL_COPY_DAG, run_id, 1800)
    if state != "success":
        raise RuntimeError(f"{FULL_COPY_DAG} ended {state}; see {airflow.log_path}")
    phases["full_copy"] = round(time.monotonic() - began, 1)
    for dag_id in dags:
        api.set_paused(dag_id, False)
    # As the demo does: an unpaused DAG's watchers start when a parse finds it unpaused.
    api.reparse(dags)
    phases["warmup"] = wait_idle_runs(api, dags, settings.warmup_s)
    return phases


def measure(env: BenchEnv, settings: TrickleSettings, phases: dict[str, float]) -> dict[str, Any]:
    """The change phase and its drain, the idle span, the change after it; their figures."""
    needed = 2 * (settings.changes_per_side + 1)
    pairs = linked_leads(env, needed)
    if len(pairs) < needed:
        raise RuntimeError(f"trickle needs {needed} linked leads, the full copy linked {len(pairs)}")
    tag = uuid.uuid4().hex[:6]
    n = settings.changes_per_side
    after = [
        Change(d, *pair, f"T{tag} {d} after-idle", 0.0) for d, pair in (("d2m", pairs[n]), ("m2d", pairs[-1]))
    ]
    probe = Probe()
    try:
        # Busy: from the first change until every change arrived (or the drain ended).
        own0, busy0 = probe.own_calls(), _counted(env)
        changes = change_phase(probe, pairs, settings, tag)
        phases["change"] = round(time.time() - busy0["at"], 1)
        wait_arrivals(probe, changes, max(c.changed_at for c in changes) + settings.drain_s, settings.poll_s)
        own1, busy1 = probe.own_calls(), _counted(env)
        phases["drain"] = round(busy1["at"] - busy0["at"] - phases["change"], 1)
        pending_at_idle = sum(c.arrived_at is None for c in changes)
        # The watchers back off from their fast pace to their idle ceiling first; the idle cost
        # is the steady state after that, as over a quiet day.
        time.sleep(settings.idle_settle_minutes * 60)
        own_settled, idle0 = probe.own_calls(), _counted(env)
        phases["idle_settle"] = round(idle0["at"] - busy1["at"], 1)
        time.sleep(settings.idle_minutes * 60)
        own2, idle1 = probe.own_calls(), _counted(env)
        phases["idle"] = round(idle1["at"] - idle0["at"], 1)
        late = [c for c in changes if c.arrived_at is None]
        if late:  # one more look: how late the misses were
            probe.poll(late)
            for c in late:
                c.late = c.arrived_at is not None
        for c in after:
            c.changed_at = probe.change(c.direction, (c.dynamics_id, c.marketo_id), c.value)
        wait_arrivals(
            probe, after, max(c.changed_at for c in after) + settings.after_idle_wait_s, settings.poll_s
        )
        phases["after_idle"] = round(time.time() - idle1["at"], 1)
    finally:
        probe.close()
    return {
        "d2m": direction_figures(changes, "d2m"),
        "m2d": direction_figures(changes, "m2d"),
        "busy": _busy_figures(call_span(busy0, busy1, own0, own1)),
        "idle": _idle_figures(call_span(idle0, idle1, own_settled, own2))
        | {"changes_pending_at_start": pending_at_idle},
        "after_idle": _after_idle_figures(after, settings),
    }


def _busy_figures(span: CallSpan) -> dict[str, Any]:
    return {
        "span_s": span.seconds,
        "calls": {"marketo": span.marketo, "dynamics": span.dynamics},
        "calls_per_hour_busy": {
            "marketo": span.per(HOUR_S, "marketo"),
            "dynamics": span.per(HOUR_S, "dynamics"),
        },
        "own_calls": {"marketo": span.own_marketo, "dynamics": span.own_dynamics},
        "token_calls": {"marketo": span.marketo_auth, "dynamics": span.dynamics_auth},
        "marketo_routes": span.marketo_routes,
        "dynamics_routes": span.dynamics_routes,
    }


def _idle_figures(span: CallSpan) -> dict[str, Any]:
    per_day = span.per(DAY_S, "marketo")
    return {
        "span_s": span.seconds,
        "calls": {"marketo": span.marketo, "dynamics": span.dynamics},
        "idle_calls_per_day": per_day,
        "idle_calls_per_day_dynamics": span.per(DAY_S, "dynamics"),
        "marketo_quota_calls": span.marketo_quota_calls,
        "own_calls": {"marketo": span.own_marketo, "dynamics": span.own_dynamics},
        "token_calls": {"marketo": span.marketo_auth, "dynamics": span.dynamics_auth},
        "marketo_routes": span.marketo_routes,
        "dynamics_routes": span.dynamics_routes,
        "target_calls_per_day": IDLE_CALLS_PER_DAY_TARGET,
        "met": per_day is not None and per_day <= IDLE_CALLS_PER_DAY_TARGET,
    }


def _after_idle_figures(after: Sequence[Change], settings: TrickleSettings) -> dict[str, Any]:
    per = {c.direction: (round(c.latency_s, 2) if c.latency_s is not None else None) for c in after}
    arrived = [v for v in per.values() if v is not None]
    worst = max(arrived) if len(arrived) == len(per) else None
    return {
        "idle_before_s": round((settings.idle_settle_minutes + settings.idle_minutes) * 60, 1),
        "latency_s": per,
        "first_change_after_idle_s": worst,
        "waited_at_most_s": settings.after_idle_wait_s,
        "target_s": AFTER_IDLE_TARGET_S,
        "met": worst is not None and worst <= AFTER_IDLE_TARGET_S,
    }


def _empty_figures(figures: dict[str, Any]) -> dict[str, Any]:
    median = figures["wall_median_s"]
    return {
        **figures,
        "target_s": EMPTY_RUN_TARGET_S,
        "met": median is not None and median <= EMPTY_RUN_TARGET_S,
    }
