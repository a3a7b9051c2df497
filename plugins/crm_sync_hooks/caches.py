"""Forget the per-process caches of both hooks (tokens, msal applications, limiters).

Tests that start and stop emulators call this between runs: a cached token belongs to a server
that is gone, and an idle keep-alive connection makes a server's graceful shutdown wait.
"""

from __future__ import annotations


def clear_process_caches() -> None:
    """Drop cached tokens and msal applications and close the limiters and their HTTP sessions."""
    from crm_sync_hooks import base, dynamics, marketo
    from crm_sync_hooks.limiter import SqliteLimiter

    with marketo._TOKENS_LOCK:
        marketo._TOKENS.clear()
    with dynamics._MSAL_LOCK:
        for app in dynamics._MSAL_APPS.values():
            client = getattr(app, "http_client", None)
            if client is not None and hasattr(client, "close"):
                client.close()
        dynamics._MSAL_APPS.clear()
    with base._LIMITERS_LOCK:
        for limiter in base._LIMITERS.values():
            if isinstance(limiter, SqliteLimiter):
                limiter.close()
        base._LIMITERS.clear()
