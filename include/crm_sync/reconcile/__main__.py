"""``python -m crm_sync.reconcile check``: print the differences between Marketo and Dynamics.

Exit status 0 when both systems agree ("no differences"), 1 when differences were found,
2 on a usage or connection error. The hooks use the Airflow connections (``marketo_default``
and ``dynamics_default`` unless named); ``--marketo-url`` / ``--dynamics-url`` point a
connection at another address (the credentials still come from the connection).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from crm_sync.config import ENTITIES_DIR, load_entities, select_entities

if TYPE_CHECKING:
    from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crm_sync.reconcile", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="compare both systems and print the differences")
    check.add_argument("--entities", default="", help="comma-separated entity names (default: all)")
    check.add_argument("--entities-dir", default=os.environ.get("MDS_ENTITIES_DIR") or str(ENTITIES_DIR))
    check.add_argument(
        "--state-url",
        default=None,
        help="state store URL (default: $AIRFLOW_VAR_MDS_STATE_DB_URL or var/state.db)",
    )
    check.add_argument("--marketo-conn", default="marketo_default")
    check.add_argument("--dynamics-conn", default="dynamics_default")
    check.add_argument(
        "--marketo-url", default=None, help="Marketo REST base URL overriding the connection's host"
    )
    check.add_argument(
        "--dynamics-url", default=None, help="Dataverse org URL overriding the connection's host"
    )
    check.add_argument("--since", default=None, help="start of the Marketo export window (ISO date)")
    check.add_argument("--poll-seconds", type=float, default=5.0)
    check.add_argument("--limit", type=int, default=200, help="differences printed at most (0: all)")
    check.add_argument("--json", action="store_true", help="print the counts as JSON after the text")
    return parser


def _point_connection(conn_id: str, url: str, env_name: str) -> str:
    """Define a connection copied from ``conn_id`` with another host; returns its id."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    old = (conn.host or "").rstrip("/")
    for key in ("authority_host",):
        if str(extra.get(key, "")).rstrip("/") == old:
            extra[key] = url.rstrip("/")
    data = {
        "conn_type": conn.conn_type,
        "host": url.rstrip("/"),
        "login": conn.login,
        "password": conn.password,
        "extra": extra,
    }
    os.environ[f"AIRFLOW_CONN_{env_name.upper()}"] = json.dumps(data)
    return env_name


def check(args: argparse.Namespace) -> int:
    """Run ``check``; returns the exit status."""
    from crm_sync.reconcile.core import differences_text, reconcile
    from crm_sync.state import default_url, make_engine
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

    entities = select_entities(load_entities(Path(args.entities_dir)), args.entities)
    state_url = args.state_url or os.environ.get("AIRFLOW_VAR_MDS_STATE_DB_URL") or default_url()
    m_conn, d_conn = args.marketo_conn, args.dynamics_conn
    if args.marketo_url:
        m_conn = _point_connection(m_conn, args.marketo_url, "mds_reconcile_marketo")
    if args.dynamics_url:
        d_conn = _point_connection(d_conn, args.dynamics_url, "mds_reconcile_dynamics")
    since = datetime.fromisoformat(args.since).replace(tzinfo=UTC) if args.since else None
    engine = make_engine(state_url)
    marketo, dynamics = MarketoHook(m_conn), DynamicsHook(d_conn)
    try:
        report = reconcile(
            entities,
            dynamics=dynamics,
            marketo=marketo,
            state=engine,
            since=since,
            poll_seconds=args.poll_seconds,
        )
    finally:
        marketo.close()
        dynamics.close()
        engine.dispose()
    print(differences_text(report, limit=args.limit or None))
    if args.json:
        print(json.dumps({"total": report.total, "counts": report.counts(), "records": report.records}))
    return 0 if report.total == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    from crm_sync.alerting import run_command

    return run_command("reconcile check", lambda: check(args))


if __name__ == "__main__":
    sys.exit(main())
