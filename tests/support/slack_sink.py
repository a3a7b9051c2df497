"""A local stand-in for a Slack incoming webhook (127.0.0.1 only), for the Slack alert tests.

Slack's incoming webhooks take a JSON POST at ``<base>/<token path>`` and answer 200 ``ok``;
this server does the same for the one token path it is given (404 ``no_service`` for any
other, as Slack answers an unknown webhook), and keeps the bodies it accepted.

    with SlackSink(token="T0/B0/abc") as slack:
        slack.connection()        # a ``slackwebhook`` Airflow connection pointing here
        slack.wait_for(1)         # [{"text": "..."}]
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import TracebackType

HOST = "127.0.0.1"
BASE_PATH = "/services"


class SlackSink(ThreadingHTTPServer):
    """HTTP server on 127.0.0.1 and a free port that accepts Slack webhook posts for one token.

    Args:
        token: The webhook's token path (what Slack puts after ``/services/``).
        status: The status it answers accepted posts with (200, or e.g. 500 to make Slack fail).
    """

    daemon_threads = True

    def __init__(self, token: str = "T00000000/B00000000/local-slack-token", status: int = 200) -> None:
        self.token = token.strip("/")
        self.status = status
        self.posts: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((HOST, 0), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base_url(self) -> str:
        """What goes in the connection's host: scheme, address and ``/services``."""
        return f"http://{HOST}:{self.port}{BASE_PATH}"

    def connection(self) -> dict[str, Any]:
        """An Airflow ``slackwebhook`` connection (the JSON ``AIRFLOW_CONN_*`` takes) pointing here."""
        return {
            "conn_type": "slackwebhook",
            "host": self.base_url,
            "password": self.token,
            "extra": {"timeout": 5},
        }

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The posts once at least ``count`` arrived (all so far when ``timeout`` passes first)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and len(self.posts) < count:
            time.sleep(0.05)
        with self._lock:
            return list(self.posts)

    def __enter__(self) -> SlackSink:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: SlackSink

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with self.server._lock:
            self.server.paths.append(self.path)
        if self.path != f"{BASE_PATH}/{self.server.token}":
            self._answer(404, b"no_service")
            return
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._answer(400, b"invalid_payload")
            return
        if self.server.status == 200:
            with self.server._lock:
                self.server.posts.append(payload)
        self._answer(self.server.status, b"ok" if self.server.status == 200 else b"internal_error")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
