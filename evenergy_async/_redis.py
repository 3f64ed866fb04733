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
  one request every window / 20 asks the server again.

Every decision (acquire, record, release) is one Lua script, so it is atomic, and its clock is
Redis ``TIME``: the hosts' clocks do not matter, only durations measured on one clock do.

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
import logging
import math
import os
import socket
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from ._ratelimit import LimiterStats
from ._seconds import check_seconds
from .errors import InvalidRequest, RateLimited, RateLimiterUnavailable
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
# KEYS: 1 hash, 2 inflight, 3 expiry, 4 done, 5 waitq, 6 waitdl, 7 waitn
# ARGV: 1 window, 2 channel, 3 reservation_ttl, 4 this process's id, then per script.

_PRELUDE = r"""
-- Redis < 5 needs this to write after TIME; later versions always replicate effects.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local H, INF, EXP, DONE, WQ, WD, WN = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local window = tonumber(ARGV[1])
local channel = ARGV[2]
local res_ttl = tonumber(ARGV[3])
local me = ARGV[4]
local probe_every = window / 20
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function fmt(x) return string.format('%.6f', x) end
local function opt(s) if s == nil or s == '' then return nil end return tonumber(s) end

local st = {}
do
  local v = redis.call('HMGET', H, 'limit', 'need_probe', 'blocked_until', 'others',
                       'others_until', 'observed', 'observed_at')
  st.limit = tonumber(v[1])
  st.need_probe = v[2] ~= '0'  -- no fresh view of the server's window (a new budget, a 429)
  st.blocked_until = tonumber(v[3]) or 0
  st.others = tonumber(v[4]) or 0
  st.others_until = tonumber(v[5]) or 0
  st.observed = tonumber(v[6]) or -1
  st.observed_at = tonumber(v[7]) or -math.huge
end

local function save()
  local f = {'need_probe', st.need_probe and '1' or '0', 'blocked_until', fmt(st.blocked_until),
             'others', st.others, 'others_until', fmt(st.others_until),
             'observed', string.format('%d', st.observed), 'window', ARGV[1]}
  if st.observed_at > -math.huge then
    f[#f + 1] = 'observed_at'; f[#f + 1] = fmt(st.observed_at)
  end
  if st.limit ~= nil then f[#f + 1] = 'limit'; f[#f + 1] = st.limit end
  redis.call('HSET', H, unpack(f))
end

-- Abandoned budgets vanish: everything expires a window (plus a reservation's life, or
-- the rest of a 429 pause) after the last use.
local function touch()
  local keep = window + res_ttl
  if st.blocked_until - now > keep then keep = st.blocked_until - now end
  local ms = math.ceil(keep * 1000) + 1000
  redis.call('HSET', H, 'window', ARGV[1])
  for i = 1, 7 do redis.call('PEXPIRE', KEYS[i], ms) end
end

-- Drop answered requests out of the window; a reservation past its expiry (its worker died,
-- or never reported) counts as a request answered at its expiry.
local function expire()
  local due = redis.call('ZRANGEBYSCORE', EXP, '-inf', fmt(now), 'WITHSCORES')
  for i = 1, #due, 2 do
    redis.call('ZREM', INF, due[i])
    redis.call('ZADD', DONE, due[i + 1], due[i])
  end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', EXP, '-inf', fmt(now)) end
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', fmt(now - window))
end

local function others_now()
  if st.others > 0 and now < st.others_until then return st.others end
  return 0
end

-- The fleet's own requests the server may hold in its window.
local function own()
  return redis.call('ZCARD', INF) + redis.call('ZCARD', DONE)
end

local function used()
  return own() + others_now()
end

-- WindowState._may_probe: with no fresh view, or full by the estimate of others' spending
-- alone (which may be stale), one request every window / 20 asks the server again.
local function may_probe()
  if st.need_probe then return true end
  return own() < st.limit and now >= st.observed_at + probe_every
end

-- How many requests may be sent now (WindowState.try_acquire, counted).
local function capacity()
  if now < st.blocked_until then return 0 end
  if st.need_probe or (st.limit ~= nil and used() >= st.limit) then
    if redis.call('ZCARD', INF) > 0 or not may_probe() then return 0 end
    return 1
  end
  if st.limit == nil then return math.huge end
  return st.limit - used()
end

local function first_score(key)
  local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if r[2] then return tonumber(r[2]) end
  return nil
end

-- WindowState.next_change, plus the expiry of reservations: a dead worker's request stops
-- being in flight then (which may allow a probe).
local function next_change()
  if now < st.blocked_until then return st.blocked_until end
  local first_exp = first_score(EXP)
  if st.need_probe or st.limit == nil then return first_exp end
  local c = first_exp
  local function consider(t)
    if c == nil or t < c then c = t end
  end
  local d = first_score(DONE)
  if d ~= nil then consider(d + window) end
  if others_now() > 0 then
    consider(st.others_until)
    if first_exp == nil and own() < st.limit then consider(st.observed_at + probe_every) end
  end
  return c
end

-- WindowState.estimate_wait: seconds until a request behind `ahead` others may go,
-- assuming every request in flight is answered now.
local function estimate_wait(ahead)
  local blocked = math.max(0, st.blocked_until - now)
  if st.limit == nil then return blocked end
  local ndone = redis.call('ZCARD', DONE)
  local ninf = redis.call('ZCARD', INF)
  local oth = others_now()
  local excess = ndone + ninf + oth + ahead + 1 - st.limit
  if excess <= 0 then return blocked end
  local total = ndone + ninf + oth
  if total == 0 then return math.huge end  -- nothing of ours comes back, others unknown
  -- every token comes back a window after it was spent: the queue moves `total` a window
  local turns = math.floor((excess - 1) / total)
  excess = excess - turns * total
  -- the excess-th smallest of: done + window (sorted), others_until (oth times),
  -- now + window (ninf times); everything is <= now + window.
  local before = 0
  if oth > 0 then
    before = redis.call('ZCOUNT', DONE, '-inf', '(' .. fmt(st.others_until - window))
  end
  local at
  if excess <= before then
    at = tonumber(redis.call('ZRANGE', DONE, excess - 1, excess - 1, 'WITHSCORES')[2]) + window
  elseif excess <= before + oth then
    at = st.others_until
  elseif excess <= ndone + oth then
    local k = excess - oth - 1
    at = tonumber(redis.call('ZRANGE', DONE, k, k, 'WITHSCORES')[2]) + window
  else
    at = now + window
  end
  return math.max(blocked, at + turns * window - now)
end

local function notify()
  if redis.call('ZCARD', WQ) > 0 then redis.call('PUBLISH', channel, me) end
end

local function purge_waiters()
  local gone = redis.call('ZRANGEBYSCORE', WD, '-inf', fmt(now))
  for _, m in ipairs(gone) do
    redis.call('ZREM', WQ, m)
    redis.call('HDEL', WN, m)
    redis.call('ZREM', WD, m)
  end
  return #gone > 0
end

local function leave()
  local removed = redis.call('ZREM', WQ, me)
  redis.call('HDEL', WN, me)
  redis.call('ZREM', WD, me)
  return removed == 1
end

-- After a change: tell waiters if a token came free, or may come free sooner than they were
-- told (capacity and next change as they were before it).  1 if they were told, else 0.
local function wake_if_freed(cap0, nc0)
  local cap1, nc1 = capacity(), next_change()
  if cap1 > cap0 or (cap1 == 0 and nc1 ~= nil and (nc0 == nil or nc1 < nc0)) then
    notify()
    return 1
  end
  return 0
end
"""

# ARGV 5 want, 6 local waiters ahead (for the estimate), 7 max_wait or '', 8 poll, 9 grace.
# Returns {granted, wait or '', estimate or '', queued (0/1), ticket...}.
_ACQUIRE = r"""
expire()
local changed = purge_waiters()
local want = tonumber(ARGV[5])
local ahead_local = tonumber(ARGV[6])
local max_wait = opt(ARGV[7])
local poll = tonumber(ARGV[8])
local grace = tonumber(ARGV[9])

-- Processes queued before this one, the tokens they want, and their earliest deadline.
local rank = redis.call('ZRANK', WQ, me)
local older_ids
if rank == false or rank == nil then
  rank = nil
  older_ids = redis.call('ZRANGE', WQ, 0, -1)
elseif rank > 0 then
  older_ids = redis.call('ZRANGE', WQ, 0, rank - 1)
else
  older_ids = {}
end
local older, older_deadline = 0, nil
for _, m in ipairs(older_ids) do
  older = older + (tonumber(redis.call('HGET', WN, m)) or 0)
  local dl = tonumber(redis.call('ZSCORE', WD, m))
  if dl ~= nil and (older_deadline == nil or dl < older_deadline) then older_deadline = dl end
end

if want == 0 then
  touch()
  return {0, '', fmt(estimate_wait(older + ahead_local)), rank and 1 or 0}
end

local cap = capacity()
local n = want
if cap - older < n then n = cap - older end
if n < 0 then n = 0 end

if n == 0 and max_wait ~= nil then
  local est = estimate_wait(older + ahead_local)
  if est > max_wait then
    if changed then notify() end
    touch()
    return {0, '', fmt(est), rank and 1 or 0}
  end
end

local out = {n, '', '', 0}
if n > 0 then
  if redis.call('HEXISTS', H, 'seq') == 0 then
    -- tickets keep growing even if an idle budget expired and is started again
    redis.call('HSET', H, 'seq', clock[1] .. string.format('%06d', tonumber(clock[2])))
  end
  local expiry = fmt(now + res_ttl)
  for _ = 1, n do
    local tk = string.format('%d', redis.call('HINCRBY', H, 'seq', 1))
    redis.call('ZADD', INF, tk, tk)
    redis.call('ZADD', EXP, expiry, tk)
    out[#out + 1] = tk
  end
end

local left = want - n
if left > 0 then
  local wait = nil
  if cap - n > 0 then
    -- tokens are free but older waiters come first: they publish when served
    if older_deadline ~= nil then wait = math.max(0, older_deadline - now) end
  else
    local nc = next_change()
    if nc ~= nil then wait = math.max(0, nc - now) end
  end
  local sleep = poll
  if wait ~= nil and wait < sleep then sleep = wait end
  if rank == nil or n > 0 then
    -- join the queue, or (served) go to its back
    redis.call('ZADD', WQ, fmt(now), me)
    if rank ~= nil then changed = true end
  end
  redis.call('HSET', WN, me, left)
  redis.call('ZADD', WD, fmt(now + sleep + grace), me)
  if wait ~= nil then out[2] = fmt(wait) end
  out[4] = 1
elseif rank ~= nil then
  leave()
  changed = true
end
if changed then notify() end
touch()
return out
"""

# ARGV 5 ticket, 6 limit or '', 7 remaining or '', 8 retry_after or '', 9 status.
# Returns 1 if a token was freed for waiters (and they were told), else 0.
_RECORD = r"""
expire()
local cap0, nc0 = capacity(), next_change()
local tks = ARGV[5]
local tk = tonumber(tks)
local limit = opt(ARGV[6])
local remaining = opt(ARGV[7])
local retry_after = opt(ARGV[8])
local status = tonumber(ARGV[9])

if redis.call('ZREM', INF, tks) == 1 then
  redis.call('ZREM', EXP, tks)
  redis.call('ZADD', DONE, fmt(now), tks)
elseif redis.call('ZSCORE', DONE, tks) then
  redis.call('ZADD', DONE, fmt(now), tks)  -- answered after its reservation expired
end
if limit ~= nil then st.limit = limit end
if status == 429 then
  local wait = retry_after
  if wait == nil then  -- no Retry-After: until one of the fleet's tokens returns
    local d = first_score(DONE)
    if d ~= nil then wait = d + window - now else wait = probe_every end
  end
  if now + wait > st.blocked_until then st.blocked_until = now + wait end
  st.need_probe = true
else
  st.need_probe = false
  if st.limit ~= nil and remaining ~= nil and tk >= st.observed then
    st.observed = tk
    st.observed_at = now
    -- the server counted our requests sent before this one; later ones may not have arrived
    local later = redis.call('ZCOUNT', INF, '(' .. tks, '+inf')
    st.others = math.max(0, st.limit - remaining - (own() - later))
    st.others_until = now + window
  end
end
save()
touch()
return wake_if_freed(cap0, nc0)
"""

# ARGV 5 ticket, 6 sent (1/0).  Returns 1 if a token was freed for waiters, else 0.
_RELEASE = r"""
expire()
local cap0, nc0 = capacity(), next_change()
local tks = ARGV[5]
local sent = ARGV[6] == '1'
if redis.call('ZREM', INF, tks) == 1 then
  redis.call('ZREM', EXP, tks)
  if sent then redis.call('ZADD', DONE, fmt(now), tks) end
elseif redis.call('ZSCORE', DONE, tks) then
  -- its reservation had expired: it counts from now if it may have been sent, else not at all
  if sent then redis.call('ZADD', DONE, fmt(now), tks) else redis.call('ZREM', DONE, tks) end
end
touch()
return wake_if_freed(cap0, nc0)
"""

_LEAVE = r"""
local changed = purge_waiters()
if leave() then changed = true end
if changed then notify() end
touch()
return 0
"""

# Returns {window, limit or '', need_probe, used, in flight, done, others, blocked_for,
# waiting processes, waiting tasks}.
_SNAPSHOT = r"""
local stored = tonumber(redis.call('HGET', H, 'window'))
if stored ~= nil then window = stored end
expire()
purge_waiters()
local tasks = 0
for _, w in ipairs(redis.call('HVALS', WN)) do tasks = tasks + (tonumber(w) or 0) end
return {fmt(window), st.limit and tostring(st.limit) or '', st.need_probe and 1 or 0, used(),
        redis.call('ZCARD', INF), redis.call('ZCARD', DONE), others_now(),
        fmt(math.max(0, st.blocked_until - now)), redis.call('ZCARD', WQ), tasks}
"""


@attrs.frozen
class _Grant:
    tickets: list[Ticket]
    wait: float | None  # seconds until a token may be free; None: until told
    estimate: float | None
    queued: bool  # this process holds a place in the fleet's queue
    # `estimate` is only sent when refused and over `max_wait` (or asked for with want=0)


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
    at Redis.  Use it in one event loop; `await limiter.aclose()` (or ``async with``) at the end
    closes the connections it made.
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
            from redis.backoff import ExponentialBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError

            self._redis = redis.asyncio.Redis.from_url(
                url_or_client,
                socket_connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
                # one quick retry for a dropped connection; a timeout is not retried, so an
                # unreachable Redis is reported after `connect_timeout`, not minutes later
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1, (RedisConnectionError,)),
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
        self._acquire_script: AsyncScript = self._redis.register_script(_PRELUDE + _ACQUIRE)
        self._record_script: AsyncScript = self._redis.register_script(_PRELUDE + _RECORD)
        self._release_script: AsyncScript = self._redis.register_script(_PRELUDE + _RELEASE)
        self._leave_script: AsyncScript = self._redis.register_script(_PRELUDE + _LEAVE)
        self._snapshot_script: AsyncScript = self._redis.register_script(_PRELUDE + _SNAPSHOT)
        self._waiters: collections.deque[asyncio.Future[Ticket]] = collections.deque()
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
        return [repr(self.window), self._channel, repr(self.reservation_ttl), self._id, *extra]

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
            if max_wait is not None and grant.estimate is not None and grant.estimate > max_wait:
                self._too_long(grant.estimate, max_wait)  # refused without joining the queue
        elif max_wait is not None:
            grant = await self._call_acquire(0, len(self._waiters), max_wait)
            if grant.estimate is not None and grant.estimate > max_wait:
                self._too_long(grant.estimate, max_wait)
        log.debug("rate limit (shared %s): waiting behind %d", self._key, len(self._waiters))
        future: asyncio.Future[Ticket] = loop.create_future()
        self._waiters.append(future)
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
            retry_after = "" if rate.retry_after is None else repr(float(rate.retry_after))
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
        task = loop.create_task(self._release(ticket, sent))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, ticket: Ticket, sent: bool) -> None:
        try:
            woke = await self._eval(self._release_script, str(ticket), "1" if sent else "0")
        except RateLimiterUnavailable as exc:
            log.warning("rate limit: could not release a token: %s", exc)
            return
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

    async def _call_acquire(self, want: int, ahead: int, max_wait: float | None) -> _Grant:
        r = await self._eval(
            self._acquire_script,
            str(want),
            str(ahead),
            "" if max_wait is None else repr(float(max_wait)),
            repr(self.poll_interval),
            repr(WAITER_GRACE),
        )
        return _Grant(
            tickets=[int(t) for t in r[4:]],
            wait=_num(r[1]),
            estimate=_num(r[2]),
            queued=bool(int(r[3])),
        )

    def _too_long(self, estimate: float | None, max_wait: float | None) -> None:
        wait = estimate if estimate is not None else math.inf
        raise RateLimited(
            429,
            retry_after=wait,
            title="Rate limit wait too long",
            detail=f"the shared budget's next token is about {wait:.1f} s away, "
            f"over max_rate_limit_wait={max_wait:g} s",
        )

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
        while waiters and waiters[0].done():
            waiters.popleft()
        if any(f.done() for f in waiters):
            self._waiters = collections.deque(f for f in waiters if not f.done())

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
                grant = await self._call_acquire(len(self._waiters), 0, None)
                queued = grant.queued
                for ticket in grant.tickets:
                    self._prune()
                    if self._waiters:
                        self._waiters.popleft().set_result(ticket)
                    else:  # its waiter was cancelled meanwhile
                        self._outstanding += 1
                        self.release(ticket, sent=False)
                self._prune()
                if not self._waiters or not grant.queued:
                    continue
                sleep = self.poll_interval if grant.wait is None else grant.wait
                sleep = min(sleep, self.poll_interval) + 0.001
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
            future = self._waiters.popleft()
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
