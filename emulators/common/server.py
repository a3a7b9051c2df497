"""Run an emulator's ASGI app with uvicorn, over HTTPS by default."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import uvicorn

from emulators.common.tls import ensure_certificates

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.types import ASGIApp

log = logging.getLogger(__name__)


def serve(app: ASGIApp, host: str, port: int, tls: bool, certs_dir: Path, name: str) -> None:
    """Serve ``app`` until interrupted; print the CA file clients must trust when TLS is on."""
    kwargs: dict[str, object] = {}
    scheme = "http"
    if tls:
        paths = ensure_certificates(certs_dir)
        kwargs = {"ssl_certfile": str(paths.cert), "ssl_keyfile": str(paths.key)}
        scheme = "https"
        print(f"{name} emulator: CA certificate for clients: {paths.ca}", flush=True)
    print(f"{name} emulator: serving on {scheme}://{host}:{port}", flush=True)
    # A client holding a keep-alive connection (a pooled session, an msal app) would otherwise
    # make a graceful shutdown wait for it indefinitely; two seconds let in-flight requests end.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        **kwargs,  # type: ignore[arg-type]
    )
