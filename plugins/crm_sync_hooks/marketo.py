"""Airflow hook for the Adobe Marketo Engage REST API (Lead Database, lead fields, bulk extract and import).

Connection (conn_type ``marketo``): host = REST base URL (``https://<munchkin>.mktorest.com``),
login = client id, password = client secret of a LaunchPoint custom service; extras
``ca_bundle``, ``timeout``, ``daily_call_budget``, ``limiter_url``, ``rate_limit_calls``,
``rate_limit_window_seconds``, ``max_concurrent_calls``, ``bulk_poll_seconds``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from crm_sync_hooks.base import CrmApiHook, register_secret
from crm_sync_hooks.connection_ui import MARKETO_CONN_FIELDS, MARKETO_UI_BEHAVIOUR, wtforms_widgets
from crm_sync_hooks.errors import (
    ApiError,
    AuthenticationError,
    FatalApiError,
    NotFoundError,
    QuotaExceeded,
    RetriableApiError,
    TokenExpiredError,
)
from crm_sync_hooks.marketo_bulk import MarketoBulkMixin
from crm_sync_hooks.marketo_programs import MarketoProgramsMixin
from crm_sync_hooks.marketo_schema import MarketoSchemaMixin
from crm_sync_hooks.marketo_writes import MAX_BATCH, MarketoWritesMixin
from crm_sync_hooks.records import chunked
from crm_sync_hooks.transport import ApiTransport, retry_after_seconds

if TYPE_CHECKING:
    from datetime import datetime

    import requests

    from crm_sync_hooks.limiter import Limits

log = logging.getLogger(__name__)

TOKEN_MARGIN_SECONDS = 60.0  # renew a token this long before it expires, as Adobe recommends

_RETRIABLE_CODES = {"604", "608", "611", "614", "615", "713", "719"}
_BULK_QUEUE_CODES = {"1016", "1019", "1029"}  # import/export queue full: wait minutes, not seconds
_AUTH_CODES = {"601", "602"}
_NOT_FOUND_CODES = {"610", "1013"}

# Identity tokens per process, keyed by (REST base URL, client id, secret fingerprint): every
# hook of a worker process reuses the live token instead of asking the identity service again.
_TOKENS: dict[tuple[str, str, str], tuple[str, float]] = {}
_TOKENS_LOCK = threading.Lock()


@dataclass(frozen=True)
class FeedPage:
    """One page of an activity feed (lead changes, deleted leads, activities).

    Attributes:
        records: The activities of this page (may be empty while ``more`` is true).
        next_page_token: Where the next read starts; persist the last one as the watermark.
        more: Whether the feed has more pages right now.
    """

    records: list[dict[str, Any]]
    next_page_token: str
    more: bool


def marketo_error(errors: Any, label: str, window_seconds: float, bulk_wait: float) -> ApiError:
    """Turn the ``errors`` of a ``success: false`` envelope into the matching exception.

    Args:
        errors: The envelope's ``errors`` list of ``{code, message}``.
        label: ``"METHOD /path"`` of the call.
        window_seconds: The rate-limit window, waited out after a 606.
        bulk_wait: Seconds to wait when a bulk queue is full.
    """
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], Mapping) else {}
    code = str(first.get("code", "unknown"))
    message = str(first.get("message", "call failed without an error message"))
    if code in _AUTH_CODES:
        return TokenExpiredError(message, endpoint=label, code=code)
    if code == "607" or (code == "1029" and "quota" in message.lower()):
        return QuotaExceeded(f"{message}; resume after midnight US Central", endpoint=label, code=code)
    if code == "606":
        # Someone else (another integration) used the instance's window: everyone waits it out.
        return RetriableApiError(
            message, endpoint=label, code=code, retry_after=window_seconds, pause_all=True
        )
    if code in _RETRIABLE_CODES:
        return RetriableApiError(message, endpoint=label, code=code)
    if code == "1029" and "already" in message.lower():
        # "Job already queued": repeating cannot help; the caller decides (enqueue treats it as done).
        return FatalApiError(message, endpoint=label, code=code)
    if code in _BULK_QUEUE_CODES:
        return RetriableApiError(message, endpoint=label, code=code, retry_after=bulk_wait)
    if code in _NOT_FOUND_CODES:
        return NotFoundError(message, endpoint=label, code=code)
    return FatalApiError(message, endpoint=label, code=code)


def check_http(resp: requests.Response, label: str) -> None:
    """Raise for HTTP-level failures (real status codes) of a Marketo REST or bulk call."""
    status = resp.status_code
    if status == 429 or status >= 500:
        raise RetriableApiError(
            f"HTTP {status}",
            endpoint=label,
            code=str(status),
            status=status,
            retry_after=retry_after_seconds(resp),
            pause_all=status == 429,
        )
    if status == 401:
        raise TokenExpiredError("HTTP 401", endpoint=label, code="401", status=status)
    if status == 404:
        raise NotFoundError(f"HTTP 404: {resp.text[:200]}", endpoint=label, code="404", status=status)
    if status >= 400:
        raise FatalApiError(
            f"HTTP {status}: {resp.text[:200]}", endpoint=label, code=str(status), status=status
        )


class MarketoHook(MarketoProgramsMixin, MarketoWritesMixin, MarketoBulkMixin, MarketoSchemaMixin, CrmApiHook):
    """Talks to one Marketo instance under its shared limits.

    Args:
        marketo_conn_id: Airflow connection id (conn_type ``marketo``).
        retry_policy: How to repeat retriable failures.
        limiter: A limiter to use instead of the one the connection's extras describe.
    """

    conn_name_attr = "marketo_conn_id"
    default_conn_name = "marketo_default"
    conn_type = "marketo"
    hook_name = "Adobe Marketo Engage"
    default_timeout: ClassVar[float] = 120.0

    def __init__(self, marketo_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(marketo_conn_id, **kwargs)
        self.marketo_conn_id = self.conn_id

    # --- connection form -----------------------------------------------------------------
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and hide the standard connection fields for Marketo."""
        return {key: (list(v) if isinstance(v, list) else dict(v)) for key, v in MARKETO_UI_BEHAVIOUR.items()}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form (needs WTForms, which Airflow 3.3 no longer ships)."""
        return wtforms_widgets(MARKETO_CONN_FIELDS)

    # --- set-up ----------------------------------------------------------------------------
    @cached_property
    def base_url(self) -> str:
        """REST base URL without a trailing slash or ``/rest`` (which Admin > Web Services shows)."""
        host = self.settings.https_url("host", self.settings.require("host", self.settings.host))
        return host[: -len("/rest")] if host.endswith("/rest") else host

    @cached_property
    def limits(self) -> Limits:
        """Marketo's per-instance limits (100 calls / 20 s, 10 concurrent) and the daily budget extra."""
        budget = self.settings.integer("daily_call_budget", None, minimum=0)
        # The daily quota resets at midnight US Central time.
        return self.build_limits(
            calls=100, window=20.0, concurrent=10, budget=budget, budget_timezone="America/Chicago"
        )

    @cached_property
    def transport(self) -> ApiTransport:
        """The hook's transport; its limiter scope is the instance, shared by every task."""
        limiter = self.limiter_for(f"marketo:{self.base_url}", self.limits)
        return ApiTransport(self.session, limiter, self.retry_policy, self._check, self.limiter_wait)

    @property
    def bulk_queue_wait(self) -> float:
        """Seconds to wait when a bulk queue is full (extra ``bulk_poll_seconds``, default 60)."""
        return self.settings.number("bulk_poll_seconds", 60.0, minimum=0.0)

    def _check(self, resp: requests.Response, label: str) -> None:
        check_http(resp, label)
        try:
            body = resp.json()
        except ValueError:
            # A gateway answering with HTML or a body cut short: worth another try.
            raise RetriableApiError("response is not JSON", endpoint=label, code="invalid-json") from None
        if isinstance(body, Mapping) and body.get("success") is False:
            raise marketo_error(body.get("errors"), label, self.limits.window_seconds, self.bulk_queue_wait)

    # --- authentication --------------------------------------------------------------------
    @property
    def _token_key(self) -> tuple[str, str, str]:
        # The secret's fingerprint is part of the key so that a changed (or wrong) secret is
        # checked by the identity service instead of riding on a token issued for the old one.
        secret = self.settings.require("password", self.settings.password)
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()
        return (self.base_url, self.settings.require("login", self.settings.login), fingerprint)

    def _access_token(self) -> str:
        key = self._token_key
        with _TOKENS_LOCK:
            cached = _TOKENS.get(key)
            if cached and cached[1] - time.time() > TOKEN_MARGIN_SECONDS:
                return cached[0]
            token, expires_at = self._fetch_token()
            _TOKENS[key] = (token, expires_at)
            return token

    def _fetch_token(self) -> tuple[str, float]:
        secret = self.settings.require("password", self.settings.password)
        resp = self.transport.send(
            "POST",
            f"{self.base_url}/identity/oauth/token",
            # In the body, not the query string, so the secret never lands in access logs.
            data={
                "grant_type": "client_credentials",
                "client_id": self._token_key[1],
                "client_secret": secret,
            },
            count_budget=False,
            check=self._check_identity,
        )
        body = resp.json()
        token = body.get("access_token") if isinstance(body, Mapping) else None
        if not token:
            raise AuthenticationError(
                "identity service answered without an access token", endpoint="POST /identity/oauth/token"
            )
        register_secret(str(token))
        expires_in = float(body.get("expires_in") or 0)
        log.info("Marketo access token obtained for %s (valid %.0fs)", self.base_url, expires_in)
        return str(token), time.time() + expires_in

    @staticmethod
    def _check_identity(resp: requests.Response, label: str) -> None:
        if resp.status_code in (400, 401, 403):
            try:
                error = resp.json().get("error", "")
            except (ValueError, AttributeError):
                error = ""
            raise AuthenticationError(
                f"client id or client secret refused by the identity service (HTTP {resp.status_code}"
                f"{', ' + str(error) if error else ''})",
                endpoint=label,
                code=str(error or resp.status_code),
                status=resp.status_code,
            )
        check_http(resp, label)

    def _drop_token(self) -> None:
        with _TOKENS_LOCK:
            _TOKENS.pop(self._token_key, None)

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._access_token()}"}

    # --- plumbing --------------------------------------------------------------------------
    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one authenticated call to ``path`` (e.g. ``/rest/v1/leads.json``) and return the response."""
        return self.transport.send(
            method,
            f"{self.base_url}{path}",
            auth_headers=self._auth_headers,
            renew_auth=self._drop_token,
            **kwargs,
        )

    def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send one authenticated call and return its JSON envelope (``success`` already checked)."""
        body = self.call(method, path, **kwargs).json()
        if not isinstance(body, dict):
            raise FatalApiError("response is not a JSON object", endpoint=f"{method} {path}")
        return body

    def _probe(self) -> str:
        body = self.call_json("GET", "/rest/v1/leads/describe.json")
        return f"Marketo REST API at {self.base_url} answered; {len(body.get('result') or [])} lead fields"

    # --- reads -----------------------------------------------------------------------------
    def describe(self, object_name: str = "leads") -> list[dict[str, Any]]:
        """Return the describe result of ``leads`` or a Lead Database object (``companies``, ...)."""
        return list(self.call_json("GET", f"/rest/v1/{object_name}/describe.json").get("result") or [])

    def get_leads(
        self,
        filter_type: str,
        filter_values: Sequence[str | int],
        fields: Sequence[str] | None = None,
        batch_size: int = MAX_BATCH,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of leads whose ``filter_type`` field equals one of ``filter_values``.

        Values are sent in groups of 300 as ``POST ...?_method=GET`` so long lists never hit the
        8 KB URI limit.
        """
        yield from self.query_objects("leads", filter_type, filter_values, fields, batch_size)

    def query_objects(
        self,
        object_name: str,
        filter_type: str,
        filter_values: Sequence[str | int],
        fields: Sequence[str] | None = None,
        batch_size: int = MAX_BATCH,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``leads``, ``companies``, ``opportunities``, ``opportunities/roles``,
        ``salespersons``, ``namedaccounts`` or ``customobjects/<apiName>`` records by filter."""
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        values = [str(v) for v in filter_values]
        for index, value in enumerate(values):
            if "," in value:
                raise ValueError(
                    f"filter value {index} ({filter_type}) contains a comma, which Marketo "
                    "uses as the separator"
                )
        for _, chunk in chunked(values, MAX_BATCH):
            form: dict[str, Any] = {
                "filterType": filter_type,
                "filterValues": ",".join(chunk),
                "batchSize": batch_size,
            }
            if fields:
                form["fields"] = ",".join(fields)
            yield from self._pages(f"/rest/v1/{object_name}.json", form, batch_size)

    def _pages(self, path: str, form: dict[str, Any], batch_size: int) -> Iterator[list[dict[str, Any]]]:
        token: str | None = None
        while True:
            data = {**form, **({"nextPageToken": token} if token else {})}
            body = self.call_json("POST", path, params={"_method": "GET"}, data=data)
            result = list(body.get("result") or [])
            if result:
                yield result
            token = body.get("nextPageToken")
            more = body.get("moreResult")
            if more is None:  # some endpoints omit moreResult: a full page with a token means more
                more = bool(token) and len(result) >= batch_size
            if not more or not token:
                return

    def get_paging_token(self, since: datetime) -> str:
        """Return the activity paging token for ``since`` (a timezone-aware datetime)."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        body = self.call_json(
            "GET",
            "/rest/v1/activities/pagingtoken.json",
            params={"sinceDatetime": since.isoformat(timespec="seconds")},
            timeout=300,
        )
        token = body.get("nextPageToken")
        if not token:
            raise FatalApiError(
                "no nextPageToken in the answer", endpoint="GET /rest/v1/activities/pagingtoken.json"
            )
        return str(token)

    def _feed(self, path: str, token: str, params: dict[str, Any]) -> Iterator[FeedPage]:
        while True:
            body = self.call_json("GET", path, params={**params, "nextPageToken": token})
            token = str(body.get("nextPageToken") or token)
            more = bool(body.get("moreResult"))
            yield FeedPage(list(body.get("result") or []), token, more)
            if not more:
                return

    def get_lead_changes(
        self,
        next_page_token: str,
        fields: Sequence[str],
        batch_size: int = MAX_BATCH,
        list_id: int | None = None,
    ) -> Iterator[FeedPage]:
        """Yield pages of lead changes (new leads and data value changes of ``fields``) since a token.

        Every page is yielded, empty ones too, so the caller always holds the newest token.
        """
        if not fields:
            raise ValueError("get_lead_changes needs at least one field")
        params: dict[str, Any] = {"fields": ",".join(fields), "batchSize": batch_size}
        if list_id is not None:
            params["listId"] = list_id
        yield from self._feed("/rest/v1/activities/leadchanges.json", next_page_token, params)

    def get_deleted_leads(self, next_page_token: str, batch_size: int = MAX_BATCH) -> Iterator[FeedPage]:
        """Yield pages of deleted leads (activity type 37; ``leadId`` is the deleted id) since a token."""
        yield from self._feed(
            "/rest/v1/activities/deletedleads.json", next_page_token, {"batchSize": batch_size}
        )

    def get_activities(
        self, next_page_token: str, activity_type_ids: Sequence[int], batch_size: int = MAX_BATCH
    ) -> Iterator[FeedPage]:
        """Yield pages of activities of up to 10 types since a token."""
        if not 1 <= len(activity_type_ids) <= 10:
            raise ValueError("activity_type_ids must name 1 to 10 activity types")
        params = {"activityTypeIds": ",".join(str(i) for i in activity_type_ids), "batchSize": batch_size}
        yield from self._feed("/rest/v1/activities.json", next_page_token, params)
