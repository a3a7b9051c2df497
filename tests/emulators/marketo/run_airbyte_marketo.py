"""Run airbyte-source-marketo (inside .venv-airbyte) against the local emulator.

Why this wrapper, and why it is this small (independent-clients §2):

* The connector's data calls go through ``requests.Session.send()``, which ignores
  ``REQUESTS_CA_BUNDLE``; only the token call honours it. Setting ``Session.verify`` from the
  variable lets the unchanged connector trust the emulator's local CA over HTTPS.
* Bulk export status is polled every 60 s (``MarketoExportBase.poll_interval``), a pacing
  choice with no setting; 1 s keeps the test fast without changing any request it sends.

Usage (same arguments as the ``source-marketo`` console script):
    .venv-airbyte/bin/python run_airbyte_marketo.py check --config c.json
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
    import source_marketo.source as marketo_source
    from source_marketo.run import run

    marketo_source.MarketoExportBase.poll_interval = 1
    run()
