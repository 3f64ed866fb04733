"""RedisRateLimiter against a real redis-server: one budget shared by many limiters.

Each limiter instance stands for a worker process (its own connections, its own id in the
fleet's queue).  Windows are short (0.3 to 1 s) because the clock is Redis's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from redis_server import redis_server, redis_server_binary

import evenergy_async as ev
from evenergy_async._redis import (
    RateLimiterUnavailable,
    RedisRateLimiter,
    fingerprint,
)
from evenergy_async.errors import InvalidRequest, RateLimited, TransportError
from evenergy_async.models import RateLimit

pytest.importorskip("redis", reason="redis-py is not installed (pip install evenergy-async[redis])")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    with redis_server() as url:
        yield url


Factory = Callable[..., RedisRateLimiter]
T = TypeVar("T")


@pytest.fixture
async def limiters(redis_url: str) -> AsyncIterator[Factory]:
    """Make limiters on the test server (a fresh key per test unless given); close them all."""
    made: list[RedisRateLimiter] = []
    default_key = uuid.uuid4().hex

    def make(**kw: object) -> RedisRateLimiter:
        kw.setdefault("key", default_key)
        kw.setdefault("window", 1.0)
        kw.setdefault("poll_interval", 5.0)  # waking early proves the pub/sub path
        limiter = RedisRateLimiter(redis_url, **kw)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def within(seconds: float, aw: Awaitable[T]) -> T:
    """Await with a deadline, so a broken limiter fails the test instead of hanging it."""
    return await asyncio.wait_for(aw, seconds)


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
    await asyncio.sleep(0.3)
    assert not waiting.done(), "a second request went out before the budget was known"
    with pytest.raises(asyncio.TimeoutError):  # a cancelled waiter leaves the others be
        await asyncio.wait_for(b.acquire(), 0.05)
    start = time.monotonic()
    await a.record(probe, RateLimit(10, 9), 200)
    ticket = await asyncio.wait_for(waiting, 1.0)
    assert time.monotonic() - start < 0.2  # woken by pub/sub, not by its 5 s poll
    assert ticket > probe
    snap = await a.snapshot()
    assert (snap.limit, snap.need_probe, snap.in_flight, snap.completed) == (10, False, 1, 1)


async def test_exactly_limit_per_window_and_tokens_back_at_response_plus_window(
    limiters: Factory,
) -> None:
    a, b = limiters(), limiters()
    probe = await a.acquire()
    await asyncio.sleep(0.2)  # a slow response: its token returns a window after it arrived
    before = time.monotonic()
    await a.record(probe, RateLimit(4, 3), 200)
    after = time.monotonic()
    tickets = [await a.acquire(), await b.acquire(), await b.acquire()]
    assert (await a.snapshot()).used == 4
    with pytest.raises(RateLimited) as refused:
        await b.acquire(max_wait=0.5)
    assert refused.value.retry_after is not None
    assert 0.7 < refused.value.retry_after <= 1.0
    for t in tickets:
        await a.record(t, RateLimit(4, 0), 200)
    fifth = await within(2, b.acquire())
    granted = time.monotonic()
    assert granted - before >= 0.99  # not at grant + window (0.2 s earlier)
    assert granted - after < 1.15
    assert fifth > max(tickets)


async def test_release_unsent_returns_the_token_sent_counts_a_window(limiters: Factory) -> None:
    a, b = limiters(), limiters()
    await learn(a, 2)
    t1 = await a.acquire()
    waiting = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    start = time.monotonic()
    a.release(t1, sent=False)  # never sent: the token is simply back, and the waiter told
    t2 = await asyncio.wait_for(waiting, 0.5)
    assert time.monotonic() - start < 0.2
    a.release(t2, sent=True)  # may have reached the server: counts from now
    await asyncio.sleep(0.05)
    snap = await a.snapshot()
    assert (snap.in_flight, snap.completed) == (0, 2)


async def test_a_429_pauses_every_worker_of_the_budget(limiters: Factory) -> None:
    a, b = limiters(window=0.5), limiters(window=0.5)
    await learn(a, 100)
    t = await a.acquire()
    # Retry-After beyond the window: the pause, not the spent budget, is what holds b
    await a.record(t, RateLimit(100, 0, retry_after=0.9), 429)
    assert a.stats.throttled == 1
    assert (await b.snapshot()).blocked_for > 0.8
    with pytest.raises(RateLimited) as refused:
        await b.acquire(max_wait=0.2)
    assert refused.value.retry_after is not None and refused.value.retry_after > 0.8
    start = time.monotonic()
    probe = await within(2, b.acquire())
    assert time.monotonic() - start > 0.8
    snap = await b.snapshot()
    assert (snap.blocked_for, snap.need_probe) == (0.0, True)
    with pytest.raises(asyncio.TimeoutError):  # after a 429 the fleet sends one request
        await asyncio.wait_for(a.acquire(), 0.1)
    await b.record(probe, RateLimit(100, 97), 200)
    await within(0.2, a.acquire())


async def test_others_usage_is_learned_from_remaining_and_probed(limiters: Factory) -> None:
    a, b = limiters(window=0.6), limiters(window=0.6)
    await learn(a, 10, remaining=3)  # we sent 1, so others spent 6
    snap = await b.snapshot()
    assert (snap.others, snap.used) == (6, 7)
    sent = [await b.acquire(max_wait=0.0) for _ in range(3)]
    for t in sent:
        b.release(t, sent=True)  # no answer, nothing learned: they count a window
    # Full by the estimate of others alone, nothing in flight: one probe (every window / 20)
    # asks the server again.
    await asyncio.sleep(0.6 / 20)
    probe = await b.acquire(max_wait=0.0)
    with pytest.raises(RateLimited) as refused:  # one probe at a time
        await a.acquire(max_wait=0.0)
    assert refused.value.retry_after is not None and refused.value.retry_after > 0.3
    await b.record(probe, RateLimit(10, 5), 200)  # the others have stopped
    assert (await b.snapshot()).others == 0
    for _ in range(5):
        await a.acquire(max_wait=0.0)
    assert (await a.snapshot()).used == 10


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
    server = SlidingLog(limit=10, window=0.5)
    workers = [limiters(window=0.5), limiters(window=0.5)]
    stop = time.monotonic() + 1.6
    rng = random.Random(7)

    async def task(limiter: RedisRateLimiter) -> None:
        while time.monotonic() < stop:
            ticket = await limiter.acquire()
            status, remaining = server.arrive()
            await asyncio.sleep(rng.uniform(0.001, 0.02))  # the response travels back
            await limiter.record(ticket, RateLimit(10, remaining), status)

    await within(5, asyncio.gather(*(task(w) for w in workers for _ in range(6))))
    assert server.refused == 0
    # windows start near 0, 0.5, 1.0 and 1.5 s: about 40 requests fit
    assert server.accepted >= 30
    assert all(w.stats.granted > 5 for w in workers)


async def test_older_waiters_go_first_and_a_dead_waiter_is_dropped(
    limiters: Factory, redis_url: str
) -> None:
    a = limiters()
    await learn(a, 5)
    # A worker that queued for 3 tokens and died: its deadline passes in 0.5 s.
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        base = a.redis_key
        (now_s, now_us) = await r.time()
        now = now_s + now_us / 1e6
        await r.zadd(base + ":waitq", {"ghost": now - 1})
        await r.zadd(base + ":waitdl", {"ghost": now + 0.5})
        await r.hset(base + ":waitn", "ghost", 4)
    finally:
        await r.aclose()
    b = limiters()
    start = time.monotonic()
    await within(3, b.acquire())  # 4 tokens free, all claimed by the older waiter: wait for it
    waited = time.monotonic() - start
    assert 0.4 < waited < 1.0
    assert (await b.snapshot()).waiting_processes == 0


async def test_a_busy_worker_does_not_starve_a_quiet_one(limiters: Factory) -> None:
    busy, quiet = limiters(window=0.3), limiters(window=0.3)
    await learn(busy, 2)
    stop = asyncio.Event()

    async def hammer() -> None:
        while not stop.is_set():
            t = await busy.acquire()
            await busy.record(t, RateLimit(2, 0), 200)

    tasks = [asyncio.create_task(hammer()) for _ in range(12)]
    try:
        await asyncio.sleep(0.2)
        waits = []
        for _ in range(4):
            start = time.monotonic()
            t = await within(3, quiet.acquire())
            waits.append(time.monotonic() - start)
            await quiet.record(t, RateLimit(2, 0), 200)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # 12 busy tasks queue ahead; served in turn, the quiet one waits about a window, not 6
    assert max(waits) < 0.75, waits


async def test_a_dead_workers_reservations_expire(limiters: Factory) -> None:
    dead = limiters(window=0.5, reservation_ttl=0.3)
    other = limiters(window=0.5, reservation_ttl=0.3)
    # Before the budget is known: the dead worker held the probe.
    await dead.acquire()
    start = time.monotonic()
    probe = await within(3, other.acquire())
    assert 0.25 < time.monotonic() - start < 0.6
    await other.record(probe, RateLimit(3, 2), 200)
    await asyncio.sleep(0.55)  # our own token is back
    # Now it takes every token and dies: they count as spent at expiry, back a window later.
    for _ in range(3):
        await dead.acquire()
    start = time.monotonic()
    await within(3, other.acquire())
    assert 0.75 < time.monotonic() - start < 1.1


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
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError):
        a.configure(window=2.0)  # not while in use
    with pytest.raises(RateLimited) as refused:
        await a.acquire(max_wait=0.5)  # second in line: a whole turn of the window away
    assert refused.value.retry_after is not None and refused.value.retry_after > 0.9
    assert (await b.snapshot()).waiting_tasks == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.05)
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


async def test_redis_down_is_a_prompt_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", key="k")
    start = time.monotonic()
    with pytest.raises(RateLimiterUnavailable, match="unavailable"):
        await limiter.acquire()
    assert time.monotonic() - start < 2.0
    assert issubclass(RateLimiterUnavailable, TransportError)
    # Through a client: a TransportError, and no request is sent.
    async with ev.Client(
        token="t", base_url="http://127.0.0.1:1/v2", limiter=limiter, max_retries=0
    ) as client:
        with pytest.raises(TransportError, match="unavailable"):
            await client.users.get("me")
    await limiter.aclose()


async def test_a_silent_redis_times_out_instead_of_hanging() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts connections (backlog), never answers
        port = listener.getsockname()[1]
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", key="k", socket_timeout=0.3)
        start = time.monotonic()
        with pytest.raises(RateLimiterUnavailable):
            await limiter.acquire()
        assert time.monotonic() - start < 2.0
        await limiter.aclose()


async def test_waiters_fail_promptly_when_redis_goes_away(redis_url: str) -> None:
    with redis_server() as url:  # a server of its own to stop (redis_url: skip without one)
        a = RedisRateLimiter(url, key="k", poll_interval=5.0)
        b = RedisRateLimiter(url, key="k", poll_interval=5.0)
        probe = await a.acquire()
        waiting = asyncio.create_task(b.acquire())
        await asyncio.sleep(0.1)
        assert not waiting.done()
    # the server is gone: the waiter is told, well before its 5 s poll
    with pytest.raises(RateLimiterUnavailable):
        await asyncio.wait_for(waiting, 2.0)
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
    fake: object, limiters: Factory, workers: int, tasks: int, seconds: float, window: float
) -> tuple[int, list[BaseException]]:
    clients = [
        ev.Client(
            token=fake.token,  # type: ignore[attr-defined]
            base_url=fake.base_url,  # type: ignore[attr-defined]
            limiter=limiters(key="t-" + fake.base_url, window=window),  # type: ignore[attr-defined]
            rate_limit_window=window,
        )
        for _ in range(workers)
    ]
    stop = time.monotonic() + seconds
    done = 0
    errors: list[BaseException] = []

    async def task(client: ev.Client, i: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            try:
                user = await client.users.get(fake.user_id(i % 50))  # type: ignore[attr-defined]
            except ev.EvEnergyError as exc:
                errors.append(exc)
                return
            assert user.id
            done += 1

    try:
        await within(
            seconds + 10, asyncio.gather(*(task(c, i) for c in clients for i in range(tasks)))
        )
    finally:
        for c in clients:
            await c.close()
    return done, errors


async def test_clients_of_a_fleet_spend_one_budget_without_429(limiters: Factory) -> None:
    async with fake_api(rate_limit=20, rate_window=1.0) as fake:
        done, errors = await run_fleet(fake, limiters, workers=2, tasks=6, seconds=2.2, window=1.0)
        assert errors == []
        assert fake.stats.rate_limited == 0  # type: ignore[attr-defined]
        assert done >= 50  # windows at about 0, 1 and 2 s: 60 fit


async def test_one_429_pauses_the_whole_fleet(limiters: Factory) -> None:
    async with fake_api(rate_limit=20, rate_window=1.0) as fake:
        fake.consume(20)  # type: ignore[attr-defined]  # another consumer spent everything
        done, errors = await run_fleet(fake, limiters, workers=2, tasks=4, seconds=1.6, window=1.0)
        assert errors == []
        # the probe got the only 429; every other task waited for Retry-After
        assert fake.stats.rate_limited == 1  # type: ignore[attr-defined]
        assert done >= 20


async def test_an_outside_consumer_mid_run_fails_no_call(limiters: Factory) -> None:
    async with fake_api(rate_limit=20, rate_window=1.0) as fake:

        async def outsider() -> None:
            await asyncio.sleep(0.5)
            fake.consume(8)  # type: ignore[attr-defined]

        spend = asyncio.create_task(outsider())
        done, errors = await run_fleet(fake, limiters, workers=2, tasks=4, seconds=2.2, window=1.0)
        await spend
        assert errors == []
        assert fake.stats.rate_limited <= 8  # type: ignore[attr-defined]
        assert done >= 35
