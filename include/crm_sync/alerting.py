"""Failure alerts for every sync DAG.

A failed task always produces one error log line. When the Airflow Variable
``mds_alert_webhook_url`` is set, the same alert is POSTed there as JSON (a chat webhook, an
incident tool, or the demo's local sink). The alert names the DAG, task, run, try and log link;
the exception text passes through Airflow's secrets masker first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import requests
from airflow.sdk import BaseNotifier, Variable

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context

log = logging.getLogger(__name__)

WEBHOOK_VARIABLE = "mds_alert_webhook_url"


@dataclass(frozen=True)
class Alert:
    """What a failure alert says."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int | None
    log_url: str | None
    error: str

    def summary(self) -> str:
        return (
            f"Task failed: dag={self.dag_id} task={self.task_id} run={self.run_id} "
            f"try={self.try_number} error={self.error} log={self.log_url}"
        )


def redact(text: str) -> str:
    """Mask every secret Airflow knows of (connection passwords and extras) in ``text``."""
    from airflow.sdk.log import redact as mask

    return str(mask(text))


_redact = redact  # the name the alert builders below use


def run_command(name: str, command: Callable[[], int]) -> int:
    """Run a command-line entry point: an unexpected error becomes exit 2 and one redacted line.

    Args:
        name: The command, for the message (``reconcile check``).
        command: Runs it and returns its exit status.
    """
    import sys

    try:
        return command()
    except SystemExit:
        raise
    except Exception as exc:
        print(f"{name} failed: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return 2


def alert_from_context(context: Context) -> Alert:
    """Build an :class:`Alert` from a task's failure context."""
    ti: Any = context.get("ti") or context.get("task_instance")
    exception = context.get("exception")
    error = f"{type(exception).__name__}: {exception}" if exception is not None else "unknown error"
    return Alert(
        dag_id=str(getattr(ti, "dag_id", context.get("dag", "?"))),
        task_id=str(getattr(ti, "task_id", "?")),
        run_id=str(getattr(ti, "run_id", context.get("run_id", "?"))),
        try_number=getattr(ti, "try_number", None),
        log_url=getattr(ti, "log_url", None),
        error=_redact(error)[:2000],
    )


def post_webhook(url: str, alert: Alert, timeout: float = 10.0) -> None:
    """POST the alert as JSON; a failing webhook is logged, never raised (the task already failed)."""
    try:
        resp = requests.post(
            url, data=json.dumps(asdict(alert)), timeout=timeout, headers={"Content-Type": "application/json"}
        )
        resp.raise_for_status()
    except requests.RequestException as err:
        log.error("alert webhook failed: %s", type(err).__name__)


class SyncFailureNotifier(BaseNotifier):
    """Notifier used as ``on_failure_callback`` by every DAG of this project."""

    template_fields = ()

    def notify(self, context: Context) -> None:
        alert = alert_from_context(context)
        log.error("%s", alert.summary())
        url = Variable.get(WEBHOOK_VARIABLE, default="")
        if url:
            post_webhook(url, alert)


def send_alert(dag_id: str, task_id: str, run_id: str, message: str) -> None:
    """Log ``message`` as an error line and POST it to the alert webhook when one is configured.

    The same JSON shape as failure alerts (:class:`crm_sync.alerting.Alert`), so one receiver
    handles both; the text passes through Airflow's secrets masker.
    """
    alert = Alert(
        dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=None, log_url=None, error=_redact(message)
    )
    log.error("Sync alert: dag=%s task=%s run=%s: %s", dag_id, task_id, run_id, alert.error)
    try:
        url = Variable.get(WEBHOOK_VARIABLE, default="")
    except Exception:  # outside a task (CLI, unit test) there may be no Variable backend
        url = ""
    if url:
        post_webhook(url, alert)
