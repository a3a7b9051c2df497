"""The alert dispatcher: channels chosen by Variables, real local receivers, no secret anywhere.

Every channel is exercised for real: the webhook against the demo's alert sink, e-mail through
the SMTP provider's hook against a local aiosmtpd server that requires a login, Slack through
the Slack provider's webhook hook against a local stand-in. Settings come in as ``AIRFLOW_VAR_*``
and connections as ``AIRFLOW_CONN_*``, as in a deployment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_sync.alerting import (
    Alert,
    AlertChannels,
    AlertSettingsError,
    dispatch,
    load_channels,
    parse_addresses,
    parse_channels,
    send_alert,
)
from demo.alert_sink import AlertSink, read_alerts, serving
from tests.support.slack_sink import SlackSink
from tests.support.smtp_sink import SmtpSink

SMTP_PASSWORD = "smtp-pw-unit-7f3a9c"
SLACK_TOKEN = "T0UNIT000/B0UNIT000/slack-token-unit-9d2e"
WEBHOOK_TOKEN = "hook-token-unit-41bb"


def _alert() -> Alert:
    return Alert(
        dag_id="sync_lead",
        task_id="extract_changes",
        run_id="manual__2026-12-07T06:00:00+00:00",
        try_number=2,
        log_url="http://localhost:8080/dags/sync_lead/runs/x/tasks/extract_changes?try_number=2",
        error="DynamicsError: GET leads answered 503 <Service Unavailable>",
    )


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[AlertSink]:
    with serving(tmp_path / "alerts.jsonl", poll_interval=0.1) as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink(user="alerts", password=SMTP_PASSWORD) as server:
        yield server


@pytest.fixture
def slack() -> Iterator[SlackSink]:
    with SlackSink(token=SLACK_TOKEN) as server:
        yield server


@pytest.fixture
def wired(
    monkeypatch: pytest.MonkeyPatch, sink: AlertSink, smtp: SmtpSink, slack: SlackSink
) -> tuple[AlertSink, SmtpSink, SlackSink]:
    """All three receivers running and their connections set; no channel Variables yet."""
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(smtp.connection()))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_DEFAULT", json.dumps(slack.connection()))
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", sink.url)
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_EMAIL_TO", "ops@example.test, oncall@example.test")
    for name in ("CHANNELS", "EMAIL_FROM", "SMTP_CONN_ID", "SLACK_CONN_ID"):
        monkeypatch.delenv(f"AIRFLOW_VAR_MDS_ALERT_{name}", raising=False)
    return sink, smtp, slack


# --- settings ----------------------------------------------------------------------------------


def test_unset_channels_mean_the_webhook_when_its_url_is_set_and_nothing_otherwise() -> None:
    assert parse_channels(None, webhook_url="http://127.0.0.1:9/alerts") == ("webhook",)
    assert parse_channels(None, webhook_url="") == ()


def test_channels_keep_their_order_once_each_and_none_means_log_only() -> None:
    assert parse_channels(" Email ; slack,email ,webhook") == ("email", "slack", "webhook")
    assert parse_channels("none") == ()
    assert parse_channels("") == ()


def test_an_unknown_channel_is_an_error_naming_the_variable_and_the_name() -> None:
    with pytest.raises(AlertSettingsError, match=r"mds_alert_channels: unknown channel 'pagerduty'"):
        parse_channels("webhook,pagerduty")


def test_addresses_split_on_commas_semicolons_and_spaces_and_are_checked() -> None:
    assert parse_addresses("a@x.test; b@y.test c@z.test") == ("a@x.test", "b@y.test", "c@z.test")
    assert parse_addresses(None) == ()
    with pytest.raises(AlertSettingsError, match=r"mds_alert_email_to: 'ops' is not an e-mail address"):
        parse_addresses("a@x.test, ops")


def test_settings_are_read_from_variables_with_default_connection_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "email,slack")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_EMAIL_TO", "ops@example.test")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_SLACK_CONN_ID", "slack_alerts")
    monkeypatch.delenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_MDS_ALERT_SMTP_CONN_ID", raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_MDS_ALERT_EMAIL_FROM", raising=False)
    assert load_channels() == AlertChannels(
        channels=("email", "slack"),
        webhook_url="",
        email_to=("ops@example.test",),
        email_from=None,
        smtp_conn_id="smtp_default",
        slack_conn_id="slack_alerts",
    )


def test_a_failure_alert_keeps_its_six_json_keys() -> None:
    assert set(_alert().payload()) == {"dag_id", "task_id", "run_id", "try_number", "log_url", "error"}
    with_details = Alert("d", "t", "r", None, None, "m", details={"kind": "freshness", "pending": 3})
    assert with_details.payload()["details"] == {"kind": "freshness", "pending": 3}


# --- delivery ----------------------------------------------------------------------------------


def test_only_the_webhook_url_set_keeps_todays_behaviour(
    wired: tuple[AlertSink, SmtpSink, SlackSink],
) -> None:
    sink, smtp, slack = wired
    assert dispatch(_alert()) == {"webhook": True}
    (got,) = read_alerts(sink.alerts_file)
    assert {k: got[k] for k in _alert().payload()} == _alert().payload()
    assert smtp.messages == []
    assert slack.posts == []


def test_all_three_channels_deliver_the_same_alert(
    wired: tuple[AlertSink, SmtpSink, SlackSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, smtp, slack = wired
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "webhook,email,slack")
    assert dispatch(_alert()) == {"webhook": True, "email": True, "slack": True}

    assert read_alerts(sink.alerts_file)[0]["error"] == _alert().error
    (mail,) = smtp.wait_for(1)
    assert smtp.logins == 1  # the hook logged in with the connection's user and password
    assert mail.mail_from == "sync-alerts@example.test"  # the connection's from_email
    assert mail.recipients == ("ops@example.test", "oncall@example.test")
    assert mail.subject == "[marketo-dynamics-sync] Task failed: sync_lead.extract_changes"
    assert "503 &lt;Service Unavailable&gt;" in mail.body  # escaped into the HTML body
    assert "http://localhost:8080/dags/sync_lead/runs/x/tasks/extract_changes?try_number=2" in mail.body
    (post,) = slack.wait_for(1)
    assert post["text"].startswith("[marketo-dynamics-sync] Task failed: sync_lead.extract_changes\n")
    assert "Error: DynamicsError: GET leads answered 503 <Service Unavailable>" in post["text"]
    assert "Try: 2" in post["text"]


def test_a_failing_channel_is_logged_without_secrets_and_does_not_stop_the_others(
    wired: tuple[AlertSink, SmtpSink, SlackSink],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _sink, smtp, slack = wired
    # The webhook URL carries a token (as chat webhooks do) and points at a port nobody serves;
    # Slack answers 500; e-mail works.
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", f"http://127.0.0.1:9/hooks/{WEBHOOK_TOKEN}")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "webhook,slack,email")
    slack.status = 500
    caplog.set_level(logging.DEBUG)
    assert dispatch(_alert()) == {"webhook": False, "slack": False, "email": True}
    assert len(smtp.wait_for(1)) == 1
    failures = [r.getMessage() for r in caplog.records if r.name == "crm_sync.alerting"]
    assert failures == [
        "alert channel webhook failed: ConnectionError",
        "alert channel slack failed: AirflowException",
    ]
    everything = caplog.text + "".join(m.raw.decode() for m in smtp.messages)
    for secret in (WEBHOOK_TOKEN, SLACK_TOKEN, SMTP_PASSWORD):
        assert secret not in everything


def test_a_wrong_smtp_password_fails_email_alone_and_the_password_stays_out_of_the_log(
    wired: tuple[AlertSink, SmtpSink, SlackSink],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _sink, smtp, slack = wired
    wrong = "wrong-smtp-pw-55e1"
    conn = smtp.connection()
    conn["password"] = wrong
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "email,slack")
    caplog.set_level(logging.DEBUG)
    assert dispatch(_alert()) == {"email": False, "slack": True}
    assert smtp.messages == []
    assert len(slack.wait_for(1)) == 1
    assert "alert channel email failed: SMTPAuthenticationError (status 535)" in caplog.text
    assert wrong not in caplog.text
    assert SMTP_PASSWORD not in caplog.text


def test_email_without_recipients_is_a_setting_error_naming_the_variable(
    wired: tuple[AlertSink, SmtpSink, SlackSink],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, _smtp, _slack = wired
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "email,webhook")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_EMAIL_TO", "")
    assert dispatch(_alert()) == {"email": False, "webhook": True}
    assert "channel email is chosen but Variable mds_alert_email_to is empty" in caplog.text
    assert len(read_alerts(sink.alerts_file)) == 1


def test_unusable_settings_fall_back_to_the_webhook_and_say_why(
    wired: tuple[AlertSink, SmtpSink, SlackSink],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, smtp, _slack = wired
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "email,sms")
    assert dispatch(_alert()) == {"webhook": True}
    assert "mds_alert_channels: unknown channel 'sms'" in caplog.text
    assert len(read_alerts(sink.alerts_file)) == 1
    assert smtp.messages == []


def test_no_channel_chosen_writes_the_log_line_only(
    wired: tuple[AlertSink, SmtpSink, SlackSink],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, smtp, slack = wired
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "none")
    assert send_alert("rebaseline", "plan", "run-9", "Re-link stopped before any write") == {}
    assert "Sync alert: dag=rebaseline task=plan run=run-9: Re-link stopped before any write" in caplog.text
    assert read_alerts(sink.alerts_file) == []
    assert smtp.messages == []
    assert slack.posts == []


def test_send_alert_names_itself_a_sync_alert_on_every_channel(
    wired: tuple[AlertSink, SmtpSink, SlackSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, smtp, slack = wired
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_CHANNELS", "webhook,email,slack")
    send_alert("rebaseline", "relink", "run-7", "3 links moved")
    (got,) = read_alerts(sink.alerts_file)
    assert (got["dag_id"], got["task_id"], got["run_id"], got["error"]) == (
        "rebaseline", "relink", "run-7", "3 links moved",
    )  # fmt: skip
    assert "details" not in got  # the failure alert's shape
    assert smtp.wait_for(1)[0].subject == "[marketo-dynamics-sync] Sync alert: rebaseline.relink"
    assert slack.wait_for(1)[0]["text"].startswith("[marketo-dynamics-sync] Sync alert: rebaseline.relink")
