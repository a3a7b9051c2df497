"""Run tap-marketo 2.9.4 (inside .venv-tap-marketo) against the local Marketo emulator.

tap-marketo cannot be pointed at another host by configuration: ``Client.get_url`` builds
``https://{munchkin}.mktorest.com/{path}`` from the ``endpoint`` (which must look like a Munchkin
URL) for data calls and for the token call alike. This wrapper replaces only that method with the
emulator's base URL (``$MARKETO_BASE_URL``), and, because the tap sends data calls with
``Session.send()`` (which ignores ``REQUESTS_CA_BUNDLE``), sets ``Session.verify`` from that
variable so the unchanged tap trusts the emulator's local CA. Every request it sends is its own.

Usage (same arguments as the ``tap-marketo`` console script):
    .venv-tap-marketo/bin/python run_tap_marketo.py --config c.json --properties catalog.json
"""

from __future__ import annotations

import os
from typing import Any

import requests

_original_init = requests.Session.__init__


def _session_init(self: requests.Session, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    if os.environ.get("REQUESTS_CA_BUNDLE"):
        self.verify = os.environ["REQUESTS_CA_BUNDLE"]


requests.Session.__init__ = _session_init  # type: ignore[method-assign]

if __name__ == "__main__":
    import tap_marketo
    import tap_marketo.client as tap_client

    base = os.environ["MARKETO_BASE_URL"].rstrip("/")
    tap_client.Client.get_url = lambda self, url: f"{base}/{url}"
    tap_marketo.main()
