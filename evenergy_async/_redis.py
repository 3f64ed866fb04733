"""`RedisRateLimiter`: one rate-limit budget for a whole fleet of workers, kept in Redis.

The rules are those of `WindowState` (see `_ratelimit`: the server counts each request at
its arrival for `window` seconds; ``X-RateLimit-Limit`` / ``X-RateLimit-Remaining`` tell the
budget and what is left; a 429 carries ``Retry-After``), applied to the requests of every
process and task that uses the same key, as if they were one client:

- the request log of the rolling window: tokens reserved by requests in flight, and requests
  answered, whose tokens return at response time + window;
- the latest ``limit`` and what the freshest ``remaining`` says the budget's other consumers
  spend (counted for one window after it was seen, exactly as `WindowState` does);
- ``blocked_until`` from any worker's 429: one refusal pauses the whole fleet;
- probes: until a response has told the budget, and again after a 429, one request at a
  time for the whole fleet; when only the estimate of others' spending stands in the way,
  one request every window / 20 asks the server again;
- the bounds of `_ratelimit`: a 429 pauses for at least 1 s, doubled by consecutive 429s up
  to 60 s, and at most a window; a limit below 1 or above 10**9 is ignored; a probe that got
  no response fails every caller of every process that was waiting behind it
  (`TransportError`, not sent); each waiter's `max_wait` is checked whenever the budget
  changes (a 429 anywhere in the fleet wakes the waiters to look) and ends at its bound on
  the waiter's own clock.

Every decision (acquire, record, release) is one Lua script, so it is atomic.  The scripts live
in ``evenergy_async/lua/`` (package data): ``prelude.lua`` holds the rules, one function per
`WindowState` method, and the tests drive both through the same random sequences and compare
grants, waits and pauses.  Their clock is Redis ``TIME``: the hosts' clocks do not matter, only
durations measured on one clock do (``clock=`` replaces it, for tests and simulations).

A dead Redis: every call raises `RateLimiterUnavailable` after one attempt (no retries by
redis-py or by the limiter), so within `connect_timeout` when Redis cannot be reached and
`socket_timeout` when it stops answering.

A worker that dies with requests in flight loses nothing for the others: a reservation
expires `reservation_ttl` seconds after it was granted and then counts as a request answered
at its expiry (so its token returns one window later).  Keep `reservation_ttl` above the
client's request `timeout`.

Waiting: a refused worker is told how long until a token may return (the script computes it)
and sleeps that long; `record`/`release` publish on a channel when they free a token, so
waiters wake at once, and a waiter never sleeps longer than `poll_interval` (a safety net
for a lost message, never a tight loop).  No starvation across processes: a refused process
joins a queue in Redis (one entry per process, with how many tokens it wants and a deadline
it must renew); free tokens go to older entries first, and a process that has been served
goes to the back.  An entry whose process stopped renewing it (it died) is dropped.  Within a
process, waiters are served first come, first served.

Redis layout, all under ``{prefix}:{<key>}`` (the braces make it one Redis Cluster slot):
the hash itself (``limit``, ``need_probe``, ``blocked_until``, ``others``, ``others_until``,
``observed``, ``observed_at``, ``seq``, ``window``) and the sorted sets ``:inflight``
(ticket by ticket), ``:expiry`` (ticket by reservation expiry), ``:done`` (ticket by response
time), ``:waitq`` (process by queue position), ``:waitdl`` (process by deadline) plus the hash
``:waitn`` (tokens each process wants); wake-ups go out on the channel ``:wake``.  Every
script sets the keys to expire one window plus `reservation_ttl` after the last use (longer
while a 429 pause lasts): an abandoned budget vanishes.

redis-py is optional (``pip install 'evenergy-async[redis]'``): this module imports without
it, and `RedisRateLimiter` raises ImportError at construction when it is missing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import importlib.resources
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from ._ratelimit import LimiterStats, abandoned, clean_wait, probe_failed, too_long
from ._seconds import check_seconds
from .errors import InvalidRequest, RateLimiterUnavailable
from .models import RateLimit

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["BudgetSnapshot", "RateLimiterUnavailable", "RedisRateLimiter", "fingerprint"]

log = logging.getLogger("evenergy_async")

Ticket = int

DEFAULT_PREFIX = "evenergy:ratelimit"
# How long past its planned wake-up a waiting process keeps its place in the queue.
WAITER_GRACE = 1.0
# Local waiters whose estimated wait each acquire reports (the rest: their deadline only).
MAX_ESTIMATES = 100


def fingerprint(secret: str) -> str:
    """The budget key derived from a client's identity: a sha256 prefix, never the secret."""
    digest = hashlib.sha256(b"evenergy-async rate limit\x00" + secret.encode()).hexdigest()
    return digest[:24]


@attrs.frozen
class BudgetSnapshot:
    """The shared budget as Redis holds it (`RedisRateLimiter.snapshot`)."""

    key: str
    window: float
    limit: int | None  # None: not known yet, or the server sends no limit
    need_probe: bool  # the next request goes alone (a new budget, or after a 429)
    used: int  # requests the server may hold in its window now (ours + others')
    in_flight: int
    completed: int  # answered requests still inside the window
    others: int  # the estimate of other consumers' requests
    blocked_for: float  # seconds left of a 429 pause
    waiting_processes: int
    waiting_tasks: int


# --- the scripts -------------------------------------------------------------------------
#
# In evenergy_async/lua/ (package data): prelude.lua holds the window rules (one function per
# `WindowState` method), each script file one decision.


def _script(name: str) -> str:
    """prelude.lua followed by `name`.lua, as shipped in the package."""
    lua = importlib.resources.files(__package__ or "evenergy_async").joinpath("lua")
    return lua.joinpath("prelude.lua").read_text("utf-8") + lua.joinpath(name).read_text("utf-8")


@attrs.frozen
class _Grant:
    tickets: list[Ticket]
    wait: float | None  # seconds until a token may be free; None: until told
    estimate: float | None  # when refused over `max_wait` (or asked for with want=0)
    queued: bool  # this process holds a place in the fleet's queue
    fail_seq: int  # probes of the budget that got no response, ever
    estimates: list[float]  # the estimated wait of each local waiter left waiting, in order


class _Waiter:
    __slots__ = ("deadline", "fail_seq", "future", "max_wait")

    def __init__(
        self, future: asyncio.Future[Ticket], deadline: float, max_wait: float, fail_seq: int
    ) -> None:
        self.future = future
        self.deadline = deadline  # loop time; inf: no bound
        self.max_wait = max_wait
        self.fail_seq = fail_seq  # the budget's fail_seq when it started waiting


def _num(value: Any) -> float | None:
    if value is None or value in (b"", ""):
        return None
    return float(value)


def _import_redis() -> Any:
    try:
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess
        raise ImportError(
            "RedisRateLimiter needs redis-py: pip install 'evenergy-async[redis]'"
        ) from exc
    return redis


class RedisRateLimiter:
    """A rate limiter whose budget lives in Redis, shared by every client that uses the key.

    ``RedisRateLimiter("redis://host:6379/0", key="fleet")`` or
    ``RedisRateLimiter(redis.asyncio.Redis(...), key="fleet")``.  With ``key=None`` the key is
    a fingerprint of the client's identity, which `ev.Client` binds (`bind_identity`).

    `window` is set by the client from its `rate_limit_window`; `reservation_ttl` is how long a
    request may stay unanswered before its token is treated as spent at that moment (keep it
    above the client's timeout); `poll_interval` is the longest a waiter sleeps without looking
    at Redis.  `clock` (tests and simulations) replaces Redis ``TIME`` as the scripts' clock:
    every limiter of a budget must then share it.  Use it in one event loop; `await
    limiter.aclose()` (or ``async with``) at the end closes the connections it made.
    """

    def __init__(
        self,
        url_or_client: str | Redis,
        key: str | None = None,
        *,
        window: float = 3600.0,
        reservation_ttl: float = 60.0,
        poll_interval: float = 5.0,
        connect_timeout: float = 2.0,
        socket_timeout: float = 2.0,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = None,
    ) -> None:
        redis = _import_redis()
        check_seconds(window, "window")
        check_seconds(reservation_ttl, "reservation_ttl")
        check_seconds(poll_interval, "poll_interval")
        check_seconds(connect_timeout, "connect_timeout")
        check_seconds(socket_timeout, "socket_timeout")
        if key is not None:
            _check_key(key)
        self._redis: Redis
        if isinstance(url_or_client, str):
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._redis = redis.asyncio.Redis.from_url(
                url_or_client,
                socket_connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
                # no retries: an unreachable Redis is reported once, after `connect_timeout`
                # at most (redis-py would otherwise retry both the connection and the command)
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_redis = True
            self._where = _redact(url_or_client)
        elif isinstance(url_or_client, redis.asyncio.Redis):
            self._redis = url_or_client
            self._owns_redis = False
            self._where = "the given Redis client"
        else:
            raise InvalidRequest(
                "url_or_client",
                "expected a redis:// URL or a redis.asyncio.Redis client, "
                f"not {type(url_or_client).__name__}",
            )
        self.window = float(window)
        self.stats = LimiterStats()
        self.reservation_ttl = float(reservation_ttl)
        self.poll_interval = float(poll_interval)
        self._connect_timeout = float(connect_timeout)
        self._prefix = prefix
        self._explicit_key = key is not None
        self._key: str | None = key
        self._keys: list[str] = []
        self._channel = ""
        if key is not None:
            self._set_keys(key)
        self._id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._clock = clock
        register = self._redis.register_script
        self._acquire_script: AsyncScript = register(_script("acquire.lua"))
        self._record_script: AsyncScript = register(_script("record.lua"))
        self._release_script: AsyncScript = register(_script("release.lua"))
        self._leave_script: AsyncScript = register(_script("leave.lua"))
        self._snapshot_script: AsyncScript = register(_script("snapshot.lua"))
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._fail_seq = 0  # the budget's count of failed probes, as last seen
        self._pump_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._subscribed: asyncio.Event | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._outstanding = 0
        self._closed = False

    # --- identity and configuration ---

    @property
    def key(self) -> str | None:
        """The budget's key (a fingerprint when derived from the client's identity)."""
        return self._key

    @property
    def redis_key(self) -> str:
        """The Redis hash holding the budget."""
        return self._keys[0] if self._keys else ""

    def bind_identity(self, secret: str) -> None:
        """Derive the key from the client's identity (its client id or token), unless a key
        was given.  Only a fingerprint is kept; the secret never reaches Redis."""
        if self._explicit_key:
            return
        if not isinstance(secret, str) or not secret:
            raise InvalidRequest("limiter", "bind_identity needs a non-empty string")
        key = fingerprint(secret)
        if self._key is not None and self._key != key:
            raise InvalidRequest(
                "limiter",
                "this RedisRateLimiter is already bound to another client identity; "
                "give each identity its own limiter, or pass key= to share one budget on purpose",
            )
        self._set_keys(key)

    def configure(self, *, window: float) -> None:
        check_seconds(window, "rate_limit_window")
        if float(window) != self.window:
            if self._waiters or self._outstanding:
                raise RuntimeError("cannot change the window of a limiter in use")
            self.window = float(window)

    def _set_keys(self, key: str) -> None:
        self._key = key
        base = f"{self._prefix}:{{{key}}}"
        suffixes = ("", ":inflight", ":expiry", ":done", ":waitq", ":waitdl", ":waitn")
        self._keys = [base + s for s in suffixes]
        self._channel = base + ":wake"

    def _args(self, *extra: str) -> list[str]:
        now = "" if self._clock is None else repr(float(self._clock()))
        return [repr(self.window), self._channel, repr(self.reservation_ttl), self._id, now, *extra]

    def _require_key(self) -> None:
        if self._key is None:
            raise InvalidRequest(
                "limiter",
                "RedisRateLimiter(key=None) needs the client's identity: pass key=..., "
                "or use it through ev.Client, which binds it",
            )
        if self._closed:
            raise RateLimiterUnavailable("the RedisRateLimiter is closed")

    def _unavailable(self, exc: BaseException) -> RateLimiterUnavailable:
        err = RateLimiterUnavailable(
            f"rate limiter Redis at {self._where} unavailable: {type(exc).__name__}: {exc}"
        )
        err.__cause__ = exc
        return err

    async def _eval(self, script: AsyncScript, *args: str) -> Any:
        redis = _import_redis()
        try:
            return await script(keys=self._keys, args=self._args(*args))
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    # --- the protocol ---

    async def acquire(self, max_wait: float | None = None) -> Ticket:
        self._require_key()
        loop = asyncio.get_running_loop()
        start = loop.time()
        if not self._waiters:
            grant = await self._call_acquire(1, 0, max_wait)
            if grant.tickets:
                self.stats.granted += 1
                self._outstanding += 1
                return grant.tickets[0]
            if grant.estimate is not None:  # refused over max_wait, without joining the queue
                raise too_long(grant.estimate, max_wait, "the shared budget's next token")
        elif max_wait is not None:
            grant = await self._call_acquire(0, len(self._waiters), max_wait)
            estimate = grant.estimate if grant.estimate is not None else math.inf
            if estimate > max_wait or max_wait <= 0:
                raise too_long(estimate, max_wait, "the shared budget's next token")
        log.debug("rate limit (shared %s): waiting behind %d", self._key, len(self._waiters))
        future: asyncio.Future[Ticket] = loop.create_future()
        bound = math.inf if max_wait is None else float(max_wait)
        self._waiters.append(_Waiter(future, start + bound, bound, self._fail_seq))
        self.stats.waits += 1
        self._start_pump()
        try:
            ticket = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as we were cancelled
                self._outstanding += 1
                self.release(future.result(), sent=False)
            else:
                future.cancel()
            self._poke()
            raise
        finally:
            self.stats.wait_seconds += loop.time() - start
        self.stats.granted += 1
        self._outstanding += 1
        return ticket

    async def record(self, ticket: Ticket, rate: RateLimit | None, status: int) -> None:
        self._outstanding = max(0, self._outstanding - 1)
        if status == 429:
            self.stats.throttled += 1
        limit = remaining = retry_after = ""
        if rate is not None:
            limit = "" if rate.limit is None else str(rate.limit)
            remaining = "" if rate.remaining is None else str(rate.remaining)
            wait = clean_wait(rate.retry_after)
            # finite for Lua's tonumber; the script caps the pause at a window anyway
            retry_after = "" if wait is None else repr(min(wait, 1e15))
        try:
            woke = await self._eval(
                self._record_script, str(ticket), limit, remaining, retry_after, str(status)
            )
        except RateLimiterUnavailable as exc:
            # The response arrived; the reservation expires by itself.  The next acquire
            # reports Redis being down.
            log.warning("rate limit: could not record a response: %s", exc)
            return
        if status == 429:
            log.debug("rate limit (shared %s): 429, the fleet pauses", self._key)
        if woke:
            self._poke()

    def release(self, ticket: Ticket, *, sent: bool) -> None:
        self._outstanding = max(0, self._outstanding - 1)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the reservation expires by itself
            return
        task = loop.create_task(self._release(ticket, sent, not abandoned()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, ticket: Ticket, sent: bool, failed: bool = True) -> None:
        try:
            woke, probe_failed_, fail_seq = await self._eval(
                self._release_script, str(ticket), "1" if sent else "0", "1" if failed else "0"
            )
        except RateLimiterUnavailable as exc:
            log.warning("rate limit: could not release a token: %s", exc)
            return
        if int(probe_failed_):
            log.debug("rate limit (shared %s): the probe got no response", self._key)
            self._fail_behind_probe(int(fail_seq))
        if woke:
            self._poke()

    # --- monitoring and lifecycle ---

    async def snapshot(self) -> BudgetSnapshot:
        """The shared budget now: how much of the window is used, the limit, any 429 pause."""
        self._require_key()
        r = await self._eval(self._snapshot_script)
        limit = _num(r[1])
        return BudgetSnapshot(
            key=self._key or "",
            window=float(r[0]),
            limit=None if limit is None else int(limit),
            need_probe=bool(int(r[2])),
            used=int(r[3]),
            in_flight=int(r[4]),
            completed=int(r[5]),
            others=int(r[6]),
            blocked_for=float(r[7]),
            waiting_processes=int(r[8]),
            waiting_tasks=int(r[9]),
        )

    async def ping(self) -> None:
        """Check that Redis answers; RateLimiterUnavailable if not."""
        redis = _import_redis()
        try:
            await self._redis.ping()
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def aclose(self) -> None:
        """Finish pending releases, stop listening, close the connections this limiter made."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        self._closed = True
        for task in (self._pump_task, self._listen_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._pump_task = self._listen_task = None
        if self._owns_redis:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"RedisRateLimiter({self._where}, key={self._key!r}, window={self.window:g})"

    # --- waiting ---

    async def _call_acquire(
        self, want: int, ahead: int, max_wait: float | None, estimates: int = 0
    ) -> _Grant:
        r = await self._eval(
            self._acquire_script,
            str(want),
            str(ahead),
            "" if max_wait is None else repr(float(max_wait)),
            repr(self.poll_interval),
            repr(WAITER_GRACE),
            str(estimates),
        )
        k = int(r[5])
        grant = _Grant(
            tickets=[int(t) for t in r[6 + k :]],
            wait=_num(r[1]),
            estimate=_num(r[2]),
            queued=bool(int(r[3])),
            fail_seq=int(r[4]),
            estimates=[float(e) for e in r[6 : 6 + k]],
        )
        self._fail_seq = max(self._fail_seq, grant.fail_seq)
        return grant

    def _fail_behind_probe(self, fail_seq: int) -> None:
        """A probe of the budget got no response: fail the waiters that were waiting then."""
        self._fail_seq = max(self._fail_seq, fail_seq)
        for waiter in self._waiters:
            if waiter.fail_seq < fail_seq and not waiter.future.done():
                waiter.future.set_exception(probe_failed())
        self._prune()

    def _check_bounds(self, estimates: list[float]) -> float:
        """End the waits over their bound (`estimates`: the wait of each waiter in order, as
        far as known); the earliest deadline left (inf: none)."""
        now = asyncio.get_running_loop().time()
        ahead = 0
        first = math.inf
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if waiter.deadline < math.inf:
                estimate = estimates[ahead] if ahead < len(estimates) else 0.0
                if now >= waiter.deadline or now + estimate > waiter.deadline:
                    waiter.future.set_exception(
                        too_long(estimate, waiter.max_wait, "the shared budget's next token")
                    )
                    continue
                first = min(first, waiter.deadline)
            ahead += 1
        self._prune()
        return first

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _start_pump(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    def _prune(self) -> None:
        waiters = self._waiters
        while waiters and waiters[0].future.done():
            waiters.popleft()
        if any(w.future.done() for w in waiters):
            self._waiters = collections.deque(w for w in waiters if not w.future.done())

    async def _pump(self) -> None:
        """Get tokens for this process's waiters, first come first served, one call at a time."""
        assert self._wake is not None
        wake = self._wake
        queued = True  # the refused acquire that started us joined the fleet's queue
        try:
            await self._listening()
            while True:
                self._prune()
                if not self._waiters:
                    if queued:
                        await self._eval(self._leave_script)
                        queued = False
                    self._prune()
                    if not self._waiters:
                        return
                wake.clear()
                grant = await self._call_acquire(
                    len(self._waiters), 0, None, min(len(self._waiters), MAX_ESTIMATES)
                )
                queued = grant.queued
                self._fail_behind_probe(grant.fail_seq)
                for ticket in grant.tickets:
                    self._prune()
                    if self._waiters:
                        self._waiters.popleft().future.set_result(ticket)
                    else:  # its waiter was cancelled (or failed) meanwhile
                        self._outstanding += 1
                        self.release(ticket, sent=False)
                first_deadline = self._check_bounds(grant.estimates)
                if not self._waiters or not grant.queued:
                    continue
                sleep = self.poll_interval if grant.wait is None else grant.wait
                until_bound = first_deadline - asyncio.get_running_loop().time()
                sleep = min(sleep, self.poll_interval, until_bound) + 0.001
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), sleep)
        except RateLimiterUnavailable as exc:
            self._fail_waiters(exc)
        except asyncio.CancelledError:
            self._fail_waiters(RateLimiterUnavailable("the RedisRateLimiter was closed"))
            raise
        except Exception as exc:  # a bug: never leave waiters hanging
            log.exception("rate limit: the shared limiter failed")
            self._fail_waiters(exc)

    def _fail_waiters(self, exc: BaseException) -> None:
        while self._waiters:
            future = self._waiters.popleft().future
            if not future.done():
                future.set_exception(exc)

    async def _listening(self) -> None:
        """Subscribe to the budget's wake-up channel (once), and wait for the subscription."""
        if self._subscribed is None:
            self._subscribed = asyncio.Event()
        if self._listen_task is None or self._listen_task.done():
            self._listen_task = asyncio.get_running_loop().create_task(self._listen())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), self._connect_timeout + 0.5)

    async def _listen(self) -> None:
        redis = _import_redis()
        assert self._subscribed is not None
        me = self._id.encode()
        delay = 0.05
        while True:
            pubsub: PubSub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is None:
                        continue
                    kind = msg.get("type")
                    if kind in ("subscribe", b"subscribe"):
                        self._subscribed.set()
                        delay = 0.05
                    elif kind in ("message", b"message"):
                        data = msg.get("data")
                        if isinstance(data, str):
                            data = data.encode()
                        if data != me:
                            self._poke()
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                # Waiters fall back to their computed sleeps (at most poll_interval).
                log.debug("rate limit: wake-up channel lost (%s); resubscribing", exc)
                self._subscribed.clear()
                self._poke()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.poll_interval)


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key or any(c in key for c in "{}\r\n "):
        raise InvalidRequest(
            "key", f"expected a non-empty string without braces or spaces: {key!r}"
        )


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.rsplit("@", 1)[-1]
            user = f"{parts.username}:***@" if parts.username else ":***@"
            return urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return "<unparsable URL>"
    return url
