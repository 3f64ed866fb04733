"""RedisRateLimiter against a real redis-server: one budget shared by many limiters.

Each limiter instance stands for a worker process (its own connections, its own id in the
fleet's queue).  The scripts' clock is a `FakeClock` the test moves (``clock=``), so every
wait below is exact and no assertion depends on the machine's speed: a waiter is granted when
the test moves the clock past the moment the rules say, and woken by the limiters' own
messages (their polls are set far longer than any test).  `test_lua_and_windowstate_agree`
drives `WindowState` and the Lua scripts through the same sequences and compares them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis_server import redis_server, redis_server_binary

import evenergy_async as ev
from evenergy_async._ratelimit import WindowState
from evenergy_async._redis import (
    RateLimiterUnavailable,
    RedisRateLimiter,
    fingerprint,
)
from evenergy_async.errors import InvalidRequest, RateLimited, TransportError
from evenergy_async.models import RateLimit

redis = pytest.importorskip(
    "redis", reason="redis-py is not installed (pip install evenergy-async[redis])"
)
import redis.asyncio as redis_asyncio  # noqa: E402

W = 100.0  # the window of the tests on the fake clock
LONG_POLL = 600.0  # a waiter woken before this was woken by a message, not by polling


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    with redis_server() as url:
        yield url


class FakeClock:
    """The clock of the scripts (seconds); moves only when the test says."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Factory = Callable[..., RedisRateLimiter]
T = TypeVar("T")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def limiters(redis_url: str, clock: FakeClock) -> AsyncIterator[Factory]:
    """Make limiters on the test server (a fresh key per test unless given, the test's clock
    unless ``clock=None``); close them all."""
    made: list[RedisRateLimiter] = []
    default_key = uuid.uuid4().hex

    def make(**kw: object) -> RedisRateLimiter:
        kw.setdefault("key", default_key)
        kw.setdefault("window", W)
        kw.setdefault("poll_interval", LONG_POLL)
        kw.setdefault("clock", clock)
        limiter = RedisRateLimiter(redis_url, **kw)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def within(seconds: float, aw: Awaitable[T]) -> T:
    """Await with a deadline, so a broken limiter fails the test instead of hanging it."""
    return await asyncio.wait_for(aw, seconds)


async def settle() -> None:
    """Give the limiters' tasks time to make their Redis calls (no assertion on time)."""
    await asyncio.sleep(0.05)


async def advance(clock: FakeClock, seconds: float, *limiters: RedisRateLimiter) -> None:
    """Move the clock and let the waiting limiters look again (what their timers would do)."""
    clock.now += seconds
    for limiter in limiters:
        limiter._poke()
    await settle()


async def learn(limiter: RedisRateLimiter, limit: int, remaining: int | None = None) -> None:
    """Send the probe and answer it with the given headers."""
    ticket = await limiter.acquire()
    rem = limit - 1 if remaining is None else remaining
    await limiter.record(ticket, RateLimit(limit, rem), 200)


# --- the same behaviour as the in-process limiter -----------------------------------------


async def test_probe_first_then_a_response_wakes_the_other_worker(limiters: Factory) -> None:
    a, b = limiters(), limiters()
    probe = await a.acquire()
    waiting = asyncio.create_task(b.acquire())
    await settle()
    assert not waiting.done(), "a second request went out before the budget was known"
    with pytest.raises(asyncio.TimeoutError):  # a cancelled waiter leaves the others be
        await asyncio.wait_for(b.acquire(), 0.05)
    await a.record(probe, RateLimit(10, 9), 200)
    ticket = await within(30, waiting)  # woken by pub/sub: its poll is 600 s
    assert ticket > probe
    snap = await a.snapshot()
    assert (snap.limit, snap.need_probe, snap.in_flight, snap.completed) == (10, False, 1, 1)


async def test_exactly_limit_per_window_and_tokens_back_at_response_plus_window(
    limiters: Factory, clock: FakeClock
) -> None:
    a, b = limiters(), limiters()
    probe = await a.acquire()
    clock.now += 20  # a slow response: its token returns a window after it arrived
    await a.record(probe, RateLimit(4, 3), 200)
    tickets = [await a.acquire(), await b.acquire(), await b.acquire()]
    assert (await a.snapshot()).used == 4
    with pytest.raises(RateLimited) as refused:
        await b.acquire(max_wait=50)
    assert refused.value.retry_after == pytest.approx(W)
    for t in tickets:
        await a.record(t, RateLimit(4, 0), 200)
    fifth = asyncio.create_task(b.acquire())
    await advance(clock, W - 0.5, a, b)  # grant + window would be here: 20 s too early
    assert not fifth.done()
    await advance(clock, 0.5, a, b)
    assert await within(30, fifth) > max(tickets)


async def test_release_unsent_returns_the_token_sent_counts_a_window(limiters: Factory) -> None:
    a, b = limiters(), limiters()
    await learn(a, 2)
    t1 = await a.acquire()
    waiting = asyncio.create_task(b.acquire())
    await settle()
    assert not waiting.done()
    a.release(t1, sent=False)  # never sent: the token is simply back, and the waiter told
    t2 = await within(30, waiting)
    a.release(t2, sent=True)  # may have reached the server: counts from now
    await within(30, asyncio.gather(*a._pending))
    snap = await a.snapshot()
    assert (snap.in_flight, snap.completed) == (0, 2)


async def test_a_429_pauses_every_worker_of_the_budget(limiters: Factory, clock: FakeClock) -> None:
    a, b = limiters(), limiters()
    await learn(a, 100)
    t = await a.acquire()
    await a.record(t, RateLimit(100, 0, retry_after=90.0), 429)
    assert a.stats.throttled == 1
    assert (await b.snapshot()).blocked_for == pytest.approx(90.0)
    with pytest.raises(RateLimited) as refused:
        await b.acquire(max_wait=20)
    assert refused.value.retry_after == pytest.approx(90.0)
    probe_task = asyncio.create_task(b.acquire())
    await advance(clock, 89.5, a, b)
    assert not probe_task.done()
    await advance(clock, 0.5, a, b)
    probe = await within(30, probe_task)
    snap = await b.snapshot()
    assert (snap.blocked_for, snap.need_probe) == (0.0, True)
    with pytest.raises(RateLimited):  # after a 429 the fleet sends one request at a time
        await a.acquire(max_wait=0)
    await b.record(probe, RateLimit(100, 97), 200)
    await a.acquire(max_wait=0)


async def test_others_usage_is_learned_from_remaining_and_probed(
    limiters: Factory, clock: FakeClock
) -> None:
    a, b = limiters(), limiters()
    await learn(a, 10, remaining=3)  # we sent 1, so others spent 6
    snap = await b.snapshot()
    assert (snap.others, snap.used) == (6, 7)
    sent = [await b.acquire(max_wait=0.0) for _ in range(3)]
    for t in sent:
        b.release(t, sent=True)  # no answer, nothing learned: they count a window
    await within(30, asyncio.gather(*b._pending))
    # Full by the estimate of others alone, nothing in flight: one probe (every window / 20)
    # asks the server again.
    with pytest.raises(RateLimited):
        await b.acquire(max_wait=0.0)
    clock.now += W / 20
    probe = await b.acquire(max_wait=0.0)
    with pytest.raises(RateLimited) as refused:  # one probe at a time
        await a.acquire(max_wait=0.0)
    assert refused.value.retry_after == pytest.approx(W - W / 20)
    await b.record(probe, RateLimit(10, 5), 200)  # the others have stopped
    assert (await b.snapshot()).others == 0
    for _ in range(5):
        await a.acquire(max_wait=0.0)
    assert (await a.snapshot()).used == 10


# --- bounds under a hostile server (issue 11) ---------------------------------------------


async def test_a_429_ends_the_shared_waits_it_makes_too_long(
    limiters: Factory, clock: FakeClock
) -> None:
    a, b = limiters(), limiters()
    probe = await a.acquire()
    short = [asyncio.create_task(b.acquire(max_wait=50)) for _ in range(2)]
    patient = asyncio.create_task(b.acquire(max_wait=1e6))
    await settle()
    assert not any(t.done() for t in [*short, patient])  # behind the probe: no wait known
    await a.record(probe, RateLimit(100, 0, retry_after=90.0), 429)
    # woken by a's message (b's poll is 600 s); the clock has not moved
    errors = await within(30, asyncio.gather(*short, return_exceptions=True))
    assert all(isinstance(e, RateLimited) for e in errors), errors
    assert not patient.done()
    patient.cancel()
    await asyncio.gather(patient, return_exceptions=True)


async def test_a_shared_wait_ends_at_its_bound_when_nothing_happens(limiters: Factory) -> None:
    a, b = limiters(), limiters()
    await a.acquire()  # the probe: its response never comes
    with pytest.raises(RateLimited):
        await within(30, b.acquire(max_wait=0.2))  # the bound, on the loop's clock
    assert not b._waiters


async def test_a_failed_probe_fails_the_fleet_waiting_behind_it(limiters: Factory) -> None:
    a, b = limiters(), limiters()
    probe = await a.acquire()
    behind = [asyncio.create_task(b.acquire()) for _ in range(3)]
    behind.append(asyncio.create_task(a.acquire()))
    await settle()
    assert not any(t.done() for t in behind)
    a.release(probe, sent=True)  # timed out: the server is not answering
    errors = await within(30, asyncio.gather(*behind, return_exceptions=True))
    assert [type(e) for e in errors] == [TransportError] * 4
    # the next caller is the next probe, alone
    await a.acquire(max_wait=0)
    with pytest.raises(RateLimited):
        await b.acquire(max_wait=0)


async def test_a_probe_given_back_unsent_goes_to_the_next_waiter(limiters: Factory) -> None:
    a, b = limiters(), limiters()
    probe = await a.acquire()
    waiting = asyncio.create_task(b.acquire())
    await settle()
    a.release(probe, sent=False)
    assert await within(30, waiting) > probe


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
async def test_a_probe_abandoned_by_its_caller_fails_nobody(limiters: Factory) -> None:
    a, b = limiters(), limiters()

    async def call() -> None:
        ticket = await a.acquire()
        try:
            await asyncio.sleep(3600)  # the request in flight
        except asyncio.CancelledError:
            a.release(ticket, sent=True)  # as the session does when its caller gives up
            raise

    caller = asyncio.create_task(call())
    await settle()
    waiting = asyncio.create_task(b.acquire())
    await settle()
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    await within(30, waiting)  # the next probe, not a TransportError


async def test_absurd_headers_do_not_lock_the_fleet(limiters: Factory, clock: FakeClock) -> None:
    a = limiters()
    t = await a.acquire()
    await a.record(t, RateLimit(0, 0), 200)  # a limit of 0: ignored
    assert (await a.snapshot()).limit is None
    t = await a.acquire(max_wait=0)
    await a.record(t, RateLimit(10**12, 5, retry_after=math.inf), 429)
    snap = await a.snapshot()
    assert snap.limit is None  # absurd: ignored too
    assert snap.blocked_for == pytest.approx(W)  # at most a window, whatever Retry-After says
    clock.now += W
    for expected in (2.0, 4.0):  # Retry-After 0, again and again: the pause doubles
        t = await a.acquire(max_wait=0)
        await a.record(t, RateLimit(None, None, retry_after=0.0), 429)
        assert (await a.snapshot()).blocked_for == pytest.approx(expected)
        clock.now += expected
    t = await a.acquire(max_wait=0)
    await a.record(t, RateLimit(10, 9), 200)
    snap = await a.snapshot()
    assert (snap.limit, snap.need_probe) == (10, False)


# --- one set of rules: the Lua scripts against WindowState ----------------------------------

ADVANCE = st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0, 20.0, 60.0, 99.5, 100.0, 150.0])
OPS = st.one_of(
    st.tuples(st.just("advance"), ADVANCE),
    st.tuples(st.just("acquire")),
    st.tuples(st.just("acquire")),
    st.tuples(st.just("estimate"), st.integers(0, 12)),
    st.tuples(
        st.just("respond"),
        st.integers(0, 30),
        st.sampled_from([200, 200, 200, 429, 429, 503]),
        st.sampled_from([None, 0, 1, 2, 3, 5, 10**9, 10**9 + 1, 10**12]),
        st.sampled_from([None, 0, 1, 2, 4, 50]),
        st.sampled_from([None, 0.0, -1.0, 0.5, 30.0, 1e12, math.nan, math.inf]),
    ),
    st.tuples(st.just("release"), st.integers(0, 30), st.booleans()),
    # to the end of a 429 pause, then a request answered 429 again: long runs of backoff
    st.tuples(st.just("unblock")),
    st.tuples(st.just("throttle"), st.sampled_from([None, 0.0, -1.0, 2.0, 1e12])),
    st.tuples(st.just("storm"), st.integers(1, 9), st.sampled_from([None, 0.0, 2.0, 1e12])),
    # a response that tells a budget, then several requests in flight at once
    st.tuples(st.just("learn"), st.integers(2, 6), st.integers(0, 6)),
    st.tuples(st.just("burst"), st.integers(2, 6)),
)


class _AnsweredAtOnce(redis_asyncio.Redis):
    """A `redis.asyncio.Redis` whose commands go through a blocking client.

    The differential test makes some 20 000 script calls, one after another, each answered
    at once; awaiting each on a socket only adds the event loop's work to every call.  The
    scripts, their keys and arguments, and the parsing of their answers are the limiter's own.
    """

    def __init__(self, url: str) -> None:
        super().__init__()  # its own connection pool is never used
        self.blocking = redis.Redis.from_url(url)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return self.blocking.execute_command(*args, **options)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self.blocking.close()
        await super().aclose(close_connection_pool)


@pytest.fixture(scope="module")
def differential(redis_url: str) -> Iterator[Callable[[list[tuple[Any, ...]]], None]]:
    """Run a sequence through `_differential` on one event loop and one Redis connection
    shared by every example (a fresh budget key each time)."""
    loop = asyncio.new_event_loop()
    shared = _AnsweredAtOnce(redis_url)
    try:
        yield lambda ops: loop.run_until_complete(_differential(shared, ops))
    finally:
        loop.run_until_complete(shared.aclose())
        loop.close()


async def _differential(client: redis_asyncio.Redis, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock(1000.0)
    lua = RedisRateLimiter(
        client,
        key=uuid.uuid4().hex,
        window=W,
        reservation_ttl=1e6,  # WindowState has no reservations to expire
        poll_interval=LONG_POLL,
        clock=clock,
    )
    py = WindowState(W)
    flight: list[tuple[int, int]] = []  # (WindowState's ticket, the script's ticket)
    # a storm: n times, to the end of the pause and 429 again
    expand: dict[str, Callable[[tuple[Any, ...]], list[tuple[Any, ...]]]] = {
        "storm": lambda op: [("unblock",), ("throttle", op[2])] * op[1],
        "learn": lambda op: [("acquire",), ("respond", -1, 200, op[1], op[2], None)],
        "burst": lambda op: [("acquire",)] * op[1],
    }
    ops = [o for op in ops for o in (expand[op[0]](op) if op[0] in expand else [op])]
    try:
        for step, op in enumerate(ops):
            now = clock.now
            where = f"step {step}: {op}"
            if op[0] == "advance":
                clock.now += op[1]
            elif op[0] == "unblock":
                clock.now = max(now, py.blocked_until)
            elif op[0] == "throttle":
                mine = py.try_acquire(now)
                grant = await lua._call_acquire(1, 0, None)
                await lua._eval(lua._leave_script)
                assert (mine is not None) == bool(grant.tickets), where
                if mine is not None:
                    rate = RateLimit(None, None, op[1])
                    py.on_response(mine, now, rate, 429)
                    await lua.record(grant.tickets[0], rate, 429)
            elif op[0] == "acquire":
                mine = py.try_acquire(now)
                grant = await lua._call_acquire(1, 0, None)
                await lua._eval(lua._leave_script)
                assert (mine is not None) == bool(grant.tickets), where
                if mine is not None:
                    flight.append((mine, grant.tickets[0]))
                else:
                    change = py.next_change(now)
                    wait = grant.wait if grant.wait is not None and grant.wait < 1e5 else None
                    if change is None:
                        assert wait is None, where
                    else:
                        assert wait == pytest.approx(max(0.0, change - now), abs=1e-4), where
            elif op[0] == "estimate":
                grant = await lua._call_acquire(0, op[1], None)
                expected = py.estimate_wait(now, op[1])
                assert grant.estimate == pytest.approx(expected, abs=1e-4), where
            elif op[0] == "respond" and flight:
                mine, theirs = flight.pop(op[1] % len(flight))
                rate = RateLimit(op[3], op[4], op[5])
                py.on_response(mine, now, rate, op[2])
                await lua.record(theirs, rate, op[2])
            elif op[0] == "release" and flight:
                mine, theirs = flight.pop(op[1] % len(flight))
                failed = py.on_no_response(mine, now, sent=op[2])
                sent = "1" if op[2] else "0"
                r = await lua._eval(lua._release_script, str(theirs), sent, "1")
                assert failed == bool(int(r[1])), where
            snap = await lua._eval(lua._snapshot_script)
            limit = None if snap[1] in (b"", "") else int(snap[1])
            assert limit == py.limit, where
            assert bool(int(snap[2])) == py._need_probe, where
            assert int(snap[3]) == py.used(clock.now), where
            assert int(snap[4]) == py.in_flight(), where
            assert int(snap[10]) == py.throttled, where
            assert float(snap[11]) == pytest.approx(py.blocked_until, abs=1e-5), where
    finally:
        await lua.aclose()


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OPS, min_size=1, max_size=40))
# others' spending learned with later requests still in flight
@example(ops=[("learn", 6, 5), ("burst", 3), ("respond", 0, 200, None, 1, None)])
# 429s of requests sent together count once
@example(ops=[("learn", 6, 5), ("burst", 3), *[("respond", 0, 429, None, None, 0.0)] * 2])
# only the probe's failure fails the waiters
@example(ops=[("learn", 6, 5), ("burst", 2), ("release", 0, True), ("release", 0, True)])
# an own token that returns before others' spending ends
@example(
    ops=[
        ("learn", 4, 3),
        ("advance", 20.0),
        ("acquire",),
        ("respond", 0, 200, None, 0, None),
        ("estimate", 0),
        ("estimate", 1),
        ("estimate", 3),
    ]
)
def test_lua_and_windowstate_agree(
    differential: Callable[[list[tuple[Any, ...]]], None], ops: list[tuple[Any, ...]]
) -> None:
    """Grants, waits, estimates, 429 pauses and failed probes: the same for any sequence."""
    differential(ops)


# --- the fleet --------------------------------------------------------------------------


class SlidingLog:
    """The server's rule: each accepted request counts from its arrival for `window` s."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.log: deque[float] = deque()
        self.accepted = self.refused = 0

    def arrive(self) -> tuple[int, int]:
        now = time.monotonic()
        while self.log and self.log[0] <= now - self.window:
            self.log.popleft()
        if len(self.log) >= self.limit:
            self.refused += 1
            return 429, 0
        self.log.append(now)
        self.accepted += 1
        return 200, self.limit - len(self.log)


async def test_two_workers_share_one_budget_and_never_exceed_it(limiters: Factory) -> None:
    # Real time (Redis TIME) against a server counting by the same rule: counts only.  25
    # requests at 10 per window need two rollovers of it, however fast or slow the machine.
    server = SlidingLog(limit=10, window=0.2)
    workers = [limiters(window=0.2, clock=None, poll_interval=5.0) for _ in range(2)]
    wanted, claimed = 25, 0
    rng = random.Random(7)

    async def task(limiter: RedisRateLimiter) -> None:
        nonlocal claimed
        while claimed < wanted:
            claimed += 1  # before the wait for a token: exactly `wanted` requests go out
            ticket = await limiter.acquire()
            status, remaining = server.arrive()
            await asyncio.sleep(rng.uniform(0.001, 0.02))  # the response travels back
            await limiter.record(ticket, RateLimit(10, remaining), status)

    await within(30, asyncio.gather(*(task(w) for w in workers for _ in range(6))))
    assert server.refused == 0
    assert server.accepted == wanted
    assert sum(w.stats.granted for w in workers) == wanted


async def test_older_waiters_go_first_and_a_dead_waiter_is_dropped(
    limiters: Factory, redis_url: str, clock: FakeClock
) -> None:
    a = limiters()
    await learn(a, 5)
    # A worker that queued for 4 tokens and died: its deadline passes 50 s from now.
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        base = a.redis_key
        await r.zadd(base + ":waitq", {"ghost": clock.now - 1})
        await r.zadd(base + ":waitdl", {"ghost": clock.now + 50})
        await r.hset(base + ":waitn", "ghost", 4)
    finally:
        await r.aclose()
    b = limiters()
    waiting = asyncio.create_task(b.acquire())  # 4 tokens free, all claimed by the ghost
    await advance(clock, 49, b)
    assert not waiting.done()
    await advance(clock, 2, b)
    await within(30, waiting)
    assert (await b.snapshot()).waiting_processes == 0


async def test_a_busy_worker_does_not_starve_a_quiet_one(
    limiters: Factory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clock jumps a window at a time, past the moments the waiting workers would renew
    # their places in the queue: a long grace keeps them (dropping dead ones is tested above).
    monkeypatch.setattr("evenergy_async._redis.WAITER_GRACE", 10 * W)
    busy, quiet = limiters(), limiters()
    await learn(busy, 2, remaining=1)
    await busy.acquire()  # the window is full until W
    served: list[str] = []

    async def wait(limiter: RedisRateLimiter, name: str) -> None:
        await limiter.acquire()
        served.append(name)

    hammer = [asyncio.create_task(wait(busy, "busy")) for _ in range(12)]
    await settle()  # the busy worker queues first
    lone = asyncio.create_task(wait(quiet, "quiet"))
    await settle()
    rounds = 0
    while not lone.done():
        rounds += 1
        assert rounds <= 3, served
        await advance(clock, W, busy, quiet)  # two tokens back each window
        await settle()
    # the busy worker, older, was served first and went to the back: the quiet one next
    assert served.index("quiet") <= 3, served
    for task in hammer:
        task.cancel()
    await asyncio.gather(*hammer, return_exceptions=True)


async def test_a_dead_workers_reservations_expire(limiters: Factory, clock: FakeClock) -> None:
    dead = limiters(reservation_ttl=30.0)
    other = limiters(reservation_ttl=30.0)
    # Before the budget is known: the dead worker held the probe.
    await dead.acquire()
    waiting = asyncio.create_task(other.acquire())
    await advance(clock, 29, other)
    assert not waiting.done()
    await advance(clock, 1.5, other)
    probe = await within(30, waiting)
    await other.record(probe, RateLimit(3, 2), 200)
    clock.now += W  # our own tokens are back
    # Now it takes every token and dies: they count as spent at expiry, back a window later.
    for _ in range(3):
        await dead.acquire()
    waiting = asyncio.create_task(other.acquire())
    await advance(clock, 30 + W - 0.5, other)
    assert not waiting.done()
    await advance(clock, 1, other)
    await within(30, waiting)


async def test_keys_expire_after_a_window(limiters: Factory, redis_url: str) -> None:
    a = limiters(window=2.0, reservation_ttl=3.0)
    await learn(a, 5)
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        ttl = await r.pttl(a.redis_key)
        assert 0 < ttl <= 6000
        assert await r.pttl(a.redis_key + ":done") > 0
    finally:
        await r.aclose()


# --- identity, errors, optional dependency -----------------------------------------------


async def test_key_from_identity_is_a_fingerprint(redis_url: str) -> None:
    import redis.asyncio

    secret = "tok_" + uuid.uuid4().hex
    limiter = RedisRateLimiter(redis_url, window=1.0)
    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        with pytest.raises(InvalidRequest, match="identity"):
            await limiter.acquire()
        limiter.bind_identity(secret)
        limiter.bind_identity(secret)  # the same identity again is fine
        with pytest.raises(InvalidRequest):
            limiter.bind_identity("another-token")
        assert limiter.key == fingerprint(secret)
        await limiter.record(await limiter.acquire(), RateLimit(5, 4), 200)
        names = [k.decode() async for k in r.scan_iter("evenergy:ratelimit:*")]
        assert any(limiter.key in n for n in names)
        assert not any(secret in n for n in names)
        values = await r.hgetall(limiter.redis_key)
        assert not any(secret.encode() in v for v in values.values())
        explicit = RedisRateLimiter(r, key="fleet")
        explicit.bind_identity(secret)
        assert explicit.key == "fleet"
    finally:
        await limiter.aclose()
        await r.aclose()


async def test_client_binds_its_identity(redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url)
    try:
        ev.Client(token="tok-abc", base_url="http://127.0.0.1:1/v2", limiter=limiter)
        if limiter.key is None:
            pytest.skip("Client does not call bind_identity yet")
        assert limiter.key == fingerprint("tok-abc")
    finally:
        await limiter.aclose()


async def test_max_wait_counts_the_waiters_ahead_and_cancelled_waiters_leave(
    limiters: Factory,
) -> None:
    a, b = limiters(), limiters()
    await learn(a, 2)
    await a.acquire()
    waiting = asyncio.create_task(a.acquire())  # behind the full window
    await settle()
    with pytest.raises(RuntimeError):
        a.configure(window=2.0)  # not while in use
    with pytest.raises(RateLimited) as refused:
        await a.acquire(max_wait=50)  # second in line: the in-flight token, a window away
    assert refused.value.retry_after == pytest.approx(W)
    assert (await b.snapshot()).waiting_tasks == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await settle()
    snap = await b.snapshot()
    assert (snap.waiting_processes, snap.waiting_tasks) == (0, 0)


async def test_arguments_are_checked(redis_url: str) -> None:
    with pytest.raises(ev.InvalidRequest, match=r"redis\.asyncio\.Redis"):
        RedisRateLimiter(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        RedisRateLimiter(redis_url, key="k", window=0)
    with pytest.raises(InvalidRequest):
        RedisRateLimiter(redis_url, key="a{b}")
    async with RedisRateLimiter("redis://:hunter2@127.0.0.1:1/0", key="k") as hidden:
        assert "hunter2" not in repr(hidden)
        with pytest.raises(RateLimiterUnavailable) as failed:
            await hidden.ping()
        assert "hunter2" not in str(failed.value)
    limiter = RedisRateLimiter(redis_url)
    with pytest.raises(InvalidRequest):
        limiter.bind_identity("")
    limiter.configure(window=2.5)
    assert limiter.window == 2.5
    async with limiter:
        pass
    with pytest.raises(RateLimiterUnavailable, match="closed"):
        limiter.bind_identity("tok")
        await limiter.acquire()


@contextlib.asynccontextmanager
async def broken_redis(*, silent: bool) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server where a Redis should be: it hangs up at once, or (`silent`) accepts and
    never answers.  Yields its URL and a one-item list counting the connections made."""
    connections = [0]
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        if silent:
            held.append(writer)
        else:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0", connections
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("silent", [False, True], ids=["hangs-up", "silent"])
async def test_a_dead_redis_fails_once_without_retrying(silent: bool) -> None:
    async with broken_redis(silent=silent) as (url, connections):
        limiter = RedisRateLimiter(url, key="k", connect_timeout=0.3, socket_timeout=0.3)
        with pytest.raises(RateLimiterUnavailable, match="unavailable"):
            await within(30, limiter.acquire())
        # one connection: neither redis-py (connection and command retries) nor the
        # limiter tried again, so the failure comes within one timeout
        assert connections[0] == 1
        await limiter.aclose()


async def test_a_client_on_a_dead_redis_fails_once_and_sends_nothing() -> None:
    assert issubclass(RateLimiterUnavailable, TransportError)
    async with broken_redis(silent=False) as (url, connections):
        limiter = RedisRateLimiter(url, key="k", connect_timeout=0.3, socket_timeout=0.3)
        async with ev.Client(
            token="t", base_url="http://127.0.0.1:1/v2", limiter=limiter, max_retries=3
        ) as client:
            with pytest.raises(RateLimiterUnavailable, match="unavailable"):
                await within(30, client.users.get("me"))
        assert connections[0] == 1  # the client did not retry it either
        await limiter.aclose()


async def test_waiters_fail_promptly_when_redis_goes_away(redis_url: str) -> None:
    with redis_server() as url:  # a server of its own to stop (redis_url: skip without one)
        a = RedisRateLimiter(url, key="k", poll_interval=LONG_POLL)
        b = RedisRateLimiter(url, key="k", poll_interval=LONG_POLL)
        probe = await a.acquire()
        waiting = asyncio.create_task(b.acquire())
        await settle()
        assert not waiting.done()
    # the server is gone: the waiter is told (its poll is 600 s)
    with pytest.raises(RateLimiterUnavailable):
        await within(30, waiting)
    await a.record(probe, RateLimit(5, 4), 200)  # a response is never failed for this
    for limiter in (a, b):
        await limiter.aclose()


def test_the_package_imports_without_redis() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import evenergy_async, evenergy_async._redis as r\n"
        "try:\n"
        "    r.RedisRateLimiter('redis://localhost', key='k')\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "evenergy-async[redis]" in out.stdout


# --- a fleet of clients against the fake API -----------------------------------------------


@contextlib.asynccontextmanager
async def fake_api(**kw: object) -> AsyncIterator[object]:
    testing = pytest.importorskip("evenergy_async.testing")
    try:
        fake_cls = testing.FakeEvEnergy
    except (AttributeError, ImportError):
        pytest.skip("FakeEvEnergy is not available")
    async with fake_cls(users=50, **kw) as fake:
        yield fake


async def run_fleet(
    fake: object,
    limiters: Factory,
    workers: int,
    tasks: int,
    calls: int,
    window: float,
    after: Callable[[int], None] = lambda done: None,
) -> tuple[int, list[BaseException]]:
    """`workers` clients sharing one Redis budget make `calls` calls in all from `tasks` tasks
    each (in real time: the fake API counts on it); `after(done)` runs after each call."""
    clients = [
        ev.Client(
            token=fake.token,  # type: ignore[attr-defined]
            base_url=fake.base_url,  # type: ignore[attr-defined]
            limiter=limiters(
                key="t-" + fake.base_url,  # type: ignore[attr-defined]
                window=window,
                clock=None,
                poll_interval=5.0,
            ),
            rate_limit_window=window,
        )
        for _ in range(workers)
    ]
    claimed = done = 0
    errors: list[BaseException] = []

    async def task(client: ev.Client, i: int) -> None:
        nonlocal claimed, done
        while claimed < calls:
            claimed += 1  # before the call waits for budget: exactly `calls` calls are made
            try:
                user = await client.users.get(fake.user_id(i % 50))  # type: ignore[attr-defined]
            except ev.EvEnergyError as exc:
                errors.append(exc)
                return
            assert user.id
            done += 1
            after(done)

    try:
        await within(30, asyncio.gather(*(task(c, i) for c in clients for i in range(tasks))))
    finally:
        for c in clients:
            await c.close()
    return done, errors


async def test_clients_of_a_fleet_spend_one_budget_without_429(limiters: Factory) -> None:
    async with fake_api(rate_limit=20, rate_window=0.3) as fake:
        # a budget and a half: spent, given back and spent again, without a 429
        done, errors = await run_fleet(fake, limiters, workers=2, tasks=6, calls=30, window=0.3)
        assert errors == []
        assert fake.stats.rate_limited == 0  # type: ignore[attr-defined]
        assert done == 30


async def test_one_429_pauses_the_whole_fleet(limiters: Factory) -> None:
    async with fake_api(rate_limit=20, rate_window=0.3) as fake:
        fake.consume(20)  # type: ignore[attr-defined]  # another consumer spent everything
        done, errors = await run_fleet(fake, limiters, workers=2, tasks=4, calls=8, window=0.3)
        assert errors == []
        # the probe got the only 429; every other task waited for Retry-After
        assert fake.stats.rate_limited == 1  # type: ignore[attr-defined]
        assert done == 8


async def test_an_outside_consumer_mid_run_fails_no_call(limiters: Factory) -> None:
    async with fake_api(rate_limit=20, rate_window=0.3) as fake:
        spent: list[int] = []

        def outsider(done: int) -> None:  # spends 8 of the budget once 10 calls are done
            if done == 10:
                spent.append(fake.consume(8))  # type: ignore[attr-defined]

        done, errors = await run_fleet(
            fake, limiters, workers=2, tasks=4, calls=30, window=0.3, after=outsider
        )
        assert spent and spent[0] > 0  # the budget was shared while the calls ran
        assert errors == []
        assert fake.stats.rate_limited <= 8  # type: ignore[attr-defined]
        assert done == 30


def test_the_scripts_ship_as_package_data() -> None:
    """The scripts load as package resources (hatch ships every file of the package)."""
    import importlib.resources

    lua = importlib.resources.files("evenergy_async").joinpath("lua")
    names = {"prelude.lua", "acquire.lua", "record.lua", "release.lua", "leave.lua", "snapshot.lua"}
    assert names <= {p.name for p in lua.iterdir()}
