"""A local webhook receiver for the sync's failure alerts (``make demo`` starts it).

Every DAG's :class:`crm_sync.alerting.SyncFailureNotifier` POSTs a JSON alert to the Variable
``mds_alert_webhook_url``; the demo points that at this sink on 127.0.0.1. Each alert is appended
as one JSON line (with the time it arrived) to ``var/log/alerts.jsonl`` and logged as one line.

Usage: ``python -m demo.alert_sink --port 8083 --file var/log/alerts.jsonl``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import signal
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo import ALERT_SINK_PORT

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("demo.alert_sink")

HOST = "127.0.0.1"
ALERT_PATH = "/alerts"
MAX_BODY_BYTES = 64 * 1024


class AlertSink(ThreadingHTTPServer):
    """HTTP server on 127.0.0.1 that appends each POSTed alert to a JSON-lines file.

    Args:
        port: TCP port (0 picks a free one; see :attr:`port`).
        alerts_file: The JSON-lines file alerts are appended to (created with its folder).
    """

    daemon_threads = True

    def __init__(self, port: int, alerts_file: Path) -> None:
        self.alerts_file = alerts_file
        self._write_lock = threading.Lock()
        alerts_file.parent.mkdir(parents=True, exist_ok=True)
        super().__init__((HOST, port), _Handler)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """The webhook URL to put in ``mds_alert_webhook_url``."""
        return f"http://{HOST}:{self.port}{ALERT_PATH}"

    def record(self, alert: dict[str, Any]) -> dict[str, Any]:
        """Append ``alert`` with its arrival time as one JSON line; return what was written."""
        line = {"received_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **alert}
        with self._write_lock, self.alerts_file.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line, sort_keys=True) + "\n")
        log.warning(
            "ALERT dag=%s task=%s run=%s try=%s log=%s error=%s",
            alert.get("dag_id"),
            alert.get("task_id"),
            alert.get("run_id"),
            alert.get("try_number"),
            alert.get("log_url"),
            str(alert.get("error", ""))[:300],
        )
        return line


class _Handler(BaseHTTPRequestHandler):
    server: AlertSink

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != ALERT_PATH:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"POST alerts to {ALERT_PATH}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": f"body must be 1..{MAX_BODY_BYTES} bytes"})
            return
        try:
            alert = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._answer(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
            return
        if not isinstance(alert, dict):
            self._answer(HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object"})
            return
        self.server.record(alert)
        self._answer(HTTPStatus.ACCEPTED, {"status": "recorded"})

    def _answer(self, status: HTTPStatus, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


@contextlib.contextmanager
def serving(alerts_file: Path, port: int = 0, poll_interval: float = 0.2) -> Iterator[AlertSink]:
    """An :class:`AlertSink` answering in a background thread for the ``with`` block (tests)."""
    sink = AlertSink(port, alerts_file)
    threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True).start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()


def read_alerts(alerts_file: Path) -> list[dict[str, Any]]:
    """Return the alerts recorded in ``alerts_file`` so far (none when it does not exist)."""
    if not alerts_file.exists():
        return []
    return [json.loads(line) for line in alerts_file.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--port", type=int, default=ALERT_SINK_PORT)
    parser.add_argument("--file", type=Path, default=Path("var/log/alerts.jsonl"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sink = AlertSink(args.port, args.file)

    def _stop(_signum: int, _frame: Any) -> None:
        threading.Thread(target=sink.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    log.info("alert sink listening on %s, writing %s", sink.url, args.file)
    try:
        sink.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sink.server_close()
    log.info("alert sink stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
