"""Alerts for every sync DAG: task failures, sync alerts and freshness alerts, one dispatcher.

An alert always produces one error log line. It is then sent on each channel the Airflow
Variable ``mds_alert_channels`` names (comma-separated ``webhook``, ``email``, ``slack``):

* ``webhook``: the alert as JSON, POSTed to the Variable ``mds_alert_webhook_url`` (a chat
  webhook, an incident tool, or the demo's local sink);
* ``email``: through the SMTP provider's hook, connection ``mds_alert_smtp_conn_id``
  (``smtp_default``), to the addresses in ``mds_alert_email_to``;
* ``slack``: through the Slack provider's incoming-webhook hook, connection
  ``mds_alert_slack_conn_id`` (``slack_default``).

Without ``mds_alert_channels`` the webhook is the only channel, and only when its URL is set
(the behaviour before channels existed). A channel that fails is logged by name and error type
only (its URL, token or password never) and does not stop the others. Every text an alert
carries passes through Airflow's secrets masker first. docs/alerts.md describes the settings.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests
from airflow.sdk import BaseNotifier, Variable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from airflow.sdk import Context

log = logging.getLogger(__name__)

CHANNELS_VARIABLE = "mds_alert_channels"
WEBHOOK_VARIABLE = "mds_alert_webhook_url"
EMAIL_TO_VARIABLE = "mds_alert_email_to"
EMAIL_FROM_VARIABLE = "mds_alert_email_from"
SMTP_CONN_VARIABLE = "mds_alert_smtp_conn_id"
SLACK_CONN_VARIABLE = "mds_alert_slack_conn_id"

CHANNELS = ("webhook", "email", "slack")
DEFAULT_SMTP_CONN_ID = "smtp_default"
DEFAULT_SLACK_CONN_ID = "slack_default"
DEFAULT_EMAIL_FROM = "marketo-dynamics-sync@localhost"
SUBJECT_PREFIX = "[marketo-dynamics-sync]"


class AlertSettingsError(ValueError):
    """An alert setting is missing or malformed; the message names the Variable and holds no secret."""


@dataclass(frozen=True)
class Alert:
    """What an alert says.

    ``error`` is the alert's text: the exception of a failed task, or the message of a sync or
    freshness alert. ``details`` carries the structured facts of alerts that are not task
    failures (a ``kind`` and its figures); failure alerts have none, so their JSON keeps its six keys.
    """

    dag_id: str
    task_id: str
    run_id: str
    try_number: int | None
    log_url: str | None
    error: str
    details: Mapping[str, Any] | None = field(default=None, compare=False)
    title: str | None = field(default=None, compare=False)  # e-mail subject; not in the JSON

    def summary(self) -> str:
        """The one-line form used by the log line."""
        if self.details is not None or self.title is not None:
            return f"{self.title or self.error} (dag={self.dag_id} task={self.task_id} run={self.run_id})"
        return (
            f"Task failed: dag={self.dag_id} task={self.task_id} run={self.run_id} "
            f"try={self.try_number} error={self.error} log={self.log_url}"
        )

    def payload(self) -> dict[str, Any]:
        """The JSON object the webhook receives."""
        out: dict[str, Any] = {
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "try_number": self.try_number,
            "log_url": self.log_url,
            "error": self.error,
        }
        if self.details is not None:
            out["details"] = dict(self.details)
        return out

    def subject(self) -> str:
        """A short title: the e-mail subject."""
        if self.title:
            return f"{SUBJECT_PREFIX} {self.title[:150]}"
        if self.details is None:
            return f"{SUBJECT_PREFIX} Task failed: {self.dag_id}.{self.task_id}"
        first = self.error.splitlines()[0] if self.error else str(self.details.get("kind", "alert"))
        return f"{SUBJECT_PREFIX} {first[:150]}"

    def lines(self) -> list[tuple[str, str]]:
        """The alert as (label, value) pairs, in the order the e-mail and Slack message show them."""
        pairs = [("DAG", self.dag_id), ("Task", self.task_id), ("Run", self.run_id)]
        if self.try_number is not None:
            pairs.append(("Try", str(self.try_number)))
        if self.log_url:
            pairs.append(("Log", self.log_url))
        pairs.append(("Error" if self.details is None else "Message", self.error))
        pairs.extend((str(k), _plain(v)) for k, v in (self.details or {}).items())
        return pairs

    def text(self) -> str:
        """Plain text for chat: the subject line, then one ``label: value`` line per fact."""
        body = "\n".join(f"{label}: {value}" for label, value in self.lines())
        return f"{self.subject()}\n{body}"

    def html(self) -> str:
        """An HTML table of :meth:`lines` (escaped), the e-mail body."""
        rows = "".join(
            f"<tr><th align='left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
            for label, value in self.lines()
        )
        return f"<p>{html.escape(self.subject())}</p><table>{rows}</table>"


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


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


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertChannels:
    """Where alerts go: the chosen channels and what each one needs."""

    channels: tuple[str, ...]
    webhook_url: str = ""
    email_to: tuple[str, ...] = ()
    email_from: str | None = None
    smtp_conn_id: str = DEFAULT_SMTP_CONN_ID
    slack_conn_id: str = DEFAULT_SLACK_CONN_ID


def parse_channels(raw: str | None, *, webhook_url: str = "") -> tuple[str, ...]:
    """Read the ``mds_alert_channels`` value.

    Args:
        raw: The Variable's value; None when it is not set.
        webhook_url: The webhook URL; with ``raw`` unset it alone decides (webhook or nothing).

    Returns:
        The channels in the order given, each once. ``""`` or ``none`` means log only.

    Raises:
        AlertSettingsError: A name that is not ``webhook``, ``email`` or ``slack``.
    """
    if raw is None:
        return ("webhook",) if webhook_url else ()
    names = [part.strip().lower() for part in raw.replace(";", ",").split(",") if part.strip()]
    if names == ["none"]:
        return ()
    unknown = [name for name in names if name not in CHANNELS]
    if unknown:
        raise AlertSettingsError(
            f"Variable {CHANNELS_VARIABLE}: unknown channel {unknown[0]!r} "
            f"(choose from {', '.join(CHANNELS)}, or none)"
        )
    return tuple(dict.fromkeys(names))


def parse_addresses(raw: str | None) -> tuple[str, ...]:
    """Read ``mds_alert_email_to``: addresses separated by commas, semicolons or spaces.

    Raises:
        AlertSettingsError: An entry that is not an e-mail address.
    """
    parts = (raw or "").replace(";", ",").replace(" ", ",").split(",")
    out = tuple(p.strip() for p in parts if p.strip())
    for address in out:
        local, _, domain = address.partition("@")
        if not local or not domain:
            raise AlertSettingsError(f"Variable {EMAIL_TO_VARIABLE}: {address!r} is not an e-mail address")
    return out


def _variable(key: str) -> str | None:
    """A Variable's value, or None when it is unset or no Variable backend is reachable (CLI, tests)."""
    try:
        value = Variable.get(key, default=None)
    except Exception:
        return None
    return None if value is None else str(value)


def load_channels() -> AlertChannels:
    """Read the alert settings from Airflow Variables (see the module docstring for the names).

    Raises:
        AlertSettingsError: A Variable holds a value that cannot be used.
    """
    webhook_url = (_variable(WEBHOOK_VARIABLE) or "").strip()
    return AlertChannels(
        channels=parse_channels(_variable(CHANNELS_VARIABLE), webhook_url=webhook_url),
        webhook_url=webhook_url,
        email_to=parse_addresses(_variable(EMAIL_TO_VARIABLE)),
        email_from=(_variable(EMAIL_FROM_VARIABLE) or "").strip() or None,
        smtp_conn_id=(_variable(SMTP_CONN_VARIABLE) or "").strip() or DEFAULT_SMTP_CONN_ID,
        slack_conn_id=(_variable(SLACK_CONN_VARIABLE) or "").strip() or DEFAULT_SLACK_CONN_ID,
    )


# --- channels ---------------------------------------------------------------------------------


def _send_webhook(alert: Alert, channels: AlertChannels, timeout: float = 10.0) -> None:
    if not channels.webhook_url:
        raise AlertSettingsError(f"channel webhook is chosen but Variable {WEBHOOK_VARIABLE} is empty")
    resp = requests.post(
        channels.webhook_url,
        data=json.dumps(alert.payload()),
        timeout=timeout,
        headers={"Content-Type": "application/json"},
    )
    resp.raise_for_status()


def _send_email(alert: Alert, channels: AlertChannels) -> None:
    if not channels.email_to:
        raise AlertSettingsError(f"channel email is chosen but Variable {EMAIL_TO_VARIABLE} is empty")
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=channels.smtp_conn_id) as hook:
        hook.send_email_smtp(
            to=list(channels.email_to),
            from_email=channels.email_from or hook.from_email or DEFAULT_EMAIL_FROM,
            subject=alert.subject(),
            html_content=alert.html(),
        )


def _send_slack(alert: Alert, channels: AlertChannels) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    SlackWebhookHook(slack_webhook_conn_id=channels.slack_conn_id).send(text=alert.text())


SENDERS: dict[str, Callable[[Alert, AlertChannels], None]] = {
    "webhook": _send_webhook,
    "email": _send_email,
    "slack": _send_slack,
}


def _describe(err: Exception) -> str:
    """What a failed channel may say in the log: our own setting errors in full, others by type.

    Library errors can carry a webhook URL with its token, or a server reply, so only their type
    (and an HTTP or SMTP status code) is logged.
    """
    if isinstance(err, AlertSettingsError):
        return str(err)
    code = getattr(getattr(err, "response", None), "status_code", None) or getattr(err, "smtp_code", None)
    return f"{type(err).__name__}" + (f" (status {code})" if code else "")


def dispatch(alert: Alert, channels: AlertChannels | None = None) -> dict[str, bool]:
    """Send ``alert`` on every chosen channel; a failing channel is logged and the others still run.

    Args:
        alert: What to send.
        channels: The settings; read from the Variables when None. Unusable settings are logged
            and fall back to the webhook alone (when its URL is set).

    Returns:
        Channel name -> whether it was delivered (empty when only the log line was written).
    """
    if channels is None:
        try:
            channels = load_channels()
        except AlertSettingsError as err:
            log.error("alert settings: %s; falling back to the webhook alone", err)
            url = (_variable(WEBHOOK_VARIABLE) or "").strip()
            channels = AlertChannels(channels=("webhook",) if url else (), webhook_url=url)
    delivered: dict[str, bool] = {}
    for name in channels.channels:
        try:
            SENDERS[name](alert, channels)
        except Exception as err:
            log.error("alert channel %s failed: %s", name, _describe(err))
            delivered[name] = False
        else:
            delivered[name] = True
    return delivered


# --- the entry points -------------------------------------------------------------------------


class SyncFailureNotifier(BaseNotifier):
    """Notifier used as ``on_failure_callback`` by every DAG of this project."""

    template_fields = ()

    def notify(self, context: Context) -> None:
        alert = alert_from_context(context)
        log.error("%s", alert.summary())
        dispatch(alert)


def send_alert(
    dag_id: str, task_id: str, run_id: str, message: str, *, details: Mapping[str, Any] | None = None
) -> dict[str, bool]:
    """Log ``message`` as an error line and send it on the chosen channels.

    The same JSON shape as failure alerts (:class:`crm_sync.alerting.Alert`), so one receiver
    handles both; the text passes through Airflow's secrets masker.

    Returns:
        Channel name -> delivered (see :func:`dispatch`).
    """
    alert = Alert(
        dag_id=dag_id,
        task_id=task_id,
        run_id=run_id,
        try_number=None,
        log_url=None,
        error=_redact(message),
        details=details,
        title=f"Sync alert: {dag_id}.{task_id}",
    )
    log.error("Sync alert: dag=%s task=%s run=%s: %s", dag_id, task_id, run_id, alert.error)
    return dispatch(alert)
