"""Rate-limit bounds against small misbehaving servers on loopback (issue 11, rows 1, 3, 4, 6).

Each server answers ``GET /v2/users/{id}`` as its scenario says and counts the requests it
gets; a real `ev.Client` calls it.  Assertions are on counts, outcomes and order, never on
elapsed time: `within` only stops a hung test.  Real time does pass (the limiter's pauses are
real here), a few seconds in all; the exact timings are tested on a virtual clock in
test_ratelimit_state.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import payloads
import pytest
from aiohttp import web
from servers import serve_app

import evenergy_async as ev
from evenergy_async import _ratelimit

UID = "user01HN2NJ9NMRZBXT1H6FT9N7735"
T = TypeVar("T")
Handler = Callable[[int, str], Awaitable[web.StreamResponse]]


async def within(seconds: float, aw: Awaitable[T]) -> T:
    """A guard against a hang (a failure), not a measure of speed."""
    return await asyncio.wait_for(aw, seconds)


class Hostile:
    """A server whose `answer(n, base_url)` decides the n-th response (from 0)."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests = 0
        self.release = asyncio.Event()  # ends the handlers that never answer
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = self.requests
        self.requests += 1
        return await self.answer(n, self.base_url)

    async def hang(self) -> web.StreamResponse:
        await self.release.wait()
        return web.Response(status=503)


@contextlib.asynccontextmanager
async def hostile(answer: Handler) -> AsyncIterator[Hostile]:
    server = Hostile(answer)
    app = web.Application()
    app.router.add_get("/v2/users/{id}", server.handle)
    async with serve_app(app) as origin:
        server.base_url = f"{origin}/v2"
        try:
            yield server
        finally:
            server.release.set()  # so its handlers return before the server stops


def user(base_url: str) -> dict[str, Any]:
    return payloads.user_json(f"{base_url}/users", "frodo@example.com")


def ok(base_url: str, **headers: str) -> web.Response:
    return web.json_response(user(base_url), headers=headers)


def too_many(retry_after: str | None = None, **headers: str) -> web.Response:
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return web.json_response(
        {"title": "Too Many Requests"},
        status=429,
        headers=headers,
        content_type="application/problem+json",
    )


def client(server: Hostile, **kw: Any) -> ev.Client:
    return ev.Client(token="t", base_url=server.base_url, **kw)


# --- row 4: a minimum pause with backoff, whatever Retry-After says ------------------------------


@pytest.mark.parametrize("retry_after", ["0", "-5", "Thu, 01 Jan 1970 00:00:00 GMT", "soon"])
async def test_fifty_tasks_against_429_retry_after_now_send_a_handful(
    retry_after: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def answer(n: int, base: str) -> web.Response:
        return too_many(retry_after)

    # the pause floor scaled down tenfold (1 s in the library), and the bound with it
    monkeypatch.setattr(_ratelimit, "PAUSE_MIN", 0.1)
    async with hostile(answer) as server, client(server, max_rate_limit_wait=0.15) as api:
        results = await within(
            60, asyncio.gather(*(api.users.get(UID) for _ in range(50)), return_exceptions=True)
        )
    assert all(isinstance(r, ev.RateLimited) for r in results), results
    # one probe at a time, a pause of PAUSE_MIN, then a pause of twice that is over the bound:
    # 50 tasks sent 2 requests (2500 in 2.4 s before this was fixed)
    assert server.requests <= 6


# --- row 3: absurd limits and waits never lock the client ----------------------------------------


@pytest.mark.parametrize("limit", ["0", "-1", "1e400", "NaN", "banana", "1" + "0" * 30])
async def test_an_absurd_limit_does_not_lock_the_client(limit: str) -> None:
    async def answer(n: int, base: str) -> web.Response:
        if n == 0:
            return ok(base, **{"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": "0"})
        return ok(base, **{"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "900"})

    async with hostile(answer) as server, client(server) as api:
        for _ in range(5):
            assert (await within(30, api.users.get(UID))).id == UID
    assert server.requests == 5


@pytest.mark.parametrize("retry_after", ["1e12", "inf", "nan", "-1e12"])
async def test_an_absurd_retry_after_pauses_at_most_a_window(retry_after: str) -> None:
    async def answer(n: int, base: str) -> web.Response:
        return too_many(retry_after) if n == 0 else ok(base)

    # no bound on the wait: only the limiter's own cap (one window, 0.1 s here) ends the pause
    async with hostile(answer) as server, client(server, rate_limit_window=0.1) as api:
        assert (await within(30, api.users.get(UID))).id == UID
        assert api.limiter.stats.throttled == 1
    assert server.requests == 2


# --- row 1: max_rate_limit_wait holds for tasks already waiting ----------------------------------


async def test_a_429_ends_the_waits_it_makes_longer_than_the_bound() -> None:
    probe_in_flight = asyncio.Event()
    answer_now = asyncio.Event()

    async def answer(n: int, base: str) -> web.Response:
        probe_in_flight.set()
        await answer_now.wait()  # the probe is slow; the other calls queue behind it
        return too_many("60")

    async with hostile(answer) as server, client(server, max_rate_limit_wait=5.0) as api:
        calls = [asyncio.ensure_future(api.users.get(UID)) for _ in range(10)]
        await within(30, probe_in_flight.wait())
        await asyncio.sleep(0.05)  # let the other nine join the queue
        answer_now.set()
        results = await within(30, asyncio.gather(*calls, return_exceptions=True))
    assert all(isinstance(r, ev.RateLimited) for r in results), results
    assert all(r.retry_after is not None and r.retry_after > 5.0 for r in results)  # type: ignore[union-attr]
    assert server.requests == 1  # nobody else was sent


# --- row 6: an outage costs every caller one timeout, not one each -------------------------------


async def test_callers_behind_a_probe_that_times_out_fail_with_it() -> None:
    async def answer(n: int, base: str) -> web.StreamResponse:
        return await server.hang()

    async with hostile(answer) as server, client(server, timeout=0.25, max_retries=0) as api:
        results = await within(
            30, asyncio.gather(*(api.users.get(UID) for _ in range(10)), return_exceptions=True)
        )
    assert all(isinstance(r, ev.TransportError) for r in results), results
    # the probe timed out and took the nine waiting behind it along: one request, not ten
    # sent one after another (which took 10 timeouts before this was fixed)
    assert server.requests == 1


async def test_with_a_deadline_the_limiters_own_errors_pass_as_they_are() -> None:
    async def answer(n: int, base: str) -> web.StreamResponse:
        return await server.hang()

    async with (
        hostile(answer) as server,
        client(server, timeout=0.25, max_retries=0, deadline=30.0) as api,
    ):
        results = await within(
            30, asyncio.gather(*(api.users.get(UID) for _ in range(4)), return_exceptions=True)
        )
    # the probe timed out; the three behind it failed with it, as a transport error (not sent),
    # not as a deadline that ran out
    assert all(type(r) is ev.TransportError for r in results), results
    assert server.requests == 1
