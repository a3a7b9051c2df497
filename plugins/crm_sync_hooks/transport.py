"""HTTP plumbing shared by both hooks: one session, verified TLS, time-outs, limiter slots, retries.

Every API call of both hooks goes through :meth:`ApiTransport.send`, which

* waits for a slot of the shared :class:`~crm_sync_hooks.limiter.CallLimiter` and holds it until
  the answer is read,
* sends with ``verify`` and ``timeout`` set on the request itself (see :func:`verify_for`),
* turns the answer into success or an exception through an API-specific ``check`` function,
* repeats retriable failures under the :class:`~crm_sync_hooks.retry.RetryPolicy`, honouring
  ``Retry-After`` (and pausing every process sharing the limiter when the server says the whole
  instance is over its limit), and renews the access token once when it is rejected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from crm_sync_hooks.errors import (
    ApiError,
    AuthenticationError,
    RetriableApiError,
    RetriesExhausted,
    TokenExpiredError,
)

if TYPE_CHECKING:
    from crm_sync_hooks.limiter import CallLimiter
    from crm_sync_hooks.retry import RetryPolicy

log = logging.getLogger(__name__)

CheckFn = Callable[[requests.Response, str], None]

# Network failures worth repeating: refused/reset/dropped connections, read or connect time-outs,
# and bodies cut short (a dropped connection in the middle of a response).
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def verify_for(ca_bundle: str | None) -> str | bool:
    """Return the ``verify`` value for requests: the connection's CA bundle, or the system trust store.

    TLS verification is never switched off. The value is passed on every request (not only on
    the session) because ``requests`` lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a
    session-level setting when ``trust_env`` is on; a per-request value wins over them.
    """
    return ca_bundle if ca_bundle else True


def endpoint_label(method: str, url: str) -> str:
    """Return ``"METHOD /path"`` for messages and logs: no host, no query string (which may carry data)."""
    return f"{method.upper()} {urlsplit(url).path}"


def retry_after_seconds(resp: requests.Response) -> float | None:
    """Return the ``Retry-After`` header in seconds, if it is a number."""
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date; the backoff covers it


class VerifiedSession(requests.Session):
    """A session that always applies its CA bundle and a time-out, even when a caller sets neither.

    msal sends its own requests through the ``http_client`` it is given and passes no ``verify``,
    which would let environment variables override the CA bundle; this session fills both in.
    """

    def __init__(self, verify: str | bool, timeout: float, pool_size: int = 16):
        super().__init__()
        self.verify = verify
        self.default_timeout = timeout
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.verify
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)


class ApiTransport:
    """Sends API calls under the shared limits with retries.

    Args:
        session: The HTTP session (a :class:`VerifiedSession`).
        limiter: Shared call limiter of this API instance.
        policy: Retry policy.
        check: Turns a response into an exception, or returns for success.
        limiter_timeout: Longest wait for a call slot.
    """

    def __init__(
        self,
        session: VerifiedSession,
        limiter: CallLimiter,
        policy: RetryPolicy,
        check: CheckFn,
        limiter_timeout: float = 600.0,
    ):
        self.session = session
        self.limiter = limiter
        self.policy = policy
        self.check = check
        self.limiter_timeout = limiter_timeout

    def send(
        self,
        method: str,
        url: str,
        *,
        auth_headers: Callable[[], Mapping[str, str]] | None = None,
        renew_auth: Callable[[], None] | None = None,
        count_budget: bool = True,
        check: CheckFn | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one API call and return its successful response.

        Args:
            method: HTTP method.
            url: Absolute URL.
            auth_headers: Returns the ``Authorization`` header (called before each attempt).
            renew_auth: Drops the cached token; called once when the token is rejected.
            count_budget: Count the call against the daily budget.
            check: Response check for this call instead of the transport's default.
            timeout: Read time-out for this call instead of the session default.
            **kwargs: Passed to :meth:`requests.Session.request` (params, data, json, files, headers).

        Raises:
            FatalApiError: The API refused the call in a way repeating cannot fix.
            AuthenticationError: A renewed token was refused too.
            RetriesExhausted: Retriable failures outlasted the retry policy.
            CallBudgetExhausted: The daily budget is spent.
            LimiterTimeout: No call slot became free in time.
        """
        label = endpoint_label(method, url)
        check_fn = check or self.check
        policy = self.policy
        started = time.monotonic()
        attempt = 0
        renewed = False
        extra_headers = dict(kwargs.pop("headers", None) or {})
        while True:
            attempt += 1
            headers = dict(extra_headers)
            try:
                if auth_headers is not None:
                    # Inside the try: a token service that is briefly down is retried like the call.
                    headers.update(auth_headers())
                resp = self._send_once(method, url, label, headers, count_budget, check_fn, timeout, kwargs)
                return resp
            except TokenExpiredError as exc:
                if renewed or renew_auth is None:
                    raise AuthenticationError(
                        "a freshly issued access token was rejected", endpoint=label, code=exc.code
                    ) from exc
                log.info(
                    "%s: access token rejected (code %s); renewing it and retrying once", label, exc.code
                )
                renew_auth()
                renewed = True
                attempt -= 1  # the renewal retry does not consume the retry budget
                continue
            except RetriableApiError as exc:
                error: ApiError = exc
                retry_after = exc.retry_after
                if exc.pause_all and retry_after and policy.honour_retry_after:
                    self.limiter.pause(retry_after)
            delay = policy.delay(attempt, retry_after)
            elapsed = time.monotonic() - started
            if attempt >= policy.max_attempts or elapsed + delay > policy.max_elapsed:
                raise RetriesExhausted(
                    f"gave up after {attempt} attempts in {elapsed:.1f}s; last error: {error}",
                    endpoint=label,
                    code=error.code,
                    status=error.status,
                ) from error
            log.warning("%s failed (attempt %d): %s; retrying in %.2fs", label, attempt, error, delay)
            policy.sleep(delay)

    def _send_once(
        self,
        method: str,
        url: str,
        label: str,
        headers: dict[str, str],
        count_budget: bool,
        check_fn: CheckFn,
        timeout: float | None,
        kwargs: dict[str, Any],
    ) -> requests.Response:
        for value in kwargs.values():
            # A file body is read while sending; rewind it so a retry sends it whole again.
            if isinstance(value, dict):
                for item in value.values():
                    handle = item[1] if isinstance(item, tuple) and len(item) > 1 else None
                    if handle is not None and hasattr(handle, "seek"):
                        handle.seek(0)
        with self.limiter.slot(count_budget=count_budget, timeout=self.limiter_timeout):
            begun = time.monotonic()
            try:
                resp = self.session.request(method, url, headers=headers, timeout=timeout, **kwargs)
                # Read the body while the slot is held: the call is not over until then.
                _ = resp.content
            except _NETWORK_ERRORS as exc:
                raise RetriableApiError(
                    f"network error: {type(exc).__name__}", endpoint=label, code="network"
                ) from exc
        log.debug("%s -> %s in %.0f ms", label, resp.status_code, (time.monotonic() - begun) * 1000)
        check_fn(resp, label)
        return resp
