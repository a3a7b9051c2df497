"""Throughput of the Marketo emulator with limits off: paging reads and batch writes.

    python -m emulators.marketo.bench [--leads 30000] [--seed-scale 50000] [--threads 1]

Starts a seeded emulator on a free 127.0.0.1 port (HTTPS, throwaway directory), then measures
over keep-alive connections, as a sync client would:

* paging reads: Get Leads by Filter Type (``filterType=id``, 300 ids per call, 8 fields);
* lead-change paging: ``activities/leadchanges.json`` pages of 300;
* batch writes: Sync Leads, 300 new leads per call, then the same leads updated;
* bulk extract: a whole-day export of the written leads, create to downloaded file.

Prints one line per figure (records per second) and exits non-zero if the emulator fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from emulators.common.credentials import default_credentials

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

log = logging.getLogger("emulators.marketo.bench")
PROJECT_DIR = Path(__file__).resolve().parents[2]
FIELDS = "id,email,firstName,lastName,city,msdType,msdRecordId,updatedAt"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_emulator(workdir: Path, seed_scale: int) -> Iterator[tuple[str, str]]:
    """Seed and start an emulator with limits off; yield (base URL, CA file)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")])}
    db = workdir / "bench.db"
    subprocess.run([sys.executable, "-m", "emulators", "seed", "marketo", "--db", str(db),
                    "--scale", str(seed_scale)], check=True, env=env, cwd=PROJECT_DIR)  # fmt: skip
    port = _free_port()
    certs = workdir / "certs"
    log_file = (workdir / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators", "marketo", "--port", str(port), "--db", str(db),
         "--certs-dir", str(certs), "--limits", "off"],
        stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_DIR,
    )  # fmt: skip
    base, ca = f"https://127.0.0.1:{port}", str(certs / "ca.pem")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if Path(ca).exists() and requests.get(f"{base}/_emulator/health", verify=ca, timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start; see {workdir / 'emulator.log'}")
            time.sleep(0.2)
        yield base, ca
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log_file.close()


class Client:
    """Keep-alive session with a bearer token."""

    def __init__(self, base: str, ca: str) -> None:
        self.base = base
        # verify= on every call: REQUESTS_CA_BUNDLE in the environment would override Session.verify.
        self.ca = ca
        self.session = requests.Session()
        creds = default_credentials("marketo_default")
        # POST keeps the (fake) secret out of URLs and so out of error messages.
        token = self.session.post(
            f"{base}/identity/oauth/token",
            verify=ca,
            data={"grant_type": "client_credentials", "client_id": creds.client_id,
                    "client_secret": creds.client_secret},
            timeout=30,
        ).json()["access_token"]  # fmt: skip
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self.session.request(method, f"{self.base}{path}", timeout=120, verify=self.ca, **kwargs)
        resp.raise_for_status()
        body = resp.json()
        if not body.get("success"):
            raise RuntimeError(f"{path}: {body.get('errors')}")
        return dict(body)


def _rate(label: str, records: int, seconds: float) -> float:
    rate = records / seconds if seconds else float("inf")
    print(f"{label:<52} {records:>8} records in {seconds:6.2f} s = {rate:>9,.0f} records/s", flush=True)
    return rate


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    count = fn()
    return count, time.perf_counter() - start


def bench_reads(clients: list[Client], total: int) -> float:
    """Read ``total`` seeded leads by id, 300 per call, spread over the clients' threads."""
    chunks = [list(range(i, min(i + 300, total + 1))) for i in range(1, total + 1, 300)]

    def read(args: tuple[int, list[int]]) -> int:
        idx, ids = args
        client = clients[idx % len(clients)]
        params = {"filterType": "id", "filterValues": ",".join(map(str, ids)), "fields": FIELDS}
        body = client.call("GET", "/rest/v1/leads.json", params=params)
        return len(body["result"])

    def run() -> int:
        with ThreadPoolExecutor(len(clients)) as pool:
            return sum(pool.map(read, enumerate(chunks)))

    count, secs = _timed(run)
    return _rate(f"paging reads, leads by id ({len(clients)} conn)", count, secs)


def bench_writes(clients: list[Client], total: int, tag: str) -> tuple[float, float]:
    """Create then update ``total`` leads, 300 per Sync Leads call."""
    batches = [[{"email": f"bench-{tag}-{i}@example.com", "firstName": "Bench", "lastName": str(i),
                 "msdType": "Lead", "city": "Lyon"} for i in range(s, min(s + 300, total))]
               for s in range(0, total, 300)]  # fmt: skip

    def write(args: tuple[int, list[dict[str, Any]]]) -> int:
        idx, batch = args
        body = clients[idx % len(clients)].call("POST", "/rest/v1/leads.json", json={"input": batch})
        return sum(1 for r in body["result"] if r["status"] in ("created", "updated"))

    def run(data: list[list[dict[str, Any]]]) -> Callable[[], int]:
        def go() -> int:
            with ThreadPoolExecutor(len(clients)) as pool:
                return sum(pool.map(write, enumerate(data)))

        return go

    created = _rate("batch writes, create (Sync Leads, 300/call)", *_timed(run(batches)))
    for batch in batches:
        for record in batch:
            record["city"] = "Nantes"
    updated = _rate("batch writes, update (Sync Leads, 300/call)", *_timed(run(batches)))
    return created, updated


def bench_changes(client: Client) -> float:
    """Page the lead-change feed from the start (the writes above made it)."""
    token = client.call("GET", "/rest/v1/activities/pagingtoken.json",
                        params={"sinceDatetime": "2000-01-01T00:00:00Z"})["nextPageToken"]  # fmt: skip

    def run() -> int:
        nonlocal token
        count = 0
        while True:
            body = client.call("GET", "/rest/v1/activities/leadchanges.json",
                               params={"nextPageToken": token, "fields": "city,firstName"})  # fmt: skip
            count += len(body.get("result", []))
            token = body["nextPageToken"]
            if not body["moreResult"]:
                return count

    return _rate("paging reads, lead changes (300/page)", *_timed(run))


def bench_bulk(client: Client) -> float:
    """Export the leads created today through a bulk extract job, file downloaded."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    window = {"startAt": (now - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "endAt": (now + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip

    def run() -> int:
        body = client.call("POST", "/bulk/v1/leads/export/create.json",
                           json={"fields": FIELDS.split(","), "filter": {"createdAt": window}})  # fmt: skip
        export_id = body["result"][0]["exportId"]
        client.call("POST", f"/bulk/v1/leads/export/{export_id}/enqueue.json")
        while (status := client.call("GET", f"/bulk/v1/leads/export/{export_id}/status.json")["result"][0])[
            "status"
        ] != "Completed":
            time.sleep(0.05)
        url = f"{client.base}/bulk/v1/leads/export/{export_id}/file.json"
        data = client.session.get(url, timeout=120, verify=client.ca).content
        assert len(data) == status["fileSize"]
        return int(status["numberOfRecords"])

    return _rate("bulk extract, create to file (incl. 1 s job floor)", *_timed(run))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=30_000, help="records per measurement")
    parser.add_argument("--seed-scale", type=int, default=50_000, help="leads in the seeded database")
    parser.add_argument("--threads", type=int, default=1, help="parallel connections")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with (
        tempfile.TemporaryDirectory(prefix="marketo-bench-") as tmp,
        running_emulator(Path(tmp), max(args.seed_scale, args.leads)) as (base, ca),
    ):
        clients = [Client(base, ca) for _ in range(args.threads)]
        bench_reads(clients, args.leads)
        bench_writes(clients, args.leads, tag=str(int(time.time())))
        bench_changes(clients[0])
        bench_bulk(clients[0])
        for client in clients:
            # Idle keep-alive TLS connections hold uvicorn's graceful shutdown up, so close them first.
            client.session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
