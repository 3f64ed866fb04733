"""The only module that talks to aiohttp: send a request, retry it, hand back the response.

Every request takes a token from the rate limiter first and reports back what the response's
headers said.  Retries:

- 429: every task of the client pauses (the limiter holds them) until Retry-After, then the
  request is sent again; these waits do not count against `max_retries`;
- connection errors, timeouts, 502/503/504: exponential backoff with full jitter (or the
  server's Retry-After), up to `max_retries` times, for requests safe to repeat;
- a request that is not safe to repeat (POST) and whose outcome is unknown raises
  `OutcomeUnknown`, so the caller can find out what happened before sending it again;
- 401 under client credentials: one fresh token, one retry.

A response's connection is released before this module returns, whatever happens, and a
cancelled request gives back (or accounts for) its rate-limit token.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import attrs
from multidict import CIMultiDictProxy
from yarl import URL

from . import _sansio
from ._auth import PostForm, TokenSource
from ._ratelimit import RateLimiterProtocol
from .errors import EvEnergyError, TransportError
from .models import RateLimit

__all__ = ["OutcomeUnknown", "Response", "Session"]

log = logging.getLogger("evenergy_async")

RETRY_STATUSES = frozenset({502, 503, 504})
# A server that keeps answering 429 is not waited out forever.
MAX_THROTTLED_ATTEMPTS = 50
# A 5xx whose Retry-After asks for longer than this is raised, not slept through in a call.
MAX_SERVER_RETRY_AFTER = 300.0


class OutcomeUnknown(TransportError):
    """A non-repeatable request may or may not have taken effect (no response arrived)."""


class _MaybeSent(TransportError):
    """The request failed after it may have reached the server."""


@attrs.frozen
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


class Session:
    """Sends requests for a client and all its views; owns nothing it was handed."""

    def __init__(
        self,
        *,
        base_url: URL,
        make_auth: Callable[[PostForm], TokenSource],
        limiter: RateLimiterProtocol,
        timeout: float,
        max_retries: int,
        max_rate_limit_wait: float | None,
        http: aiohttp.ClientSession | None,
    ) -> None:
        self.base_url = base_url
        self.origin = base_url.origin()
        self.auth = make_auth(self.post_form)
        self.limiter = limiter
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_retries = max_retries
        self.max_rate_limit_wait = max_rate_limit_wait
        self._http = http
        self._owns_http = http is None
        self.rate_limit: RateLimit | None = None
        self.backoff_base = 0.25
        self.backoff_cap = 20.0

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            if not self._owns_http:
                raise EvEnergyError("the aiohttp.ClientSession handed to the client is closed")
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        return self._http

    async def close(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def post_form(
        self, url: str, form: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """A form POST outside the API (the OAuth token endpoint): no limiter, no retries."""
        try:
            async with self.http.post(
                url, data=form, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransportError(_describe(exc)) from exc

    def check_origin(self, url: URL, what: str) -> URL:
        """Refuse any URL outside the API's origin: the token must not leave for another host."""
        if not url.is_absolute() or url.origin() != self.origin:
            raise EvEnergyError(
                f"refusing {what} {str(url)!r}: not on the client's origin {str(self.origin)!r}"
            )
        return url

    async def request(
        self,
        method: str,
        url: URL,
        *,
        acting_user: str | None = None,
        json: Any = None,
        form: list[tuple[str, str]] | None = None,
        multipart: list[tuple[str, str]] | None = None,
        repeatable: bool = True,
    ) -> Response:
        """Send until a final response; raise the API's error for an error status."""
        self.check_origin(url, "request to")
        attempt = 0
        throttled = 0
        refreshed = False
        while True:
            try:
                response, token = await self._send_once(
                    method, url, acting_user, json, form, multipart
                )
            except TransportError as exc:
                if not repeatable and isinstance(exc, _MaybeSent):
                    raise OutcomeUnknown(str(exc)) from exc.__cause__
                if attempt >= self.max_retries:
                    raise
                attempt += 1
                await self._backoff(attempt, None, f"{method} {url.path}: {exc}")
                continue
            status = response.status
            if status < 400:
                return response
            now = time.time()
            if status == 429:
                throttled += 1
                pause = _sansio.retry_after(response.headers, now) or 0.0
                if throttled < MAX_THROTTLED_ATTEMPTS and (
                    self.max_rate_limit_wait is None or pause <= self.max_rate_limit_wait
                ):
                    continue  # the limiter holds every task until the server's Retry-After
            elif status == 401 and not refreshed:
                refreshed = True
                if self.auth.invalidate(token):
                    continue
            elif status in RETRY_STATUSES and attempt < self.max_retries:
                wait = _sansio.retry_after(response.headers, now)
                if wait is None or wait <= MAX_SERVER_RETRY_AFTER:
                    if not repeatable:
                        raise OutcomeUnknown(f"{method} {url.path} answered {status}")
                    attempt += 1
                    await self._backoff(attempt, wait, f"{method} {url.path}: {status}")
                    continue
            raise _sansio.error_from_response(status, response.headers, response.body, now)

    async def _backoff(self, attempt: int, retry_after: float | None, why: str) -> None:
        delay = retry_after
        if delay is None:
            delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
        log.debug("retry %d of %d in %.2f s after %s", attempt, self.max_retries, delay, why)
        await asyncio.sleep(delay)

    async def _send_once(
        self,
        method: str,
        url: URL,
        acting_user: str | None,
        json: Any,
        form: list[tuple[str, str]] | None,
        multipart: list[tuple[str, str]] | None,
    ) -> tuple[Response, str]:
        limiter = self.limiter
        ticket = await limiter.acquire(self.max_rate_limit_wait)
        sent = False
        try:
            token = await self.auth.token()
            # form and multipart: aiohttp writes the Content-Type, with the multipart boundary
            content_type = "application/json" if json is not None else None
            headers = _sansio.request_headers(token, acting_user, content_type=content_type)
            data: Any = None
            if json is not None:
                data = _sansio.encode_json(json)
            elif form is not None:
                data = aiohttp.FormData(form)
            elif multipart is not None:
                data = aiohttp.FormData(quote_fields=False)
                for name, value in multipart:
                    data.add_field(name, value)
                data._is_multipart = True  # send multipart even without a file part
            sent = True
            async with self.http.request(
                method, url, data=data, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                body = await resp.read()
                response = Response(resp.status, resp.headers, body, resp.url)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            # A connection that was never made carried nothing: not sent, whatever the method.
            sent = sent and not isinstance(exc, aiohttp.ClientConnectorError)
            limiter.release(ticket, sent=sent)
            failure = _MaybeSent if sent else TransportError
            raise failure(f"{method} {url.path} failed: {_describe(exc)}") from exc
        except BaseException:  # cancelled, or our own error: the token may have been spent
            limiter.release(ticket, sent=sent)
            raise
        rate = RateLimit.from_headers(response.headers, time.time())
        if rate is not None:
            self.rate_limit = rate
        await limiter.record(ticket, rate, response.status)
        return response, token


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def query_pairs(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query parameters as pairs; None left out, a list repeats its key (``expand=a&expand=b``)."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            pairs.extend((key, str(v)) for v in value)
        elif isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        else:
            pairs.append((key, str(value)))
    return pairs


def merge_params(url: URL, params: Mapping[str, Any]) -> URL:
    """`url` (a collection or resource URL, without a query) with `params` as its query."""
    pairs = query_pairs(params)
    return url.with_query(pairs) if pairs else url
