"""`MockTransport`: an in-memory transport for unit tests of code that uses the client.

Register answers by method and URL, pass the transport as ``ev.Client(transport=...)``, then
look at what was sent in `requests`.  No socket, no aiohttp, no event-loop timing::

    transport = MockTransport()
    transport.get(f"{base}/users/me", payload={...})
    transport.get(f"{base}/users/x", status=503, headers={"Retry-After": "2"}, repeat=True)
    async with ev.Client("token", base_url=base, transport=transport) as client:
        ...
    [request] = transport.calls("GET")

An answer is used once unless ``repeat=True``; answers for the same request are used in the
order they were added.  A request nothing answers fails as a refused connection (not sent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import attrs
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .._policy import Request, Response, SendError
from ..errors import InvalidResponse

__all__ = ["MockReply", "MockTransport", "normalize_url"]


@attrs.frozen
class MockReply:
    """An answer: a status, headers and a body (or `payload`, sent as JSON)."""

    status: int = 200
    payload: Any = None
    body: bytes | str = b""
    headers: Mapping[str, str] = attrs.Factory(dict)
    content_type: str = "application/json"

    def response(self, url: URL) -> Response:
        body = msgspec.json.encode(self.payload) if self.payload is not None else self.body
        if isinstance(body, str):
            body = body.encode()
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": self.content_type})
        headers.update(self.headers)
        return Response(self.status, CIMultiDictProxy(headers), body, url)


Callback = Callable[[Request], Awaitable[MockReply]]


@attrs.define
class _Route:
    method: str
    url: URL
    reply: MockReply | None
    callback: Callback | None
    failure: SendError | None
    repeat: bool


def normalize_url(url: URL | str) -> URL:
    """A URL with its query sorted, so answers match whatever order parameters come in."""
    url = URL(url)
    pairs = sorted(parse_qsl(url.query_string, keep_blank_values=True))
    return url.with_query(urlencode(pairs)) if pairs else url.with_query(None)


class MockTransport:
    def __init__(self) -> None:
        self._routes: list[_Route] = []
        #: Every request sent, in order.
        self.requests: list[Request] = []
        self.closed = False

    def add(
        self,
        method: str,
        url: URL | str,
        *,
        status: int = 200,
        payload: Any = None,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        callback: Callback | None = None,
        exception: SendError | None = None,
        timeout: bool = False,
        repeat: bool = False,
    ) -> None:
        """Answer `method` `url`: with a reply, a `callback(request)` giving one, or a failure
        (`exception`, or ``timeout=True`` for a request sent that timed out)."""
        if timeout:
            exception = SendError("timed out", sent=True, timed_out=True)
        reply = None
        if callback is None and exception is None:
            reply = MockReply(status, payload, body, dict(headers or {}), content_type)
        self._routes.append(
            _Route(method.upper(), normalize_url(url), reply, callback, exception, repeat)
        )

    def get(self, url: URL | str, **kwargs: Any) -> None:
        self.add("GET", url, **kwargs)

    def post(self, url: URL | str, **kwargs: Any) -> None:
        self.add("POST", url, **kwargs)

    def patch(self, url: URL | str, **kwargs: Any) -> None:
        self.add("PATCH", url, **kwargs)

    def calls(self, method: str | None = None, url: URL | str | None = None) -> list[Request]:
        """The requests sent, optionally only those of `method` to `url`."""
        wanted = None if url is None else normalize_url(url)
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (wanted is None or normalize_url(r.url) == wanted)
        ]

    async def send(self, request: Request) -> Response:
        self.requests.append(request)
        url = normalize_url(request.url)
        for route in self._routes:
            if route.method == request.method and route.url == url:
                break
        else:
            raise SendError(f"no answer registered for {request.method} {url}", sent=False)
        if not route.repeat:
            self._routes.remove(route)
        if route.failure is not None:
            raise route.failure
        reply = route.reply
        if route.callback is not None:
            reply = await route.callback(request)
        assert reply is not None
        response = reply.response(request.url)
        if len(response.body) > request.max_bytes:
            raise InvalidResponse(f"response body is over max_response_bytes={request.max_bytes}")
        return response

    async def aclose(self) -> None:
        self.closed = True
