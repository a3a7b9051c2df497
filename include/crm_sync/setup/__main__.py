"""``python -m crm_sync.setup check|apply``: is each system ready for the sync, and make it so.

``check`` exits 0 when nothing blocks a sync, 1 when something does (the table says what and
how to fix it), 2 on a usage or connection error. ``apply`` creates what the APIs allow, checks
again and exits the same way; ``--dry-run`` only lists the calls it would make. ``--json``
prints the report as JSON instead of the table. The hooks use the Airflow connections
(``marketo_default`` and ``dynamics_default`` unless named).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crm_sync.config import ENTITIES_DIR, load_entities, select_entities
from crm_sync.setup.findings import report_text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crm_sync.setup.core import ApplyResult


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crm_sync.setup", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("check", "list everything missing in both systems, with the fix"),
        ("apply", "create what the APIs allow, then check again"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--entities", default="", help="comma-separated entity names (default: all)")
        cmd.add_argument("--entities-dir", default=os.environ.get("MDS_ENTITIES_DIR") or str(ENTITIES_DIR))
        cmd.add_argument("--marketo-conn", default="marketo_default")
        cmd.add_argument("--dynamics-conn", default="dynamics_default")
        cmd.add_argument("--json", action="store_true", help="print the report as JSON")
        if name == "apply":
            cmd.add_argument("--dry-run", action="store_true", help="only list the calls apply would make")
    return parser


def _apply_text(result: ApplyResult) -> str:
    if result.dry_run:
        planned = result.planned
        lines = [f"setup apply --dry-run: {len(planned)} call(s) would be made"]
        lines += [f"  - {p}" for p in planned]
    else:
        lines = [f"setup apply: {len(result.done)} call(s) made"] + [f"  - {d}" for d in result.done]
    by_hand = result.by_hand
    lines.append(f"{len(by_hand)} thing(s) to do by hand" + (":" if by_hand else "."))
    lines += [f"  - {h}" for h in by_hand]
    if result.after is not None:
        lines += ["", report_text(result.after)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status."""
    from crm_sync.setup.core import run_apply, run_check
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

    entities = select_entities(load_entities(Path(args.entities_dir)), args.entities)
    marketo, dynamics = MarketoHook(args.marketo_conn), DynamicsHook(args.dynamics_conn)
    try:
        if args.command == "check":
            report = run_check(entities, marketo=marketo, dynamics=dynamics)
            print(json.dumps(report.to_json(), indent=2) if args.json else report_text(report))
            return 1 if report.findings else 0
        result = run_apply(entities, marketo=marketo, dynamics=dynamics, dry_run=args.dry_run)
        final = result.after or result.before
        if args.json:
            data = {"done": result.done, "planned": result.planned, "by_hand": result.by_hand}
            print(json.dumps({**data, "report": final.to_json()}, indent=2))
        else:
            print(_apply_text(result))
        return 1 if final.findings else 0
    finally:
        marketo.close()
        dynamics.close()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    from crm_sync.alerting import run_command

    return run_command(f"setup {args.command}", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
