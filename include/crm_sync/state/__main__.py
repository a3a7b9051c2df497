"""Command line of the state store.

    python -m crm_sync.state upgrade [--url URL] [--revision head]
    python -m crm_sync.state current [--url URL]
    python -m crm_sync.state parked  [--url URL] [--entity NAME]
    python -m crm_sync.state requeue [--url URL] [--entity NAME] [--id SOURCE_ID ...]
    python -m crm_sync.state rebaseline --yes [--url URL]

``--url`` defaults to ``$CRM_SYNC_STATE_URL`` or ``var/state.db``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from crm_sync.state.db import current_revision, default_url, make_engine, session_scope, upgrade
from crm_sync.state.errors import parked_errors, requeue_errors
from crm_sync.state.identity import rebaseline

log = logging.getLogger("crm_sync.state")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crm_sync.state", description="Sync state store")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("upgrade", "migrate the schema"),
        ("current", "print the schema revision"),
        ("parked", "list parked record errors"),
        ("requeue", "re-queue parked record errors"),
        ("rebaseline", "clear id map, watermarks and system identities"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--url", default=None, help="SQLAlchemy URL (default: $CRM_SYNC_STATE_URL or var/state.db)"
        )
        if name == "upgrade":
            p.add_argument("--revision", default="head")
        if name in ("parked", "requeue"):
            p.add_argument("--entity", default=None)
        if name == "rebaseline":
            p.add_argument("--yes", action="store_true", help="confirm: the next run is a full initial sync")
        if name == "requeue":
            p.add_argument(
                "--id", dest="ids", action="append", default=None, help="source record id (repeatable)"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    url = args.url or default_url()
    if args.command == "upgrade":
        upgrade(url, args.revision)
        return 0
    engine = make_engine(url)
    try:
        if args.command == "current":
            sys.stdout.write(f"{current_revision(engine) or '<none>'}\n")
        elif args.command == "parked":
            with session_scope(engine) as session:
                frame = parked_errors(session, entity=args.entity)
            cols = ["entity", "direction", "source_id", "field", "code", "attempts", "last_seen", "message"]
            sys.stdout.write(
                frame[cols].to_string(index=False) + "\n" if len(frame) else "no parked errors\n"
            )
        elif args.command == "rebaseline":
            if not args.yes:
                sys.stderr.write("rebaseline clears every link and watermark; pass --yes to confirm\n")
                return 2
            with session_scope(engine) as session:
                rebaseline(session)
            sys.stdout.write("state store re-baselined\n")
        else:
            with session_scope(engine) as session:
                count = requeue_errors(session, entity=args.entity, source_ids=args.ids)
            sys.stdout.write(f"re-queued {count} parked errors\n")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
