"""A local SMTP server for the e-mail alert tests (aiosmtpd, 127.0.0.1 only).

It accepts one login (the SMTP connection's user and password, over plain SMTP: no TLS on a
loopback test server), keeps every message it receives in memory, and refuses mail from a
session that did not log in, so a test also proves the hook authenticated.

    with SmtpSink(user="alerts", password="...") as sink:
        ...                                      # point an SMTP connection at sink.port
        (msg,) = sink.wait_for(1)
        msg.subject, msg.recipients, msg.body
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes, policy
from typing import TYPE_CHECKING, Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

if TYPE_CHECKING:
    from types import TracebackType

    from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the server received it."""

    mail_from: str
    recipients: tuple[str, ...]
    subject: str
    body: str  # the text of every text/* part, decoded
    raw: bytes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.password is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        raw = envelope.original_content or b""
        msg = message_from_bytes(raw, policy=policy.default)
        parts = [str(part.get_content()) for part in msg.walk() if part.get_content_maintype() == "text"]
        self.sink.add(
            ReceivedMail(
                mail_from=str(envelope.mail_from),
                recipients=tuple(str(r) for r in envelope.rcpt_tos),
                subject=str(msg.get("Subject", "")),
                body="\n".join(parts),
                raw=raw,
            )
        )
        return "250 OK"


class SmtpSink:
    """An SMTP server on 127.0.0.1 and a free port, for one test.

    Args:
        user: The login it accepts; with ``password`` None no login is needed.
        password: The password it accepts.
    """

    def __init__(self, user: str = "alerts", password: str | None = None) -> None:
        self.user = user
        self.password = password
        self.port = _free_port()
        self._messages: list[ReceivedMail] = []
        self._lock = threading.Lock()
        self.logins = 0
        self._controller = Controller(
            _Handler(self),
            hostname=HOST,
            port=self.port,
            auth_require_tls=False,
            authenticator=self._authenticate,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.user
            and self.password is not None
            and data.password.decode() == self.password
        )
        if ok:
            self.logins += 1
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535 itself

    def add(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._messages.append(mail)

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMail]:
        """The messages once at least ``count`` arrived (all so far when ``timeout`` passes first)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and len(self.messages) < count:
            time.sleep(0.05)
        return self.messages

    def connection(self, *, from_email: str = "sync-alerts@example.test") -> dict[str, Any]:
        """An Airflow ``smtp`` connection (as the JSON ``AIRFLOW_CONN_*`` takes) pointing here."""
        return {
            "conn_type": "smtp",
            "host": HOST,
            "port": self.port,
            "login": self.user if self.password is not None else None,
            "password": self.password,
            "extra": {
                "disable_ssl": True,  # a loopback test server speaks plain SMTP
                "disable_tls": True,
                "from_email": from_email,
                "timeout": 5,
                "retry_limit": 0,
            },
        }

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
