"""What both hooks share: reading the Airflow connection, building the transport, the limiter cache."""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseHook

from crm_sync_hooks.errors import ApiError, ConfigurationError
from crm_sync_hooks.limiter import CallLimiter, Limits, limiter_from_url
from crm_sync_hooks.retry import RetryPolicy
from crm_sync_hooks.transport import VerifiedSession, verify_for

if TYPE_CHECKING:
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

# One limiter object per (store, scope, limits) per process: each SQLite limiter holds a file
# handle and each Redis limiter a connection pool, so hooks created per task share them.
_LIMITERS: dict[tuple[str, str, Limits], CallLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(url: str | None, scope: str, limits: Limits) -> CallLimiter:
    """Return this process's limiter for a store URL, scope and limits, creating it once."""
    key = (url or "", scope, limits)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = limiter_from_url(url, scope, limits)
            _LIMITERS[key] = limiter
        return limiter


def register_secret(value: str | None) -> None:
    """Tell Airflow's secrets masker about a secret so task logs show ``***`` instead."""
    if not value:
        return
    from airflow.sdk.log import mask_secret

    mask_secret(value)


def require_https(conn_id: str, field: str, value: str, *, allow_http: bool = False) -> str:
    """The URL in connection field ``field`` as https (see :meth:`ConnectionSettings.https_url`)."""
    url = value.strip().rstrip("/")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not scheme:
        return f"https://{url}"
    if scheme == "https":
        return url
    if scheme == "http" and allow_http:
        log.warning("connection %r: %s %s is plain http (allow_http is set); use it for local tests only",
                    conn_id, field, url)  # fmt: skip
        return url
    if scheme == "http":
        raise ConfigurationError(
            f"connection {conn_id!r}: {field} {url!r} is plain http; https is required (credentials and "
            "tokens would travel in clear). Only a local test server may set the extra allow_http: true."
        )
    raise ConfigurationError(f"connection {conn_id!r}: {field} {url!r} must be an https URL")


def register_url_password(url: str | None) -> None:
    """Mask the password inside a database or Redis URL (``scheme://user:password@host/...``).

    The state store URL (Variable ``mds_state_db_url``) and the limiter URL (extra
    ``limiter_url``) may carry one, and Airflow masks neither on its own: a Variable only when
    its name looks secret, an extra only under a secret-looking key.
    """
    if not url or "://" not in url:
        return
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:  # a malformed URL fails later, where it is used, with its own message
        return
    if password:
        register_secret(password)
        register_secret(unquote(password))


class ConnectionSettings:
    """Typed access to a connection's fields and extras, with errors that name the connection and field."""

    def __init__(self, conn: Connection):
        self.conn_id = conn.conn_id
        self.host = (conn.host or "").strip()
        self.login = (conn.login or "").strip()
        self.password = conn.password or ""
        self.extra: dict[str, Any] = dict(conn.extra_dejson or {})

    def require(self, field: str, value: str) -> str:
        """Return ``value``, or fail naming the empty connection field."""
        if not value:
            raise ConfigurationError(f"connection {self.conn_id!r}: field {field!r} is empty")
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        """Return extra ``key`` as text (None when absent or blank)."""
        value = self.extra.get(key)
        if value is None or str(value).strip() == "":
            return default
        return str(value).strip()

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        """Return extra ``key`` as a number of at least ``minimum``."""
        value = self.extra.get(key)
        if value is None or value == "":
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"connection {self.conn_id!r}: extra {key!r} must be a number, got {value!r}"
            ) from None
        if number < minimum:
            raise ConfigurationError(f"connection {self.conn_id!r}: extra {key!r} must be >= {minimum}")
        return number

    def flag(self, key: str) -> bool:
        """Return extra ``key`` as a boolean (absent: False; ``true``/``1``/``yes`` count as True)."""
        value = self.extra.get(key)
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("true", "1", "yes") if value is not None else False

    def https_url(self, field: str, value: str) -> str:
        """``value`` as an https URL (a bare host gets ``https://``), without a trailing slash.

        Plain ``http://`` would carry the client secret and the tokens in clear, so it is refused
        unless the connection's extra ``allow_http`` is true (the emulators' ``--no-tls`` mode, a
        local test server); then it is used with a warning.

        Raises:
            ConfigurationError: ``http://`` without ``allow_http``, or another scheme.
        """
        return require_https(self.conn_id, field, value, allow_http=self.flag("allow_http"))

    def integer(self, key: str, default: int | None, *, minimum: int = 0) -> int | None:
        """Return extra ``key`` as an integer of at least ``minimum`` (None when absent and no default)."""
        value = self.extra.get(key)
        if value is None or value == "":
            return default
        number = self.number(key, 0.0, minimum=minimum)
        if number != int(number):
            raise ConfigurationError(f"connection {self.conn_id!r}: extra {key!r} must be a whole number")
        return int(number)


class CrmApiHook(BaseHook):
    """Base of both hooks: lazy connection, session, limiter and retry policy.

    Args:
        conn_id: Airflow connection id.
        retry_policy: How to repeat retriable failures (tests pass :meth:`RetryPolicy.no_wait`).
        limiter: A limiter to use instead of the one the connection's extras describe.
    """

    conn_name_attr: ClassVar[str]
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]

    def __init__(
        self,
        conn_id: str | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        limiter: CallLimiter | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        self._retry_policy = retry_policy
        self._limiter_override = limiter

    def __repr__(self) -> str:
        return f"{type(self).__name__}(conn_id={self.conn_id!r})"

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The connection's fields, read once on first use (never at construction)."""
        settings = ConnectionSettings(self.get_connection(self.conn_id))
        register_secret(settings.password)
        return settings

    @cached_property
    def timeout(self) -> float:
        """Read time-out of every call, from the ``timeout`` extra."""
        return self.settings.number("timeout", self.default_timeout, minimum=1.0)

    default_timeout: ClassVar[float] = 120.0

    @cached_property
    def verify(self) -> str | bool:
        """The CA bundle from the ``ca_bundle`` extra, or True for the system trust store."""
        return verify_for(self.settings.text("ca_bundle"))

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy: the one given to the constructor, else bounded by ``max_retry_seconds``."""
        if self._retry_policy is not None:
            return self._retry_policy
        return RetryPolicy(max_elapsed=self.settings.number("max_retry_seconds", 300.0, minimum=0.0))

    def get_conn(self) -> VerifiedSession:
        """Return the HTTP session (created on first use)."""
        return self.session

    def close(self) -> None:
        """Close the hook's HTTP connections (a new session is made if the hook is used again)."""
        session = self.__dict__.pop("session", None)
        if session is not None:
            session.close()
        self.__dict__.pop("transport", None)

    @cached_property
    def session(self) -> VerifiedSession:
        """The hook's HTTP session with verified TLS and the connection's time-out."""
        return VerifiedSession(self.verify, self.timeout)

    def build_limits(
        self,
        *,
        calls: int,
        window: float,
        concurrent: int,
        budget: int | None = None,
        budget_timezone: str = "UTC",
    ) -> Limits:
        """Return the limits, letting the extras ``rate_limit_calls``, ``rate_limit_window_seconds``
        and ``max_concurrent_calls`` lower (or, for a bigger contract, raise) the API defaults."""
        s = self.settings
        return Limits(
            max_calls=s.integer("rate_limit_calls", calls, minimum=1) or calls,
            window_seconds=s.number("rate_limit_window_seconds", window, minimum=0.001),
            max_concurrent=s.integer("max_concurrent_calls", concurrent, minimum=1) or concurrent,
            daily_budget=budget,
            budget_timezone=s.text("budget_timezone", budget_timezone) or budget_timezone,
            lease_seconds=max(self.timeout * 2, 60.0),
        )

    def limiter_for(self, scope: str, limits: Limits) -> CallLimiter:
        """Return the limiter given to the constructor, else the shared one the extras name."""
        if self._limiter_override is not None:
            return self._limiter_override
        url = self.settings.text("limiter_url")
        register_url_password(url)
        return shared_limiter(url, scope, limits)

    @property
    def limiter_wait(self) -> float:
        """Longest wait for a call slot, from the ``limiter_wait_seconds`` extra."""
        return self.settings.number("limiter_wait_seconds", 600.0, minimum=0.0)

    def _probe(self) -> str:
        """Make one cheap authenticated call and return a description of the success."""
        raise NotImplementedError

    def test_connection(self) -> tuple[bool, str]:
        """Check the connection with one cheap authenticated call; never raises.

        Returns:
            ``(True, message)`` on success, ``(False, reason)`` otherwise.
        """
        try:
            return True, self._probe()
        except (ApiError, ConfigurationError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # the UI's Test button must get an answer, whatever went wrong
            log.exception("%s test_connection failed unexpectedly", type(self).__name__)
            return False, f"unexpected {type(exc).__name__}: {exc}"
