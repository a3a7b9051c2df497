"""Command line of the emulators.

    python -m emulators marketo  --host 127.0.0.1 --port 8081 --db PATH [--no-tls]
    python -m emulators dynamics --host 127.0.0.1 --port 8082 --db PATH [--no-tls]
    python -m emulators seed marketo|dynamics --db PATH [--seed N] [--scale N]

Each side is a package (``emulators.marketo``, ``emulators.dynamics``) with a ``cli`` module that
provides ``add_arguments(parser)``, ``build_app(args)`` and ``seed(db_path, seed, scale)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from emulators.common.server import serve
from emulators.common.tls import DEFAULT_CERTS_DIR

SIDES = {"marketo": 8081, "dynamics": 8082}


def _side(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"emulators.{name}.cli")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen emulator or the seeder."""
    parser = argparse.ArgumentParser(prog="python -m emulators", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for side, port in SIDES.items():
        try:
            side_cli = _side(side)
        except ModuleNotFoundError as exc:
            # One side not built (yet) must not stop the other from running.
            if exc.name != f"emulators.{side}.cli" and exc.name != f"emulators.{side}":
                raise
            continue
        p = sub.add_parser(side, help=f"serve the {side} emulator")
        p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=port)
        p.add_argument("--db", type=Path, required=True, help="SQLite file holding the emulator's state")
        p.add_argument("--no-tls", action="store_true", help="serve plain http (debugging only)")
        p.add_argument("--certs-dir", type=Path, default=DEFAULT_CERTS_DIR)
        side_cli.add_arguments(p)
    seed = sub.add_parser("seed", help="fill an emulator database with deterministic fake data")
    seed.add_argument("side", choices=sorted(SIDES))
    seed.add_argument("--db", type=Path, required=True)
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument(
        "--scale", type=int, default=1000, help="number of leads (other entities in proportion)"
    )
    args = parser.parse_args(argv)

    if args.command == "seed":
        _side(args.side).seed(args.db, args.seed, args.scale)
        return 0
    app = _side(args.command).build_app(args)
    serve(app, args.host, args.port, tls=not args.no_tls, certs_dir=args.certs_dir, name=args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
