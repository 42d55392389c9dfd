"""Which errors of a model provider are worth retrying: one rule for the adapters' calls and for profiling."""

from __future__ import annotations

import httpx

__all__ = ["TRANSIENT_STATUS", "is_transient", "status_of"]

#: HTTP statuses that mean "try again": timeout, conflict, too early, rate limit, server errors, overloaded.
TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
_TRANSIENT_NAMES = (
    "RateLimit",
    "APIConnection",
    "APITimeout",
    "Timeout",
    "ServiceUnavailable",
    "InternalServerError",
    "Overloaded",
    "MalformedResponse",
)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an error carries (``status_code`` or ``response.status_code``), if any."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying on the same model: timeouts, connection errors, HTTP 408/409/425/429/5xx.

    Recognises builtin and httpx transport errors, any error carrying such a status, and provider errors named
    like ``RateLimitError`` or ``APITimeoutError`` without importing the provider SDKs.
    """
    if isinstance(exc, TimeoutError | ConnectionError | httpx.TransportError):
        return True
    status = status_of(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    name = type(exc).__name__
    return any(part in name for part in _TRANSIENT_NAMES)
