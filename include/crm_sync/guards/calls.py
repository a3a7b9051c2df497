"""Count the API calls a hook sends, per system, without touching the hooks' code.

A ``response`` hook on the hook's ``requests`` session sees every answered call, retries
included (each one is a call the API counted). Token requests are left out: Marketo's identity
calls do not count against its quota, and msal sends Dataverse token requests through a
session of its own.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests

# Paths of token requests on the API host (not counted against any API budget).
_TOKEN_PATHS = ("/identity/", "/oauth2/")


class CallCounter:
    """Calls sent per system by the hooks attached to it."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def attach(self, hook: Any, system: str) -> None:
        """Count the calls ``hook`` (a Marketo or Dynamics hook) sends from now on as ``system``.

        The hook's HTTP session is created here if it does not exist yet; a hook that is
        closed and used again gets a new session, which is not counted.
        """

        def count(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if not any(p in urlsplit(response.url).path for p in _TOKEN_PATHS):
                self.counts[system] += 1

        hook.session.hooks.setdefault("response", []).append(count)

    def as_dict(self) -> dict[str, int]:
        """The counts so far, e.g. ``{"marketo": 3, "dynamics": 12}``."""
        return {k: v for k, v in sorted(self.counts.items()) if v}
