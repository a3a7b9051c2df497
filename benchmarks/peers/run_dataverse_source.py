"""Run airbyte-source-microsoft-dataverse 1.0.2 (inside .venv-airbyte-dataverse) against the emulator.

The connector hard-codes its token authority (``https://login.microsoftonline.com/{tenant}``) in
``get_auth``, which both of its modules use; no configuration key moves it. This wrapper rebuilds
the same authenticator with the emulator's Entra-style token URL (``$DATAVERSE_TOKEN_URL``, with
``{tenant_id}`` filled from the config) and, because data calls go through ``Session.send()``
(which ignores ``REQUESTS_CA_BUNDLE``), sets ``Session.verify`` from that variable. Every data
request it sends is the connector's own.

Usage (same arguments as ``source-microsoft-dataverse``):
    .venv-airbyte-dataverse/bin/python run_dataverse_source.py read --config c.json --catalog cat.json
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
    import source_microsoft_dataverse.dataverse as dataverse
    import source_microsoft_dataverse.source as source
    from source_microsoft_dataverse.run import run

    def get_auth(config: dict[str, Any]) -> Any:
        """The connector's own authenticator, aimed at the emulator's token endpoint."""
        return dataverse.MicrosoftOauth2Authenticator(
            token_refresh_endpoint=os.environ["DATAVERSE_TOKEN_URL"].format(tenant_id=config["tenant_id"]),
            client_id=config["client_id"],
            client_secret=config["client_secret_value"],
            scopes=[f"{config['url']}/.default"],
            refresh_token="",
        )

    dataverse.get_auth = get_auth
    source.get_auth = get_auth
    run()
