"""The session: drives the retry policy (`_policy.decide`) over one `send()` of a transport.

Each attempt of a call: a token from the rate limiter (waiting at most the smaller of
`max_rate_limit_wait` and what is left of the call's deadline), a bearer token from the
credentials, one `send()` (its timeout capped by the deadline too), the rate-limit headers
back to the limiter, then whatever the policy decides.  What bounds each wait:

- the limiter's wait: `max_rate_limit_wait` and the deadline (`RateLimited`);
- one attempt: `timeout` and the deadline (`TransportError`);
- a backoff: never slept past the deadline (the error that asked for it is raised);
- the number of attempts: `max_retries`, and `MAX_THROTTLED_ATTEMPTS` 429s;
- a response body: `max_response_bytes` (`InvalidResponse`).

A response's connection is released before `send()` returns, a cancelled attempt gives back
(or accounts for) its rate-limit token, and after `close()` no call is sent: `ClientClosed`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import attrs
from multidict import CIMultiDictProxy
from yarl import URL

from . import _policy, _sansio
from ._auth import PostForm, TokenSource
from ._policy import (
    Call,
    CallState,
    Policy,
    Raise,
    Reconcile,
    Refresh,
    Request,
    Response,
    Retry,
    Return,
    SendError,
    TokenError,
)
from ._ratelimit import RateLimiterProtocol
from ._transport import AiohttpTransport, Transport
from ._urls import refusal_of
from .errors import (
    ClientClosed,
    EvEnergyError,
    OutcomeUnknown,
    RateLimited,
    ServerError,
    TransportError,
    raise_unchained,
)
from .models import RateLimit

__all__ = ["OutcomeUnknown", "Response", "Session", "SessionCounters"]

log = logging.getLogger("evenergy_async")

T = TypeVar("T")

# `SessionCounters.by_status` keys, made once rather than per response.
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}

# A wait for budget longer than this is logged as a warning; one shorter than NO_WAIT (the
# time a granted request takes to pass through the limiter) is no wait, and not logged.
SLOW_BUDGET_WAIT = 5.0
NO_WAIT = 0.005


@attrs.define
class SessionCounters:
    """What the session did, for `client.stats`."""

    requests: int = 0  # attempts sent
    by_status: dict[str, int] = attrs.Factory(dict)  # "2xx", "4xx", ... per response
    transport_errors: int = 0  # attempts that got no response
    retries: int = 0  # attempts after the first of a call, 429s and token refreshes included
    bytes_read: int = 0


def _encode_json(value: Any) -> bytes:
    return _sansio.encode_json(value)


def encode_body(
    json: Any, form: list[tuple[str, str]] | None, multipart: list[tuple[str, str]] | None
) -> tuple[bytes | None, str | None]:
    """The request body and its Content-Type."""
    if json is not None:
        return _encode_json(json), "application/json"
    if form is not None:
        return urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    if multipart is not None:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in multipart:
            quoted = name.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted}"\r\n\r\n'
                f"{value}\r\n"
            )
        parts.append(f"--{boundary}--\r\n")
        return "".join(parts).encode(), f"multipart/form-data; boundary={boundary}"
    return None, None


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
        http: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        deadline: float | None = None,
        max_response_bytes: int = 64 * 2**20,
        refreshable: bool = False,
    ) -> None:
        self.base_url = base_url
        self.origin = base_url.origin()
        self._scheme, self._authority = self.origin.scheme, self.origin.raw_authority
        self.transport: Transport = transport if transport is not None else AiohttpTransport(http)
        self.auth = make_auth(self.post_form)
        self.limiter = limiter
        self.timeout = timeout
        self.deadline = deadline
        self.max_response_bytes = max_response_bytes
        self.policy = Policy(
            max_retries=max_retries,
            max_rate_limit_wait=max_rate_limit_wait,
            refreshable=refreshable,
        )
        self.rate_limit: RateLimit | None = None
        self.counters = SessionCounters()
        self.closed = False
        self._calls: set[asyncio.Task[Any]] = set()
        self._closing: set[asyncio.Task[Any]] = set()
        # Injected in tests: the monotonic clock of deadlines, the wall clock of Retry-After
        # dates, the sleep of backoffs and the jitter source.
        self.clock: Callable[[], float] = time.monotonic
        self.wall_clock: Callable[[], float] = time.time
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.jitter: Callable[[], float] = random.random

    def tune(self, **changes: Any) -> None:
        """Replace fields of the retry policy (`Policy`): tests shorten backoffs this way."""
        self.policy = attrs.evolve(self.policy, **changes)

    @property
    def max_retries(self) -> int:
        return self.policy.max_retries

    @property
    def max_rate_limit_wait(self) -> float | None:
        return self.policy.max_rate_limit_wait

    @property
    def http(self) -> aiohttp.ClientSession:
        """The aiohttp session of the default transport (for tests that inspect it)."""
        if not isinstance(self.transport, AiohttpTransport):
            raise TypeError("the client does not send over aiohttp")
        return self.transport._http()

    # --- lifecycle ---

    async def close(self) -> None:
        """Final: calls in flight end with `ClientClosed`, later ones raise it unsent."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in self._calls:
            if task is not current and not task.done():
                self._closing.add(task)
                task.cancel()
        self.auth.cancel()
        await self.transport.aclose()

    def _check_open(self) -> None:
        if self.closed:
            raise ClientClosed("the client is closed")

    # --- the token endpoint ---

    async def post_form(
        self, url: str, form: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """A form POST outside the API (the OAuth token endpoint): one attempt, no limiter."""
        self._check_open()
        body, content_type = encode_body(None, list(form.items()), None)
        assert content_type is not None
        request = Request(
            "POST",
            URL(url),
            {**headers, "Content-Type": content_type, "Accept": "application/json"},
            body,
            timeout=self.timeout,
            max_bytes=min(self.max_response_bytes, 2**20),  # a token answer is small
        )
        response = await self.transport.send(request)
        return response.status, response.headers, response.body

    # --- API requests ---

    def check_origin(self, url: URL, what: str) -> URL:
        """Refuse any URL outside the API's origin: the token must not leave for another host."""
        if url.raw_authority == self._authority and url.scheme == self._scheme:
            # The origin's own authority, letter for letter (it has no userinfo): the same
            # host and port.  A third of the cost of the whole check, on every request.
            return url
        refusal = refusal_of(url, self.origin)
        if refusal is not None:
            raise EvEnergyError(f"refusing {what} {str(url)!r}: {refusal}")
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
        response = await self._call(method, url, acting_user, json, form, multipart, repeatable)
        assert response is not None  # no look-up, so never "found by the look-up"
        return response

    async def write(
        self,
        method: str,
        url: URL,
        *,
        landed: Callable[[], Awaitable[bool]],
        acting_user: str | None = None,
        json: Any = None,
        form: list[tuple[str, str]] | None = None,
        multipart: list[tuple[str, str]] | None = None,
    ) -> Response | None:
        """A write not safe to repeat: when its outcome is unknown, `landed()` is asked (after
        the policy's backoff) before it is sent again.  None: `landed()` found it."""
        return await self._call(method, url, acting_user, json, form, multipart, False, landed)

    async def _call(
        self,
        method: str,
        url: URL,
        acting_user: str | None,
        json: Any,
        form: list[tuple[str, str]] | None,
        multipart: list[tuple[str, str]] | None,
        repeatable: bool,
        landed: Callable[[], Awaitable[bool]] | None = None,
    ) -> Response | None:
        self._check_open()
        self.check_origin(url, "request to")
        task = asyncio.current_task()
        assert task is not None
        # A write's look-up is a call inside a call: the outermost one owns the task.
        owner = task not in self._calls
        self._calls.add(task)
        try:
            return await self._drive(
                method, url, acting_user, json, form, multipart, repeatable, landed
            )
        except asyncio.CancelledError:
            if not (owner and task in self._closing):
                raise
            if hasattr(task, "uncancel"):  # 3.11+: this cancellation ends here
                task.uncancel()
            error = ClientClosed(f"{method} {url.path}: the client was closed")
        finally:
            if owner:
                self._calls.discard(task)
                self._closing.discard(task)
        raise_unchained(error)  # no CancelledError as its context

    async def _drive(
        self,
        method: str,
        url: URL,
        acting_user: str | None,
        json: Any,
        form: list[tuple[str, str]] | None,
        multipart: list[tuple[str, str]] | None,
        repeatable: bool,
        landed: Callable[[], Awaitable[bool]] | None,
    ) -> Response | None:
        body, content_type = encode_body(json, form, multipart)
        call = Call(method, url.path, repeatable=repeatable, reconcilable=landed is not None)
        deadline = None if self.deadline is None else self.clock() + self.deadline
        state = CallState(deadline=deadline)
        while True:
            outcome, token = await self._attempt(call, state, url, acting_user, body, content_type)
            decision = _policy.decide(
                call,
                outcome,
                state,
                self.policy,
                now=self.clock(),
                wall=self.wall_clock(),
                jitter=self.jitter(),
            )
            if isinstance(decision, Return):
                return decision.response
            if isinstance(decision, Raise):
                if isinstance(outcome, SendError) and self.closed:
                    raise ClientClosed(f"{method} {url.path}: the client was closed")
                raise decision.error
            self.counters.retries += 1
            if isinstance(decision, Refresh):
                log.debug("%s %s: 401, fetching a new token", method, url.path)
                if token is not None:
                    self.auth.invalidate(token)
                state = decision.state
                continue
            if isinstance(decision, Retry):
                if decision.delay > 0:
                    log.warning(
                        "%s %s: retry %d of %d in %.2f s after %s",
                        method,
                        url.path,
                        decision.state.retries,
                        self.policy.max_retries,
                        decision.delay,
                        decision.reason,
                    )
                    await self.sleep(decision.delay)
                else:
                    log.debug("%s %s: sent again after %s", method, url.path, decision.reason)
                state = decision.state
                continue
            assert isinstance(decision, Reconcile) and landed is not None
            log.warning(
                "%s %s: outcome unknown (%s); looking it up in %.2f s",
                method,
                url.path,
                decision.error,
                decision.delay,
            )
            if decision.delay > 0:
                await self.sleep(decision.delay)
            found = await _look_up(landed, method, url, decision.error)
            if found:
                return None
            if decision.final:
                raise decision.error
            state = decision.state

    async def _attempt(
        self,
        call: Call,
        state: CallState,
        url: URL,
        acting_user: str | None,
        body: bytes | None,
        content_type: str | None,
    ) -> tuple[_policy.Outcome, str | None]:
        """One attempt: the outcome for the policy, and the bearer token it carried."""
        self._check_open()
        # The token first, outside the limiter: every task waiting shares one fetch, and a
        # failed fetch spends no budget.
        try:
            token = await self._bounded(self.auth.token(), state, "a token")
        except (ServerError, TransportError) as exc:
            if state.deadline is not None and self.clock() >= state.deadline:
                raise
            return TokenError(exc), None
        self._check_open()
        max_wait = self.policy.max_rate_limit_wait
        if state.deadline is not None:
            left = state.deadline - self.clock()
            max_wait = left if max_wait is None else min(max_wait, left)
        ticket = await self._acquire(max_wait, state, call)
        timeout = self.timeout
        if state.deadline is not None:
            # What the wait for budget left of the deadline bounds the attempt.
            left = state.deadline - self.clock()
            if left <= 0:
                self.limiter.release(ticket, sent=False)
                raise _deadline_rate_limited(call)
            timeout = min(timeout, left)
        headers = _sansio.request_headers(token, acting_user, content_type=content_type)
        request = Request(call.method, url, headers, body, timeout, self.max_response_bytes)
        limiter = self.limiter
        self.counters.requests += 1
        try:
            response = await self.transport.send(request)
        except SendError as exc:
            limiter.release(ticket, sent=exc.sent)
            self.counters.transport_errors += 1
            return exc, token
        except BaseException:  # cancelled, or a body over the cap: the token may be spent
            limiter.release(ticket, sent=True)
            raise
        self.counters.bytes_read += len(response.body)
        by_status = self.counters.by_status
        key = _STATUS_CLASSES.get(response.status // 100)
        if key is None:  # a status outside 100-599 (aiohttp passes any three digits)
            key = f"{response.status // 100}xx"
        by_status[key] = by_status.get(key, 0) + 1
        rate = _sansio.rate_limit_from_headers(response.headers, response.status, self.wall_clock())
        if rate is not None:
            self.rate_limit = rate
        await limiter.record(ticket, rate, response.status)
        return response, token

    def _bounded(self, waiting: Awaitable[T], state: CallState, what: str) -> Awaitable[T]:
        """`waiting`, given up (`TransportError`) when the call's deadline runs out; without a
        deadline, `waiting` itself (no coroutine around it on every call)."""
        if state.deadline is None:
            return waiting
        return self._until(state.deadline, waiting, what)

    async def _until(self, deadline: float, waiting: Awaitable[T], what: str) -> T:
        try:
            return await asyncio.wait_for(waiting, max(deadline - self.clock(), 0.0))
        except asyncio.TimeoutError:
            pass
        raise TransportError(f"timed out: the call's deadline ran out waiting for {what}")

    async def _acquire(self, max_wait: float | None, state: CallState, call: Call) -> int:
        """A limiter ticket, waiting at most `max_wait` seconds (None: as long as it takes).

        The limiter's own errors (`RateLimited`, `RateLimiterUnavailable`) end the call as
        they are: a dead limiter is not retried."""
        start = self.clock()
        if state.deadline is None:
            ticket = await self.limiter.acquire(max_wait)
        else:
            # The limiter keeps to max_wait itself; the deadline holds whatever it does.  Only
            # that timeout becomes RateLimited: the limiter's own errors pass as they are.
            left = max(state.deadline - self.clock(), 0.0)
            try:
                ticket = await asyncio.wait_for(self.limiter.acquire(max_wait), left)
            except asyncio.TimeoutError:
                raise _deadline_rate_limited(call) from None
        waited = self.clock() - start
        if waited > SLOW_BUDGET_WAIT:
            log.warning("%s %s: waited %.1f s for budget", call.method, call.path, waited)
        elif waited >= NO_WAIT:
            log.debug("%s %s: waited %.2f s for budget", call.method, call.path, waited)
        return ticket


def _deadline_rate_limited(call: Call) -> RateLimited:
    return RateLimited(
        429,
        title="Rate limit wait too long",
        detail=f"{call.method} {call.path}: the call's deadline ran out waiting for budget",
    )


async def _look_up(
    landed: Callable[[], Awaitable[bool]], method: str, url: URL, why: EvEnergyError
) -> bool:
    """Whether a write landed; `OutcomeUnknown` when the look-up itself fails."""
    try:
        return await landed()
    except EvEnergyError as exc:
        if isinstance(exc, ClientClosed):
            raise
        failure = (
            f"{method} {url.path} may have been applied ({why}), and looking it up failed: {exc}"
        )
    raise OutcomeUnknown(failure)


def query_pairs(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query parameters as pairs; None left out, a list repeats its key (``expand=a&expand=b``)."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            for item in value:  # none for an empty list: the parameter is left out
                pairs.append((key, str(item)))
        elif isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        else:
            pairs.append((key, str(value)))
    return pairs


def merge_params(url: URL, params: Mapping[str, Any]) -> URL:
    """`url` (a collection or resource URL, without a query) with `params` as its query."""
    pairs = query_pairs(params)
    return url.with_query(pairs) if pairs else url
