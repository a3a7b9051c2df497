"""One peek of a watcher: read the committed watermark, peek past it, store the backlog.

Plain synchronous code (the trigger runs it in a worker thread of the triggerer): Airflow
Variables and Connections are read through ``airflow.sdk`` as in a task. The hooks are built
once per watcher (the access token is reused between peeks) with the connection's limits and
the Dataverse window reserve, exactly as the runs build them; every call a peek sends is added
to the state store's call log (stage ``peek``), so the budget guard, the status page and the
watchers' own pace all count it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm_sync.config import Direction, EntityConfig, watches_marketo
from crm_sync.state.guards import PEEK_STAGE
from crm_sync.watch.policy import PollPolicy, next_interval

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from crm_sync.engine.context import RunSettings
    from crm_sync.engine.peek import Seen
    from crm_sync.guards import GuardSettings
    from crm_sync.guards.calls import CallCounter

log = logging.getLogger(__name__)

PERSON_FEED_WATCHER = "person_feed"  # the call log's entity for the shared Marketo peek
DEFAULTS = {
    "mds_watch_marketo_fast_seconds": 10.0,
    "mds_watch_marketo_idle_seconds": 100.0,
    "mds_watch_dataverse_fast_seconds": 5.0,
    "mds_watch_dataverse_idle_seconds": 30.0,
    # Share of the Marketo daily quota the person-feed watcher may spend (0.05 of 50,000: 2,500;
    # idle at 100 s it spends 864 a day).
    "mds_watch_quota_share": 0.05,
    # Share of the Dataverse request window each Dataverse watcher may spend.
    "mds_watch_window_share": 0.01,
}


def watch_number(name: str) -> float:
    """A watcher setting from its Airflow Variable, or its default (:data:`DEFAULTS`)."""
    from crm_sync.guards.variables import number_variable

    return float(number_variable(name, float, DEFAULTS[name]))


def peek_run_id(now: datetime) -> str:
    """The call log's run id of the peeks of one 5-minute window (rows stay few and chartable)."""
    start = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    return f"peek__{start.strftime('%Y-%m-%dT%H:%M')}"


@dataclass(frozen=True)
class PeekOutcome:
    """What one peek decided.

    Attributes:
        fire: Changes arrived that no earlier event announced: the DAGs should run.
        payload: The asset event's payload (JSON): ``source``, ``pending`` (entity → count), ``more``.
        wait: Seconds until the next peek.
    """

    fire: bool
    payload: dict[str, Any]
    wait: float


@dataclass
class _Memory:
    """What a watcher remembers between peeks."""

    signatures: dict[str, tuple[Any, ...] | None] = field(default_factory=dict)
    first_seen: dict[str, datetime] = field(default_factory=dict)
    wait: float = 0.0


class Peeker:
    """The peeks of one watcher: a Dataverse entity (``source="dataverse"``) or the Marketo
    person feed shared by the person entities (``source="marketo"``)."""

    def __init__(self, source: str, entity: str | None = None) -> None:
        if source not in ("dataverse", "marketo"):
            raise ValueError(f"watcher source must be dataverse or marketo, not {source!r}")
        if source == "dataverse" and not entity:
            raise ValueError("a Dataverse watcher needs its entity")
        self.source = source
        self.entity = entity
        self._memory = _Memory()
        self._hook: Any = None
        self._counter: CallCounter | None = None
        self._engine: Engine | None = None
        self._state_url = ""
        self._entities_dir = ""

    # --- set-up, kept between peeks ------------------------------------------------------------

    def _settings(self, now: datetime) -> RunSettings:
        from crm_sync.tasks.common import settings_from_airflow

        return settings_from_airflow(peek_run_id(now))

    def _state(self, settings: RunSettings) -> Engine:
        from crm_sync.state import make_engine

        if self._engine is None or settings.state_url != self._state_url:
            if self._engine is not None:
                self._engine.dispose()
            self._engine, self._state_url = make_engine(settings.state_url), settings.state_url
        return self._engine

    def _hooks(self, settings: RunSettings) -> tuple[Any, CallCounter]:
        from crm_sync.tasks.common import count_calls, dynamics_hook, marketo_hook

        if self._hook is None or self._counter is None:
            self._hook = dynamics_hook(settings) if self.source == "dataverse" else marketo_hook(settings)
            self._counter = count_calls({"dynamics" if self.source == "dataverse" else "marketo": self._hook})
        return self._hook, self._counter

    def close(self) -> None:
        """Close the hook and the state store's connections (the next peek builds them again)."""
        if self._hook is not None:
            self._hook.close()
        if self._engine is not None:
            self._engine.dispose()
        self._hook = self._counter = self._engine = None

    # --- one peek ------------------------------------------------------------------------------

    def peek(self, now: datetime | None = None) -> PeekOutcome:
        """Peek once; store the backlog and the calls; decide whether to fire and when to peek again.

        Raises:
            Exception: Whatever the source or the state store raised (the trigger logs it and
                waits its idle ceiling before the next try; the hook is built again).
        """
        from crm_sync.guards.variables import guard_settings
        from crm_sync.state import session_scope, utcnow
        from crm_sync.tasks.common import entities_in

        when = now or utcnow()
        settings = self._settings(when)
        self._entities_dir = settings.entities_dir
        engine = self._state(settings)
        entities = entities_in(settings.entities_dir)
        if self.source == "dataverse":
            seen_by_entity, tokens = self._peek_dataverse(settings, engine, entities[str(self.entity)])
            direction, policy = Direction.D2M.value, self._dataverse_policy()
        else:
            persons = [e.name for e in entities.values() if watches_marketo(e)]
            guards = guard_settings()  # the quota figures both the peek and the pace need
            seen_by_entity, tokens = self._peek_marketo(settings, engine, entities, persons, guards, when)
            direction, policy = Direction.M2D.value, self._marketo_policy(guards)
        with session_scope(engine) as session:
            calls_today = self._store(session, seen_by_entity, direction, when)
        # A session of its own: the alert is sent (HTTP, SMTP) before anything is written, so no
        # write lock waits on a slow channel.
        with session_scope(engine) as session:
            self._alert_stale(session, when)
        return self._decide(seen_by_entity, tokens, policy, calls_today, when)

    def _peek_dataverse(
        self, settings: RunSettings, engine: Engine, entity: EntityConfig
    ) -> tuple[dict[str, Seen], dict[str, str]]:
        from crm_sync.engine.peek import Seen, peek_dynamics
        from crm_sync.state import get_watermark, session_scope
        from crm_sync_hooks.dynamics import DeltaTokenExpired

        with session_scope(engine) as session:
            token = get_watermark(session, entity.name, Direction.D2M.value)
        if token is None:  # never synced: the first run (or the full copy) starts the chain
            return {}, {}
        hook, _ = self._hooks(settings)
        try:
            seen = peek_dynamics(entity, hook, token)
        except DeltaTokenExpired:
            # The next run re-reads the table for a new link; announce it once.
            log.warning("%s: the delta link has expired; the next run reads the table again", entity.name)
            seen = Seen(pending=1, more=True)
        return {entity.name: seen}, {entity.name: token}

    def _peek_marketo(
        self,
        settings: RunSettings,
        engine: Engine,
        entities: dict[str, EntityConfig],
        persons: list[str],
        guards: GuardSettings,
        when: datetime,
    ) -> tuple[dict[str, Seen], dict[str, str]]:
        from crm_sync.engine.columns import person_fields
        from crm_sync.engine.peek import PersonFeedPeek, peek_person_feed, split_person_changes
        from crm_sync.engine.person_feed import FEED_HEAD_ENTITY
        from crm_sync.guards.quota import quota_status
        from crm_sync.state import get_watermark, session_scope

        with session_scope(engine) as session:
            tokens = {p: get_watermark(session, p, Direction.M2D.value) for p in persons}
            head = get_watermark(session, FEED_HEAD_ENTITY, Direction.M2D.value)
            left = quota_status(
                session, now=when, daily_quota=guards.daily_quota, reserve_share=guards.reserve_share
            )["left"]
        known = {p: t for p, t in tokens.items() if t}
        if not known:
            return {}, {}
        if left <= 0:
            log.warning("person feed watcher: the sync's Marketo budget for today is spent; not peeking")
            return {}, known
        hook, _ = self._hooks(settings)
        fields = person_fields(entities.values())
        feed = PersonFeedPeek()
        # One call: from the shared feed's newest chunk boundary. What lies between an entity's
        # own token and it was read (and announced) when it was new; the entity's next run
        # reuses those staged chunks without calling Marketo.
        starts = [head] if head else list(dict.fromkeys(known.values()))
        if head:
            known = dict.fromkeys(known, head)
        for token in starts:
            part = peek_person_feed(hook, token, fields)
            merged = dict(feed.changes)
            for person, at in part.changes.items():
                merged[person] = max(filter(None, (merged.get(person), at)), default=None)
            feed = PersonFeedPeek(changes=merged, more=feed.more or part.more)
        with session_scope(engine) as session:
            seen = split_person_changes(session, feed, [p for p in persons if p in known])
        return seen, known

    def _store(self, session: Session, seen: dict[str, Seen], direction: str, when: datetime) -> int:
        """Record the backlog and the calls; return the watcher's calls in this quota day."""
        from sqlalchemy import func, select

        from crm_sync.guards.quota import quota_day_start
        from crm_sync.state.backlog import record_peek
        from crm_sync.state.guards import ApiCallLog, add_api_calls

        memory = self._memory
        for name, s in seen.items():
            if s.pending:
                memory.first_seen.setdefault(name, when)
            else:
                memory.first_seen.pop(name, None)
            # A source that gives no change time (a delta link older than the modified column's
            # selection, a delete) counts from when a peek first saw the change.
            oldest = s.oldest or memory.first_seen.get(name)
            record_peek(
                session, entity=name, direction=direction, pending=s.pending,
                oldest_change_at=oldest, newest_change_at=s.newest or oldest, now=when,
            )  # fmt: skip
        watcher = self.entity if self.source == "dataverse" else PERSON_FEED_WATCHER
        if self._counter is not None:
            calls = self._counter.as_dict()
            self._counter.counts.clear()
            add_api_calls(
                session, run_id=peek_run_id(when), entity=str(watcher), stage=PEEK_STAGE, calls=calls
            )
        system = "dynamics" if self.source == "dataverse" else "marketo"
        total = session.execute(
            select(func.coalesce(func.sum(ApiCallLog.calls), 0)).where(
                ApiCallLog.system == system,
                ApiCallLog.stage == PEEK_STAGE,
                ApiCallLog.entity == watcher,
                ApiCallLog.at >= quota_day_start(when),
            )
        ).scalar_one()
        return int(total)

    def _alert_stale(self, session: Session, when: datetime) -> None:
        """Freshness alerts ride on the peeks: they fire while the runs fail."""
        from crm_sync.freshness import alert_stale
        from crm_sync.tasks.common import entities_in

        dag_ids = {e.name: e.dag_id for e in entities_in(self._entities_dir).values()}
        alert_stale(session, now=when, dag_ids=dag_ids)

    def _decide(
        self,
        seen: dict[str, Seen],
        tokens: dict[str, str],
        policy: PollPolicy,
        calls_today: int,
        when: datetime,
    ) -> PeekOutcome:
        from crm_sync.guards.quota import quota_day_start

        memory = self._memory
        fire = False
        for name, s in seen.items():
            signature = (tokens.get(name), *s.signature) if s.pending else None
            if signature is not None and signature != memory.signatures.get(name):
                fire = True
            memory.signatures[name] = signature
        day_end = quota_day_start(when) + timedelta(days=1)
        memory.wait = next_interval(
            policy,
            memory.wait or policy.fast,
            saw_new=fire,
            calls_today=calls_today,
            seconds_left_today=max((day_end - when).total_seconds(), 1.0),
        )
        payload = {
            "source": self.source,
            "pending": {name: s.pending for name, s in seen.items()},
            "more": any(s.more for s in seen.values()),
        }
        return PeekOutcome(fire=fire, payload=payload, wait=memory.wait)

    # --- pace ------------------------------------------------------------------------------------

    def _marketo_policy(self, guards: GuardSettings) -> PollPolicy:
        share = watch_number("mds_watch_quota_share")
        if not 0 < share <= 1:
            raise ValueError(f"Airflow Variable 'mds_watch_quota_share' must be in (0, 1], got {share}")
        return PollPolicy(
            fast=watch_number("mds_watch_marketo_fast_seconds"),
            idle_max=watch_number("mds_watch_marketo_idle_seconds"),
            daily_budget=int(guards.daily_quota * share),
        )

    def _dataverse_policy(self) -> PollPolicy:
        share = watch_number("mds_watch_window_share")
        if not 0 < share <= 1:
            raise ValueError(f"Airflow Variable 'mds_watch_window_share' must be in (0, 1], got {share}")
        limits = getattr(self._hook, "limits", None)
        window_calls = max(int(limits.max_calls * share), 1) if limits is not None else None
        return PollPolicy(
            fast=watch_number("mds_watch_dataverse_fast_seconds"),
            idle_max=watch_number("mds_watch_dataverse_idle_seconds"),
            window_calls=window_calls,
            window_seconds=float(limits.window_seconds) if limits is not None else 300.0,
        )
