"""Airflow hook for the Microsoft Dataverse (Dynamics 365) Web API.

Connection (conn_type ``dynamics``): host = organization URL (``https://<org>.crm.dynamics.com``),
login = application (client) id, password = client secret; extras ``tenant_id``,
``authority_host``, ``api_version``, ``ca_bundle``, ``timeout``, ``limiter_url``,
``rate_limit_calls``, ``rate_limit_window_seconds``, ``max_concurrent_calls``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import msal
import requests

from crm_sync_hooks.base import CrmApiHook, register_secret
from crm_sync_hooks.connection_ui import DYNAMICS_CONN_FIELDS, DYNAMICS_UI_BEHAVIOUR, wtforms_widgets
from crm_sync_hooks.dynamics_marketing import DynamicsMarketingMixin
from crm_sync_hooks.dynamics_metadata import DynamicsMetadataMixin
from crm_sync_hooks.dynamics_writes import DynamicsWritesMixin, key_literal
from crm_sync_hooks.errors import (
    AuthenticationError,
    ConfigurationError,
    FatalApiError,
    NotFoundError,
    RetriableApiError,
    TokenExpiredError,
)
from crm_sync_hooks.transport import ApiTransport, VerifiedSession, retry_after_seconds

if TYPE_CHECKING:
    from crm_sync_hooks.limiter import Limits

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 5000
COUNT_CAP = 5000  # Dataverse's $count stops counting here
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
# msal skips instance discovery for these hosts by itself; for any other host (a sovereign cloud
# proxy, the local emulator) it must be told not to ask login.microsoftonline.com about it.
_WELL_KNOWN_AUTHORITIES = {
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login-us.microsoftonline.com",
    "login.windows.net",
    "login.microsoft.com",
    "sts.windows.net",
}
# Data change-tracking tokens past the retention period; the documented code is the metadata one
# (0x80044352 ExpiredVersionStamp) and the data one is unconfirmed, so the message is checked too.
_EXPIRED_DELTA_CODES = {"0x80044352", "-2147204270"}
_AUTH_REFUSALS = {
    "invalid_client",
    "unauthorized_client",
    "invalid_request",
    "invalid_scope",
    "invalid_grant",
}

# One msal application per (authority, client, secret, trust settings) per process: creating one
# fetches the OpenID document and starts an empty token cache, so it is reused by every hook.
_MSAL_APPS: dict[tuple[str, ...], msal.ConfidentialClientApplication] = {}
_MSAL_LOCK = threading.Lock()


class DeltaTokenExpired(FatalApiError):
    """A change-tracking delta link is older than the retention period; do a full sync."""


@dataclass(frozen=True)
class ChangePage:
    """One page of a change-tracking read.

    Attributes:
        records: New or updated rows (current values of the selected columns).
        deleted_ids: Primary keys of rows deleted since the previous delta link.
        delta_link: On the last page only: where the next incremental read starts. Persist it
            after the whole delta has been processed.
    """

    records: list[dict[str, Any]]
    deleted_ids: list[str]
    delta_link: str | None


@dataclass(frozen=True)
class QueryPage:
    """One page of a query, with where the next page starts.

    Attributes:
        rows: The page's rows.
        next_link: ``@odata.nextLink`` of the page, None on the last one. Passing it back as
            ``start_link`` to :meth:`DynamicsHook.query_pages` continues the same query there
            (a resumable read: a restarted copy does not read the finished pages again).
    """

    rows: list[dict[str, Any]]
    next_link: str | None


def odata_error(resp: requests.Response) -> tuple[str, str]:
    """Return ``(code, message)`` of a Web API error body (empty strings when there is none)."""
    try:
        error = resp.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", resp.text[:200]
    return str(error.get("code") or ""), str(error.get("message") or "")


class DynamicsHook(DynamicsMarketingMixin, DynamicsMetadataMixin, DynamicsWritesMixin, CrmApiHook):
    """Talks to one Dataverse organization as one application user, under its service limits.

    Args:
        dynamics_conn_id: Airflow connection id (conn_type ``dynamics``).
        retry_policy: How to repeat retriable failures.
        limiter: A limiter to use instead of the one the connection's extras describe.
    """

    conn_name_attr = "dynamics_conn_id"
    default_conn_name = "dynamics_default"
    conn_type = "dynamics"
    hook_name = "Microsoft Dynamics 365 (Dataverse)"
    default_timeout: ClassVar[float] = 60.0

    def __init__(self, dynamics_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(dynamics_conn_id, **kwargs)
        self.dynamics_conn_id = self.conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and hide the standard connection fields for Dynamics."""
        return {
            key: (list(v) if isinstance(v, list) else dict(v)) for key, v in DYNAMICS_UI_BEHAVIOUR.items()
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form (needs WTForms, which Airflow 3.3 no longer ships)."""
        return wtforms_widgets(DYNAMICS_CONN_FIELDS)

    # --- set-up ----------------------------------------------------------------------------
    @cached_property
    def org_url(self) -> str:
        """Organization (environment) URL without a trailing slash; also the token audience."""
        return self.settings.https_url("host", self.settings.require("host", self.settings.host))

    @cached_property
    def api_url(self) -> str:
        """Web API root, e.g. ``https://org.crm.dynamics.com/api/data/v9.2/``."""
        version = (self.settings.text("api_version", "9.2") or "9.2").lstrip("v")
        return f"{self.org_url}/api/data/v{version}/"

    @cached_property
    def limits(self) -> Limits:
        """Dataverse service protection limits per user: 6,000 requests / 5 min, 52 concurrent."""
        return self.build_limits(calls=6000, window=300.0, concurrent=52)

    @cached_property
    def transport(self) -> ApiTransport:
        """The hook's transport; limits are per application user, so the scope names the client."""
        scope = f"dynamics:{self.org_url}:{self.settings.login}"
        return ApiTransport(
            self.session,
            self.limiter_for(scope, self.limits),
            self.retry_policy,
            self._check,
            self.limiter_wait,
        )

    # --- authentication --------------------------------------------------------------------
    def _msal_app(self) -> msal.ConfidentialClientApplication:
        s = self.settings
        client_id = s.require("login", s.login)
        secret = s.require("password", s.password)
        tenant = s.text("tenant_id")
        if not tenant:
            raise ConfigurationError(f"connection {self.conn_id!r}: extra 'tenant_id' is empty")
        # The client secret goes to the token endpoint: https as for the organization URL.
        authority_host = s.https_url("authority_host", s.text("authority_host") or DEFAULT_AUTHORITY_HOST)
        authority = f"{authority_host}/{tenant}"
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()
        key = (authority, client_id, fingerprint, str(self.verify), str(self.timeout))
        with _MSAL_LOCK:
            app = _MSAL_APPS.get(key)
            if app is None:
                known = urlsplit(authority_host).hostname in _WELL_KNOWN_AUTHORITIES
                try:
                    app = msal.ConfidentialClientApplication(
                        client_id,
                        client_credential=secret,
                        authority=authority,
                        # msal ignores its own verify/timeout when given a client, and a session
                        # that sets them per request keeps REQUESTS_CA_BUNDLE from overriding the CA.
                        http_client=VerifiedSession(self.verify, self.timeout, pool_size=2),
                        instance_discovery=None if known else False,
                    )
                except requests.RequestException as exc:
                    raise RetriableApiError(
                        f"authority {authority_host} unreachable: {type(exc).__name__}",
                        endpoint="GET openid-configuration",
                        code="network",
                    ) from exc
                except ValueError as exc:
                    raise AuthenticationError(
                        f"authority {authority} rejected: {exc}", endpoint="GET openid-configuration"
                    ) from exc
                _MSAL_APPS[key] = app
            return app

    def _access_token(self) -> str:
        app = self._msal_app()
        try:
            result = app.acquire_token_for_client(scopes=[f"{self.org_url}/.default"])
        except requests.RequestException as exc:
            raise RetriableApiError(
                f"token service unreachable: {type(exc).__name__}",
                endpoint="POST oauth2/v2.0/token",
                code="network",
            ) from exc
        token = result.get("access_token") if isinstance(result, Mapping) else None
        if not token:
            error = str(result.get("error", "unknown")) if isinstance(result, Mapping) else "unknown"
            description = (
                str(result.get("error_description", "")).splitlines()[0:1]
                if isinstance(result, Mapping)
                else []
            )
            message = f"token request refused ({error}{': ' + description[0] if description else ''})"
            if error in _AUTH_REFUSALS:
                raise AuthenticationError(message, endpoint="POST oauth2/v2.0/token", code=error)
            raise RetriableApiError(message, endpoint="POST oauth2/v2.0/token", code=error)
        if result.get("token_source") != "cache":
            register_secret(str(token))
            log.info(
                "Dataverse access token obtained for %s (valid %ss)", self.org_url, result.get("expires_in")
            )
        return str(token)

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._access_token()}"}

    def _drop_token(self) -> None:
        self._msal_app().remove_tokens_for_client()

    # --- plumbing --------------------------------------------------------------------------
    def _check(self, resp: requests.Response, label: str) -> None:
        status = resp.status_code
        if status < 400:
            return
        if status == 401:
            raise TokenExpiredError("HTTP 401", endpoint=label, code="401", status=status)
        code, message = odata_error(resp)
        if status == 429:
            raise RetriableApiError(
                message or "HTTP 429",
                endpoint=label,
                code=code or "429",
                status=status,
                retry_after=retry_after_seconds(resp),
                pause_all=True,
            )
        if status >= 500:
            raise RetriableApiError(
                message or f"HTTP {status}",
                endpoint=label,
                code=code or str(status),
                status=status,
                retry_after=retry_after_seconds(resp),
            )
        if code in _EXPIRED_DELTA_CODES or ("expired" in message.lower() and "token" in message.lower()):
            raise DeltaTokenExpired(message, endpoint=label, code=code, status=status)
        if status == 404:
            raise NotFoundError(message or "HTTP 404", endpoint=label, code=code or "404", status=status)
        raise FatalApiError(
            message or f"HTTP {status}", endpoint=label, code=code or str(status), status=status
        )

    def call(self, method: str, url_or_path: str, **kwargs: Any) -> requests.Response:
        """Send one authenticated Web API call; ``url_or_path`` is relative to the API root or absolute."""
        url = url_or_path if "://" in url_or_path else self.api_url + url_or_path.lstrip("/")
        target, org = urlsplit(url), urlsplit(self.org_url)
        if (target.scheme, target.netloc) != (org.scheme, org.netloc):
            # Never send the bearer token to another host, nor to the same one over another
            # scheme (an http:// next link would carry it in clear).
            where = target.netloc if target.netloc != org.netloc else f"{target.scheme}://{target.netloc}"
            raise FatalApiError(
                f"refusing to follow a link to another host: {where}", endpoint=f"{method} {target.path}"
            )
        headers = {
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            **(kwargs.pop("headers", None) or {}),
        }
        return self.transport.send(
            method,
            url,
            auth_headers=self._auth_headers,
            renew_auth=self._drop_token,
            headers=headers,
            **kwargs,
        )

    def _check_json(self, resp: requests.Response, label: str) -> None:
        """:meth:`_check`, then a JSON body: a gateway's HTML page or a body cut short is retried
        inside the transport's loop like a 5xx, instead of failing the call at once."""
        self._check(resp, label)
        try:
            resp.json()
        except ValueError:
            kind = resp.headers.get("Content-Type", "no content type")
            raise RetriableApiError(
                f"response is not JSON ({kind})", endpoint=label, code="invalid-json"
            ) from None

    def call_json(self, method: str, url_or_path: str, **kwargs: Any) -> dict[str, Any]:
        """Send one authenticated call and return its JSON object body."""
        resp = self.call(method, url_or_path, check=self._check_json, **kwargs)
        body = resp.json()
        if not isinstance(body, dict):
            raise FatalApiError(
                "response is not a JSON object", endpoint=f"{method} {urlsplit(resp.url).path}"
            )
        return body

    def _probe(self) -> str:
        who = self.who_am_i()
        return (
            f"Dataverse at {self.org_url} answered; user {who.get('UserId')}, "
            f"organization {who.get('OrganizationId')}"
        )

    # --- reads -----------------------------------------------------------------------------
    def who_am_i(self) -> dict[str, Any]:
        """Return ``WhoAmI`` (``UserId``, ``BusinessUnitId``, ``OrganizationId``)."""
        return self.call_json("GET", "WhoAmI")

    def organization_id(self) -> str:
        """Return the organization id (stable across sandbox copies only by name, so check it per run)."""
        return str(self.who_am_i()["OrganizationId"])

    def count_rows(self, entity_set: str) -> int:
        """Rows of a table this user can see, as ``GET {set}/$count`` counts them (up to COUNT_CAP).

        Raises:
            FatalApiError: The answer is not a number (named by endpoint).
        """
        label = f"GET {entity_set}/$count"
        text = self.call("GET", f"{entity_set}/$count").text.strip().lstrip("\ufeff")
        try:
            return int(text)
        except ValueError:
            raise FatalApiError(f"$count answered {text[:40]!r}", endpoint=label, code="bad-count") from None

    def _pages(self, path: str, params: dict[str, str] | None, prefer: str) -> Iterator[dict[str, Any]]:
        url: str | None = path
        while url:
            body = self.call_json("GET", url, params=params, headers={"Prefer": prefer})
            yield body
            url = body.get("@odata.nextLink")
            params = None  # the next link already holds every query option; use it verbatim

    @staticmethod
    def _page_size(page_size: int) -> int:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
        return page_size

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        expand: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        annotations: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of rows of ``entity_set`` (e.g. ``contacts``), following ``@odata.nextLink``.

        Args:
            entity_set: Entity set name.
            select: Columns to return (always name them: fewer bytes, stable shape).
            filter: OData ``$filter`` expression.
            orderby: ``$orderby``; add the primary key as a tie-breaker for stable paging.
            expand: ``$expand`` expression.
            page_size: Rows per page, at most 5,000 (sent as ``Prefer: odata.maxpagesize``).
            annotations: ``odata.include-annotations`` value, e.g. ``"*"``.
        """
        params = {
            k: v
            for k, v in {
                "$select": ",".join(select) if select else None,
                "$filter": filter,
                "$orderby": orderby,
                "$expand": expand,
            }.items()
            if v
        }
        prefer = f"odata.maxpagesize={self._page_size(page_size)}"
        if annotations:
            prefer += f',odata.include-annotations="{annotations}"'
        for body in self._pages(entity_set, params, prefer):
            rows = list(body.get("value") or [])
            if rows:
                yield rows

    def query_pages(
        self,
        entity_set: str,
        *,
        select: Sequence[str],
        filter: str | None = None,
        expand: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        start_link: str | None = None,
    ) -> Iterator[QueryPage]:
        """Yield every page of a query with its next link, starting at ``start_link`` if given.

        The next link holds all query options (and the server's paging cookie), so the read can
        be resumed from the last link a caller stored. Empty pages are yielded too.
        """
        params = None
        if start_link is None:
            params = {
                k: v
                for k, v in {"$select": ",".join(select), "$filter": filter, "$expand": expand}.items()
                if v
            }
        prefer = f"odata.maxpagesize={self._page_size(page_size)}"
        for body in self._pages(start_link or entity_set, params, prefer):
            yield QueryPage(list(body.get("value") or []), body.get("@odata.nextLink"))

    def track_changes(
        self,
        entity_set: str,
        select: Sequence[str],
        delta_link: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[ChangePage]:
        """Yield pages of changes: the whole table first (no ``delta_link``), then changes since it.

        Every page is yielded, empty ones too; the last carries the next ``delta_link``.

        Raises:
            DeltaTokenExpired: ``delta_link`` is past the retention period; read again without one.
        """
        prefer = f"odata.track-changes,odata.maxpagesize={self._page_size(page_size)}"
        start = delta_link or entity_set
        params = None if delta_link else {"$select": ",".join(select)}
        for body in self._pages(start, params, prefer):
            records, deleted = [], []
            for row in body.get("value") or []:
                if "$deletedEntity" in str(row.get("@odata.context", "")) or row.get("reason") == "deleted":
                    deleted.append(str(row.get("id")))
                else:
                    records.append(row)
            yield ChangePage(records, deleted, body.get("@odata.deltaLink"))

    def entity_definition(self, logical_name: str, select: Sequence[str] | None = None) -> dict[str, Any]:
        """Return a table's definition (``EntitySetName``, ``PrimaryIdAttribute``, change tracking...)."""
        fields = select or [
            "LogicalName",
            "EntitySetName",
            "PrimaryIdAttribute",
            "PrimaryNameAttribute",
            "ChangeTrackingEnabled",
            "IsCustomEntity",
        ]
        return self.call_json(
            "GET",
            f"EntityDefinitions(LogicalName={key_literal(logical_name)})",
            params={"$select": ",".join(fields)},
        )

    def entity_attributes(
        self, logical_name: str, select: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Return a table's column definitions (``LogicalName``, ``AttributeType``, validity flags...)."""
        fields = select or [
            "LogicalName",
            "SchemaName",
            "AttributeType",
            "IsValidForRead",
            "IsValidForCreate",
            "IsValidForUpdate",
            "IsPrimaryId",
        ]
        path = f"EntityDefinitions(LogicalName={key_literal(logical_name)})/Attributes"
        return [
            row
            for body in self._pages(path, {"$select": ",".join(fields)}, "odata.maxpagesize=5000")
            for row in body.get("value") or []
        ]
