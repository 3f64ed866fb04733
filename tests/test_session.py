"""The session over the in-memory transport, with a clock the test moves: deadlines, writes
that may have landed, the token endpoint, closing, limiter failures, stats and logging."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import msgspec
import payloads
import pytest
from leaks import assert_no_secret
from yarl import URL

import evenergy_async as ev
from evenergy_async._policy import Request, SendError
from evenergy_async._ratelimit import LimiterStats
from evenergy_async.testing import MockReply, MockTransport

ORIGIN = "https://api.example.test"
B = f"{ORIGIN}/v2"
TOKEN_URL = f"{ORIGIN}/o/token/"
UID = "user01HN2NJ9NMRZBXT1H6FT9N7735"
USER_URL = f"{B}/users/{UID}"
LOOKUP_URL = f"{B}/users?page_size=1&email=a%40example.com"
SECRET = "tok-SECRET-abc123"


def user_json(email: str = "a@example.com") -> dict[str, Any]:
    return payloads.user_json(f"{B}/users", email)


class Clock:
    """The session's monotonic clock and sleep: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


class RecordingLimiter:
    """Grants at once and records the longest wait each acquire was allowed."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.window = 1.0
        self.stats = LimiterStats()
        self.max_waits: list[float | None] = []
        self.released: list[bool] = []
        self.fail = fail

    def configure(self, *, window: float) -> None:
        self.window = window

    async def acquire(self, max_wait: float | None = None) -> int:
        self.max_waits.append(max_wait)
        if self.fail is not None:
            raise self.fail
        self.stats.granted += 1
        return len(self.max_waits)

    async def record(self, ticket: int, rate: ev.RateLimit | None, status: int) -> None:
        pass

    def release(self, ticket: int, *, sent: bool) -> None:
        self.released.append(sent)


def make(transport: MockTransport, clock: Clock | None = None, **kwargs: Any) -> ev.Client:
    kwargs.setdefault("base_url", B)
    if "credentials" not in kwargs:
        kwargs.setdefault("token", SECRET)
    client = ev.Client(transport=transport, **kwargs)
    clock = clock or Clock()
    client._session.clock = clock
    client._session.sleep = clock.sleep
    client._session.jitter = lambda: 0.5
    return client


# --- deadline -----------------------------------------------------------------------------------


async def test_deadline_caps_the_limiter_wait_and_the_attempt_timeout():
    transport = MockTransport()
    transport.get(USER_URL, status=503, headers={"Retry-After": "4"}, repeat=True)
    limiter = RecordingLimiter()
    clock = Clock()
    async with make(
        transport, clock, timeout=30.0, deadline=10.0, max_rate_limit_wait=8.0, limiter=limiter
    ) as c:
        with pytest.raises(ev.ServerError):
            await c.users.get(UID)
    # attempts at 0, 4 and 8 (Retry-After 4); the one at 8 leaves 2 s: no sleep past 10
    assert clock.sleeps == [4.0, 4.0]
    assert limiter.max_waits == [8.0, 6.0, 2.0]  # min(max_rate_limit_wait, what is left)
    assert [r.timeout for r in transport.requests] == [10.0, 6.0, 2.0]


async def test_without_deadline_the_attempt_has_its_own_timeout():
    transport = MockTransport()
    transport.get(USER_URL, payload=user_json())
    limiter = RecordingLimiter()
    async with make(transport, timeout=7.0, limiter=limiter) as c:
        await c.users.get(UID)
    assert limiter.max_waits == [None]
    assert [r.timeout for r in transport.requests] == [7.0]


async def test_deadline_ends_a_timing_out_call_with_transport_error():
    clock = Clock()

    async def slow(request: Request) -> MockReply:
        clock.now += request.timeout  # the attempt used all the time it had
        raise SendError("timed out", sent=True, timed_out=True)

    transport = MockTransport()
    transport.get(USER_URL, callback=slow, repeat=True)
    async with make(transport, clock, timeout=5.0, max_retries=2, deadline=8.0) as c:
        with pytest.raises(ev.TransportError) as info:
            await c.users.get(UID)
    assert "timed out" in str(info.value)
    assert clock.now <= 8.0
    assert len(transport.requests) == 2  # 5 s, then the 3 s left; no third attempt


class HangingLimiter(RecordingLimiter):
    """Never grants: the budget is gone for good."""

    cancelled = 0

    async def acquire(self, max_wait: float | None = None) -> int:
        self.max_waits.append(max_wait)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("not reached")


async def test_deadline_ends_a_wait_for_budget_with_rate_limited():
    transport = MockTransport()
    limiter = HangingLimiter()
    async with ev.Client(
        SECRET, base_url=B, transport=transport, deadline=0.05, limiter=limiter
    ) as c:
        with pytest.raises(ev.RateLimited, match="deadline"):
            await c.users.get(UID)
    assert limiter.cancelled == 1  # the wait was given up, not left behind
    assert transport.requests == []


async def test_deadline_ends_a_wait_for_a_token_with_transport_error():
    async def hang(request: Request) -> MockReply:
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    transport = MockTransport()
    transport.post(TOKEN_URL, callback=hang)
    creds = ev.ClientCredentials("id", "sec")
    async with ev.Client(credentials=creds, base_url=B, transport=transport, deadline=0.05) as c:
        with pytest.raises(ev.TransportError, match="deadline"):
            await c.users.get(UID)
    assert transport.calls("GET") == []


# --- writes -------------------------------------------------------------------------------------


async def test_create_backs_off_and_honours_retry_after():
    transport = MockTransport()
    transport.post(f"{B}/users", status=503, headers={"Retry-After": "3"}, repeat=True)
    transport.get(LOOKUP_URL, payload=[], repeat=True)
    clock = Clock()
    async with make(transport, clock, max_retries=3) as c:
        with pytest.raises(ev.ServerError):
            await c.users.create(email="a@example.com")
    assert len(transport.calls("POST")) == 4
    assert clock.sleeps == [3.0, 3.0, 3.0]  # every resend waited for Retry-After
    # a look-up before every resend and after the last answer: never a blind duplicate
    methods = [r.method for r in transport.requests]
    assert methods == ["POST", "GET", "POST", "GET", "POST", "GET", "POST", "GET"]


async def test_create_cut_after_commit_whose_look_up_fails_is_outcome_unknown():
    transport = MockTransport()
    transport.post(f"{B}/users", exception=SendError("connection reset", sent=True))
    transport.get(LOOKUP_URL, status=503, repeat=True)
    async with make(transport, max_retries=2) as c:
        with pytest.raises(ev.OutcomeUnknown) as info:
            await c.users.create(email="a@example.com")
    assert isinstance(info.value, ev.TransportError)
    assert len(transport.calls("POST")) == 1
    assert len(transport.calls("GET")) == 3  # the look-up itself was retried


async def test_create_found_by_the_look_up_is_not_sent_again():
    transport = MockTransport()
    transport.post(f"{B}/users", exception=SendError("connection reset", sent=True))
    transport.get(LOOKUP_URL, payload=[user_json("A@example.com")])
    async with make(transport) as c:
        user = await c.users.create(email="a@example.com")
    assert user.id == UID
    assert len(transport.calls("POST")) == 1


async def test_create_refused_connection_is_resent_without_a_look_up():
    transport = MockTransport()
    transport.post(f"{B}/users", exception=SendError("refused", sent=False))
    transport.post(f"{B}/users", status=201, payload=user_json())
    async with make(transport) as c:
        assert (await c.users.create(email="a@example.com")).id == UID
    assert [r.method for r in transport.requests] == ["POST", "POST"]


# --- credentials --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 503])
async def test_token_endpoint_unavailable_is_retried(status):
    transport = MockTransport()
    transport.post(TOKEN_URL, status=status, headers={"Retry-After": "1"})
    transport.post(TOKEN_URL, payload={"access_token": "T1"})
    transport.get(USER_URL, payload=user_json())
    clock = Clock()
    async with make(transport, clock, credentials=ev.ClientCredentials("id", "sec")) as c:
        assert (await c.users.get(UID)).id == UID
    assert clock.sleeps == [1.0]
    assert len(transport.calls("POST", TOKEN_URL)) == 2


async def test_token_endpoint_failures_are_server_and_transport_errors():
    transport = MockTransport()
    transport.post(TOKEN_URL, status=500)
    async with make(transport, credentials=ev.ClientCredentials("id", "sec")) as c:
        with pytest.raises(ev.ServerError) as info:
            await c.users.get(UID)
    assert info.value.status == 500
    transport = MockTransport()  # nothing answers: refused
    async with make(transport, max_retries=1, credentials=ev.ClientCredentials("id", "s")) as c:
        with pytest.raises(ev.TransportError):
            await c.users.get(UID)
    assert len(transport.requests) == 2
    assert transport.calls("GET") == []


@pytest.mark.parametrize("status", [400, 401])
async def test_token_endpoint_refusal_stays_unauthorized(status):
    transport = MockTransport()
    transport.post(TOKEN_URL, status=status, payload={"error": "invalid_client"}, repeat=True)
    async with make(transport, credentials=ev.ClientCredentials("id", "sec")) as c:
        with pytest.raises(ev.Unauthorized):
            await c.users.get(UID)
    assert len(transport.requests) == 1


@pytest.mark.parametrize("token", ["a\r\nX-Evil: 1", "tab\tbed", "caf\u00e9", "two words", "a\x00"])
def test_static_token_with_invalid_header_characters_is_refused(token):
    with pytest.raises(ev.InvalidRequest) as info:
        ev.Client(token, base_url=B)
    assert token not in str(info.value)


@pytest.mark.parametrize("token", ["T1\r\nX-Evil: 1", "", 5, "x" * 9000, None])
async def test_garbage_token_from_the_endpoint_is_invalid_response(token):
    transport = MockTransport()
    transport.post(TOKEN_URL, payload={"access_token": token})
    async with make(transport, credentials=ev.ClientCredentials("id", "sec")) as c:
        with pytest.raises(ev.InvalidResponse):
            await c.users.get(UID)
    assert transport.calls("GET") == []


async def test_a_token_is_fetched_once_however_many_tasks_wait():
    release = asyncio.Event()

    async def slow_token(request: Request) -> MockReply:
        await release.wait()
        return MockReply(payload={"access_token": "T1"})

    transport = MockTransport()
    transport.post(TOKEN_URL, callback=slow_token, repeat=True)
    transport.get(USER_URL, payload=user_json(), repeat=True)
    async with make(transport, credentials=ev.ClientCredentials("id", "sec")) as c:
        tasks = [asyncio.ensure_future(c.users.get(UID)) for _ in range(10)]
        for _ in range(5):
            await asyncio.sleep(0)
        release.set()
        users = await asyncio.gather(*tasks)
    assert len(users) == 10
    assert len(transport.calls("POST", TOKEN_URL)) == 1
    assert {r.headers["Authorization"] for r in transport.calls("GET")} == {"Bearer T1"}


# --- closing ------------------------------------------------------------------------------------


async def test_closed_client_raises_client_closed_and_sends_nothing():
    transport = MockTransport()
    transport.get(USER_URL, payload=user_json(), repeat=True)
    client = make(transport)
    async with client:
        await client.users.get(UID)
    with pytest.raises(ev.ClientClosed):
        await client.users.get(UID)
    with pytest.raises(ev.ClientClosed):
        client.as_user(UID)
    assert issubclass(ev.ClientClosed, ev.EvEnergyError)
    assert len(transport.requests) == 1
    assert transport.closed


async def test_close_ends_calls_in_flight_with_client_closed():
    started = asyncio.Event()

    async def hang(request: Request) -> MockReply:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    transport = MockTransport()
    transport.get(USER_URL, callback=hang)
    limiter = RecordingLimiter()
    client = make(transport, limiter=limiter)
    call = asyncio.ensure_future(client.users.get(UID))
    await started.wait()
    await client.close()
    with pytest.raises(ev.ClientClosed):
        await call
    assert limiter.released == [True]  # its rate-limit token accounted for


# --- the limiter --------------------------------------------------------------------------------


async def test_a_dead_limiter_fails_once():
    transport = MockTransport()
    limiter = RecordingLimiter(fail=ev.RateLimiterUnavailable("redis is down"))
    async with make(transport, limiter=limiter, max_retries=5) as c:
        with pytest.raises(ev.RateLimiterUnavailable):
            await c.users.get(UID)
    assert len(limiter.max_waits) == 1
    assert transport.requests == []


# --- stats and logging --------------------------------------------------------------------------


async def test_stats_count_requests_by_outcome(caplog):
    transport = MockTransport()
    transport.get(USER_URL, status=503)
    transport.get(USER_URL, exception=SendError("reset", sent=True))
    transport.get(USER_URL, payload=user_json())
    transport.get(f"{B}/users/me", status=404)
    async with make(transport) as c:
        assert c.stats.requests == 0
        with caplog.at_level(logging.DEBUG, logger="evenergy_async"):
            await c.users.get(UID)
            with pytest.raises(ev.NotFound):
                await c.users.get("me")
        stats = c.stats
    assert isinstance(stats, ev.ClientStats)
    assert stats.requests == 4
    assert stats.responses == {"2xx": 1, "4xx": 1, "5xx": 1}
    assert stats.transport_errors == 1
    assert stats.retries == 2
    assert stats.bytes_read == len(msgspec.json.encode(user_json()))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("retry" in r.getMessage() for r in warnings)
    with pytest.raises(AttributeError):
        stats.requests = 5  # type: ignore[misc]


async def test_stats_count_resolve_cache_hits_and_misses():
    transport = MockTransport()
    tariff = f"{B}/things/thin01HN2NJ9NMRZBXT1H6FT9N7735"  # no model: plain JSON
    transport.get(tariff, payload={"id": "x"})
    async with make(transport) as c:
        await c.resolve(tariff)
        await c.resolve(tariff)
        assert (c.stats.cache_hits, c.stats.cache_misses) == (1, 1)


# --- secrets ------------------------------------------------------------------------------------


async def test_token_endpoint_failure_keeps_no_secret_in_its_chain():
    transport = MockTransport()
    transport.post(TOKEN_URL, exception=SendError("reset", sent=True), repeat=True)
    creds = ev.ClientCredentials("my-client", "TOP-SECRET-42")
    async with make(transport, credentials=creds, max_retries=1) as c:
        with pytest.raises(ev.TransportError) as info:
            await c.users.get(UID)
    basic = base64.b64encode(b"my-client:TOP-SECRET-42").decode()
    assert_no_secret(info.value, "TOP-SECRET-42", basic)


class WaitingLimiter(RecordingLimiter):
    """Each acquire takes the next of `waits` seconds, on the test's clock."""

    def __init__(self, clock: Clock, *waits: float) -> None:
        super().__init__()
        self.clock = clock
        self.waits = iter(waits)

    async def acquire(self, max_wait: float | None = None) -> int:
        self.clock.now += next(self.waits)
        return await super().acquire(max_wait)


def budget_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "for budget" in r.getMessage()]


async def test_budget_granted_at_once_is_not_logged_and_a_short_wait_is(caplog):
    clock = Clock()
    # Granted at once (if slowly), then a real wait.
    limiter = WaitingLimiter(clock, 0.001, 0.5)
    transport = MockTransport()
    transport.get(USER_URL, payload=user_json(), repeat=True)
    async with make(transport, clock, limiter=limiter) as c:
        with caplog.at_level(logging.DEBUG, logger="evenergy_async"):
            await c.users.get(UID)
            assert not budget_logs(caplog)
            await c.users.get(UID)
    [debug] = budget_logs(caplog)
    assert debug.levelno == logging.DEBUG and "waited 0.50 s for budget" in debug.getMessage()


async def test_a_long_wait_for_budget_is_a_warning(caplog):
    clock = Clock()
    transport = MockTransport()
    transport.get(USER_URL, payload=user_json(), repeat=True)
    async with make(transport, clock, limiter=WaitingLimiter(clock, 6.0)) as c:
        with caplog.at_level(logging.DEBUG, logger="evenergy_async"):
            await c.users.get(UID)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "waited 6.0 s for budget" in warning.getMessage()


@pytest.mark.parametrize(
    "url",
    [
        USER_URL,
        f"{ORIGIN}/",
        f"{ORIGIN}:443/v2/users/me",  # the default port written out
        "https://API.example.test/v2/users/me",  # a host is case-insensitive
        "HTTPS://api.example.test/v2/users/me",
    ],
)
async def test_the_session_sends_to_its_own_origin(url):
    async with make(MockTransport()) as client:
        assert client._session.check_origin(URL(url), "request to") == URL(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.test/v2/users/me",  # another scheme
        "https://api.example.test:8443/v2/users/me",  # another port
        "https://api.example.test.evil/v2/users/me",
        "https://api.example.test@evil.test/v2/users/me",
        "https://user@api.example.test/v2/users/me",  # userinfo would travel with it
        "/v2/users/me",  # relative
    ],
)
async def test_the_session_refuses_any_other_origin_unsent(url):
    transport = MockTransport()
    async with make(transport) as client:
        with pytest.raises(ev.EvEnergyError, match="refusing request to"):
            await client._ctx.request("GET", URL(url))
    assert transport.requests == []
