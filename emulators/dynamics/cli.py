"""Command-line hooks of the Dataverse emulator for ``python -m emulators dynamics|seed dynamics``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulators.common.credentials import ClientCredentials, default_credentials
from emulators.dynamics.app import Settings, build
from emulators.dynamics.limits import LimitConfig

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from starlette.types import ASGIApp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the Dynamics-specific options to the ``dynamics`` subcommand."""
    parser.add_argument(
        "--limits", choices=["on", "off"], default="on", help="enforce service protection limits (default on)"
    )
    parser.add_argument("--limit-requests", type=int, default=6000, help="requests per window per user")
    parser.add_argument(
        "--limit-execution-ms",
        type=int,
        default=1_200_000,
        help="combined execution time per window per user, in ms",
    )
    parser.add_argument("--limit-concurrency", type=int, default=52, help="concurrent requests per user")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="run windows and delta-token expiry this many times faster (tests)",
    )
    parser.add_argument(
        "--delta-token-expiry-days",
        type=float,
        default=7.0,
        help="days of disuse after which a delta token expires (default 7)",
    )
    parser.add_argument("--token-lifetime", type=int, default=3599, help="access token lifetime in seconds")
    parser.add_argument("--client-id", help="accepted client id (default: airflow_settings.yaml)")
    parser.add_argument("--client-secret", help="accepted client secret (default: airflow_settings.yaml)")
    parser.add_argument("--tenant-id", help="accepted tenant id (default: airflow_settings.yaml)")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="start as an org the sync was never set up in: no new_synctomkto column, change"
        " tracking off on the custom tables (applied once per database)",
    )


def build_app(args: argparse.Namespace) -> ASGIApp:
    """Build the ASGI app from parsed arguments."""
    default = default_credentials("dynamics_default")
    credentials = ClientCredentials(
        args.client_id or default.client_id,
        args.client_secret or default.client_secret,
        (args.tenant_id or default.tenant_id or "").lower(),
    )
    limits = LimitConfig(
        enabled=args.limits == "on",
        requests=args.limit_requests,
        execution_ms=args.limit_execution_ms,
        concurrency=args.limit_concurrency,
        time_scale=args.time_scale,
    )
    settings = Settings(
        args.db, credentials, limits, args.token_lifetime, args.delta_token_expiry_days, bare=args.bare
    )
    return build(settings)


def seed(db_path: Path, seed: int, scale: int) -> None:
    """Fill ``db_path`` with deterministic fake data (``scale`` leads, the rest in proportion)."""
    from emulators.dynamics.seed import seed_database

    seed_database(db_path, seed, scale)
