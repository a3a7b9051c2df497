"""Exceptions raised by the Marketo and Dynamics hooks: one class per kind of failure.

Messages name the endpoint and the API's own error code so that a task log explains what went
wrong, and they never carry credentials, tokens or record payloads.
"""

from __future__ import annotations


class ApiError(Exception):
    """Base class of every error raised by the hooks.

    Args:
        message: Human-readable description, free of secrets.
        endpoint: ``"METHOD /path"`` of the failed call, without query string.
        code: The API's error code (Marketo ``"606"``, Dataverse ``"0x80072322"``, HTTP status).
        status: The HTTP status, when there was a response.
    """

    def __init__(
        self, message: str, *, endpoint: str = "", code: str | None = None, status: int | None = None
    ):
        self.endpoint = endpoint
        self.code = code
        self.status = status
        parts = [endpoint] if endpoint else []
        if code:
            parts.append(f"code {code}")
        prefix = f"{' '.join(parts)}: " if parts else ""
        super().__init__(f"{prefix}{message}")


class RetriableApiError(ApiError):
    """A failure that may succeed when repeated later (rate limits, 5xx, time-outs, dropped connections).

    Args:
        retry_after: Seconds the server asked us to wait, if it said so.
        pause_all: True when every caller sharing the limiter should wait, not only this one
            (the server said the whole instance is over its limit).
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        pause_all: bool = False,
    ):
        super().__init__(message, endpoint=endpoint, code=code, status=status)
        self.retry_after = retry_after
        self.pause_all = pause_all


class FatalApiError(ApiError):
    """A failure that repeating the same request cannot fix (bad request, permission, not found)."""


class NotFoundError(FatalApiError):
    """The addressed resource does not exist (Dataverse 404, Marketo 610/1013)."""


class AuthenticationError(FatalApiError):
    """The credentials were refused, or a fresh token was refused again."""


class TokenExpiredError(ApiError):
    """The access token was rejected as invalid or expired; the hook renews it and retries once."""


class RetriesExhausted(ApiError):
    """A retriable failure kept happening until the retry policy's time or attempt limit ran out."""


class LimiterTimeout(ApiError):
    """No call slot became free within the allowed wait (limits shared by every process)."""


class CallBudgetExhausted(ApiError):
    """The daily call budget set on the connection is spent; stop now and resume after the reset.

    Raised before the call that would exceed the budget, so the API's own daily quota is never hit.
    """


class QuotaExceeded(FatalApiError):
    """The API's own daily quota is spent (Marketo 607, bulk export 1029 daily quota)."""


class BulkJobFailed(FatalApiError):
    """A bulk extract or import job ended in status Failed or Cancelled."""


class BulkImportMismatch(BulkJobFailed):
    """A bulk import's status and report files do not account for every row of its file."""


class ConfigurationError(ValueError):
    """The Airflow connection lacks a field or holds a value the hook cannot use."""
