"""The Entra ID (Azure AD) token endpoint for client credentials, served by the Dataverse emulator.

It serves the two calls ``msal`` makes (``dynamics-web-api.md`` §1.3): the OpenID configuration
document and the v2.0 token endpoint. msal only talks to an ``https`` authority, so the emulator
serves TLS with the project's local CA and a client is built like this::

    app = msal.ConfidentialClientApplication(
        client_id,
        client_credential=client_secret,
        authority=f"https://127.0.0.1:{port}/{tenant_id}",  # emulator host + tenant
        instance_discovery=False,  # else msal asks login.microsoftonline.com first (offline: fails)
        verify=str(ca_file),  # the emulator's CA; mind REQUESTS_CA_BUNDLE overrides it
    )
    result = app.acquire_token_for_client(scopes=[f"https://127.0.0.1:{port}/.default"])

``validate_authority=False`` may replace ``instance_discovery=False``. The OpenID document
advertises URLs on the host the client used, so ``localhost`` works as well as ``127.0.0.1``.

Tokens look like JWTs (header.claims.signature, HMAC-SHA256 with a key kept in the database) and
carry ``aud`` (the resource of the requested scope), ``tid``, ``appid``, ``oid`` and ``exp``;
the Web API checks them (:meth:`TokenIssuer.verify`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from emulators.common.credentials import ClientCredentials

log = logging.getLogger(__name__)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def peek_subject(token: str) -> str:
    """Return the ``oid`` claim of a token without checking it (used to key rate limits)."""
    try:
        return str(json.loads(_unb64(token.split(".")[1])).get("oid", "anonymous"))
    except (ValueError, IndexError):
        return "anonymous"


class TokenIssuer:
    """Issues and checks access tokens for one tenant and one application.

    Args:
        credentials: The client id, secret and tenant accepted.
        signing_key: Secret bytes for the HMAC signature.
        lifetime_s: Token lifetime in seconds (``expires_in``).
    """

    def __init__(self, credentials: ClientCredentials, signing_key: bytes, lifetime_s: int) -> None:
        self.credentials = credentials
        self.key = signing_key
        self.lifetime_s = lifetime_s
        self.not_before = 0.0  # tokens issued before this moment are rejected (expire-tokens)
        self.app_object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"app:{credentials.client_id}"))

    def issue(self, resource: str) -> tuple[str, int]:
        """Return a signed token for ``resource`` and its lifetime in seconds."""
        now = time.time()
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.credentials.tenant_id}/",
            "iat": now,
            "nbf": int(now),
            "exp": int(now) + self.lifetime_s,
            "appid": self.credentials.client_id,
            "azp": self.credentials.client_id,
            "tid": self.credentials.tenant_id,
            "oid": self.app_object_id,
            "jti": secrets.token_hex(8),
        }
        header = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        sig = _b64(hmac.new(self.key, f"{header}.{body}".encode(), hashlib.sha256).digest())
        return f"{header}.{body}.{sig}", self.lifetime_s

    def verify(self, token: str, audiences: set[str]) -> str | None:
        """Return why ``token`` is not valid for one of ``audiences``, or None when it is."""
        try:
            header, body, sig = token.split(".")
        except ValueError:
            return "malformed token"
        expected = _b64(hmac.new(self.key, f"{header}.{body}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(sig, expected):
            return "invalid signature"
        claims = json.loads(_unb64(body))
        if claims.get("exp", 0) <= time.time() or claims.get("iat", 0) < self.not_before:
            return "token expired"
        if str(claims.get("aud", "")).rstrip("/").lower() not in audiences:
            return "wrong audience"
        return None

    def expire_all(self) -> dict[str, Any]:
        """Make every token issued so far invalid (admin action ``expire-tokens``)."""
        self.not_before = time.time()
        return {"tokens_valid_from": self.not_before}


def _aad_error(status: int, error: str, code: int, description: str) -> JSONResponse:
    """An Entra ID error body in the shape msal reads (reference §1.1)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    return JSONResponse(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
            f"Correlation ID: {corr}\r\nTimestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
        status_code=status,
    )


def origin(request: Request) -> str:
    """Return ``scheme://host[:port]`` as the client addressed this server."""
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


def token_router(issuer: TokenIssuer) -> APIRouter:
    """Return the routes of the token side: discovery, OpenID document, token endpoint."""
    router = APIRouter(tags=["entra id"])
    tenant_id = (issuer.credentials.tenant_id or "").lower()

    def known_tenant(tenant: str) -> bool:
        return tenant.lower() == tenant_id

    @router.get("/common/discovery/instance")
    def instance_discovery(request: Request) -> dict[str, Any]:
        # Only reached by clients that did not pass instance_discovery=False.
        base = origin(request)
        host = base.split("://", 1)[1]
        return {
            "tenant_discovery_endpoint": f"{base}/{tenant_id}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }

    @router.get("/{tenant}/v2.0/.well-known/openid-configuration")
    def openid_configuration(tenant: str, request: Request) -> Response:
        if not known_tenant(tenant):
            return _aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{origin(request)}/{tenant}"
        return JSONResponse(
            {
                "issuer": f"{base}/v2.0",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "EU",
            }
        )

    @router.post("/{tenant}/oauth2/v2.0/token")
    async def token(tenant: str, request: Request) -> Response:
        form = await request.form()
        grant = str(form.get("grant_type", ""))
        client_id = str(form.get("client_id", ""))
        secret = str(form.get("client_secret", ""))
        scope = str(form.get("scope", ""))
        if not known_tenant(tenant):
            return _aad_error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure"
                " you have the correct tenant ID and are signing into the correct cloud.",
            )
        if grant != "client_credentials":
            return _aad_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
            )
        if client_id != issuer.credentials.client_id:
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        if not hmac.compare_digest(secret.encode(), issuer.credentials.client_secret.encode()):
            log.info("token request with a wrong client secret for client %s", client_id)
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the"
                " secret being sent in the request is the client secret value, not the"
                " client secret ID, for a secret added to app '" + client_id + "'.",
            )
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return _aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not"
                " valid. Client credential flows must have a scope value with /.default"
                " suffixed to the resource identifier (application ID URI).",
            )
        resource = scopes[0][: -len("/.default")]
        access_token, lifetime = issuer.issue(resource)
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": access_token,
            }
        )

    return router
