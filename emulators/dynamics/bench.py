"""Throughput of the Dataverse emulator: paging reads and ``$batch`` writes, limits off.

    python -m emulators.dynamics.bench [--leads 50000] [--batches 20] [--batch-size 1000]

Starts a real emulator process (HTTPS, its own temporary database and CA), seeds it, takes a
token through msal, then reads every lead through ``@odata.nextLink`` pages of 5,000 and writes
leads in ``$batch`` change sets. Prints records per second for each.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msal
import requests

from emulators.common.credentials import default_credentials

SELECT = (
    "firstname,lastname,emailaddress1,companyname,jobtitle,telephone1,address1_city,address1_country,"
    "leadsourcecode,statecode,statuscode,new_synctomkto,_ownerid_value,modifiedon"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(workdir: Path, leads: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    db, certs, port = workdir / "dynamics.db", workdir / "certs", _free_port()
    env = dict(os.environ)
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "emulators", "seed", "dynamics", "--db", str(db), "--scale", str(leads)],
        check=True,
        env=env,
    )
    print(f"seed: {leads:,} leads in {time.monotonic() - started:.1f}s", flush=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulators",
            "dynamics",
            "--port",
            str(port),
            "--db",
            str(db),
            "--certs-dir",
            str(certs),
            "--limits",
            "off",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base, ca = f"https://127.0.0.1:{port}", certs / "ca.pem"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if ca.exists() and requests.get(f"{base}/_emulator/health", verify=str(ca), timeout=2).ok:
                return proc, base, ca
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("emulator did not start")


def _session(base: str, ca: Path) -> requests.Session:
    creds = default_credentials("dynamics_default")
    app = msal.ConfidentialClientApplication(
        creds.client_id,
        client_credential=creds.client_secret,
        authority=f"{base}/{creds.tenant_id}",
        instance_discovery=False,
        verify=str(ca),
    )
    token = app.acquire_token_for_client(scopes=[f"{base}/.default"])["access_token"]
    app.http_client.close()
    session = requests.Session()
    session.verify = str(ca)
    session.headers.update(
        {"Authorization": f"Bearer {token}", "OData-Version": "4.0", "Accept": "application/json"}
    )
    return session


def bench_reads(session: requests.Session, base: str, select: str | None) -> tuple[int, float]:
    """Read every lead through nextLink pages of 5,000; return (records, seconds)."""
    url = f"{base}/api/data/v9.2/leads" + (f"?$select={select}" if select else "")
    count, started = 0, time.perf_counter()
    while url:
        resp = session.get(url, headers={"Prefer": "odata.maxpagesize=5000"}, verify=session.verify)
        resp.raise_for_status()
        body = resp.json()
        count += len(body["value"])
        url = body.get("@odata.nextLink")
    return count, time.perf_counter() - started


def _batch_body(size: int, tag: str) -> tuple[str, bytes]:
    batch, changeset = f"batch_{uuid.uuid4().hex}", f"changeset_{uuid.uuid4().hex}"
    parts = []
    for i in range(size):
        record = {
            "firstname": "Bench",
            "lastname": f"{tag}-{i}",
            "emailaddress1": f"{tag}.{i}@bench.example",
            "companyname": "Bench Inc",
            "leadsourcecode": 8,
            "new_synctomkto": True,
        }
        parts.append(
            f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {i + 1}\r\n\r\nPOST /api/data/v9.2/leads HTTP/1.1\r\n"
            f"Content-Type: application/json; type=entry\r\n\r\n{json.dumps(record)}\r\n"
        )
    inner = "".join(parts) + f"--{changeset}--\r\n"
    body = f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n{inner}--{batch}--\r\n"
    return batch, body.encode()


def bench_writes(session: requests.Session, base: str, batches: int, size: int) -> tuple[int, float]:
    """Create ``batches * size`` leads in change sets; return (records, seconds)."""
    bodies = [_batch_body(size, f"b{n}-{uuid.uuid4().hex[:6]}") for n in range(batches)]
    started = time.perf_counter()
    for boundary, body in bodies:
        resp = session.post(
            f"{base}/api/data/v9.2/$batch",
            data=body,
            verify=session.verify,
            headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
        )
        resp.raise_for_status()
    return batches * size, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they would override msal's verify= (§1.4)
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory(prefix="dyn-bench-") as tmp:
        proc, base, ca = _start(Path(tmp), args.leads)
        try:
            session = _session(base, ca)
            for label, select in (("14 columns", SELECT), ("all columns", None)):
                n, secs = bench_reads(session, base, select)
                print(f"paging read ({label}): {n:,} records in {secs:.2f}s = {n / secs:,.0f} records/s")
            n, secs = bench_writes(session, base, args.batches, args.batch_size)
            print(
                f"$batch write ({args.batch_size}/change set): {n:,} records in {secs:.2f}s"
                f" = {n / secs:,.0f} records/s"
            )
            session.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
