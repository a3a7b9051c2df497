"""Freshness alerts: a change that has waited longer than its entity's threshold is reported once.

Two paths reach the same alert channels (:func:`crm_sync.alerting.dispatch`):

* the backlog: the watchers (:mod:`crm_sync.watch`) call :func:`alert_stale` after each peek.
  A backlog row (entity and direction) is stale when its oldest pending change is older than
  the entity's threshold; it alerts once, then ``alerted_at`` keeps it quiet until the backlog
  empties (an empty peek or a committed run), which starts the next episode.
* the run: :func:`freshness_deadline` builds an Airflow deadline alert for a sync DAG, so a run
  that was queued and has not succeeded within the threshold alerts from the triggerer
  (:func:`freshness_deadline_missed`).

Thresholds are seconds, in the Airflow Variable ``mds_freshness_threshold_seconds`` as JSON,
``{"lead": 300, "default": 900}``; an entity without its own key takes ``default``, and without
the Variable every entity takes :data:`DEFAULT_THRESHOLD_SECONDS`.

    alerts = alert_stale(session)                 # the caller commits
    rule = stale_rows(backlog_rows(s, now=t), thresholds, now=t)   # the rule alone, no Airflow
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm_sync.alerting import Alert, dispatch, redact

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from airflow.sdk.definitions.deadline import DeadlineAlert
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

THRESHOLDS_VARIABLE = "mds_freshness_threshold_seconds"
DEFAULT_THRESHOLD_SECONDS = 900.0
DEFAULT_KEY = "default"

BACKLOG_TASK_ID = "freshness"  # the task id a backlog alert names (no task runs it)
DEADLINE_TASK_ID = "freshness_deadline"  # the task id a missed run deadline names


@dataclass(frozen=True)
class Thresholds:
    """Seconds a pending change may wait, per entity, with a default for the others."""

    per_entity: Mapping[str, float]
    default: float = DEFAULT_THRESHOLD_SECONDS

    def for_entity(self, entity: str) -> float:
        return self.per_entity.get(entity, self.default)


def _seconds(value: Any, entity: str, source: str = f"Variable {THRESHOLDS_VARIABLE}") -> float:
    """``value`` as a positive, finite number of seconds, or an error naming ``source`` and ``entity``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{source}: the threshold of {entity!r} must be a number of seconds, not {value!r}")
    if not 0 < value < float("inf"):
        raise ValueError(
            f"{source}: the threshold of {entity!r} must be a positive, finite number of seconds, "
            f"not {value!r}"
        )
    return float(value)


def parse_thresholds(raw: str | None) -> Thresholds:
    """Read the thresholds Variable's value (None or empty when the Variable is not set).

    Raises:
        ValueError: The value is not a JSON object of positive numbers; the message names the
            Variable and the entity.
    """
    if raw is None or not raw.strip():
        return Thresholds(per_entity={})
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"Variable {THRESHOLDS_VARIABLE}: not JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f'Variable {THRESHOLDS_VARIABLE}: must be a JSON object such as {{"lead": 300, "default": 900}}'
        )
    per_entity = {str(k): _seconds(v, str(k)) for k, v in data.items()}
    default = per_entity.pop(DEFAULT_KEY, DEFAULT_THRESHOLD_SECONDS)
    return Thresholds(per_entity=per_entity, default=default)


def load_thresholds() -> Thresholds:
    """The thresholds from the Airflow Variable (defaults when it is not set).

    Raises:
        ValueError: The Variable's value is malformed (see :func:`parse_thresholds`).
    """
    from airflow.sdk import Variable

    try:
        raw = Variable.get(THRESHOLDS_VARIABLE, default=None)
    except Exception:  # no Variable backend reachable (a CLI, a unit test): the defaults
        raw = None
    return parse_thresholds(None if raw is None else str(raw))


@dataclass(frozen=True)
class FreshnessAlert:
    """One stale backlog: what the alert reports."""

    entity: str
    direction: str
    pending: int
    oldest_change_at: datetime
    oldest_age_seconds: float
    threshold_seconds: float

    def message(self) -> str:
        return (
            f"Freshness: {self.entity} {self.direction} has {self.pending} change(s) pending, the "
            f"oldest from {self.oldest_change_at.isoformat(timespec='seconds')}, "
            f"{self.oldest_age_seconds:.0f} s old (threshold {self.threshold_seconds:.0f} s)"
        )

    def details(self) -> dict[str, Any]:
        return {
            "kind": "freshness",
            "entity": self.entity,
            "direction": self.direction,
            "pending": self.pending,
            "oldest_change_at": self.oldest_change_at.isoformat(),
            "oldest_age_seconds": round(self.oldest_age_seconds, 1),
            "threshold_seconds": self.threshold_seconds,
        }

    def to_alert(self, dag_id: str | None = None) -> Alert:
        """The alert the channels send: named after the backlog episode, not a DAG run.

        Args:
            dag_id: The entity's sync DAG; ``sync_<entity>`` when not given (a custom entity's
                DAG is ``sync_custom_<name>``: pass it).
        """
        return Alert(
            dag_id=dag_id or f"sync_{self.entity}",
            task_id=BACKLOG_TASK_ID,
            run_id=f"backlog_{self.direction}_{self.oldest_change_at.isoformat(timespec='seconds')}",
            try_number=None,
            log_url=None,
            error=self.message(),
            details=self.details(),
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def stale_rows(
    rows: Iterable[Mapping[str, Any]], thresholds: Thresholds, now: datetime
) -> list[FreshnessAlert]:
    """The backlog rows that should alert now: pending, older than the threshold, not yet alerted.

    Args:
        rows: Backlog rows as :func:`crm_sync.state.backlog.backlog_rows` returns them.
        thresholds: Seconds per entity.
        now: The time ages are measured at (aware).
    """
    out = []
    for row in rows:
        oldest = row.get("oldest_change_at")
        if not row.get("pending") or oldest is None or row.get("alerted_at") is not None:
            continue
        age = max((_aware(now) - _aware(oldest)).total_seconds(), 0.0)
        threshold = thresholds.for_entity(str(row["entity"]))
        if age > threshold:
            out.append(
                FreshnessAlert(
                    entity=str(row["entity"]),
                    direction=str(row["direction"]),
                    pending=int(row["pending"]),
                    oldest_change_at=_aware(oldest),
                    oldest_age_seconds=age,
                    threshold_seconds=threshold,
                )
            )
    return out


def alert_stale(
    session: Session, *, now: datetime | None = None, dag_ids: Mapping[str, str] | None = None
) -> list[FreshnessAlert]:
    """Send one alert per stale backlog and mark it alerted; the caller commits.

    ``dag_ids`` maps entity names to their sync DAG ids for the alerts (``{e.name: e.dag_id}``);
    an entity not in it is named ``sync_<entity>``.

    One attempt per episode: the backlog is marked even when a channel failed (the dispatcher
    logged that, and the alert's own log line is written first). Retrying on the next peek
    would hold the watcher up by a channel's timeout every few seconds while, say, the SMTP
    server is down.

    A malformed thresholds Variable is logged (naming the Variable and the entity) and the
    built-in default applies to every entity until it is fixed: the watchers that call this
    keep peeking, and stale backlogs still alert. Channel failures are logged by the dispatcher;
    only a state-store error raises.

    Returns:
        The alerts sent (delivered or not), in entity and direction order.
    """
    from crm_sync.state.backlog import backlog_rows, mark_alerted

    when = _aware(now) if now is not None else datetime.now(UTC)
    try:
        thresholds = load_thresholds()
    except ValueError as err:
        log.error("%s; using %.0f s for every entity", err, DEFAULT_THRESHOLD_SECONDS)
        thresholds = Thresholds(per_entity={})
    stale = stale_rows(backlog_rows(session, now=when), thresholds, when)
    for item in stale:
        alert = item.to_alert((dag_ids or {}).get(item.entity))
        log.error("%s", alert.summary())
        dispatch(alert)
        mark_alerted(session, entity=item.entity, direction=item.direction, at=when)
    return stale


# --- deadline alerts on the sync runs ---------------------------------------------------------


def _run_url(dag_id: str, run_id: str) -> str | None:
    try:
        from urllib.parse import quote

        from airflow.configuration import conf

        base = conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
    except Exception:
        return None
    return f"{base}/dags/{quote(dag_id)}/runs/{quote(run_id)}"


def deadline_alert(
    entity: str, threshold_seconds: float, context: Mapping[str, Any] | None, direction: str | None = None
) -> Alert:
    """The alert for a sync run of ``entity`` not succeeded ``threshold_seconds`` after it was queued.

    Airflow drops a run's deadline only when the run succeeds, so a run that failed earlier
    alerts here too (its changes have not arrived either); the state tells which.

    Args:
        context: What Airflow hands a deadline callback: ``dag_run`` (the run as the REST API
            shows it) and ``deadline`` (``id``, ``deadline_time``).
    """
    run: Mapping[str, Any] = (context or {}).get("dag_run") or {}
    deadline: Mapping[str, Any] = (context or {}).get("deadline") or {}
    dag_id = str(run.get("dag_id") or f"sync_{entity}")
    run_id = str(run.get("dag_run_id") or run.get("run_id") or "?")
    queued_at, deadline_time = run.get("queued_at"), deadline.get("deadline_time")
    what = f"{entity} {direction}" if direction else entity
    message = (
        f"Freshness: the {what} sync run {run_id} was queued at {queued_at} and had not succeeded "
        f"{threshold_seconds:.0f} s later (deadline {deadline_time}, state {run.get('state', '?')})"
    )
    return Alert(
        dag_id=dag_id,
        task_id=DEADLINE_TASK_ID,
        run_id=run_id,
        try_number=None,
        log_url=_run_url(dag_id, run_id),
        error=redact(message),
        details={
            "kind": "freshness_deadline",
            "entity": entity,
            "direction": direction,
            "threshold_seconds": float(threshold_seconds),
            "queued_at": None if queued_at is None else str(queued_at),
            "deadline_time": None if deadline_time is None else str(deadline_time),
            "state": run.get("state"),
        },
    )


async def freshness_deadline_missed(
    entity: str,
    threshold_seconds: float,
    direction: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> str:
    """Deadline callback (runs in the triggerer): send the run's freshness alert on every channel.

    Airflow calls it with the keyword arguments :func:`freshness_deadline` stored plus
    ``context``. The channels block (HTTP, SMTP), so they run in a worker thread.

    Returns:
        What each channel did, as text (``webhook: delivered, email: failed``; ``log only``
        without channels). The triggerer stores the result in a text column: a dict there
        stops the triggerer (seen with Airflow 3.3.2 on SQLite).
    """
    import asyncio

    alert = deadline_alert(entity, threshold_seconds, context, direction)
    log.error("%s", alert.summary())
    delivered = await asyncio.to_thread(dispatch, alert)
    return describe_delivery(delivered)


def describe_delivery(delivered: Mapping[str, bool]) -> str:
    """``{"webhook": True, "email": False}`` as ``webhook: delivered, email: failed``."""
    if not delivered:
        return "log only"
    return ", ".join(f"{name}: {'delivered' if ok else 'failed'}" for name, ok in delivered.items())


def freshness_deadline(
    entity: str, *, threshold_seconds: float = DEFAULT_THRESHOLD_SECONDS, direction: str | None = None
) -> DeadlineAlert:
    """The deadline alert for a sync DAG of ``entity``: queued, then unfinished after the threshold.

    The interval is fixed when the DAG file is parsed (DAG files read no Variables), so pass the
    entity's threshold; the default is :data:`DEFAULT_THRESHOLD_SECONDS`.

    Raises:
        ValueError: A threshold that is not a positive number of seconds.
    """
    # The same classes airflow.sdk exports; its type stub does not list them yet.
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    seconds = _seconds(threshold_seconds, entity, "freshness_deadline")
    kwargs: dict[str, Any] = {"entity": entity, "threshold_seconds": seconds}
    if direction is not None:
        kwargs["direction"] = direction
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(seconds=seconds),
        callback=AsyncCallback(freshness_deadline_missed, kwargs=kwargs),
        name=f"freshness_{entity}" + (f"_{direction}" if direction else ""),
    )
