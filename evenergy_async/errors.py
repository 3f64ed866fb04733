"""The exceptions raised by evenergy_async.

Every exception the library raises on purpose derives from `EvEnergyError`::

    EvEnergyError
    ├── APIError              the server answered with an error status (RFC 9457 problem details)
    │   ├── BadRequest        400, 422: the request was refused; see `field_errors`
    │   ├── Unauthorized      401: missing, expired or refused credentials
    │   ├── Forbidden         403
    │   ├── NotFound          404
    │   ├── Conflict          409
    │   ├── RateLimited       429, or a rate-limit wait longer than `max_rate_limit_wait`
    │   └── ServerError       5xx
    ├── TransportError        no usable response: connection refused or reset, timeout
    │   ├── OutcomeUnknown    a write that may or may not have been applied, and could not
    │   │                     be reconciled (no response, and the look-up failed too)
    │   └── RateLimiterUnavailable   the shared limiter's store (Redis) could not be reached
    ├── InvalidResponse       a response the published spec does not allow (malformed body,
    │                         a bad or looping ``Link`` URL, a page far over its page size)
    ├── InvalidRequest        input refused before anything was sent (also a `ValueError`)
    └── ClientClosed          the client (or the client of an `as_user` view) was closed

Other 4xx statuses (405, 406, 413, ...) raise `APIError` itself.  `status_error` is the one
place that maps a status to its class.

A list stream that fails for good sets `resume_cursor` on the error it raises: pass it as
`page_after=` to continue the stream with nothing lost or repeated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "APIError",
    "BadRequest",
    "ClientClosed",
    "Conflict",
    "EvEnergyError",
    "Forbidden",
    "InvalidRequest",
    "InvalidResponse",
    "NotFound",
    "OutcomeUnknown",
    "RateLimited",
    "RateLimiterUnavailable",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "status_error",
]


class EvEnergyError(Exception):
    """Base class of every error raised by evenergy_async."""

    #: Set on an error that ended a list stream: the cursor to pass as ``page_after`` to resume.
    resume_cursor: str | None = None


class APIError(EvEnergyError):
    """The API answered with an error status; fields follow RFC 9457 problem details."""

    def __init__(
        self,
        status: int,
        *,
        type: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        instance: str | None = None,
        field_errors: Mapping[str, tuple[str, ...]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.instance = instance
        self.field_errors: Mapping[str, tuple[str, ...]] = dict(field_errors or {})
        # Case-insensitive, as HTTP header names are.
        self.headers: Mapping[str, str] = CIMultiDictProxy(CIMultiDict(headers or {}))
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [f"{self.status} {self.title or 'error'}"]
        if self.detail:
            parts.append(self.detail)
        if self.instance:
            parts.append(f"({self.instance})")
        message = ": ".join(parts[:2]) + (f" {parts[2]}" if len(parts) > 2 else "")
        if self.field_errors:
            fields = "; ".join(f"{k}: {' '.join(v)}" for k, v in self.field_errors.items())
            message += f" [{fields}]"
        return message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, title={self.title!r})"


class BadRequest(APIError):
    """400 or 422: the server refused the request's content; `field_errors` names the fields."""


class Unauthorized(APIError):
    """401: credentials missing, expired or refused."""


class Forbidden(APIError):
    """403: the credentials may not do this."""


class NotFound(APIError):
    """404: no such resource, or not visible to these credentials."""


class Conflict(APIError):
    """409: the request conflicts with the resource's current state."""


class RateLimited(APIError):
    """429, or a rate-limit wait longer than the client's ``max_rate_limit_wait``.

    `retry_after` is the number of seconds after which a request may succeed, if known.
    """

    def __init__(
        self, status: int = 429, *, retry_after: float | None = None, **kw: object
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, **kw)  # type: ignore[arg-type]


class ServerError(APIError):
    """5xx: the server failed; retried by the client for 502, 503 and 504."""


class TransportError(EvEnergyError):
    """No usable response: the connection failed, was reset, or timed out."""


class OutcomeUnknown(TransportError):
    """A non-repeatable request (a create) may or may not have taken effect: no response
    arrived, and what happened could not be found out."""


class RateLimiterUnavailable(TransportError):
    """The shared rate limiter's Redis could not be reached (or refused the command)."""


class InvalidResponse(EvEnergyError):
    """The server sent a response the published spec does not allow."""


class InvalidRequest(EvEnergyError, ValueError):
    """Input refused before any request was sent; `field` names the offending argument."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ClientClosed(EvEnergyError):
    """The client was closed (`close()`, or the end of its ``async with``): closing is final."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: BadRequest,
    429: RateLimited,
}


def status_error(status: int) -> type[APIError]:
    """The exception class for an error status."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, APIError)


def raise_unchained(error: BaseException) -> NoReturn:
    """Raise `error` with no exception as its context.

    Raising outside the ``except`` block is not enough: on Python 3.10 an exception handled
    inside an awaited coroutine (aiohttp's OSError under its ClientConnectorError) can still be
    the current one, and become the context of the next raise.  A context may hold what must
    not leave the library: an aiohttp error's repr shows the request's headers, the token.
    """
    try:
        raise error
    finally:
        error.__context__ = None
