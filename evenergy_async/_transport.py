"""The one place that talks to aiohttp: send one request, read one response, nothing more.

A transport has one method, `send`, and owns only what it made.  It does not retry, wait or
look at statuses: that is the session's policy (`_policy`).  It raises `SendError` when no
response arrived, `InvalidResponse` for a body over the request's size cap, and nothing
else of its own; no aiohttp exception leaves it, nor is chained to what it raises (their
reprs carry the request's headers, and so the token).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Protocol

import aiohttp

from ._policy import Request, Response, SendError
from .errors import ClientClosed, InvalidResponse, raise_unchained

__all__ = ["AiohttpTransport", "Transport"]


class Transport(Protocol):
    async def send(self, request: Request) -> Response:
        """One attempt: the response, `SendError` if none arrived, `InvalidResponse` if its
        body is longer than ``request.max_bytes``."""
        ...

    async def aclose(self) -> None:
        """Release what the transport made (not what it was handed)."""
        ...


class AiohttpTransport:
    """Sends over an aiohttp session: the caller's (left open), or one made on first use."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owns = session is None
        self._closed = False

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosed("the client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        elif self._session.closed:
            raise ClientClosed("the aiohttp.ClientSession handed to the client is closed")
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        if self._owns and self._session is not None:
            await self._session.close()

    async def send(self, request: Request) -> Response:
        http = self._http()
        sent = False
        try:
            sent = True
            async with http.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=_timeout(request.timeout),
                allow_redirects=False,
            ) as resp:
                body = await _read(resp, request.max_bytes)
                # The parser's own read-only headers: nothing changes them once they arrived.
                return Response(resp.status, resp.headers, body, resp.url)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            # ValueError: aiohttp or yarl refusing a header or URL before anything was sent.
            # A connection that was never made carried nothing, whatever the method.
            sent = sent and not isinstance(exc, aiohttp.ClientConnectorError | ValueError)
            message = _redact(describe(exc), request.headers.get("Authorization"))
            failure = SendError(message, sent=sent, timed_out=_timed_out(exc))
        # Outside the handler, with no context: the aiohttp error is not kept on it.
        raise_unchained(failure)


async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, decompressed, refused as soon as it grows past `limit` bytes."""
    declared = resp.content_length
    if declared is not None and not resp.headers.get("Content-Encoding"):
        if declared > limit:
            raise InvalidResponse(
                f"response body of {declared} bytes is over max_response_bytes={limit}"
            )
        return await resp.read()  # no more than the declared length is read
    chunks: list[bytes] = []
    size = 0
    # iter_any hands over what arrived (decompressed in bounded steps by aiohttp), so the
    # cap is checked before much more than one network read past it is held.
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            resp.close()  # the rest is not read: the connection cannot be reused
            raise InvalidResponse(f"response body is over max_response_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _redact(message: str, authorization: str | None) -> str:
    """`message` without the credentials a hostile server may have echoed into it (an
    error quoting the server's header line quotes whatever the server put there)."""
    credentials = (authorization or "").partition(" ")[2]
    if len(credentials) >= 8:  # a shorter one is no secret, and would blank common words
        message = message.replace(credentials, "***")
    return message


@functools.lru_cache(maxsize=8)
def _timeout(total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total)


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError)


def describe(exc: BaseException) -> str:
    """A failure in words, without the request (its headers hold the token)."""
    if _timed_out(exc):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError):
        # Its str is safe (status, message, url) but the message can quote a whole header.
        return f"{type(exc).__name__}: {exc.status} {str(exc.message)[:200]}"
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
