"""Command-line hooks of the Marketo emulator for ``python -m emulators marketo|seed``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from emulators.common.credentials import ClientCredentials, default_credentials
from emulators.marketo import lead_fields
from emulators.marketo import seed as seeding
from emulators.marketo.app import Emulator, build, environment_credentials
from emulators.marketo.limits import LimitsConfig
from emulators.marketo.store import Store

if TYPE_CHECKING:
    import argparse

    from fastapi import FastAPI

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the Marketo-specific options (limits, time scale, bulk job limits, credentials)."""
    d = LimitsConfig()
    g = parser.add_argument_group("Marketo limits (all changeable at run time: PUT /_emulator/limits)")
    g.add_argument(
        "--limits",
        choices=("on", "off"),
        default="on",
        help="enforce 606/615/607 and bulk queue limits (default on)",
    )
    g.add_argument(
        "--time-scale",
        type=float,
        default=d.time_scale,
        help="multiply the 20 s rate window and bulk job durations (0.05 = 20x faster)",
    )
    g.add_argument("--rate-limit", type=int, default=d.rate_limit, help="calls per window (606)")
    g.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="calls in flight (615)")
    g.add_argument("--daily-quota", type=int, default=d.daily_quota, help="calls per day (607)")
    g.add_argument("--token-ttl", type=int, default=d.token_ttl_s, help="access token lifetime, seconds")
    g.add_argument("--export-running", type=int, default=d.export_running)
    g.add_argument("--export-queued", type=int, default=d.export_queued)
    g.add_argument("--export-daily-mb", type=float, default=d.export_daily_mb)
    g.add_argument("--import-running", type=int, default=d.import_running)
    g.add_argument("--import-queued", type=int, default=d.import_queued)
    g.add_argument(
        "--bulk-job-seconds",
        type=float,
        default=d.bulk_job_s,
        help="minimum time a bulk job stays processing (scaled by --time-scale)",
    )
    m = parser.add_argument_group("Marketo instance set-up")
    m.add_argument(
        "--bare",
        action="store_true",
        help="hide every msd... lead field until it is created through Create Lead Fields, as on an "
        "instance without the native Dynamics sync (applied once per database; also POST /_emulator/bare)",
    )
    m.add_argument(
        "--native-sync",
        action="store_true",
        help="act as an instance with the native Dynamics sync: describe2 marks CRM fields crmManaged and "
        "company/opportunity/role/sales person writes answer 1018 (also POST /_emulator/native_sync)",
    )
    parser.add_argument("--client-id", help="accept this client id too (with --client-secret)")
    parser.add_argument("--client-secret", help="secret for --client-id")


def config_from_args(args: argparse.Namespace) -> LimitsConfig:
    """Build the limits from parsed options."""
    return LimitsConfig(
        enabled=args.limits == "on",
        time_scale=args.time_scale,
        rate_limit=args.rate_limit,
        max_concurrent=args.max_concurrent,
        daily_quota=args.daily_quota,
        token_ttl_s=args.token_ttl,
        export_running=args.export_running,
        export_queued=args.export_queued,
        export_daily_mb=args.export_daily_mb,
        import_running=args.import_running,
        import_queued=args.import_queued,
        bulk_job_s=args.bulk_job_seconds,
    )


def _credentials(args: argparse.Namespace) -> list[ClientCredentials]:
    creds: list[ClientCredentials] = []
    try:
        creds.append(default_credentials("marketo_default"))
    except (KeyError, OSError) as exc:
        log.warning("default Marketo credentials unavailable: %s", exc)
    if args.client_id and args.client_secret:
        creds.append(ClientCredentials(args.client_id, args.client_secret))
    creds.extend(environment_credentials())
    if not creds:
        raise SystemExit("no client credentials to accept: pass --client-id and --client-secret")
    return creds


def build_app(args: argparse.Namespace) -> FastAPI:
    """Create the emulator app for the parsed command line."""
    store = Store(Path(args.db))
    if args.bare:
        with store.begin() as conn:
            outcome = lead_fields.apply_bare(conn, store)
        if outcome["applied"]:
            log.info("bare mode: %d msd lead fields hidden", len(outcome["absent"]))
    emu = Emulator(
        store=store,
        config=config_from_args(args),
        credentials=_credentials(args),
        native_sync=args.native_sync,
    )
    return build(emu)


def seed(db_path: Path, seed: int, scale: int) -> None:
    """Fill ``db_path`` with deterministic demo data (``python -m emulators seed marketo``)."""
    seeding.seed(db_path, seed, scale)
